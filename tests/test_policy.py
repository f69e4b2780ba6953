"""Session policy and administration (contract section 6): the session limit's `deny`
policy and a user's own limit, why a session ended on every refusal, deletion of an account
by its owner, the admin API, and what the tombstones cost in Redis.

Real redis-server, single and cluster; concurrency is real (asyncio.gather over two app
instances on one Redis) and times are polled with deadlines, never slept."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from authsvc.domain.clients import add_client
from authsvc.domain.clock import Clock
from authsvc.domain.keys import KeyRing, generate_jwks
from authsvc.domain.tokens import AccessTokens, new_id
from authsvc.settings import Settings
from authsvc.store import client as redis_client
from authsvc.store.accounts import AccountStore
from authsvc.store.keys import Keys
from authsvc.store.scripts import Scripts
from authsvc.store.sessions import NewSession, SessionStore, SessionTimes
from tests.conftest import ClientFactory, RedisServer, with_
from tests.helpers import (
    PASSWORD,
    Client,
    basic_auth,
    bearer,
    login,
    me_status,
    raw_redis,
    refresh,
    signup,
)

WITHIN = 1.0  # seconds in which the contract says an ended session is known everywhere
NEW_PASSWORD = "another horse battery"
CLIENTS = {"ops": ["admin"], "orders": ["introspect", "revocations"]}
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
SESSION_FIELDS = {"session_id", "created_at", "last_used_at", "expires_at", "user_agent", "ip"}
# Path segments that no user or session id can be (ids are 1 to 64 of A-Z a-z 0-9 _ -).
BAD_IDS = ["has%20space", "a.b", "x" * 65, "%7Bu:other%7D", "%C3%A9t%C3%A9", "a%2Fb", "*"]


# --- fixtures and helpers -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Registry:
    """A clients file and the secrets that adding its clients returned."""

    path: Path
    secrets: dict[str, str]

    def basic(self, name: str = "ops", secret: str | None = None) -> dict[str, str]:
        """An RFC 6749 2.3.1 Basic header: each part form-urlencoded, then Base64."""
        secret = self.secrets[name] if secret is None else secret
        return {"Authorization": basic_auth(name, secret)}


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    path = tmp_path / "clients.json"
    return Registry(path, {name: add_client(path, name, s) for name, s in CLIENTS.items()})


@pytest.fixture
def admin_settings(settings: Settings, registry: Registry) -> Settings:
    return with_(settings, clients_file=registry.path)


async def json_of(response: aiohttp.ClientResponse) -> dict[str, Any]:
    body: dict[str, Any] = await response.json()
    return body


async def error_of(response: aiohttp.ClientResponse) -> tuple[int, str]:
    """(status, error code) of a contract error response."""
    body = await json_of(response)
    assert set(body) >= {"error", "error_description"}, body
    return response.status, body["error"]


async def sessions_of(app: Client, tokens: dict[str, Any]) -> list[dict[str, Any]]:
    response = await app.get("/v1/sessions", headers=bearer(tokens))
    assert response.status == 200, await response.text()
    sessions: list[dict[str, Any]] = (await json_of(response))["sessions"]
    return sessions


async def bearer_refusal(app: Client, tokens: dict[str, Any]) -> dict[str, Any] | None:
    """None when GET /v1/me accepts the access token, else its 401 invalid_token body."""
    response = await app.get("/v1/me", headers=bearer(tokens))
    body = await json_of(response)
    if response.status == 200:
        return None
    assert (response.status, body["error"]) == (401, "invalid_token"), body
    assert response.headers["WWW-Authenticate"].startswith("Bearer ")
    return body


async def refresh_refusal(app: Client, refresh_token: str) -> dict[str, Any]:
    """The 401 invalid_grant body of a refused refresh."""
    status, body = await refresh(app, refresh_token)
    assert (status, body.get("error")) == (401, "invalid_grant"), body
    return body


async def refused_by_then(app: Client, tokens: dict[str, Any], deadline: float) -> dict[str, Any]:
    """Poll GET /v1/me until the access token is refused; fail after `deadline`."""
    while (body := await bearer_refusal(app, tokens)) is None:
        assert time.monotonic() < deadline, f"still accepted {WITHIN} s after the session ended"
        await asyncio.sleep(0.01)
    return body


async def until(condition: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    """Poll `condition` until it holds; fail once `within` seconds have passed."""
    deadline = time.monotonic() + within
    while not await condition():
        assert time.monotonic() < deadline, f"{what}: not within {within} s"
        await asyncio.sleep(0.01)


async def keys_of_user(settings: Settings, user_id: str) -> list[str]:
    """Every Redis key under the user's hash tag."""
    r = raw_redis(settings, decode_responses=True)
    try:
        return sorted([k async for k in r.scan_iter(f"{settings.key_prefix}:{{u:{user_id}}}:*")])
    finally:
        await r.aclose()


async def login_raw(app: Client, email: str, password: str = PASSWORD) -> aiohttp.ClientResponse:
    return await app.post("/v1/auth/login", json={"email": email, "password": password})


async def delete_me(app: Client, tokens: dict[str, Any], password: str) -> aiohttp.ClientResponse:
    return await app.delete("/v1/me", json={"password": password}, headers=bearer(tokens))


async def find_user(app: Client, registry: Registry, email: str) -> aiohttp.ClientResponse:
    return await app.get("/v1/admin/users", params={"email": email}, headers=registry.basic())


async def session_limit_of(app: Client, registry: Registry, email: str) -> int:
    response = await find_user(app, registry, email)
    assert response.status == 200, await response.text()
    limit: int = (await json_of(response))["session_limit"]
    return limit


