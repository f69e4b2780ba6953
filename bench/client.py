"""The few HTTP calls the driver makes itself: signups, logins and refreshes that prepare
the load, and the cookie of the session baseline. Loopback only, bounded by timeouts."""

from __future__ import annotations

import dataclasses
import http.client
import itertools
import json
import secrets
from typing import Any

TIMEOUT = 60.0  # a login waits behind every bcrypt queued before it
_addresses = itertools.count(1)


@dataclasses.dataclass(frozen=True, slots=True)
class Account:
    """An account the benchmark signed up (the password lives only in this run)."""

    email: str
    password: str = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True, slots=True)
class Tokens:
    """The tokens of one session."""

    access: str = dataclasses.field(repr=False)
    refresh: str = dataclasses.field(repr=False)


def request(
    port: int, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request to 127.0.0.1:port; returns status, headers and body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        sent = dict(headers or {})
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            sent["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=sent)
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def _call(port: int, path: str, body: Any, expect: int) -> dict[str, Any]:
    # A distinct client address per call: authsvc trusts 127.0.0.1 as a proxy here, so the
    # driver's own logins do not use up the per-address login limit that the load measures.
    headers = {"X-Forwarded-For": _next_address(), "User-Agent": "authsvc-bench/1"}
    status, _, data = request(port, "POST", path, body, headers)
    if status != expect:
        raise RuntimeError(f"POST {path}: expected {expect}, got {status}: {data[:200]!r}")
    reply: dict[str, Any] = json.loads(data)
    return reply


def _next_address() -> str:
    n = next(_addresses)
    return f"172.16.{(n >> 8) & 255}.{n & 255}"


def signup(port: int, label: str) -> Account:
    """Sign up a new account with a random password."""
    account = Account(f"{label}-{secrets.token_hex(4)}@bench.example", secrets.token_urlsafe(18))
    _call(port, "/v1/auth/signup", {"email": account.email, "password": account.password}, 201)
    return account


def login(port: int, account: Account) -> Tokens:
    """Log in; the tokens of the new session."""
    reply = _call(
        port, "/v1/auth/login", {"email": account.email, "password": account.password}, 200
    )
    return Tokens(reply["access_token"], reply["refresh_token"])


def refresh(port: int, tokens: Tokens) -> Tokens:
    """Rotate once; the session's new tokens."""
    reply = _call(port, "/v1/auth/refresh", {"refresh_token": tokens.refresh}, 200)
    return Tokens(reply["access_token"], reply["refresh_token"])


def check_get(port: int, path: str, header: str | None) -> None:
    """RuntimeError unless GET `path` with `header` ("Name: value") answers 200."""
    headers = {}
    if header is not None:
        name, _, value = header.partition(":")
        headers[name] = value.strip()
    status, _, data = request(port, "GET", path, headers=headers)
    if status != 200:
        raise RuntimeError(f"GET {path}: expected 200, got {status}: {data[:200]!r}")


def baseline_cookie(port: int) -> str:
    """A "Cookie: ..." header carrying a fresh aiohttp-session session."""
    status, headers, data = request(port, "POST", "/login")
    cookie = headers.get("Set-Cookie")
    if status != 200 or cookie is None:
        raise RuntimeError(f"baseline POST /login: {status} {data[:200]!r}")
    return "Cookie: " + cookie.split(";", 1)[0]
