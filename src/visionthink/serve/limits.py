"""The request body limit, as pure ASGI middleware: an oversized body is refused before it is buffered."""

from __future__ import annotations

from visionthink.serve.errors import ApiError, send_error


class BodyLimitMiddleware:
    """Refuse request bodies over `max_bytes` with 413 (declared or counted while streaming in)."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                return await send_error(send, ApiError(400, "Content-Length is not a number", "invalid_header"))
            if length > self.max_bytes:
                return await send_error(send, self._too_large())
        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._too_large()
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await send_error(send, self._too_large())

    def _too_large(self) -> BodyTooLarge:
        return BodyTooLarge(413, f"request body is over the limit of {self.max_bytes} bytes", "body_too_large")


class BodyTooLarge(ApiError):
    """Raised from `receive` while the body streams in (the app answers it like any refusal)."""