async def put_limit(
    app: Client, registry: Registry, user_id: str, limit: int | None
) -> aiohttp.ClientResponse:
    return await app.put(
        f"/v1/admin/users/{user_id}/session-limit", json={"limit": limit}, headers=registry.basic()
    )


# --- 1. the session limit: deny and evict ----------------------------------------------------


async def test_deny_admits_exactly_5_of_50_concurrent_logins_on_two_instances_and_ends_nothing(
    make_client: ClientFactory, settings: Settings
) -> None:
    # A high failure limit: how the email throttle queues concurrent checks is not the point.
    s = with_(settings, session_limit=5, session_limit_policy="deny", login_failure_limit=1000)
    a, b = await make_client(s), await make_client(s)
    user_id = await signup(a, "deny@example.com")
    responses = await asyncio.gather(
        *(login_raw((a, b)[i % 2], "deny@example.com") for i in range(50))
    )
    bodies = [await json_of(r) for r in responses]
    winners = [body for r, body in zip(responses, bodies, strict=True) if r.status == 200]
    refused = [body for r, body in zip(responses, bodies, strict=True) if r.status == 409]
    assert (len(winners), len(refused)) == (5, 45), sorted(r.status for r in responses)
    assert all(body["error"] == "session_limit_reached" for body in refused)
    assert all(body["error_description"] for body in refused)
    assert all("refresh_token" not in body for body in refused)

    listed = await sessions_of(a, winners[0])
    assert sorted(x["session_id"] for x in listed) == sorted(w["session_id"] for w in winners)
    # Nothing was created for the refused logins, nothing ended for them: no stray session
    # hashes, no tombstones.
    keys = await keys_of_user(settings, user_id)
    prefix = f"{settings.key_prefix}:{{u:{user_id}}}"
    assert sorted(k for k in keys if k.startswith(f"{prefix}:s:")) == sorted(
        f"{prefix}:s:{w['session_id']}" for w in winners
    )
    assert f"{prefix}:ended" not in keys
    # The earlier sessions live on: each refreshes, on either instance.
    renewed = []
    for i, tokens in enumerate(winners):
        status, body = await refresh((a, b)[i % 2], tokens["refresh_token"])
        assert status == 200, body
        renewed.append(body)
    # Still at the limit: one more login is refused, and still ends nothing.
    assert await error_of(await login_raw(b, "deny@example.com")) == (409, "session_limit_reached")
    for tokens in renewed:
        assert await me_status(b, tokens) == 200
        assert (await refresh(a, tokens["refresh_token"]))[0] == 200


async def test_deny_admits_a_login_again_once_a_session_has_ended(
    make_client: ClientFactory, settings: Settings
) -> None:
    app = await make_client(with_(settings, session_limit=2, session_limit_policy="deny"))
    await signup(app, "room@example.com")
    first, second = await login(app, "room@example.com"), await login(app, "room@example.com")
    assert await error_of(await login_raw(app, "room@example.com")) == (
        409,
        "session_limit_reached",
    )
    assert (await app.post("/v1/auth/logout", headers=bearer(first))).status == 204
    third = await login(app, "room@example.com")
    assert {s["session_id"] for s in await sessions_of(app, third)} == {
        second["session_id"],
        third["session_id"],
    }


async def test_evict_is_the_default_and_ends_the_least_recently_used_session(
    make_client: ClientFactory, settings: Settings, clock: Clock
) -> None:
    assert settings.session_limit_policy == "evict"
    app = await make_client(with_(settings, session_limit=3))
    await signup(app, "lru@example.com")
    sessions = []
    for _ in range(3):
        sessions.append(await login(app, "lru@example.com"))
        clock.advance(1)
    status, sessions[0] = await refresh(app, sessions[0]["refresh_token"])  # now the second is LRU
    assert status == 200
    clock.advance(1)
    fourth = await login(app, "lru@example.com")
    assert [await me_status(app, t) for t in (*sessions, fourth)] == [200, 401, 200, 200]
    assert (await refresh_refusal(app, sessions[1]["refresh_token"]))["reason"] == "evicted"
    assert [s["session_id"] for s in await sessions_of(app, fourth)] == [
        fourth["session_id"],
        sessions[0]["session_id"],
        sessions[2]["session_id"],
    ]


async def test_evict_under_50_concurrent_logins_on_two_instances_admits_all_and_leaves_the_limit(
    make_client: ClientFactory, settings: Settings
) -> None:
    s = with_(settings, session_limit=5, login_failure_limit=1000)
    a, b = await make_client(s), await make_client(s)
    await signup(a, "evict@example.com")
    results = await asyncio.gather(*(login((a, b)[i % 2], "evict@example.com") for i in range(50)))
    live = [t for t in results if await me_status(a, t) == 200]
    assert len(live) == 5
    assert sorted(x["session_id"] for x in await sessions_of(b, live[0])) == sorted(
        t["session_id"] for t in live
    )
    for tokens in results:
        if tokens not in live:
            assert (await refresh_refusal(b, tokens["refresh_token"]))["reason"] == "evicted"


# --- 2. a user's own session limit -----------------------------------------------------------


