"""Service clients (contract section 5): the clients file and its command line, token
introspection (RFC 7662) and revocation (RFC 7009), with authlib as the independent client,
client authentication and its throttling, and the revocation stream (Server-Sent Events).
Real redis-server, single and cluster; times are polled with deadlines, never slept."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import ipaddress
import json
import os
import re
import stat
import subprocess
import sys
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import aiohttp
import jwt
import pytest
import redis.asyncio as aioredis

from authsvc.domain.clients import Clients, add_client
from authsvc.domain.clock import Clock
from authsvc.settings import Settings
from tests.conftest import Backend, ClientFactory, free_port, with_
from tests.helpers import PASSWORD, Client, basic_auth, bearer, login, me_status, refresh, signup
from tests.process import Service

with warnings.catch_warnings():
    # authlib falls back from httpx2 to httpx with a DeprecationWarning. Its own module
    # installs an "always" filter for that on import, so the "ignore" goes after it.
    import authlib.deprecate  # type: ignore[import-untyped]

    warnings.simplefilter("ignore", authlib.deprecate.AuthlibDeprecationWarning)
    from authlib.integrations.httpx_client import (  # type: ignore[import-untyped]
        AsyncOAuth2Client,
    )

AUTHSVC = str(Path(sys.executable).with_name("authsvc"))  # the console script of this venv
INTROSPECT, REVOKE, STREAM = "/v1/auth/introspect", "/v1/auth/revoke", "/v1/revocations"
WITHIN = 1.0  # seconds in which the contract says an ended session is known everywhere
CLIENTS = {
    "orders": ["introspect"],
    "gateway": ["revocations"],
    "ops.eu-west-1": ["introspect", "revocations"],  # '.' and '-' are allowed in names
    "admin-tool": ["admin"],
}


# --- fixtures and helpers -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Registry:
    """A clients file and the secrets that adding its clients returned."""

    path: Path
    secrets: dict[str, str]

    def basic(self, name: str, secret: str | None = None) -> dict[str, str]:
        """An RFC 6749 2.3.1 Basic header: each part form-urlencoded, then Base64."""
        return {"Authorization": basic_auth(name, self.secrets[name] if secret is None else secret)}


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    path = tmp_path / "clients.json"
    return Registry(path, {name: add_client(path, name, s) for name, s in CLIENTS.items()})


@pytest.fixture
def oauth_settings(settings: Settings, registry: Registry) -> Settings:
    return with_(settings, clients_file=registry.path)


@pytest.fixture
async def app(make_client: ClientFactory, oauth_settings: Settings) -> Client:
    return await make_client(oauth_settings)


def oauth_client(registry: Registry, name: str = "orders", secret: str | None = None) -> Any:
    """authlib's client, authenticating with client_secret_basic."""
    return AsyncOAuth2Client(
        name,
        registry.secrets[name] if secret is None else secret,
        token_endpoint_auth_method="client_secret_basic",
        revocation_endpoint_auth_method="client_secret_basic",
        trust_env=False,
    )


async def introspect(
    app: Client, registry: Registry, token: str, *, hint: str | None = None, name: str = "orders"
) -> dict[str, Any]:
    """The RFC 7662 answer, asked with authlib's introspect_token."""
    async with oauth_client(registry, name) as oauth:
        response = await oauth.introspect_token(
            str(app.make_url(INTROSPECT)), token=token, token_type_hint=hint
        )
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.headers["Cache-Control"] == "no-store"
    body: dict[str, Any] = response.json()
    return body


async def revoke_with_authlib(app: Client, registry: Registry, token: str) -> None:
    """RFC 7009 revocation with authlib's revoke_token: always 200 with an empty body."""
    async with oauth_client(registry) as oauth:
        response = await oauth.revoke_token(str(app.make_url(REVOKE)), token=token)
    assert (response.status_code, response.content) == (200, b"")


async def revoke_plain(app: Client, token: str) -> None:
    """RFC 7009 revocation without any client authentication."""
    response = await app.post(REVOKE, data={"token": token})
    assert (response.status, await response.read()) == (200, b"")


async def error_of(response: aiohttp.ClientResponse) -> tuple[int, str]:
    """(status, error code) of a contract error response."""
    body = await response.json()
    assert set(body) >= {"error", "error_description"}, body
    return response.status, body["error"]


async def sessions_of(app: Client, tokens: dict[str, Any]) -> list[dict[str, Any]]:
    listed = await (await app.get("/v1/sessions", headers=bearer(tokens))).json()
    sessions: list[dict[str, Any]] = listed["sessions"]
    return sessions


def epoch_seconds(rfc3339: str) -> int:
    """`2026-11-26T15:42:24.123Z` as whole seconds since the epoch."""
    milliseconds = round(datetime.fromisoformat(rfc3339).timestamp() * 1000)
    return milliseconds // 1000


