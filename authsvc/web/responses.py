"""JSON responses and the error body of the contract."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from authsvc.domain.clock import rfc3339
from authsvc.domain.errors import AuthError, InvalidClient, InvalidToken, MethodNotAllowed
from authsvc.domain.service import SessionInfo

_encode = msgspec.json.Encoder().encode


def json_response(data: Any, status: int = 200) -> web.Response:
    """`data` as a JSON response."""
    return web.Response(body=_encode(data), status=status, content_type="application/json")


def session_json(session: SessionInfo, *, with_current: bool) -> dict[str, Any]:
    """A session as the sessions lists show it (the admin API's without `current`)."""
    shown: dict[str, Any] = {
        "session_id": session.session_id,
        "created_at": rfc3339(session.created_at),
        "last_used_at": rfc3339(session.last_used_at),
        "expires_at": rfc3339(session.expires_at),
        "user_agent": session.user_agent,
        "ip": session.ip,
    }
    if with_current:
        shown["current"] = session.current
    return shown


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