@pytest.mark.parametrize("policy", ["evict", "deny"])
async def test_a_users_own_limit_applies_from_the_next_login_and_null_restores_the_default(
    make_client: ClientFactory,
    admin_settings: Settings,
    registry: Registry,
    clock: Clock,
    policy: str,
) -> None:
    app = await make_client(with_(admin_settings, session_limit=4, session_limit_policy=policy))
    user_id = await signup(app, "own@example.com")
    sessions = []
    for _ in range(3):
        sessions.append(await login(app, "own@example.com"))
        clock.advance(1)
    assert await session_limit_of(app, registry, "own@example.com") == 4

    assert (await put_limit(app, registry, user_id, 2)).status == 204
    assert await session_limit_of(app, registry, " OWN@example.com ") == 2
    assert len(await sessions_of(app, sessions[0])) == 3  # setting it ends nothing by itself

    if policy == "evict":
        newest = await login(app, "own@example.com")
        listed = [s["session_id"] for s in await sessions_of(app, newest)]
        assert listed == [newest["session_id"], sessions[2]["session_id"]]
        for tokens in sessions[:2]:
            assert (await refresh_refusal(app, tokens["refresh_token"]))["reason"] == "evicted"
        live = [sessions[2], newest]  # least recently used first
    else:
        assert await error_of(await login_raw(app, "own@example.com")) == (
            409,
            "session_limit_reached",
        )
        assert len(await sessions_of(app, sessions[0])) == 3
        live = sessions

    assert (await put_limit(app, registry, user_id, None)).status == 204
    assert await session_limit_of(app, registry, "own@example.com") == 4
    while len(live) < 4:  # the default again: room for 4
        clock.advance(1)
        live.append(await login(app, "own@example.com"))
    assert len(await sessions_of(app, live[-1])) == 4
    clock.advance(1)
    if policy == "evict":
        fifth = await login(app, "own@example.com")
        assert len(await sessions_of(app, fifth)) == 4
        assert (await refresh_refusal(app, live[0]["refresh_token"]))["reason"] == "evicted"
        live = [*live[1:], fifth]
    else:
        assert await error_of(await login_raw(app, "own@example.com")) == (
            409,
            "session_limit_reached",
        )
    for tokens in live:
        assert await me_status(app, tokens) == 200


async def test_a_users_own_limit_accepts_1_and_1000(
    make_client: ClientFactory, admin_settings: Settings, registry: Registry
) -> None:
    app = await make_client(admin_settings)
    user_id = await signup(app, "bounds@example.com")
    for limit in (1, 1000):
        assert (await put_limit(app, registry, user_id, limit)).status == 204
        assert await session_limit_of(app, registry, "bounds@example.com") == limit
    assert (await put_limit(app, registry, user_id, 1)).status == 204
    first = await login(app, "bounds@example.com")
    second = await login(app, "bounds@example.com")
    assert await me_status(app, first) == 401
    assert [s["session_id"] for s in await sessions_of(app, second)] == [second["session_id"]]


@pytest.mark.parametrize(
    "raw",
    [
        b'{"limit": 0}',
        b'{"limit": -1}',
        b'{"limit": 1001}',
        b'{"limit": ' + str(10**30).encode() + b"}",
        b'{"limit": "5"}',
        b'{"limit": true}',
        b'{"limit": false}',
        b'{"limit": 1.5}',
        b'{"limit": 1e3}',
        b'{"limit": [5]}',
        b'{"limit": {"n": 5}}',
        b"{}",
        b'{"limt": 5}',
        b"[5]",
        b"5",
        b"null",
        b"not json",
        b'{"limit": 5',
        b"",
        b"\xff\xfe",
    ],
    ids=lambda raw: raw.decode("utf-8", "replace")[:24] or "empty",
)
async def test_a_bad_session_limit_body_is_400_and_changes_nothing(
    make_client: ClientFactory, admin_settings: Settings, registry: Registry, raw: bytes
) -> None:
    app = await make_client(with_(admin_settings, session_limit=3))
    user_id = await signup(app, "badlimit@example.com")
    assert (await put_limit(app, registry, user_id, 7)).status == 204
    response = await app.put(
        f"/v1/admin/users/{user_id}/session-limit",
        data=raw,
        headers={**registry.basic(), "Content-Type": "application/json"},
    )
    assert await error_of(response) == (400, "invalid_request")
    assert await session_limit_of(app, registry, "badlimit@example.com") == 7


async def test_a_session_limit_body_that_is_not_json_by_content_type_is_415(
    make_client: ClientFactory, admin_settings: Settings, registry: Registry
) -> None:
    app = await make_client(admin_settings)
    user_id = await signup(app, "ctype@example.com")
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = registry.basic()
        if content_type is not None:
            headers["Content-Type"] = content_type
        response = await app.put(
            f"/v1/admin/users/{user_id}/session-limit", data=b'{"limit": 2}', headers=headers
        )
        assert await error_of(response) == (415, "unsupported_media_type")
    assert await session_limit_of(app, registry, "ctype@example.com") == 5


async def test_session_limit_of_an_unknown_user_or_a_bad_id_is_404(
    make_client: ClientFactory, admin_settings: Settings, registry: Registry
) -> None:
    app = await make_client(admin_settings)
    await signup(app, "exists@example.com")
    for user_id in [new_id(), *BAD_IDS]:
        for limit in (3, None):
            response = await put_limit(app, registry, user_id, limit)
            assert await error_of(response) == (404, "not_found"), user_id
    assert await session_limit_of(app, registry, "exists@example.com") == 5


# --- 3. why a session ended --------------------------------------------------------------------


@dataclasses.dataclass
class Scene:
    """Two instances on one Redis, a user, and an admin client."""

    a: Client
    b: Client
    clock: Clock
    registry: Registry
    email: str
    user_id: str

    async def login(self) -> dict[str, Any]:
        tokens = await login(self.a, self.email)
        self.clock.advance(0.01)  # distinct last_used_at: eviction order is well-defined
        return tokens

    async def cached_on_b(self, tokens: dict[str, Any]) -> None:
        """b admits the session, and so remembers it as live."""
        assert await me_status(self.b, tokens) == 200
        assert await me_status(self.b, tokens) == 200


