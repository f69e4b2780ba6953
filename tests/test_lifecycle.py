"""Token lifecycle: rotation and reuse, lifetimes, sessions API, revocation everywhere."""

from __future__ import annotations

import asyncio
import time

import jwt
from joserfc import jwt as jose_jwt
from joserfc.jwk import KeySet

from authsvc.domain.clock import Clock
from authsvc.domain.keys import KeyRing, generate_jwks
from authsvc.settings import Settings
from tests.conftest import ClientFactory, with_
from tests.helpers import PASSWORD, Client, bearer, login, me_status, raw_redis, refresh, signup


async def test_twenty_simultaneous_refreshes_all_get_the_same_successor(client: Client) -> None:
    await signup(client, "tabs@example.com")
    tokens = await login(client, "tabs@example.com")
    results = await asyncio.gather(*(refresh(client, tokens["refresh_token"]) for _ in range(20)))
    assert {status for status, _ in results} == {200}
    assert len({body["refresh_token"] for _, body in results}) == 1
    successor = results[0][1]
    assert await me_status(client, successor) == 200
    status, _ = await refresh(client, successor["refresh_token"])
    assert status == 200


async def test_replay_after_successor_was_used_revokes_the_session(client: Client) -> None:
    await signup(client, "thief@example.com")
    first = await login(client, "thief@example.com")
    _, second = await refresh(client, first["refresh_token"])
    _, third = await refresh(client, second["refresh_token"])
    status, body = await refresh(client, first["refresh_token"])
    assert (status, body["error"]) == (401, "invalid_grant")
    assert await me_status(client, third) == 401
    assert (await refresh(client, third["refresh_token"]))[0] == 401
    metrics = await (await client.get("/metrics")).text()
    assert "authsvc_refresh_reuse_detected_total 1.0" in metrics


async def test_replay_after_grace_window_is_reuse(client: Client, clock: Clock) -> None:
    await signup(client, "late@example.com")
    first = await login(client, "late@example.com")
    _status, second = await refresh(client, first["refresh_token"])
    clock.advance(9)
    _status, repeat = await refresh(client, first["refresh_token"])
    assert repeat["refresh_token"] == second["refresh_token"]
    # The repeat is the same refresh again: the session's lifetime still counts from it.
    assert repeat["refresh_expires_in"] == second["refresh_expires_in"] - 9
    clock.advance(2)
    assert (await refresh(client, first["refresh_token"]))[0] == 401
    assert await me_status(client, second) == 401


async def test_forged_token_naming_a_real_session_revokes_nothing(client: Client) -> None:
    await signup(client, "forge@example.com")
    tokens = await login(client, "forge@example.com")
    user, session, _, mac = tokens["refresh_token"].split(".")
    for forged in (f"{user}.{session}.7.{mac}", f"{user}.{session}.0.{'A' * 22}"):
        assert (await refresh(client, forged))[0] == 401
    assert await me_status(client, tokens) == 200
    assert (await refresh(client, tokens["refresh_token"]))[0] == 200


async def test_idle_session_expires_and_refresh_resets_idle_timer(
    make_client: ClientFactory, settings: Settings, clock: Clock
) -> None:
    client = await make_client(with_(settings, session_idle_ttl=100, session_max_ttl=1000))
    await signup(client, "idle@example.com")
    tokens = await login(client, "idle@example.com")
    clock.advance(90)
    status, tokens = await refresh(client, tokens["refresh_token"])
    assert status == 200
    clock.advance(90)
    status, tokens = await refresh(client, tokens["refresh_token"])
    assert status == 200
    clock.advance(101)
    assert (await refresh(client, tokens["refresh_token"]))[0] == 401


async def test_refresh_never_extends_the_absolute_lifetime(
    make_client: ClientFactory, settings: Settings, clock: Clock
) -> None:
    client = await make_client(
        with_(settings, session_idle_ttl=100, session_max_ttl=250, access_token_ttl=60)
    )
    await signup(client, "max@example.com")
    tokens = await login(client, "max@example.com")
    for _ in range(2):
        clock.advance(80)
        status, tokens = await refresh(client, tokens["refresh_token"])
        assert status == 200
    clock.advance(80)  # 240 s after login: 10 s left of the session
    status, tokens = await refresh(client, tokens["refresh_token"])
    assert status == 200
    assert tokens["refresh_expires_in"] == 10
    # No access token outlives its session: 10 s, less the real time the test has taken
    # since the login (whole seconds, so 9 when that crossed a second of this clock).
    assert tokens["expires_in"] in (9, 10)
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == tokens["expires_in"]
    clock.advance(10)
    assert (await refresh(client, tokens["refresh_token"]))[0] == 401
    assert await me_status(client, tokens) == 401


