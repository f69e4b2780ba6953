"""Hardening: X-Forwarded-For that clients cannot forge, IPv6 counted per /64, an embedded
store that waits under load, key rotation that ends no live session, lifetimes from 1 s,
bad key files, the Server header, and password hashes upgraded at login."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import subprocess
import threading
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from multidict import CIMultiDict

from authsvc.app import load_keyring
from authsvc.domain.clock import Clock
from authsvc.domain.keys import KeyRing, SigningKey, generate_jwks, write_private_jwks
from authsvc.domain.passwords import HASH_THREAD_NICE, Hasher
from authsvc.domain.throttle import address_bucket
from authsvc.settings import Settings, SettingsError, load_settings, risky
from authsvc.store.keys import Keys
from authsvc.web.client_ip import client_ip
from tests.conftest import ClientFactory, RedisServer, free_port, with_
from tests.helpers import PASSWORD, Client, bearer, login, me_status, raw_redis, refresh, signup

LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
INTERNAL = ipaddress.ip_network("10.0.0.0/8")
TRUSTED = (LOOPBACK, INTERNAL)
VENV_AUTHSVC = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "authsvc"


# --- X-Forwarded-For -----------------------------------------------------------------------


def test_forwarded_for_lines_are_one_list_and_the_rightmost_untrusted_entry_wins() -> None:
    lines = ["198.51.100.1, 203.0.113.5", "10.0.0.2"]
    assert client_ip("127.0.0.1", lines, TRUSTED) == "203.0.113.5"


def test_a_client_that_writes_a_hundred_entries_cannot_choose_its_address() -> None:
    # The client sends 100 entries of its choice, some looking like trusted proxies; the
    # proxy in front appends the address it really received the request from.
    forged = [f"198.51.100.{i}" for i in range(1, 97)] + ["10.0.0.1", "127.0.0.1", "::1", "x"]
    assert len(forged) == 100
    one_line = ", ".join([*forged, "203.0.113.7"])
    assert client_ip("127.0.0.1", [one_line], TRUSTED) == "203.0.113.7"
    as_lines = [*forged, "203.0.113.7"]
    assert client_ip("127.0.0.1", as_lines, TRUSTED) == "203.0.113.7"


def test_a_second_line_appended_by_the_proxy_is_read() -> None:
    # The client's own header first, then the line the proxy added (rather than appending
    # to the client's line).
    assert client_ip("127.0.0.1", ["203.0.113.9", "198.51.100.7"], TRUSTED) == "198.51.100.7"


def test_forwarded_for_from_an_untrusted_peer_is_ignored() -> None:
    assert client_ip("198.51.100.1", ["203.0.113.1"], TRUSTED) == "198.51.100.1"
    assert client_ip("198.51.100.1", ["203.0.113.1"], ()) == "198.51.100.1"
    assert client_ip("127.0.0.1", ["203.0.113.1"], ()) == "127.0.0.1"


def test_a_chain_of_trusted_proxies_is_walked_to_the_first_untrusted_hop() -> None:
    lines = ["192.0.2.44, 203.0.113.1, 10.0.0.5", "10.1.2.3, 10.0.0.6"]
    assert client_ip("127.0.0.1", lines, TRUSTED) == "203.0.113.1"
    # Every hop trusted: the leftmost one is the best that is known.
    assert client_ip("127.0.0.1", ["10.0.0.5, 10.0.0.6"], TRUSTED) == "10.0.0.5"


def test_an_invalid_hop_stops_the_walk_at_the_proxy_that_wrote_it() -> None:
    # 10.0.0.5 (trusted) wrote "garbage" for its peer: 10.0.0.5 is all that is known.
    assert client_ip("127.0.0.1", ["203.0.113.1, garbage, 10.0.0.5"], TRUSTED) == "10.0.0.5"
    # The trusted peer itself wrote something that is not an address: the peer.
    assert client_ip("127.0.0.1", ["203.0.113.1, unknown"], TRUSTED) == "127.0.0.1"
    assert client_ip("127.0.0.1", [""], TRUSTED) == "127.0.0.1"
    # Left of the first untrusted hop nothing is read, valid or not.
    assert client_ip("127.0.0.1", ["garbage, 203.0.113.1"], TRUSTED) == "203.0.113.1"


async def _login_attempt(client: Client, headers: CIMultiDict[str]) -> tuple[int, str | None]:
    response = await client.post(
        "/v1/auth/login",
        json={"email": "nobody@example.com", "password": "whatever1"},
        headers=headers,
    )
    body = await response.json()
    return response.status, (body["error"] if response.status == 429 else None)


def _forwarded(*lines: str) -> CIMultiDict[str]:
    return CIMultiDict(("X-Forwarded-For", line) for line in lines)


async def test_the_ip_limit_counts_the_real_address_whatever_the_forged_part_says(
    make_client: ClientFactory, settings: Settings
) -> None:
    client = await make_client(with_(settings, trusted_proxies=(LOOPBACK,), ip_rate_limit=2))
    real = "203.0.113.50"
    attempts = [
        _forwarded("198.51.100.1", real),
        _forwarded("198.51.100.2, 127.0.0.9", real),
        _forwarded(f"{', '.join(f'192.0.2.{i}' for i in range(50))}, 10.9.9.9", real),
    ]
    statuses = [await _login_attempt(client, headers) for headers in attempts]
    assert statuses == [(401, None), (401, None), (429, "rate_limited")]
    # The same forged part from another real address is counted apart.
    assert await _login_attempt(client, _forwarded("198.51.100.1", "203.0.113.51")) == (401, None)


# --- IPv6 per /64 --------------------------------------------------------------------------


def test_ipv6_addresses_of_one_slash_64_share_a_bucket() -> None:
    assert address_bucket("2001:db8:1:2::1") == address_bucket("2001:db8:1:2:ffff::9")
    assert address_bucket("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert address_bucket("2001:db8:1:2::1") != address_bucket("2001:db8:1:3::1")


def test_ipv4_mapped_ipv6_is_counted_as_the_ipv4_address_and_ipv4_is_unchanged() -> None:
    assert address_bucket("::ffff:192.0.2.1") == "192.0.2.1"
    assert address_bucket("192.0.2.1") == "192.0.2.1"
    assert address_bucket("203.0.113.255") == "203.0.113.255"


async def test_the_ip_limit_counts_an_ipv6_client_by_its_slash_64(
    make_client: ClientFactory, settings: Settings
) -> None:
    client = await make_client(with_(settings, trusted_proxies=(LOOPBACK,), ip_rate_limit=2))
    same_64 = ["2001:db8:1:2::1", "2001:db8:1:2:ffff::9", "2001:db8:1:2:abcd:1:2:3"]
    statuses = [await _login_attempt(client, _forwarded(ip)) for ip in same_64]
    assert statuses == [(401, None), (401, None), (429, "rate_limited")]
    assert await _login_attempt(client, _forwarded("2001:db8:1:3::1")) == (401, None)


# --- The embedded store under concurrency --------------------------------------------------


async def test_the_embedded_store_serves_hundreds_of_concurrent_script_calls(
    make_client: ClientFactory,
) -> None:
    client = await make_client(Settings(bcrypt_rounds=4, log_format="text"))
    await signup(client, "crowd@example.com")
    tokens = await login(client, "crowd@example.com")
    # The test client's own session allows 100 connections; this one has no limit, so that
    # every request below is in the server at once.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def sessions() -> tuple[int, Any]:
            url = client.make_url("/v1/sessions")
            async with session.get(url, headers=bearer(tokens)) as response:
                return response.status, await response.json()

        async def rotate() -> tuple[int, Any]:
            url = client.make_url("/v1/auth/refresh")
            body = {"refresh_token": tokens["refresh_token"]}
            async with session.post(url, json=body) as response:
                return response.status, await response.json()

        results = await asyncio.gather(*[sessions() for _ in range(300)])
        both = await asyncio.gather(
            *[sessions() for _ in range(300)], *[rotate() for _ in range(300)]
        )
    assert [status for status, _ in results] == [200] * 300, results[:3]
    assert [status for status, _ in both] == [200] * 600, [r for r in both if r[0] != 200][:3]
    # Within the grace window every presentation of one token gets the same successor.
    assert len({body["refresh_token"] for _, body in both[300:]}) == 1


# --- Key rotation (README "Key rotation") --------------------------------------------------


def _new_key() -> SigningKey:
    return KeyRing.from_jwks(generate_jwks()).keys[0]


def _kid(tokens: dict[str, Any]) -> str:
    kid: str = jwt.get_unverified_header(tokens["access_token"])["kid"]
    return kid


async def _refreshed(client: Client, tokens: dict[str, Any]) -> dict[str, Any]:
    status, body = await refresh(client, tokens["refresh_token"])
    assert status == 200, body
    return body


async def test_key_rotation_by_the_readme_ends_no_session_that_is_alive(
    make_client: ClientFactory, settings: Settings, clock: Clock
) -> None:
    s = with_(settings, access_token_ttl=10, session_idle_ttl=100, session_max_ttl=1000)
    k1, k2 = _new_key(), _new_key()
    app = await make_client(s, keyring=KeyRing([k1]))
    await signup(app, "rotate@example.com")
    active = await login(app, "rotate@example.com")
    idle = await login(app, "rotate@example.com")  # never refreshes after step 3
    late = await login(app, "rotate@example.com")  # refreshes once, just after step 3
    assert _kid(active) == k1.kid

    # Step 1: the new key after the current one: it verifies, K1 still signs and MACs.
    app = await make_client(s, keyring=KeyRing([k1, k2]))
    active = await _refreshed(app, active)
    assert _kid(active) == k1.kid
    # Step 2: every instance serves it.
    jwks = await (await app.get("/.well-known/jwks.json")).json()
    assert {key["kid"] for key in jwks["keys"]} == {k1.kid, k2.kid}

    # Step 3: the new key first. A K1 refresh token is accepted; the new tokens are K2's.
    app = await make_client(s, keyring=KeyRing([k2, k1]))
    before_step_3 = active
    active = await _refreshed(app, active)
    assert _kid(active) == k2.kid
    assert await me_status(app, before_step_3) == 200  # K1's access tokens still verify
    # Why step 4 waits: without K1 now, a session that has not refreshed since step 3 is
    # refused (its token is K1's) although it is alive; refused without ending it.
    too_early = await make_client(s, keyring=KeyRing([k2]))
    status, body = await refresh(too_early, late["refresh_token"])
    assert (status, body["error"]) == (401, "invalid_grant")
    late = await _refreshed(app, late)
    assert _kid(late) == k2.kid

    # The idle TTL passes since step 3; the active session refreshes now and then.
    for _ in range(4):
        clock.advance(30)
        assert await me_status(app, active) == 401  # past the access-token TTL
        active = await _refreshed(app, active)
        assert _kid(active) == k2.kid
        assert await me_status(app, active) == 200
        late = await _refreshed(app, late)
    # The session that did not refresh has expired by now, while K1 is still there: the
    # removal below ends nothing that was alive.
    status, body = await refresh(app, idle["refresh_token"])
    assert (status, body["error"]) == (401, "invalid_grant")

    # Step 4: the old key removed.
    app = await make_client(s, keyring=KeyRing([k2]))
    active = await _refreshed(app, active)
    assert await me_status(app, active) == 200
    late = await _refreshed(app, late)
    assert await me_status(app, late) == 200
    jwks = await (await app.get("/.well-known/jwks.json")).json()
    assert [key["kid"] for key in jwks["keys"]] == [k2.kid]
    status, body = await refresh(app, idle["refresh_token"])
    assert (status, body["error"]) == (401, "invalid_grant")


# --- Lifetimes from 1 s --------------------------------------------------------------------

LIFETIMES = [
    "AUTHSVC_ACCESS_TOKEN_TTL",
    "AUTHSVC_SESSION_IDLE_TTL",
    "AUTHSVC_SESSION_MAX_TTL",
    "AUTHSVC_LOGIN_FAILURE_WINDOW",
    "AUTHSVC_IP_RATE_WINDOW",
]


def _env_of(variable: str, value: str) -> dict[str, str]:
    env = {variable: value}
    if variable == "AUTHSVC_SESSION_MAX_TTL":  # it must not be shorter than the idle TTL
        env["AUTHSVC_SESSION_IDLE_TTL"] = "1"
    return env


@pytest.mark.parametrize("variable", LIFETIMES)
def test_every_lifetime_and_window_accepts_one_second(variable: str) -> None:
    settings = load_settings(_env_of(variable, "1"))
    assert getattr(settings, variable.removeprefix("AUTHSVC_").lower()) == 1


@pytest.mark.parametrize("variable", LIFETIMES)
def test_a_lifetime_of_zero_is_refused_naming_the_variable(variable: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        load_settings(_env_of(variable, "0"))


def test_short_lifetimes_are_accepted_with_a_warning_naming_each() -> None:
    settings = load_settings({variable: "1" for variable in LIFETIMES})
    warnings = risky(settings)
    for variable in ("AUTHSVC_ACCESS_TOKEN_TTL", "AUTHSVC_SESSION_IDLE_TTL"):
        assert any(w.startswith(f"{variable}=1") for w in warnings), warnings
    assert any(w.startswith("AUTHSVC_SESSION_MAX_TTL=1") for w in warnings), warnings
    assert risky(Settings(bcrypt_rounds=12)) == []


# --- Key files -----------------------------------------------------------------------------


def test_a_key_file_that_is_not_json_stops_serve_with_one_line_naming_the_variable(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    bad = tmp_path / "jwks.json"
    bad.write_text("this is not json\n")
    bad.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHSVC_")}
    env.update(AUTHSVC_JWKS_FILE=str(bad), AUTHSVC_REDIS_URL=redis_server.url)
    done = subprocess.run(
        [str(VENV_AUTHSVC), "serve", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, lines
    assert "AUTHSVC_JWKS_FILE" in lines[0]
    assert "Traceback" not in done.stderr


def test_a_key_file_open_to_other_users_is_used_with_a_warning_naming_the_variable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "jwks.json"
    jwks = generate_jwks()
    write_private_jwks(path, jwks)
    settings = Settings(redis_url="redis://127.0.0.1:1/0", jwks_file=path)

    with caplog.at_level(logging.WARNING):
        ring = load_keyring(settings)
    assert ring.signing.kid == jwks["keys"][0]["kid"]
    assert not [r for r in caplog.records if "AUTHSVC_JWKS_FILE" in r.getMessage()]

    path.chmod(0o644)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        ring = load_keyring(settings)
    assert ring.signing.kid == jwks["keys"][0]["kid"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("AUTHSVC_JWKS_FILE" in r.getMessage() for r in warnings), caplog.text


# --- The Server header ---------------------------------------------------------------------


async def test_responses_name_authsvc_as_the_server_and_no_versions(
    make_client: ClientFactory,
) -> None:
    client = await make_client(Settings(bcrypt_rounds=4, log_format="text"))
    for path, status in [("/healthz", 200), ("/no/such/route", 404), ("/v1/me", 401)]:
        response = await client.get(path)
        await response.read()
        assert response.status == status
        assert response.headers.getall("Server") == ["authsvc"]
        everything = " ".join(f"{k}: {v}" for k, v in response.headers.items()).lower()
        assert "aiohttp" not in everything
        assert "python" not in everything


# --- Password hashes follow the bcrypt cost ------------------------------------------------


async def _password_fields(r: Any, key: str) -> tuple[str, str]:
    """The stored bcrypt hash and password version of a user hash."""
    pw, pv = await r.hmget(key, ["pw", "pv"])
    assert isinstance(pw, str), pw
    assert isinstance(pv, str), pv
    return pw, pv


async def test_a_login_after_a_bcrypt_cost_change_rehashes_at_the_new_cost(
    make_client: ClientFactory, settings: Settings
) -> None:
    old = await make_client(with_(settings, bcrypt_rounds=4))
    user_id = await signup(old, "cost@example.com")
    key = Keys(settings.key_prefix).user(user_id)
    r = raw_redis(settings, decode_responses=True)
    try:
        before_pw, before_pv = await _password_fields(r, key)
        assert before_pw.startswith("$2b$04$")

        new = await make_client(with_(settings, bcrypt_rounds=5))
        tokens = await login(new, "cost@example.com")
        after_pw, after_pv = await _password_fields(r, key)
        assert after_pw.startswith("$2b$05$")
        assert after_pv == before_pv  # the same password: no session was ended
    finally:
        await r.aclose()
    assert await me_status(new, tokens) == 200
    await login(new, "cost@example.com", PASSWORD)
    wrong = await new.post(
        "/v1/auth/login", json={"email": "cost@example.com", "password": "not the password"}
    )
    assert wrong.status == 401


def test_forwarded_addresses_with_ports_are_read_as_addresses() -> None:
    trusted = [ipaddress.ip_network("10.0.0.0/8")]
    assert client_ip("10.0.0.1", ["198.51.100.7:5123"], trusted) == "198.51.100.7"
    assert client_ip("10.0.0.1", ["[2001:db8::7]:443"], trusted) == "2001:db8::7"
    assert client_ip("10.0.0.1", ["2001:db8::80"], trusted) == "2001:db8::80"


async def test_hash_threads_run_below_the_event_loop() -> None:
    hasher = Hasher(4, 1)
    try:

        def nice_here() -> int:
            return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

        loop = asyncio.get_running_loop()
        in_pool = await loop.run_in_executor(hasher._pool, nice_here)
        assert in_pool == min(19, nice_here() + HASH_THREAD_NICE)
        assert await hasher.verify("a password", await hasher.hash("a password"))
    finally:
        hasher.close()