Ender = Callable[[Scene], Awaitable[dict[str, Any]]]


async def _logout(s: Scene) -> dict[str, Any]:
    tokens = await s.login()
    await s.cached_on_b(tokens)
    assert (await s.a.post("/v1/auth/logout", headers=bearer(tokens))).status == 204
    return tokens


async def _logout_all(s: Scene) -> dict[str, Any]:
    tokens, caller = await s.login(), await s.login()
    await s.cached_on_b(tokens)
    assert (await s.a.post("/v1/auth/logout-all", headers=bearer(caller))).status == 204
    return tokens


async def _password_change(s: Scene) -> dict[str, Any]:
    tokens, caller = await s.login(), await s.login()
    await s.cached_on_b(tokens)
    response = await s.a.post(
        "/v1/auth/password",
        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        headers=bearer(caller),
    )
    assert response.status == 204
    assert await me_status(s.a, caller) == 200  # the caller's own session stays
    return tokens


async def _eviction(s: Scene) -> dict[str, Any]:  # the session limit is 2
    tokens = await s.login()
    await s.cached_on_b(tokens)
    await s.login()
    await s.login()
    return tokens


async def _reuse(s: Scene) -> dict[str, Any]:
    first = await s.login()
    await s.cached_on_b(first)
    status, second = await refresh(s.a, first["refresh_token"])
    assert status == 200
    status, third = await refresh(s.a, second["refresh_token"])
    assert status == 200
    body = await refresh_refusal(s.a, first["refresh_token"])  # its successor was used: reuse
    assert body["reason"] == "reuse_detected"
    return third


async def _delete_session(s: Scene) -> dict[str, Any]:
    tokens, caller = await s.login(), await s.login()
    await s.cached_on_b(tokens)
    response = await s.a.delete(f"/v1/sessions/{tokens['session_id']}", headers=bearer(caller))
    assert response.status == 204
    return tokens


async def _admin_one(s: Scene) -> dict[str, Any]:
    tokens = await s.login()
    await s.cached_on_b(tokens)
    path = f"/v1/admin/users/{s.user_id}/sessions/{tokens['session_id']}"
    assert (await s.a.delete(path, headers=s.registry.basic())).status == 204
    return tokens


async def _admin_all(s: Scene) -> dict[str, Any]:
    tokens = await s.login()
    await s.cached_on_b(tokens)
    path = f"/v1/admin/users/{s.user_id}/sessions"
    assert (await s.a.delete(path, headers=s.registry.basic())).status == 204
    return tokens


async def _delete_me(s: Scene) -> dict[str, Any]:
    tokens = await s.login()
    await s.cached_on_b(tokens)
    assert (await delete_me(s.a, tokens, PASSWORD)).status == 204
    return tokens


async def _admin_delete_user(s: Scene) -> dict[str, Any]:
    tokens = await s.login()
    await s.cached_on_b(tokens)
    response = await s.a.delete(f"/v1/admin/users/{s.user_id}", headers=s.registry.basic())
    assert response.status == 204
    return tokens


ENDINGS: list[tuple[Ender, str]] = [
    (_logout, "logout"),
    (_logout_all, "logout_all"),
    (_password_change, "password_changed"),
    (_eviction, "evicted"),
    (_reuse, "reuse_detected"),
    (_delete_session, "revoked"),
    (_admin_one, "revoked"),
    (_admin_all, "revoked"),
    (_delete_me, "account_deleted"),
    (_admin_delete_user, "account_deleted"),
]


@pytest.fixture
async def scene(
    make_client: ClientFactory, admin_settings: Settings, registry: Registry, clock: Clock
) -> Scene:
    s = with_(admin_settings, session_limit=2)
    a, b = await make_client(s), await make_client(s)
    user_id = await signup(a, "why@example.com")
    return Scene(a, b, clock, registry, "why@example.com", user_id)


@pytest.mark.parametrize(("end", "reason"), ENDINGS, ids=[e.__name__[1:] for e, _ in ENDINGS])
async def test_refusals_name_why_the_session_ended_on_both_paths_and_on_another_instance_within_1s(
    scene: Scene, end: Ender, reason: str
) -> None:
    tokens = await end(scene)
    deadline = time.monotonic() + WITHIN
    # b had the session cached as live; the revocation feed tells it, and why.
    body = await refused_by_then(scene.b, tokens, deadline)
    assert body.get("reason") == reason, body
    for app in (scene.a, scene.b):
        body = await bearer_refusal(app, tokens) or {}
        assert body.get("reason") == reason, body
        body = await refresh_refusal(app, tokens["refresh_token"])
        assert body.get("reason") == reason, body
    # Asking again changes nothing about the answer (a refusal is not a new ending).
    body = await refresh_refusal(scene.a, tokens["refresh_token"])
    assert body.get("reason") == reason, body


async def test_a_refresh_after_the_idle_ttl_names_expired_on_both_instances(
    make_client: ClientFactory, settings: Settings, clock: Clock
) -> None:
    s = with_(settings, session_idle_ttl=60, access_token_ttl=30)
    a, b = await make_client(s), await make_client(s)
    await signup(a, "idle@example.com")
    tokens, other = await login(a, "idle@example.com"), await login(a, "idle@example.com")
    assert await me_status(b, tokens) == 200
    clock.advance(61)
    for app in (b, a):
        body = await refresh_refusal(app, tokens["refresh_token"])
        assert body.get("reason") == "expired", body
    # The other session expired too, without anyone refreshing it first.
    body = await refresh_refusal(a, other["refresh_token"])
    assert body.get("reason") == "expired", body


