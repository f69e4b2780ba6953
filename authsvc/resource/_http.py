"""What both middlewares answer: the Bearer token of a request, and the JSON errors of
authsvc's contract."""

from __future__ import annotations

import json
from collections.abc import Sequence

MAX_HEADER = 8192


def bearer_token(headers: Sequence[str]) -> str:
    """The token of exactly one `Authorization: Bearer` header; ValueError otherwise."""
    if len(headers) != 1:
        raise ValueError("exactly one Authorization header is required")
    scheme, _, token = headers[0].partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > MAX_HEADER:
        raise ValueError("a Bearer token is required")
    return token


def error(status: int, code: str, description: str) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of the contract's error for a refused request."""
    headers = {"Content-Type": "application/json"}
    if status == 401:
        safe = description.replace('"', "'")
        challenge = 'Bearer realm="api", error="invalid_token"'
        headers["WWW-Authenticate"] = f'{challenge}, error_description="{safe}"'
    else:
        headers["Retry-After"] = "1"
    body = json.dumps({"error": code, "error_description": description}).encode()
    return status, headers, body
