"""The API key check (a FastAPI dependency of the `/v1/*` routes), the Host and Origin checks of a server without a
key, and the web page's security headers."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import ipaddress
import re

from fastapi import Request

from visionthink.serve.errors import ApiError, send_error


def require_api_key(request: Request) -> None:
    """Refuse with 401 unless the server has no key or `Authorization: Bearer <key>` carries it."""
    key = request.app.state.config.api_key
    if key is None:
        return
    header = request.headers.get("authorization", "")
    if not header:
        raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>'", "missing_api_key",
                       "authentication_error")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
        raise ApiError(401, "invalid API key", "invalid_api_key", "authentication_error")


@functools.lru_cache(maxsize=4)
def page_policy(page: str) -> str:
    """The Content-Security-Policy of the web page: its one inline script (by hash), inline styles, images from data
    and blob URLs, requests to its own origin only, and no framing."""
    scripts = re.findall(r"<script>(.*?)</script>", page, re.S)
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in scripts)
    return (f"default-src 'none'; script-src {hashes or 'none'}; style-src 'unsafe-inline'; img-src data: blob:; "
            "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'")


def _host_name(value: str) -> str:
    """The name or address of a Host header or an origin's host part, without its port or IPv6 brackets."""
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class HostGuardMiddleware:
    """Without an API key, refuse a `Host` that is a name other than localhost or `allowed_hosts` (a DNS-rebinding
    page reaches the server under its own name), and a request sent from another origin by a browser (`Origin`
    differs from `Host`: a cross-site form or `text/plain` POST). Adds `nosniff` to every response."""

    def __init__(self, app, api_key: str | None, allowed_hosts: tuple[str, ...] = ()):
        self.app = app
        self.open = api_key is None and "*" not in allowed_hosts
        self.allowed = {"localhost", *(host.lower() for host in allowed_hosts)}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def guarded_send(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"x-content-type-options", b"nosniff")]}
            await send(message)

        if self.open:
            error = self._refusal(dict(scope.get("headers") or []), scope.get("method", "GET"))
            if error is not None:
                return await send_error(guarded_send, error)
        await self.app(scope, receive, guarded_send)

    def _refusal(self, headers: dict[bytes, bytes], method: str) -> ApiError | None:
        host = headers.get(b"host", b"").decode("latin-1").strip().lower()
        if host and not (_is_ip(_host_name(host)) or _host_name(host) in self.allowed):
            return ApiError(403, f"host {host[:80]!r} is not served here: a server without an API key answers IP "
                            "addresses, localhost and the names given with --allowed-host", "host_not_allowed",
                            "permission_error")
        origin = headers.get(b"origin")
        if origin is not None and method not in ("GET", "HEAD"):
            given = origin.decode("latin-1").strip().lower()
            if given.partition("://")[2] != host:
                return ApiError(403, "cross-origin requests are refused by a server without an API key",
                                "cross_origin_refused", "permission_error")
        return None