async def test_a_bearer_request_after_the_idle_ttl_names_expired_on_both_instances(
    make_client: ClientFactory, settings: Settings, clock: Clock
) -> None:
    s = with_(settings, session_idle_ttl=60)  # access tokens (900 s) end with the session
    a, b = await make_client(s), await make_client(s)
    await signup(a, "idlebearer@example.com")
    tokens = await login(a, "idlebearer@example.com")
    assert tokens["expires_in"] == 60
    assert await me_status(b, tokens) == 200
    clock.advance(61)
    for app in (b, a):
        body = await bearer_refusal(app, tokens) or {}
        assert body.get("reason") == "expired", body


async def test_a_bearer_request_past_the_tokens_exp_still_names_why_its_session_ended(
    make_client: ClientFactory, settings: Settings, clock: Clock
) -> None:
    app = await make_client(with_(settings, access_token_ttl=60))
    await signup(app, "late@example.com")
    tokens = await login(app, "late@example.com")
    assert (await app.post("/v1/auth/logout", headers=bearer(tokens))).status == 204
    clock.advance(61)
    assert (await refresh_refusal(app, tokens["refresh_token"])).get("reason") == "logout"
    body = await bearer_refusal(app, tokens) or {}
    assert body.get("reason") == "logout", body


async def test_tokens_that_were_never_issued_get_no_reason_even_for_an_ended_session(
    make_client: ClientFactory, settings: Settings, keyring: KeyRing, clock: Clock
) -> None:
    a, b = await make_client(settings), await make_client(settings)
    user_id = await signup(a, "forged@example.com")
    tokens = await login(a, "forged@example.com")
    assert (await a.post("/v1/auth/logout", headers=bearer(tokens))).status == 204
    sid = tokens["session_id"]
    real_mac = tokens["refresh_token"].rsplit(".", 1)[1]
    forged_refresh = [
        f"{user_id}.{sid}.0.{'A' * len(real_mac)}",  # bad MAC, naming the ended session
        f"{user_id}.{sid}.1.{real_mac}",  # another generation under the real MAC
        f"{user_id}.{new_id()}.0.{real_mac}",
        "garbage",
        "",
        tokens["access_token"],
    ]
    stranger = AccessTokens(
        KeyRing.from_jwks(generate_jwks()), issuer="authsvc", audience="authsvc", ttl=900
    )
    now = clock()
    forged_access = [
        "garbage",
        (await stranger.issue(user_id, sid, now, now + 900))[0],  # another key, the ended session
        tokens["refresh_token"],
        tokens["access_token"][:-4] + "AAAA",
    ]
    # The genuine tokens of that session do name the reason, which shows what is left out.
    assert (await refresh_refusal(a, tokens["refresh_token"])).get("reason") == "logout"
    assert (await bearer_refusal(a, tokens) or {}).get("reason") == "logout"
    for app in (a, b):
        for token in forged_refresh:
            body = await refresh_refusal(app, token)
            assert "reason" not in body, (token, body)
        for token in forged_access:
            body = await bearer_refusal(app, {"access_token": token}) or {}
            assert body, token
            assert "reason" not in body, (token, body)


# --- 4. deleting one's own account ---------------------------------------------------------


async def test_delete_me_with_a_wrong_password_is_401_invalid_credentials_and_deletes_nothing(
    make_client: ClientFactory, settings: Settings
) -> None:
    app = await make_client(settings)
    user_id = await signup(app, "keep@example.com")
    tokens = await login(app, "keep@example.com")
    response = await delete_me(app, tokens, "not the password")
    assert await error_of(response) == (401, "invalid_credentials")
    assert await me_status(app, tokens) == 200
    assert (await refresh(app, tokens["refresh_token"]))[0] == 200
    assert (await json_of(await app.get("/v1/me", headers=bearer(tokens))))["user_id"] == user_id
    await login(app, "keep@example.com")


async def test_delete_me_refuses_bad_requests_without_deleting(
    make_client: ClientFactory, settings: Settings
) -> None:
    app = await make_client(settings)
    await signup(app, "badbody@example.com")
    tokens = await login(app, "badbody@example.com")
    auth = bearer(tokens)
    json_type = {**auth, "Content-Type": "application/json"}
    cases: list[tuple[dict[str, str], bytes, tuple[int, str]]] = [
        (json_type, b"{}", (400, "invalid_request")),
        (json_type, b'{"password": 12345678}', (400, "invalid_request")),
        (json_type, b"not json", (400, "invalid_request")),
        (
            {**auth, "Content-Type": "text/plain"},
            b'{"password": "x"}',
            (415, "unsupported_media_type"),
        ),
        ({"Content-Type": "application/json"}, b'{"password": "x"}', (401, "invalid_token")),
        (
            {"Authorization": "Bearer garbage", "Content-Type": "application/json"},
            json.dumps({"password": PASSWORD}).encode(),
            (401, "invalid_token"),
        ),
    ]
    for headers, raw, expected in cases:
        response = await app.delete("/v1/me", data=raw, headers=headers)
        assert await error_of(response) == expected, raw
    assert await me_status(app, tokens) == 200