async def test_sessions_list_delete_and_logout_all(client: Client, clock: Clock) -> None:
    await signup(client, "many@example.com")
    phone = await login(client, "many@example.com", **{"User-Agent": "phone/1.0"})
    clock.advance(1)
    laptop = await login(client, "many@example.com", **{"User-Agent": "laptop/2.0"})
    listed = await (await client.get("/v1/sessions", headers=bearer(laptop))).json()
    sessions = listed["sessions"]
    assert [s["user_agent"] for s in sessions] == ["laptop/2.0", "phone/1.0"]
    assert [s["current"] for s in sessions] == [True, False]
    assert sessions[0]["ip"] == "127.0.0.1"
    assert sessions[0]["created_at"].endswith("Z")
    assert len(sessions[0]["created_at"]) == 24

    other = await signup(client, "other@example.com")
    assert other
    stranger = await login(client, "other@example.com")
    denied = await client.delete(f"/v1/sessions/{phone['session_id']}", headers=bearer(stranger))
    assert denied.status == 404
    for odd in ("*", "%2A", "a:b", "x" * 100):
        response = await client.delete(f"/v1/sessions/{odd}", headers=bearer(laptop))
        assert response.status == 404, odd
    deleted = await client.delete(f"/v1/sessions/{phone['session_id']}", headers=bearer(laptop))
    assert deleted.status == 204
    assert await me_status(client, phone) == 401

    tablet = await login(client, "many@example.com")
    assert (await client.post("/v1/auth/logout-all", headers=bearer(tablet))).status == 204
    assert [await me_status(client, t) for t in (laptop, tablet, stranger)] == [401, 401, 200]


async def test_password_change_ends_every_other_session(client: Client) -> None:
    await signup(client, "pw@example.com")
    one, two = await login(client, "pw@example.com"), await login(client, "pw@example.com")
    wrong = await client.post(
        "/v1/auth/password",
        json={"current_password": "not it at all", "new_password": "brand new secret"},
        headers=bearer(two),
    )
    assert (wrong.status, (await wrong.json())["error"]) == (401, "invalid_credentials")
    changed = await client.post(
        "/v1/auth/password",
        json={"current_password": PASSWORD, "new_password": "brand new secret"},
        headers=bearer(two),
    )
    assert changed.status == 204
    assert [await me_status(client, t) for t in (one, two)] == [401, 200]
    await login(client, "pw@example.com", "brand new secret")
    old = await client.post(
        "/v1/auth/login", json={"email": "pw@example.com", "password": PASSWORD}
    )
    assert old.status == 401


async def test_revocation_reaches_another_instance_within_a_second(
    make_client: ClientFactory, settings: Settings
) -> None:
    a, b = await make_client(settings), await make_client(settings)
    await signup(a, "two@example.com")
    tokens = await login(a, "two@example.com")
    assert await me_status(b, tokens) == 200  # b has now admitted the session
    assert (await a.post("/v1/auth/logout", headers=bearer(tokens))).status == 204
    started = time.monotonic()
    while await me_status(b, tokens) == 200:
        assert time.monotonic() - started < 1.0, "b still accepts a revoked session"
        await asyncio.sleep(0.01)


async def test_eviction_on_one_instance_is_seen_by_another(
    make_client: ClientFactory, settings: Settings
) -> None:
    a, b = await make_client(with_(settings, session_limit=1)), await make_client(settings)
    await signup(a, "evict@example.com")
    first = await login(a, "evict@example.com")
    assert await me_status(b, first) == 200
    await login(a, "evict@example.com")
    started = time.monotonic()
    while await me_status(b, first) == 200:
        assert time.monotonic() - started < 1.0
        await asyncio.sleep(0.01)


