"""Image bytes behind an `image_url`: base64 data URLs, or (when allowed) http(s) fetches of public hosts.

A fetch resolves the host once, refuses any non-public address (also one hidden inside an
IPv6 form: IPv4-mapped, NAT64 64:ff9b::/96, 6to4 2002::/16, Teredo; IPv4-compatible ::/96,
IPv4-translated ::ffff:0:0:0/96, local-use NAT64 64:ff9b:1::/48 and site-local fec0::/10 are
refused whole), connects to that very
address (no second resolution), follows no redirects, caps the size, and has one deadline for
the whole fetch (connect, headers and every read), so a host trickling bytes cannot hold it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import http.client
import ipaddress
import re
import socket
import ssl
import threading
import time
import urllib.parse

from visionthink.serve.config import ServeConfig
from visionthink.serve.errors import ApiError

_DATA_URL = re.compile(r"data:(?P<media>[^;,]*)(?P<params>(;[^;,]*)*),", re.S)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SPACE = re.compile(r"\s")
_REFUSED_V6 = tuple(ipaddress.ip_network(block) for block in (
    "::/96",  # IPv4-compatible (deprecated): ::a.b.c.d
    "::ffff:0:0:0/96",  # IPv4-translated (SIIT): ::ffff:0:a.b.c.d
    "64:ff9b:1::/48",  # local-use NAT64, whose prefix may put the IPv4 address anywhere
    "fec0::/10",  # site-local (deprecated)
))
"""IPv6 blocks refused whole: they embed an IPv4 address, or are private, without `ipaddress` saying so."""
_CHUNK = 64 * 1024


def is_remote(url: str) -> bool:
    return url[:8].lower().startswith(("http://", "https://"))


def data_url_bytes(url: str) -> bytes:
    """The bytes of a `data:image/...;base64,` URL; anything else that is not http(s) is refused."""
    if not url:
        raise ApiError(400, "image_url.url must be a non-empty string", "invalid_image_url")
    if not url[:5].lower().startswith("data:"):
        scheme = url.split(":", 1)[0][:20] if ":" in url else ""
        raise ApiError(400, f"unsupported image URL scheme {scheme!r}; use a data:image/...;base64 URL",
                       "invalid_image_url")
    match = _DATA_URL.match(url[:512])
    if match is None:
        raise ApiError(400, "malformed data URL (expected data:image/<type>;base64,<data>)", "invalid_image_url")
    media = match["media"].strip().lower()
    if not media.startswith("image/"):
        raise ApiError(400, f"data URL has media type {media[:60] or 'none'!r}; expected an image/* type",
                       "invalid_image")
    if "base64" not in match["params"].lower():
        raise ApiError(400, "image data URLs must be base64-encoded (data:image/...;base64,...)", "invalid_image_url")
    payload = url[match.end():]
    if _SPACE.search(payload):  # rare: only then pay for a copy without it
        payload = "".join(payload.split())
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "image data URL holds invalid base64", "invalid_image") from None
    if not data:
        raise ApiError(400, "image data URL is empty", "invalid_image")
    return data


def is_public(address: str) -> bool:
    """True for a globally routable address, and for IPv6 only when no IPv4 address it embeds is private."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if not ip.is_global:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if any(ip in block for block in _REFUSED_V6):
            return False
        embedded = [ip.ipv4_mapped, ip.sixtofour, *(ip.teredo or ())]
        if ip in _NAT64:
            embedded.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        return all(inner is None or inner.is_global for inner in embedded)
    return True


class _Deadline:
    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError("the whole fetch took longer than its deadline")
        return left

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.end


def _abort(sock: socket.socket) -> None:
    """Cut a fetch that is still running at its deadline (a blocked read returns at once)."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection to an address resolved (and checked) beforehand."""

    def __init__(self, host: str, port: int, address: str, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self):
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self.address = address

    def connect(self):
        sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def fetch_remote_image(url: str, config: ServeConfig) -> bytes:
    """GET an image over http(s): public addresses only (unless configured), no redirects, size-capped,
    within `config.remote_fetch_timeout` seconds in all."""
    deadline = _Deadline(config.remote_fetch_timeout)
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as error:
        raise ApiError(400, f"malformed remote image URL ({error})", "invalid_image_url") from None
    if not host:
        raise ApiError(400, "remote image URL has no host", "invalid_image_url")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, ValueError, UnicodeError) as error:
        raise ApiError(400, f"cannot resolve the image host: {error}", "remote_image_failed") from None
    addresses = [info[4][0] for info in infos]
    if not config.allow_private_remote_images and not all(map(is_public, addresses)):
        raise ApiError(400, "remote image host resolves to a non-public address; refused", "remote_image_refused")
    limit = config.max_body_bytes
    connection_type = _PinnedHTTPSConnection if parts.scheme == "https" else _PinnedHTTPConnection
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        connection = connection_type(host, port, addresses[0], deadline.left())
        connection.connect()
        sock = connection.sock  # kept: http.client hands it to the response and forgets it
        watchdog = threading.Timer(deadline.left(), _abort, (sock,))
        watchdog.daemon = True
        try:
            watchdog.start()  # headers trickled byte by byte are cut off at the deadline too
            connection.request("GET", target, headers={"User-Agent": "visionthink-server", "Accept": "image/*"})
            sock.settimeout(deadline.left())
            response = connection.getresponse()
            if response.status != 200:
                raise ApiError(400, f"fetching the remote image gave HTTP {response.status} (redirects are not "
                               "followed)", "remote_image_failed")
            declared = response.getheader("Content-Length")
            if declared and declared.isdigit() and int(declared) > limit:
                raise ApiError(400, f"remote image is over the limit of {limit} bytes", "image_too_large")
            chunks, size = [], 0
            while size <= limit:
                sock.settimeout(deadline.left())
                chunk = response.read1(_CHUNK)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        finally:
            watchdog.cancel()
            connection.close()
        deadline.left()
    except TimeoutError:
        raise ApiError(400, f"fetching the remote image took longer than {config.remote_fetch_timeout:g} s",
                       "remote_image_failed") from None
    except (OSError, http.client.HTTPException) as error:
        if deadline.expired:
            raise ApiError(400, f"fetching the remote image took longer than {config.remote_fetch_timeout:g} s",
                           "remote_image_failed") from None
        raise ApiError(400, f"fetching the remote image failed: {type(error).__name__}: {error}",
                       "remote_image_failed") from None
    if size > limit:
        raise ApiError(400, f"remote image is over the limit of {limit} bytes", "image_too_large")
    return b"".join(chunks)