async def test_delete_me_wrong_passwords_are_throttled_with_logins_even_the_right_one_gets_429(
    make_client: ClientFactory, settings: Settings, clock: Clock
) -> None:
    s = with_(settings, login_failure_limit=3, login_failure_window=60)
    app = await make_client(s)
    await signup(app, "guess@example.com")
    tokens = await login(app, "guess@example.com")
    # Failed logins and failed deletions count in the same window of the email.
    assert (await login_raw(app, "guess@example.com", "wrong one")).status == 401
    assert await error_of(await delete_me(app, tokens, "wrong two")) == (401, "invalid_credentials")
    assert await error_of(await delete_me(app, tokens, "wrong three")) == (
        401,
        "invalid_credentials",
    )
    for password in ("wrong four", PASSWORD):
        response = await delete_me(app, tokens, password)
        assert await error_of(response) == (429, "rate_limited")
        assert int(response.headers["Retry-After"]) >= 1
    assert await error_of(await login_raw(app, "guess@example.com")) == (429, "rate_limited")
    assert await me_status(app, tokens) == 200  # nothing was deleted
    clock.advance(61)  # the window ends
    assert (await delete_me(app, tokens, PASSWORD)).status == 204


async def test_delete_me_ends_every_session_everywhere_frees_the_email_and_leaves_only_tombstones(
    make_client: ClientFactory, admin_settings: Settings, registry: Registry
) -> None:
    a, b = await make_client(admin_settings), await make_client(admin_settings)
    old_id = await signup(a, "gone@example.com")
    assert (await put_limit(a, registry, old_id, 3)).status == 204
    sessions = [await login((a, b)[i % 2], "gone@example.com") for i in range(3)]
    for tokens in sessions:
        assert await me_status(b, tokens) == 200
    assert (await refresh(a, sessions[0]["refresh_token"]))[0] == 200  # a rotated one too

    assert (await delete_me(a, sessions[0], PASSWORD)).status == 204
    deadline = time.monotonic() + WITHIN
    for tokens in sessions:
        body = await refused_by_then(b, tokens, deadline)
        assert body.get("reason") == "account_deleted", body
    for tokens in sessions[1:]:
        body = await refresh_refusal(a, tokens["refresh_token"])
        assert body.get("reason") == "account_deleted", body

    assert await error_of(await login_raw(b, "gone@example.com")) == (401, "invalid_credentials")
    assert await error_of(await find_user(a, registry, "gone@example.com")) == (404, "not_found")
    new_id_ = await signup(b, "Gone@Example.com")
    assert new_id_ != old_id
    fresh = await login(a, "gone@example.com")
    me = await json_of(await b.get("/v1/me", headers=bearer(fresh)))
    assert me["user_id"] == new_id_
    assert await session_limit_of(a, registry, "gone@example.com") == 5  # not the old one's 3
    for tokens in sessions:  # the new account revives nothing of the old
        assert (await bearer_refusal(a, tokens) or {}).get("reason") == "account_deleted"

    prefix = admin_settings.key_prefix
    assert await keys_of_user(admin_settings, old_id) == [f"{prefix}:{{u:{old_id}}}:ended"]
    r = raw_redis(admin_settings, decode_responses=True)
    try:
        raw = await r.hgetall(f"{prefix}:{{u:{old_id}}}:ended")
        tombstones = {str(k): str(v) for k, v in raw.items()}
        assert await r.get(Keys(prefix).email("gone@example.com")) == new_id_
    finally:
        await r.aclose()
    assert set(tombstones) == {t["session_id"] for t in sessions}
    assert all(v.startswith("account_deleted ") for v in tombstones.values())


# --- 5. the admin API ----------------------------------------------------------------------


def _admin_requests(user_id: str, session_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        ("GET", "/v1/admin/users", {"params": {"email": "target@example.com"}}),
        ("GET", f"/v1/admin/users/{user_id}/sessions", {}),
        ("DELETE", f"/v1/admin/users/{user_id}/sessions", {}),
        ("DELETE", f"/v1/admin/users/{user_id}/sessions/{session_id}", {}),
        ("PUT", f"/v1/admin/users/{user_id}/session-limit", {"json": {"limit": 1}}),
        ("DELETE", f"/v1/admin/users/{user_id}", {}),
    ]


async def test_admin_endpoints_refuse_bad_client_credentials_401_and_clients_without_admin_403(
    make_client: ClientFactory, admin_settings: Settings, registry: Registry
) -> None:
    app = await make_client(with_(admin_settings, login_failure_limit=100))
    user_id = await signup(app, "target@example.com")
    tokens = await login(app, "target@example.com")
    unauthenticated: list[dict[str, str]] = [
        {},
        registry.basic("ops", "wrong-secret"),
        registry.basic("nobody", registry.secrets["ops"]),
        bearer(tokens),  # a user's token is no client credential
        {"Authorization": "Basic !!!"},
    ]
    for method, path, kwargs in _admin_requests(user_id, tokens["session_id"]):
        for headers in unauthenticated:
            response = await app.request(method, path, headers=headers, **kwargs)
            assert await error_of(response) == (401, "invalid_client"), (method, path, headers)
            assert response.headers["WWW-Authenticate"].startswith("Basic ")
        response = await app.request(method, path, headers=registry.basic("orders"), **kwargs)
        assert await error_of(response) == (403, "insufficient_scope"), (method, path)
    # None of it changed anything.
    assert await me_status(app, tokens) == 200
    assert await session_limit_of(app, registry, "target@example.com") == 5


