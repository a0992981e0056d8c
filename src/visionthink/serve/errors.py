"""Refusals as OpenAI-style error bodies: `{"error": {"message", "type", "code", "param"}}`."""

from __future__ import annotations

import json
from typing import Any

from fastapi.responses import JSONResponse


class ApiError(Exception):
    """A refusal, sent as an OpenAI-style error body."""

    def __init__(self, status: int, message: str, code: str, kind: str = "invalid_request_error",
                 param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.kind, self.param = status, message, code, kind, param

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.kind, self.code, self.param)

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(self.body(), self.status, headers=headers)


def error_body(message: str, kind: str, code: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "code": code, "param": param}}


async def send_error(send, error: ApiError) -> None:
    """Send `error` as a whole response from plain ASGI (middleware that runs before routing). The server closes a
    connection whose body was not read after a short linger (`serve.server`), so a client still sending reads this."""
    body = json.dumps(error.body()).encode()
    await send({"type": "http.response.start", "status": error.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
