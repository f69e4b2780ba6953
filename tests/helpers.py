"""Small helpers that drive the API the way a client would."""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import quote_plus

import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient
from redis.asyncio.cluster import RedisCluster

from authsvc.domain.clock import Clock
from authsvc.settings import Settings

Client = TestClient[web.Request, web.Application]
PASSWORD = "correct horse battery"


async def signup(client: Client, email: str, password: str = PASSWORD) -> str:
    """Register and return the user id."""
    response = await client.post("/v1/auth/signup", json={"email": email, "password": password})
    assert response.status == 201, await response.text()
    body: dict[str, str] = await response.json()
    return body["user_id"]


async def login(
    client: Client, email: str, password: str = PASSWORD, **headers: str
) -> dict[str, Any]:
    """Log in and return the token response."""
    response = await client.post(
        "/v1/auth/login", json={"email": email, "password": password}, headers=headers
    )
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    return body


async def refresh(client: Client, refresh_token: str) -> tuple[int, dict[str, Any]]:
    """Present a refresh token; returns status and body."""
    response = await client.post("/v1/auth/refresh", json={"refresh_token": refresh_token})
    body: dict[str, Any] = await response.json()
    return response.status, body


def basic_auth(name: str, secret: str) -> str:
    """A service client's Authorization value (RFC 6749 2.3.1: each part form-urlencoded,
    then Base64)."""
    pair = f"{quote_plus(name, safe='')}:{quote_plus(secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode()).decode()


def bearer(tokens: dict[str, Any]) -> dict[str, str]:
    """The Authorization header for a token response."""
    return {"Authorization": f"Bearer {tokens['access_token']}"}


async def me_status(client: Client, tokens: dict[str, Any]) -> int:
    """The status of GET /v1/me with the response's access token."""
    response = await client.get("/v1/me", headers=bearer(tokens))
    await response.read()
    return response.status


def raw_redis(
    settings: Settings, *, decode_responses: bool = False
) -> aioredis.Redis | RedisCluster:
    """A plain redis-py client on the Redis (or Redis Cluster) that `settings` name, for
    tests that look at keys directly; the caller closes it."""
    url = settings.redis_url or ""
    if settings.redis_cluster:
        return RedisCluster.from_url(url, decode_responses=decode_responses)
    return aioredis.Redis.from_url(url, decode_responses=decode_responses)


class SkewedClock(Clock):
    """Another instance's clock: the same shared time as `base` (its shift, which the
    scripts add to Redis's time), but a wall clock `skew` seconds off."""

    def __init__(self, base: Clock, skew: float) -> None:
        super().__init__()
        self._base = base
        self._skew = skew

    def __call__(self) -> float:
        return self._base() + self._skew

    @property
    def shift_ms(self) -> int:
        return self._base.shift_ms

    def advance(self, seconds: float) -> None:
        self._base.advance(seconds)