async def test_admin_finds_a_user_by_email_with_their_session_limit(
    make_client: ClientFactory, admin_settings: Settings, registry: Registry
) -> None:
    app = await make_client(with_(admin_settings, session_limit=6))
    user_id = await signup(app, "Found@Example.com")
    response = await find_user(app, registry, "  FOUND@example.COM ")
    assert response.status == 200
    body = await json_of(response)
    assert set(body) == {"user_id", "email", "created_at", "session_limit"}
    assert (body["user_id"], body["email"], body["session_limit"]) == (
        user_id,
        "found@example.com",
        6,
    )
    assert RFC3339.fullmatch(body["created_at"]), body
    assert await error_of(await find_user(app, registry, "nobody@example.com")) == (
        404,
        "not_found",
    )
    for params in ({}, {"email": "not an email"}, [("email", "a@b.c"), ("email", "d@e.f")]):
        response = await app.get("/v1/admin/users", params=params, headers=registry.basic())
        assert await error_of(response) == (400, "invalid_request"), params


async def test_admin_lists_a_users_sessions_most_recent_first_without_current(
    make_client: ClientFactory, admin_settings: Settings, registry: Registry, clock: Clock
) -> None:
    app = await make_client(admin_settings)
    user_id = await signup(app, "listed@example.com")
    other_id = await signup(app, "bystander@example.com")
    await login(app, "bystander@example.com")
    sessions = []
    for agent in ("phone", "laptop", "tablet"):
        sessions.append(await login(app, "listed@example.com", **{"User-Agent": agent}))
        clock.advance(1)
    status, sessions[0] = await refresh(app, sessions[0]["refresh_token"])
    assert status == 200
    response = await app.get(f"/v1/admin/users/{user_id}/sessions", headers=registry.basic())
    assert response.status == 200
    listed = (await json_of(response))["sessions"]
    assert [s["session_id"] for s in listed] == [
        sessions[0]["session_id"],
        sessions[2]["session_id"],
        sessions[1]["session_id"],
    ]
    assert all(set(s) == SESSION_FIELDS for s in listed), listed  # no "current"
    assert [s["user_agent"] for s in listed] == ["phone", "tablet", "laptop"]
    assert all(s["ip"] == "127.0.0.1" for s in listed)
    assert all(
        RFC3339.fullmatch(s[f])
        for s in listed
        for f in SESSION_FIELDS - {"session_id", "user_agent", "ip"}
    )
    # What the user sees of the same sessions, with "current" besides.
    own = await sessions_of(app, sessions[1])
    assert [{k: v for k, v in s.items() if k != "current"} for s in own] == listed
    # A user without sessions has an empty list.
    assert (
        await app.delete(f"/v1/admin/users/{other_id}/sessions", headers=registry.basic())
    ).status == 204
    response = await app.get(f"/v1/admin/users/{other_id}/sessions", headers=registry.basic())
    assert (response.status, await json_of(response)) == (200, {"sessions": []})


async def test_admin_ends_every_session_of_a_user_as_revoked_and_no_one_elses(
    make_client: ClientFactory, admin_settings: Settings, registry: Registry
) -> None:
    app = await make_client(admin_settings)
    user_id = await signup(app, "all@example.com")
    await signup(app, "else@example.com")
    sessions = [await login(app, "all@example.com") for _ in range(3)]
    other = await login(app, "else@example.com")
    path = f"/v1/admin/users/{user_id}/sessions"
    assert (await app.delete(path, headers=registry.basic())).status == 204
    for tokens in sessions:
        assert (await refresh_refusal(app, tokens["refresh_token"])).get("reason") == "revoked"
        assert (await bearer_refusal(app, tokens) or {}).get("reason") == "revoked"
    assert await me_status(app, other) == 200
    assert (await app.delete(path, headers=registry.basic())).status == 204  # none left: fine
    again = await login(app, "all@example.com")  # the account itself is untouched
    assert await me_status(app, again) == 200


async def test_admin_ends_one_session_and_answers_404_for_another_users_session(
    make_client: ClientFactory, admin_settings: Settings, registry: Registry
) -> None:
    app = await make_client(admin_settings)
    user_id = await signup(app, "one@example.com")
    await signup(app, "two@example.com")
    target, kept = await login(app, "one@example.com"), await login(app, "one@example.com")
    theirs = await login(app, "two@example.com")
    base = f"/v1/admin/users/{user_id}/sessions"
    # Another user's session, under this user's path: not found, and it lives on.
    response = await app.delete(f"{base}/{theirs['session_id']}", headers=registry.basic())
    assert await error_of(response) == (404, "not_found")
    assert await me_status(app, theirs) == 200
    assert (await refresh(app, theirs["refresh_token"]))[0] == 200

    response = await app.delete(f"{base}/{target['session_id']}", headers=registry.basic())
    assert response.status == 204
    assert (await refresh_refusal(app, target["refresh_token"])).get("reason") == "revoked"
    assert await me_status(app, kept) == 200
    # Ended already, never existed, or no id at all: 404.
    for session_id in [target["session_id"], new_id(), *BAD_IDS]:
        response = await app.delete(f"{base}/{session_id}", headers=registry.basic())
        assert await error_of(response) == (404, "not_found"), session_id
    assert await me_status(app, kept) == 200


