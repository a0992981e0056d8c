"""The request body limits, as pure ASGI middleware: an oversized body is refused before it is buffered, and the
bodies held at once are bounded in bytes."""

from __future__ import annotations

import ctypes
import os
import sys

from visionthink.serve.errors import ApiError, send_error

M_MMAP_THRESHOLD = -3


def return_large_buffers(threshold: int = 256 * 1024) -> bool:
    """Have glibc's malloc give every allocation of `threshold` bytes or more its own mapping, returned to the system
    when freed. Its default threshold rises after each large free, and then bodies, parsed JSON and base64 land in
    heaps that a long-running server keeps (+270 MB over `benchmarks/abuse.py`'s round 2, against +40 MB). False
    where the allocator is not glibc's or `MALLOC_MMAP_THRESHOLD_` already sets it."""
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))


class BodyLimitMiddleware:
    """Refuse request bodies over `max_bytes` with 413 (declared or counted while streaming in), and with 503 a body
    that would take the bytes of all bodies held (from their headers to their replies) over `max_inflight`."""

    def __init__(self, app, max_bytes: int, max_inflight: int | None = None):
        self.app = app
        self.max_bytes = max_bytes
        self.max_inflight = max_inflight
        self.inflight = 0
        """Bytes of the bodies of requests being answered (declared, or received when more)."""

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        length = 0
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                return await send_error(send, ApiError(400, "Content-Length is not a number", "invalid_header"))
            if length > self.max_bytes:
                return await send_error(send, self._too_large())
        held = received = 0
        started = False

        def hold(size: int) -> None:
            nonlocal held
            if self.max_inflight is not None and size > held and self.inflight + size - held > self.max_inflight:
                raise BodyTooLarge(503, "the server holds as many request bodies as it can; retry shortly",
                                   "server_busy", "rate_limit_error")
            if size > held:
                self.inflight += size - held
                held = size

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._too_large()
                hold(received)
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            hold(length)
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge as error:
            if not started:
                await send_error(send, error)
        finally:
            self.inflight -= held

    def _too_large(self) -> BodyTooLarge:
        return BodyTooLarge(413, f"request body is over the limit of {self.max_bytes} bytes", "body_too_large")


class BodyTooLarge(ApiError):
    """Raised from `receive` while the body streams in (the app answers it like any refusal)."""