async def until(condition: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    """Poll `condition` until it holds; fail once `within` seconds have passed."""
    deadline = time.monotonic() + within
    while not await condition():
        assert time.monotonic() < deadline, f"{what}: not within {within} s"
        await asyncio.sleep(0.01)


async def user_with_session(app: Client, email: str) -> tuple[str, dict[str, Any]]:
    user_id = await signup(app, email)
    return user_id, await login(app, email)


def run_authsvc(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The console script, with no AUTHSVC_* from the environment but `env`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AUTHSVC_")}
    return subprocess.run(
        [AUTHSVC, *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# --- the clients file and its command line ---------------------------------------------------


def test_clients_add_creates_a_0600_file_holding_only_a_hash_and_prints_the_secret_last(
    tmp_path: Path,
) -> None:
    path = tmp_path / "conf" / "clients.json"
    result = run_authsvc(
        "clients", "add", "orders", "--scope", "introspect", "--scope", "revocations",
        "--file", str(path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    secret = result.stdout.splitlines()[-1]
    assert re.fullmatch(r"[A-Za-z0-9_-]{43,}", secret), secret  # URL-safe, 256 bits or more
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert secret not in text
    assert f"sha256:{hashlib.sha256(secret.encode()).hexdigest()}" in text
    entry = json.loads(text)["clients"]["orders"]
    assert sorted(entry["scopes"]) == ["introspect", "revocations"]
    client = Clients.from_file(path).authenticate("orders", secret)
    assert client is not None
    assert client.scopes == {"introspect", "revocations"}
    assert Clients.from_file(path).authenticate("orders", secret + "x") is None

    second = run_authsvc("clients", "add", "gateway", "--scope", "admin", "--file", str(path))
    assert second.returncode == 0, second.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert second.stdout.splitlines()[-1] != secret
    assert Clients.from_file(path).authenticate("orders", secret) is not None


def test_clients_add_refuses_an_existing_name_and_keeps_the_old_secret(tmp_path: Path) -> None:
    path = tmp_path / "clients.json"
    first = run_authsvc("clients", "add", "orders", "--scope", "introspect", "--file", str(path))
    secret = first.stdout.splitlines()[-1]
    before = path.read_text()
    again = run_authsvc("clients", "add", "orders", "--scope", "admin", "--file", str(path))
    assert again.returncode != 0
    assert "orders" in again.stderr
    assert path.read_text() == before
    assert Clients.from_file(path).authenticate("orders", secret) is not None


def test_clients_remove_deletes_the_client_and_refuses_an_unknown_one(tmp_path: Path) -> None:
    path = tmp_path / "clients.json"
    kept = run_authsvc("clients", "add", "kept", "--scope", "introspect", "--file", str(path))
    gone = run_authsvc("clients", "add", "gone", "--scope", "introspect", "--file", str(path))
    removed = run_authsvc("clients", "remove", "gone", "--file", str(path))
    assert removed.returncode == 0, removed.stderr
    clients = Clients.from_file(path)
    assert clients.authenticate("gone", gone.stdout.splitlines()[-1]) is None
    assert clients.authenticate("kept", kept.stdout.splitlines()[-1]) is not None
    assert "gone" not in json.loads(path.read_text())["clients"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = run_authsvc("clients", "remove", "gone", "--file", str(path))
    assert again.returncode != 0
    assert "gone" in again.stderr


def test_clients_add_refuses_an_unknown_scope_before_touching_the_file(tmp_path: Path) -> None:
    path = tmp_path / "clients.json"
    result = run_authsvc("clients", "add", "orders", "--scope", "superuser", "--file", str(path))
    assert result.returncode == 2  # argparse
    assert "invalid choice" in result.stderr
    assert "superuser" in result.stderr
    assert not path.exists()
    assert result.stdout == ""


@pytest.mark.parametrize(
    "content",
    [
        "not json {",
        None,  # no file at all
        "[]",
        '{"clients": {"orders": {"scopes": ["introspect"], "secret": "in clear"}}}',
        '{"clients": {"orders": {"scopes": ["root"], "secret_hash": "sha256:' + "0" * 64 + '"}}}',
    ],
    ids=["not-json", "missing", "wrong-shape", "clear-secret", "unknown-scope"],
)
def test_serve_with_a_bad_clients_file_exits_2_with_one_line_naming_the_variable(
    redis_backend: Backend, tmp_path: Path, content: str | None
) -> None:
    path = tmp_path / "clients.json"
    if content is not None:
        path.write_text(content)
    env = {
        **redis_backend.env(),
        "AUTHSVC_CLIENTS_FILE": str(path),
        "AUTHSVC_DATA_DIR": str(tmp_path / "data"),
    }
    result = run_authsvc("serve", "--port", str(free_port()), env=env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "AUTHSVC_CLIENTS_FILE" in lines[0]


async def test_serve_accepts_the_client_that_clients_add_printed(
    redis_backend: Backend, tmp_path: Path
) -> None:
    path = tmp_path / "clients.json"
    added = run_authsvc("clients", "add", "orders", "--scope", "introspect", "--file", str(path))
    assert added.returncode == 0, added.stderr
    secret = added.stdout.splitlines()[-1]
    env = {
        **redis_backend.env(),
        "AUTHSVC_CLIENTS_FILE": str(path),
        "AUTHSVC_DATA_DIR": str(tmp_path / "data"),
        "AUTHSVC_BCRYPT_ROUNDS": "4",
        "AUTHSVC_KEY_PREFIX": f"oauth-serve-{os.getpid()}-{redis_backend.name}-{time.time_ns()}",
    }
    with Service(env, log=tmp_path / "serve.log") as service:
        await asyncio.to_thread(service.wait_ready)
        async with aiohttp.ClientSession(service.url) as http:
            creds = {"email": "served@example.com", "password": PASSWORD}
            assert (await http.post("/v1/auth/signup", json=creds)).status == 201
            tokens = await (await http.post("/v1/auth/login", json=creds)).json()
        url = f"{service.url}{INTROSPECT}"
        async with AsyncOAuth2Client("orders", secret, trust_env=False) as oauth:
            good = await oauth.introspect_token(url, token=tokens["access_token"])
        async with AsyncOAuth2Client("orders", secret[:-1], trust_env=False) as oauth:
            bad = await oauth.introspect_token(url, token=tokens["access_token"])
        assert (good.status_code, good.json()["active"]) == (200, True)
        assert (bad.status_code, bad.json()["error"]) == (401, "invalid_client")
        assert service.stop() == 0


# --- introspection ---------------------------------------------------------------------------


async def test_introspecting_a_live_access_token_returns_its_claims(
    make_client: ClientFactory, oauth_settings: Settings, registry: Registry
) -> None:
    settings = with_(oauth_settings, jwt_issuer="https://auth.example", jwt_audience="orders-api")
    app = await make_client(settings)
    user_id, tokens = await user_with_session(app, "at@example.com")
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    for hint in (None, "access_token", "refresh_token"):  # a hint is only a hint
        body = await introspect(app, registry, tokens["access_token"], hint=hint)
        assert body == {
            "active": True,
            "token_type": "access_token",
            "sub": user_id,
            "sid": tokens["session_id"],
            "iss": "https://auth.example",
            "aud": "orders-api",
            "exp": claims["exp"],
            "iat": claims["iat"],
            "jti": claims["jti"],
        }


async def test_introspecting_a_live_refresh_token_returns_the_session_expiry(
    app: Client, registry: Registry
) -> None:
    user_id, tokens = await user_with_session(app, "rt@example.com")
    (session,) = await sessions_of(app, tokens)
    for hint in (None, "refresh_token", "access_token"):
        body = await introspect(app, registry, tokens["refresh_token"], hint=hint)
        assert body == {
            "active": True,
            "token_type": "refresh_token",
            "sub": user_id,
            "sid": tokens["session_id"],
            "exp": epoch_seconds(session["expires_at"]),
        }


async def test_introspection_works_for_a_client_whose_name_has_dots_and_dashes(
    app: Client, registry: Registry
) -> None:
    _, tokens = await user_with_session(app, "dotted@example.com")
    body = await introspect(app, registry, tokens["access_token"], name="ops.eu-west-1")
    assert body["active"] is True
    # The name may also arrive form-urlencoded in full (RFC 6749 2.3.1): the server decodes it.
    secret = registry.secrets["ops.eu-west-1"]
    encoded = "ops%2Eeu%2Dwest%2D1:" + secret
    header = "Basic " + base64.b64encode(encoded.encode()).decode()
    response = await app.post(
        INTROSPECT, data={"token": tokens["access_token"]}, headers={"Authorization": header}
    )
    assert response.status == 200
    assert (await response.json())["active"] is True
    # Secrets never need encoding: they are URL-safe.
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", s) for s in registry.secrets.values())


async def test_introspection_after_logout_is_inactive_for_both_tokens(
    app: Client, registry: Registry
) -> None:
    _, tokens = await user_with_session(app, "out@example.com")
    assert (await app.post("/v1/auth/logout", headers=bearer(tokens))).status == 204
    for token in (tokens["access_token"], tokens["refresh_token"]):
        assert await introspect(app, registry, token) == {"active": False}


async def test_introspection_on_another_instance_sees_a_logout_within_a_second(
    make_client: ClientFactory, oauth_settings: Settings, registry: Registry
) -> None:
    a, b = await make_client(oauth_settings), await make_client(oauth_settings)
    _, tokens = await user_with_session(a, "elsewhere@example.com")
    assert (await introspect(b, registry, tokens["access_token"]))["active"] is True
    assert (await a.post("/v1/auth/logout", headers=bearer(tokens))).status == 204

    async def inactive() -> bool:
        return await introspect(b, registry, tokens["access_token"]) == {"active": False}

    await until(inactive, WITHIN, "introspection on b still says active")
    assert await introspect(b, registry, tokens["refresh_token"]) == {"active": False}


async def test_a_rotated_refresh_token_is_active_within_grace_and_inactive_after(
    app: Client, registry: Registry, clock: Clock
) -> None:
    _, first = await user_with_session(app, "rotate@example.com")
    status, second = await refresh(app, first["refresh_token"])
    assert status == 200
    clock.advance(9)  # inside the 10 s grace window: refresh would still accept it
    assert (await introspect(app, registry, first["refresh_token"]))["active"] is True
    clock.advance(2)  # past the window: refresh would call it reuse
    assert await introspect(app, registry, first["refresh_token"]) == {"active": False}
    # Introspection did not run reuse detection: the session and its successor live on.
    assert (await introspect(app, registry, second["refresh_token"]))["active"] is True
    assert await me_status(app, second) == 200
    status, _ = await refresh(app, second["refresh_token"])
    assert status == 200


async def test_a_refresh_token_whose_successor_was_used_is_inactive_and_revokes_nothing(
    app: Client, registry: Registry
) -> None:
    _, first = await user_with_session(app, "successor@example.com")
    _, second = await refresh(app, first["refresh_token"])
    status, third = await refresh(app, second["refresh_token"])
    assert status == 200
    assert await introspect(app, registry, first["refresh_token"]) == {"active": False}
    assert await me_status(app, third) == 200
    assert (await refresh(app, third["refresh_token"]))[0] == 200


async def test_expired_tokens_are_inactive(
    make_client: ClientFactory, oauth_settings: Settings, registry: Registry, clock: Clock
) -> None:
    settings = with_(oauth_settings, access_token_ttl=60, session_idle_ttl=100)
    app = await make_client(settings)
    _, tokens = await user_with_session(app, "expiry@example.com")
    clock.advance(61)
    assert await introspect(app, registry, tokens["access_token"]) == {"active": False}
    assert (await introspect(app, registry, tokens["refresh_token"]))["active"] is True
    clock.advance(40)
    assert await introspect(app, registry, tokens["refresh_token"]) == {"active": False}


async def test_garbage_forged_and_oversized_tokens_are_inactive(
    app: Client, registry: Registry
) -> None:
    _, tokens = await user_with_session(app, "garbage@example.com")
    access, refresh_token = tokens["access_token"], tokens["refresh_token"]
    user, session, generation, mac = refresh_token.split(".")
    header, payload, signature = access.split(".")
    unsigned = base64.urlsafe_b64encode(b'{"alg":"none","typ":"at+jwt"}').rstrip(b"=").decode()
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    for token in [
        "garbage",
        " ",
        ".",
        "..",
        "...",
        "a.b.c",
        "a.b.c.d",
        "null",
        "a b+c&token=x",  # form-encoded by authlib, arrives as one odd token
        "\u00e9\u4e2d\U0001f600",
        f"{user}.{session}.{int(generation) + 1}.{mac}",  # forged: a generation never issued
        f"{user}.{session}.{generation}.{'A' * len(mac)}",  # forged MAC
        f"{header}.{payload}.{flipped}",  # tampered signature
        f"{unsigned}.{payload}.",  # alg none
        f"{header}.{payload}",
        access + "x",
        "x" * 10240,
        "a.b.c." + "x" * 10240,
        f"{header}.{payload}.{'x' * 10240}",
    ]:
        assert await introspect(app, registry, token) == {"active": False}, token[:80]
    assert (await introspect(app, registry, access))["active"] is True
    assert (await refresh(app, refresh_token))[0] == 200


async def test_introspection_changes_nothing_about_the_session(
    app: Client, registry: Registry, clock: Clock
) -> None:
    _, first = await user_with_session(app, "still@example.com")
    (before,) = await sessions_of(app, first)
    answers = []
    for _ in range(3):
        clock.advance(1)  # a last_used_at that introspection moved would show
        answers.append(await introspect(app, registry, first["refresh_token"]))
        answers.append(await introspect(app, registry, first["access_token"]))
    assert all(a["active"] for a in answers)
    assert len({a["exp"] for a in answers if a["token_type"] == "refresh_token"}) == 1
    (after,) = await sessions_of(app, first)
    assert after == before

    # The token still rotates once, and the grace window still hands out the same successor.
    status, second = await refresh(app, first["refresh_token"])
    assert status == 200
    for _ in range(3):
        assert (await introspect(app, registry, first["refresh_token"]))["active"] is True
    status, repeat = await refresh(app, first["refresh_token"])
    assert (status, repeat["refresh_token"]) == (200, second["refresh_token"])
    for _ in range(3):
        assert (await introspect(app, registry, second["refresh_token"]))["active"] is True
    (rotated,) = await sessions_of(app, second)
    assert rotated["last_used_at"] > before["last_used_at"]  # so the check above could fail
    # Reuse is still detected: the successor's successor used, the first one is a reuse.
    status, third = await refresh(app, second["refresh_token"])
    assert status == 200
    assert (await refresh(app, first["refresh_token"]))[0] == 401
    assert await me_status(app, third) == 401


# --- client authentication -------------------------------------------------------------------


async def test_client_authentication_failures_are_401_invalid_client_with_a_basic_challenge(
    app: Client, registry: Registry
) -> None:
    _, tokens = await user_with_session(app, "auth@example.com")
    secret = registry.secrets["orders"]
    b64 = base64.b64encode
    for path in (INTROSPECT, STREAM):
        for headers in [
            {},
            {"Authorization": "Basic"},
            {"Authorization": "Basic !!!not-base64!!!"},
            {"Authorization": "Basic " + b64(b"orders" + secret.encode()).decode()},  # no colon
            {"Authorization": "Basic " + b64(b"\xff\xfe:\xff").decode()},  # not UTF-8
            {"Authorization": basic_auth("nobody", secret)},
            {"Authorization": basic_auth("orders", secret[:-1])},
            {"Authorization": basic_auth("orders", "")},
            {"Authorization": basic_auth("", secret)},
            {"Authorization": f"Bearer {tokens['access_token']}"},
            {"Authorization": "Basic " + "A" * 4096},
        ]:
            if path == INTROSPECT:
                data = {"token": tokens["access_token"]}
                response = await app.post(path, data=data, headers=headers)
            else:
                response = await app.get(path, headers=headers)
            assert await error_of(response) == (401, "invalid_client"), (path, headers)
            assert response.headers["WWW-Authenticate"].startswith("Basic"), headers


async def test_a_client_without_the_scope_gets_403_insufficient_scope(
    app: Client, registry: Registry
) -> None:
    _, tokens = await user_with_session(app, "scope@example.com")
    for name in ("gateway", "admin-tool"):
        async with oauth_client(registry, name) as oauth:
            response = await oauth.introspect_token(
                str(app.make_url(INTROSPECT)), token=tokens["access_token"]
            )
        assert response.status_code == 403
        assert response.json()["error"] == "insufficient_scope"
    for name in ("orders", "admin-tool"):
        stream = await app.get(STREAM, headers=registry.basic(name))
        assert await error_of(stream) == (403, "insufficient_scope")


async def test_wrong_secrets_from_one_address_get_429_even_for_the_right_secret(
    make_client: ClientFactory, oauth_settings: Settings, registry: Registry, clock: Clock
) -> None:
    settings = with_(
        oauth_settings,
        login_failure_limit=3,
        trusted_proxies=(ipaddress.ip_network("127.0.0.1/32"),),
    )
    app = await make_client(settings)
    _, tokens = await user_with_session(app, "throttle@example.com")
    data = {"token": tokens["access_token"]}

    async def attempt(address: str, secret: str) -> aiohttp.ClientResponse:
        headers = {"X-Forwarded-For": address, "Authorization": basic_auth("orders", secret)}
        return await app.post(INTROSPECT, data=data, headers=headers)

    wrong, right = "wrong-secret", registry.secrets["orders"]
    for _ in range(3):
        assert await error_of(await attempt("198.51.100.7", wrong)) == (401, "invalid_client")
    for secret in (right, wrong, right):
        response = await attempt("198.51.100.7", secret)
        assert await error_of(response) == (429, "rate_limited")
        assert 1 <= int(response.headers["Retry-After"]) <= settings.login_failure_window
    # The name is not locked out: the gateway elsewhere still authenticates.
    elsewhere = await attempt("198.51.100.8", right)
    assert elsewhere.status == 200
    assert (await elsewhere.json())["active"] is True
    clock.advance(settings.login_failure_window)
    again = await attempt("198.51.100.7", right)
    assert again.status == 200


# --- revocation ------------------------------------------------------------------------------


async def test_revoking_a_refresh_token_with_authlib_ends_its_session_everywhere(
    make_client: ClientFactory, oauth_settings: Settings, registry: Registry
) -> None:
    a, b = await make_client(oauth_settings), await make_client(oauth_settings)
    _, tokens = await user_with_session(a, "revoke-rt@example.com")
    _, other = await user_with_session(a, "bystander@example.com")
    assert await me_status(b, tokens) == 200  # b has admitted the session
    await revoke_with_authlib(a, registry, tokens["refresh_token"])
    revoked_at = time.monotonic()
    for app in (a, b):

        async def refused(app: Client = app) -> bool:
            return await me_status(app, tokens) == 401

        await until(refused, WITHIN - (time.monotonic() - revoked_at), "GET /v1/me still 200")
    assert (await refresh(a, tokens["refresh_token"]))[0] == 401
    assert await introspect(b, registry, tokens["refresh_token"]) == {"active": False}
    assert await me_status(a, other) == 200


async def test_revoking_an_access_token_ends_its_session(app: Client, registry: Registry) -> None:
    _, tokens = await user_with_session(app, "revoke-at@example.com")
    _, second = await user_with_session(app, "revoke-at2@example.com")
    await revoke_with_authlib(app, registry, tokens["access_token"])

    async def refused() -> bool:
        return await me_status(app, tokens) == 401

    await until(refused, WITHIN, "GET /v1/me still 200")
    assert (await refresh(app, tokens["refresh_token"]))[0] == 401
    # The endpoint needs no client authentication.
    await revoke_plain(app, second["access_token"])
    assert await me_status(app, second) == 401
    assert (await refresh(app, second["refresh_token"]))[0] == 401
    # Revoking what is already revoked is 200 again.
    await revoke_plain(app, second["refresh_token"])
    await revoke_with_authlib(app, registry, second["access_token"])


async def test_revoking_unknown_or_invalid_tokens_is_200_and_changes_nothing(
    app: Client, registry: Registry
) -> None:
    _, tokens = await user_with_session(app, "keep@example.com")
    user, session, generation, mac = tokens["refresh_token"].split(".")
    header, payload, signature = tokens["access_token"].split(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    for token in [
        "garbage",
        "a.b.c.d",
        "...",
        f"{user}.{session}.{int(generation) + 1}.{mac}",  # forged, naming the real session
        f"{user}.{session}.{generation}.{'A' * len(mac)}",
        f"{header}.{payload}.{flipped}",
        "x" * 10240,
    ]:
        await revoke_plain(app, token)
        await revoke_with_authlib(app, registry, token)
    assert await me_status(app, tokens) == 200
    assert (await introspect(app, registry, tokens["refresh_token"]))["active"] is True
    assert (await refresh(app, tokens["refresh_token"]))[0] == 200


# --- bad form input --------------------------------------------------------------------------

FORM = "application/x-www-form-urlencoded"


async def _chunks(size: int) -> AsyncIterator[bytes]:
    yield b"token="
    for _ in range(size // 4096 + 1):
        yield b"x" * 4096


@pytest.mark.parametrize("path", [INTROSPECT, REVOKE])
async def test_bad_form_bodies_are_refused_and_change_nothing(
    app: Client, registry: Registry, path: str
) -> None:
    _, tokens = await user_with_session(app, "form@example.com")
    rt = tokens["refresh_token"]
    quoted = quote_plus(rt)
    big = "token=" + "x" * (64 * 1024)
    cases: list[tuple[dict[str, Any], tuple[int, str]]] = [
        ({"json": {"token": rt}}, (400, "invalid_request")),
        ({"data": json.dumps({"token": rt}), "ct": "application/json"}, (400, "invalid_request")),
        ({"data": f"token={rt}", "ct": "text/plain"}, (400, "invalid_request")),
        ({"data": b""}, (400, "invalid_request")),
        ({"data": "", "ct": FORM}, (400, "invalid_request")),
        ({"data": "token_type_hint=refresh_token", "ct": FORM}, (400, "invalid_request")),
        ({"data": "tokens=" + quoted, "ct": FORM}, (400, "invalid_request")),
        ({"data": f"token={quoted}&token=x", "ct": FORM}, (400, "invalid_request")),
        ({"data": f"token={quoted}&token={quoted}", "ct": FORM}, (400, "invalid_request")),
        ({"data": big, "ct": FORM}, (413, "payload_too_large")),
        ({"data": big, "ct": "application/json"}, (413, "payload_too_large")),
        ({"data": _chunks(64 * 1024), "ct": FORM}, (413, "payload_too_large")),
    ]
    auth = registry.basic("orders") if path == INTROSPECT else {}
    for case, expected in cases:
        kwargs = {k: v for k, v in case.items() if k != "ct"}
        headers = {**auth, **({"Content-Type": case["ct"]} if "ct" in case else {})}
        response = await app.post(path, headers=headers, **kwargs)
        assert await error_of(response) == expected, case if "json" in case else str(case)[:120]
    # An empty token is a token that is not active (contract 5), and nothing to revoke.
    response = await app.post(path, data="token=", headers={**auth, "Content-Type": FORM})
    assert response.status == 200
    answer = await response.read()
    assert (json.loads(answer) if path == INTROSPECT else answer) == (
        {"active": False} if path == INTROSPECT else b""
    )
    # Odd but well-framed bodies: never a 500; a 200 is an inactive answer or an empty body.
    odd = ["token", "token=%ff%fe", "token=%zz", "token=\x00", "=&&=", "token=a;token=b"]
    for body in odd:
        response = await app.post(path, data=body, headers={**auth, "Content-Type": FORM})
        if response.status == 200:
            answer = await response.read()
            if path == INTROSPECT:
                assert json.loads(answer) == {"active": False}, body
            else:
                assert answer == b"", body
        else:
            assert await error_of(response) == (400, "invalid_request"), body
    assert await me_status(app, tokens) == 200
    assert (await introspect(app, registry, rt))["active"] is True
    assert (await refresh(app, rt))[0] == 200


# --- the revocation stream -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Item:
    """What the stream sent: an event (by name), a comment, or its end."""

    kind: str
    data: str


class EventStream:
    """Reads one text/event-stream response in the background, item by item."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self._items: asyncio.Queue[Item] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        event, data = "", []
        try:
            async for raw in self.response.content:
                line = raw.decode("utf-8").rstrip("\r\n")
                if line.startswith(":"):
                    self._items.put_nowait(Item("comment", line[1:].strip()))
                elif line:
                    field, _, value = line.partition(":")
                    value = value.removeprefix(" ")
                    if field == "event":
                        event = value
                    elif field == "data":
                        data.append(value)
                elif event or data:
                    self._items.put_nowait(Item(event or "message", "\n".join(data)))
                    event, data = "", []
        except aiohttp.ClientError as exc:
            self._items.put_nowait(Item("end", repr(exc)))
            return
        self._items.put_nowait(Item("end", ""))

    async def next(self, within: float, *, comments: bool = False) -> Item:
        """The next item (comments skipped unless asked for); fails after `within` s."""
        deadline = asyncio.get_running_loop().time() + within
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    item = await self._items.get()
            except TimeoutError:
                pytest.fail(f"nothing on the revocation stream within {within} s")
            if comments or item.kind != "comment":
                return item

    async def revoked(self, within: float) -> dict[str, str]:
        item = await self.next(within)
        assert item.kind == "revoked", item
        data: dict[str, str] = json.loads(item.data)
        return data

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


@contextlib.asynccontextmanager
async def revocation_stream(
    app: Client, registry: Registry, name: str = "gateway", *, retry_for: float = 0.0
) -> AsyncIterator[EventStream]:
    """An open stream whose `ready` event has been read; with `retry_for`, 503s (the feed
    resubscribing, or not heard from lately) are retried for that long."""
    if retry_for:
        await wait_for_stream(app, registry, retry_for)
    async with (
        aiohttp.ClientSession() as http,
        http.get(app.make_url(STREAM), headers=registry.basic(name)) as response,
    ):
        if retry_for and response.status == 503:  # healthy again, then lost for a moment
            await wait_for_stream(app, registry, retry_for)
            async with revocation_stream(app, registry, name) as stream:
                yield stream
                return
        assert response.status == 200, await response.text()
        assert response.content_type == "text/event-stream"
        stream = EventStream(response)
        try:
            first = await stream.next(5.0)
            assert first.kind == "ready", first
            yield stream
        finally:
            await stream.close()


async def wait_for_stream(app: Client, registry: Registry, within: float) -> None:
    """Until the stream can be opened again (503 while the feed is resubscribing)."""
    deadline = time.monotonic() + within
    while True:
        response = await app.get(STREAM, headers=registry.basic("gateway"))
        if response.status == 200:
            response.close()
            return
        assert await error_of(response) == (503, "unavailable")
        assert "Retry-After" in response.headers
        assert time.monotonic() < deadline, f"the stream did not come back within {within} s"
        await asyncio.sleep(0.05)


async def test_stream_starts_with_ready_and_reports_a_logout_on_another_instance(
    make_client: ClientFactory, oauth_settings: Settings, registry: Registry
) -> None:
    a, b = await make_client(oauth_settings), await make_client(oauth_settings)
    user_id, tokens = await user_with_session(b, "stream@example.com")
    for name in ("gateway", "ops.eu-west-1"):
        async with revocation_stream(a, registry, name) as stream:
            _, session = await user_with_session(b, f"{name}@example.com")
            assert (await b.post("/v1/auth/logout", headers=bearer(session))).status == 204
            ended = await stream.revoked(WITHIN)
            assert ended == {"sid": session["session_id"], "sub": ended["sub"], "reason": "logout"}
    async with revocation_stream(a, registry) as stream:
        assert (await b.post("/v1/auth/logout", headers=bearer(tokens))).status == 204
        assert await stream.revoked(WITHIN) == {
            "sid": tokens["session_id"],
            "sub": user_id,
            "reason": "logout",
        }


Ended = list[dict[str, str]]


async def _logout_all(b: Client, clock: Clock) -> Ended:
    user_id, one = await user_with_session(b, "all@example.com")
    two = await login(b, "all@example.com")
    assert (await b.post("/v1/auth/logout-all", headers=bearer(two))).status == 204
    return [{"sid": t["session_id"], "sub": user_id, "reason": "logout_all"} for t in (one, two)]


async def _password_change(b: Client, clock: Clock) -> Ended:
    user_id, one = await user_with_session(b, "pw@example.com")
    two = await login(b, "pw@example.com")
    body = {"current_password": PASSWORD, "new_password": "another good password"}
    changed = await b.post("/v1/auth/password", json=body, headers=bearer(two))
    assert changed.status == 204
    return [{"sid": one["session_id"], "sub": user_id, "reason": "password_changed"}]


async def _delete_session(b: Client, clock: Clock) -> Ended:
    user_id, one = await user_with_session(b, "delete@example.com")
    two = await login(b, "delete@example.com")
    deleted = await b.delete(f"/v1/sessions/{one['session_id']}", headers=bearer(two))
    assert deleted.status == 204
    return [{"sid": one["session_id"], "sub": user_id, "reason": "revoked"}]


async def _eviction(b: Client, clock: Clock) -> Ended:  # b's session limit is 2
    user_id, one = await user_with_session(b, "evict@example.com")
    clock.advance(1)
    await login(b, "evict@example.com")
    clock.advance(1)
    await login(b, "evict@example.com")
    return [{"sid": one["session_id"], "sub": user_id, "reason": "evicted"}]


async def _reuse(b: Client, clock: Clock) -> Ended:
    user_id, first = await user_with_session(b, "reuse@example.com")
    _, second = await refresh(b, first["refresh_token"])
    assert (await refresh(b, second["refresh_token"]))[0] == 200
    assert (await refresh(b, first["refresh_token"]))[0] == 401
    return [{"sid": first["session_id"], "sub": user_id, "reason": "reuse_detected"}]


async def _revoke_endpoint(b: Client, clock: Clock) -> Ended:
    user_id, tokens = await user_with_session(b, "rfc7009@example.com")
    await revoke_plain(b, tokens["refresh_token"])
    return [{"sid": tokens["session_id"], "sub": user_id, "reason": "logout"}]


@pytest.mark.parametrize(
    "action",
    [_logout_all, _password_change, _delete_session, _eviction, _reuse, _revoke_endpoint],
    ids=["logout_all", "password_changed", "revoked", "evicted", "reuse_detected", "rfc7009"],
)
async def test_stream_reports_each_way_a_session_ends_with_its_reason(
    make_client: ClientFactory,
    oauth_settings: Settings,
    registry: Registry,
    clock: Clock,
    action: Callable[[Client, Clock], Awaitable[Ended]],
) -> None:
    a = await make_client(oauth_settings)
    b = await make_client(with_(oauth_settings, session_limit=2))
    marker_user, marker = await user_with_session(b, "marker@example.com")
    async with revocation_stream(a, registry) as stream:
        expected = await action(b, clock)
        deadline = time.monotonic() + WITHIN
        heard = [await stream.revoked(max(deadline - time.monotonic(), 0.001)) for _ in expected]
        assert sorted(heard, key=lambda e: e["sid"]) == sorted(expected, key=lambda e: e["sid"])
        # Nothing else ended: the next event is the marker's logout.
        assert (await b.post("/v1/auth/logout", headers=bearer(marker))).status == 204
        assert await stream.revoked(WITHIN) == {
            "sid": marker["session_id"],
            "sub": marker_user,
            "reason": "logout",
        }


async def test_stream_refuses_clients_without_the_revocations_scope(
    app: Client, registry: Registry
) -> None:
    async with aiohttp.ClientSession() as http:
        for headers, expected in [
            (registry.basic("orders"), (403, "insufficient_scope")),
            (registry.basic("admin-tool"), (403, "insufficient_scope")),
            (registry.basic("gateway", "not-the-secret"), (401, "invalid_client")),
            ({}, (401, "invalid_client")),
        ]:
            async with http.get(app.make_url(STREAM), headers=headers) as response:
                assert await error_of(response) == expected


async def test_stream_sends_heartbeat_comments_while_idle(app: Client, registry: Registry) -> None:
    async with revocation_stream(app, registry) as stream:
        for _ in range(2):
            item = await stream.next(5.0, comments=True)  # the contract: at least every 15 s
            assert item.kind == "comment", item


async def test_stream_ends_when_the_feed_loses_its_subscription_and_reconnecting_works(
    make_client: ClientFactory, oauth_settings: Settings, registry: Registry
) -> None:
    a, b = await make_client(oauth_settings), await make_client(oauth_settings)
    user_id, tokens = await user_with_session(b, "reconnect@example.com")
    async with revocation_stream(a, registry) as stream:
        killed = await kill_pubsub_connections(oauth_settings)
        assert killed >= 2  # a's subscription and b's
        item = await stream.next(5.0)
        assert item.kind == "end", item
    async with revocation_stream(a, registry, retry_for=10.0) as stream:
        assert (await b.post("/v1/auth/logout", headers=bearer(tokens))).status == 204
        assert await stream.revoked(WITHIN) == {
            "sid": tokens["session_id"],
            "sub": user_id,
            "reason": "logout",
        }


async def kill_pubsub_connections(settings: Settings) -> int:
    """CLIENT KILL TYPE pubsub on the server, or on every node of the cluster; how many."""
    url = settings.redis_url or ""
    ports = [int(url.rsplit(":", 1)[1].split("/")[0])]
    if settings.redis_cluster:
        async with aioredis.Redis(port=ports[0], decode_responses=True) as r:
            nodes = await r.cluster("NODES")
        # redis-py parses the reply into {"host:port@bus": {...}} or leaves it as text.
        addresses = (
            list(nodes)
            if isinstance(nodes, dict)
            else [line.split()[1] for line in str(nodes).splitlines() if line.strip()]
        )
        ports = [int(a.split("@")[0].rsplit(":", 1)[1]) for a in addresses]
    killed = 0
    for port in ports:
        async with aioredis.Redis(port=port) as r:
            killed += int(await r.client_kill_filter(_type="pubsub"))
    return killed