async def test_admin_deleting_a_user_is_account_deletion(
    make_client: ClientFactory, admin_settings: Settings, registry: Registry
) -> None:
    a, b = await make_client(admin_settings), await make_client(admin_settings)
    user_id = await signup(a, "removed@example.com")
    bystander = await signup(a, "stays@example.com")
    sessions = [await login(a, "removed@example.com") for _ in range(2)]
    kept = await login(a, "stays@example.com")
    for tokens in sessions:
        assert await me_status(b, tokens) == 200
    assert (await a.delete(f"/v1/admin/users/{user_id}", headers=registry.basic())).status == 204
    deadline = time.monotonic() + WITHIN
    for tokens in sessions:
        body = await refused_by_then(b, tokens, deadline)
        assert body.get("reason") == "account_deleted", body
        body = await refresh_refusal(a, tokens["refresh_token"])
        assert body.get("reason") == "account_deleted", body
    assert await error_of(await login_raw(a, "removed@example.com")) == (401, "invalid_credentials")
    for method, path, kwargs in _admin_requests(user_id, sessions[0]["session_id"])[1:]:
        response = await a.request(method, path, headers=registry.basic(), **kwargs)
        assert await error_of(response) == (404, "not_found"), (method, path)
    new_user = await signup(b, "removed@example.com")
    assert new_user != user_id
    await login(a, "removed@example.com")
    prefix = admin_settings.key_prefix
    assert await keys_of_user(admin_settings, user_id) == [f"{prefix}:{{u:{user_id}}}:ended"]
    assert await me_status(a, kept) == 200  # the bystander is untouched
    assert (await json_of(await a.get("/v1/me", headers=bearer(kept))))["user_id"] == bystander


async def test_admin_answers_404_for_unknown_users_and_ids_with_bad_characters(
    make_client: ClientFactory, admin_settings: Settings, registry: Registry
) -> None:
    app = await make_client(admin_settings)
    await signup(app, "real@example.com")
    tokens = await login(app, "real@example.com")
    for user_id in [new_id(), *BAD_IDS]:
        for method, path, kwargs in _admin_requests(user_id, tokens["session_id"])[1:]:
            response = await app.request(method, path, headers=registry.basic(), **kwargs)
            assert await error_of(response) == (404, "not_found"), (method, path)
    assert await me_status(app, tokens) == 200


# --- 6. what tombstones cost ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Cost:
    """What INFO memory's used_memory grew by, over a number of ended sessions."""

    grown: int
    ended: int
    usage: int  # MEMORY USAGE of the tombstone hashes, summed

    @property
    def per_session(self) -> float:
        return self.grown / self.ended


async def tombstone_cost(
    url: str, prefix: str, users: int, per_user: int, *, pile_up: bool
) -> Cost:
    """Create `per_user` sessions for each of `users` accounts through the session store and
    end them with logout-all; used_memory after, less before the first session existed.

    `pile_up`: all sessions live at once before any ends, so that the growth also holds
    the keyspace tables that the live sessions made Redis grow (and that it may or may not
    have shrunk again); otherwise each user's sessions end before the next user's start."""
    client = redis_client.connect(url, cluster=False)
    try:
        keys, scripts = Keys(prefix), Scripts(client)
        accounts = AccountStore(client, keys, scripts, lambda: 0)
        times = SessionTimes(1_209_600_000, 2_592_000_000)
        sessions = SessionStore(client, keys, scripts, times, lambda: 0)

        async def create(user_id: str) -> None:
            created = await sessions.create(
                user_id=user_id,
                session_id=new_id(),
                password_version="0",
                limit=per_user,
                policy="deny",
                user_agent="Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0",
                ip="203.0.113.7",
            )
            assert isinstance(created, NewSession), created

        async def end(user_id: str) -> int:
            return len(await sessions.revoke(user_id, "logout_all"))

        async def used_memory() -> int:
            info: dict[str, Any] = await client.info("memory")
            return int(info["used_memory"])

        ids = [new_id() for _ in range(users + 1)]
        for n, user_id in enumerate(ids):
            assert await accounts.create(user_id, f"u{n}@example.com", "$2b$04$x", 0)
        warm_up = ids.pop()  # every script loaded and run once before measuring
        await create(warm_up)
        assert await end(warm_up) == 1

        before = await used_memory()
        ended = 0
        if pile_up:
            for user_id in ids:
                for _ in range(per_user):
                    await create(user_id)
            for user_id in ids:
                ended += await end(user_id)
        else:
            for user_id in ids:
                for _ in range(per_user):
                    await create(user_id)
                ended += await end(user_id)
        after = await used_memory()
        assert ended == users * per_user
        tombstones = [keys.ended(user_id) for user_id in ids]
        assert await client.exists(*tombstones) == users
        usage = sum([await client.memory_usage(k) or 0 for k in tombstones])
    finally:
        await client.aclose()
    return Cost(after - before, ended, usage)


async def test_tombstones_cost_less_than_150_bytes_per_ended_session(
    redis_server: RedisServer,
) -> None:
    """1000 sessions of 200 users ended by logout-all: the growth of INFO used_memory per
    ended session, printed (run pytest -s to see it) and bounded. Measured on a single Redis
    (a cluster's bytes per key are the same); each measurement has a database of its own,
    so that other tests' keys do not decide when the keyspace's tables double."""
    base = redis_server.url.rsplit("/", 1)[0]
    prefix = f"tomb{os.getpid()}"
    steady = await tombstone_cost(f"{base}/15", prefix, 200, 5, pile_up=False)
    piled = await tombstone_cost(f"{base}/14", prefix, 200, 5, pile_up=True)
    print(
        f"\ntombstones: {steady.per_session:.1f} bytes of used_memory per ended session"
        f" ({steady.grown} bytes for {steady.ended});"
        f" MEMORY USAGE of the tombstone hashes {steady.usage / steady.ended:.1f} a session;"
        f" {piled.per_session:.1f} when all {piled.ended} were live at once before ending"
    )
    assert steady.per_session < 150
    assert piled.per_session < 150
