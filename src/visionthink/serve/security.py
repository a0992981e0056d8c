"""The API key check, as a FastAPI dependency of the `/v1/*` routes."""

from __future__ import annotations

import hmac

from fastapi import Request

from visionthink.serve.errors import ApiError


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
