"""JSON responses and the error body of the contract."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from authsvc.domain.errors import AuthError, InvalidClient, InvalidToken, MethodNotAllowed

_encode = msgspec.json.Encoder().encode


def json_response(data: Any, status: int = 200) -> web.Response:
    """`data` as a JSON response."""
    return web.Response(body=_encode(data), status=status, content_type="application/json")


def error_response(error: AuthError) -> web.Response:
    """The contract's `{"error", "error_description"}` with the error's status and headers."""
    body = {"error": error.code, "error_description": error.description}
    reason = getattr(error, "reason", "")
    if reason:
        body["reason"] = reason
    response = json_response(body, error.status)
    if error.retry_after is not None:
        response.headers["Retry-After"] = str(error.retry_after)
    if isinstance(error, InvalidToken):
        challenge = 'Bearer realm="authsvc"'
        if error.presented:
            challenge += f', error="invalid_token", error_description="{error.description}"'
        response.headers["WWW-Authenticate"] = challenge
    if isinstance(error, InvalidClient):
        response.headers["WWW-Authenticate"] = 'Basic realm="authsvc"'
    if isinstance(error, MethodNotAllowed):
        response.headers["Allow"] = error.allowed
    return response