async def test_revoked_session_stays_revoked_when_refresh_races_logout(client: Client) -> None:
    await signup(client, "race2@example.com")
    for _ in range(10):
        tokens = await login(client, "race2@example.com")
        results = await asyncio.gather(
            refresh(client, tokens["refresh_token"]),
            client.post("/v1/auth/logout", headers=bearer(tokens)),
        )
        refreshed_status, refreshed = results[0]
        if refreshed_status == 200:
            assert await me_status(client, refreshed) == 401
            assert (await refresh(client, refreshed["refresh_token"]))[0] == 401


async def test_access_token_verifies_with_another_jose_library_from_jwks(client: Client) -> None:
    await signup(client, "jose@example.com")
    tokens = await login(client, "jose@example.com")
    jwks = await (await client.get("/.well-known/jwks.json")).json()
    assert all({"kid", "alg", "use"} <= set(k) for k in jwks["keys"])
    assert not any("d" in k for k in jwks["keys"])
    token = jose_jwt.decode(
        tokens["access_token"], KeySet.import_key_set(jwks), algorithms=["ES256"]
    )
    assert token.header["typ"] == "at+jwt"
    assert token.claims["sid"] == tokens["session_id"]
    assert {"iss", "aud", "sub", "sid", "iat", "exp", "jti"} <= set(token.claims)


async def test_hs256_mode_signs_with_the_secret_and_publishes_no_keys(
    make_client: ClientFactory, settings: Settings
) -> None:
    secret = "an HS256 secret that is long enough!"
    client = await make_client(
        with_(settings, jwt_secret=secret), keyring=KeyRing.from_secret(secret)
    )
    await signup(client, "hs@example.com")
    tokens = await login(client, "hs@example.com")
    claims = jwt.decode(tokens["access_token"], secret, algorithms=["HS256"], audience="authsvc")
    assert claims["sid"] == tokens["session_id"]
    assert await (await client.get("/.well-known/jwks.json")).json() == {"keys": []}
    assert await me_status(client, tokens) == 200


async def test_key_rotation_keeps_old_tokens_valid(
    make_client: ClientFactory, settings: Settings, keyring: KeyRing
) -> None:
    old = await make_client(settings, keyring=keyring)
    await signup(old, "rotate@example.com")
    tokens = await login(old, "rotate@example.com")
    new_key = KeyRing.from_jwks(generate_jwks())
    rotated = KeyRing(new_key.keys + keyring.keys)  # new key signs, old one still verifies
    new = await make_client(settings, keyring=rotated)
    assert await me_status(new, tokens) == 200
    status, renewed = await refresh(new, tokens["refresh_token"])
    assert status == 200
    assert jwt.get_unverified_header(renewed["access_token"])["kid"] == new_key.signing.kid


async def test_refresh_moves_session_to_front_of_lru_index(
    client: Client, settings: Settings, clock: Clock
) -> None:
    user_id = await signup(client, "lru@example.com")
    first = await login(client, "lru@example.com")
    clock.advance(5)
    second = await login(client, "lru@example.com")
    clock.advance(5)
    await refresh(client, first["refresh_token"])
    r = raw_redis(settings, decode_responses=True)
    order = await r.zrange(f"{settings.key_prefix}:{{u:{user_id}}}:s", 0, -1)
    await r.aclose()
    assert order == [second["session_id"], first["session_id"]]


async def test_the_whole_user_agent_and_the_address_are_listed_from_a_compact_hash(
    client: Client, settings: Settings
) -> None:
    agent = (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1_1 like Mac OS X) AppleWebKit/605.1.15 "
        "(KHTML, like Gecko) Version/18.1.1 Mobile/15E148 Safari/604.1"
    )
    user_id = await signup(client, "agent@example.com")
    tokens = await login(client, "agent@example.com", **{"User-Agent": agent})
    listed = await (await client.get("/v1/sessions", headers=bearer(tokens))).json()
    assert [(s["user_agent"], s["ip"]) for s in listed["sessions"]] == [(agent, "127.0.0.1")]
    r = raw_redis(settings)
    key = f"{settings.key_prefix}:{{u:{user_id}}}:s:{tokens['session_id']}"
    stored, encoding = await r.hget(key, "ua"), await r.object("encoding", key)
    address = await r.hget(key, "ip")
    await r.aclose()
    assert address == str(0x7F000001 - (1 << 31)).encode()  # 127.0.0.1 as a 32-bit number
    assert stored is not None
    assert len(stored) <= 40
    assert encoding == b"listpack"
