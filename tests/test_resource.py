"""authsvc.resource: the library an API backend imports, its middlewares and the examples
that use them, against a real authsvc on a real Redis."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from authsvc.domain.clients import add_client
from authsvc.resource import InvalidToken, Unavailable, Verifier
from authsvc.settings import Settings
from authsvc.web.context import SETTINGS
from tests.conftest import Backend, ClientFactory, with_
from tests.helpers import Client, bearer, login, signup
from tests.process import Service

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def clients_file(tmp_path: Path) -> tuple[Path, str]:
    """A clients file with one resource-server client; its path and secret."""
    path = tmp_path / "clients.json"
    return path, add_client(path, "orders", ["introspect", "revocations"])


@pytest.fixture
async def authsvc(
    make_client: ClientFactory, settings: Settings, clients_file: tuple[Path, str]
) -> Client:
    return await make_client(with_(settings, clients_file=clients_file[0]))


@pytest.fixture
async def verifier(authsvc: Client, clients_file: tuple[Path, str]) -> AsyncIterator[Verifier]:
    async with Verifier(
        str(authsvc.make_url("")), client_id="orders", client_secret=clients_file[1]
    ) as v:
        assert v.streaming
        yield v


def _count_introspections(verifier: Verifier, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    asked: list[str] = []
    ask = verifier._introspect

    async def counting(token: str) -> bool:
        asked.append(token)
        return await ask(token)

    monkeypatch.setattr(verifier, "_introspect", counting)
    return asked


async def _refused_within(seconds: float, check: Callable[[], Awaitable[object]]) -> float:
    """Poll `check` until it raises InvalidToken; how long that took."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        try:
            await check()
        except InvalidToken:
            return time.monotonic() - started
        await asyncio.sleep(0.005)
    raise AssertionError(f"still accepted after {seconds} s")


async def test_a_token_is_checked_locally_after_one_introspection_per_session(
    authsvc: Client, verifier: Verifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    user_id = await signup(authsvc, "backend@example.com")
    tokens = await login(authsvc, "backend@example.com")
    asked = _count_introspections(verifier, monkeypatch)
    principals = await asyncio.gather(*(verifier.verify(tokens["access_token"]) for _ in range(50)))
    assert {(p.user_id, p.session_id) for p in principals} == {(user_id, tokens["session_id"])}
    assert principals[0].claims["aud"] == "authsvc"
    assert len(asked) == 1  # a burst of one new session waits for one answer
    for _ in range(100):
        await verifier.verify(tokens["access_token"])
    assert len(asked) == 1  # nothing on the network per request


async def test_a_session_ended_at_authsvc_is_refused_by_the_backend_within_a_second(
    make_client: ClientFactory, authsvc: Client, verifier: Verifier
) -> None:
    await signup(authsvc, "ended@example.com")
    tokens = await login(authsvc, "ended@example.com")
    await verifier.verify(tokens["access_token"])
    other_instance = await make_client(authsvc.app[SETTINGS])
    response = await other_instance.post("/v1/auth/logout", headers=bearer(tokens))
    assert response.status == 204
    assert await _refused_within(1.0, lambda: verifier.verify(tokens["access_token"])) < 1.0


async def test_bad_tokens_are_invalid(authsvc: Client, verifier: Verifier) -> None:
    await signup(authsvc, "bad@example.com")
    tokens = await login(authsvc, "bad@example.com")
    access = tokens["access_token"]
    head, payload, signature = access.split(".")
    for token in (
        "",
        "junk",
        tokens["refresh_token"],
        f"{head}.{payload}.{signature[::-1]}",
        f"{head}.{payload}",
        access + "==",
        "x" * 10_000,
    ):
        with pytest.raises(InvalidToken):
            await verifier.verify(token)


async def test_the_verifier_fails_closed_when_authsvc_cannot_be_asked(
    authsvc: Client, verifier: Verifier
) -> None:
    await signup(authsvc, "closed@example.com")
    known = await login(authsvc, "closed@example.com")
    new = await login(authsvc, "closed@example.com")
    await verifier.verify(known["access_token"])
    await authsvc.server.close()  # authsvc goes away: no stream, no introspection
    for _ in range(200):
        if not verifier.streaming:
            break
        await asyncio.sleep(0.01)
    assert not verifier.streaming
    for tokens in (known, new):  # what it learnt before is stale once the stream is gone
        with pytest.raises(Unavailable):
            await verifier.verify(tokens["access_token"])


async def test_a_new_signing_key_is_fetched_once_on_its_first_token(
    authsvc: Client, verifier: Verifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    fetched: list[int] = []
    load = verifier._load_keys

    async def counting() -> None:
        fetched.append(1)
        await load()

    monkeypatch.setattr(verifier, "_load_keys", counting)
    monkeypatch.setattr(verifier, "_fetched_at", -float("inf"))  # long since the last fetch
    forged = "eyJhbGciOiJFUzI1NiIsImtpZCI6Im5ldyIsInR5cCI6ImF0K2p3dCJ9.e30.c2ln"  # kid "new"
    for _ in range(20):
        with pytest.raises(InvalidToken):
            await verifier.verify(forged)
    assert fetched == [1]  # at most one fetch per few seconds, whatever is sent


def test_the_library_imports_nothing_of_the_server() -> None:
    code = (
        "import sys, authsvc.resource, authsvc.resource.aiohttp, authsvc.resource.asgi;"
        "print([m for m in sys.modules if m.startswith('authsvc.')])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = {m.strip(" '") for m in out.stdout.strip("[]\n").split(",")}
    assert all(m.startswith("authsvc.resource") for m in loaded), loaded


@pytest.mark.parametrize(
    "program", [("examples/aiohttp_service.py",), ("examples/fastapi_service.py",)]
)
async def test_an_example_backend_refuses_a_logged_out_session_within_a_second(
    program: tuple[str, ...],
    redis_backend: Backend,
    settings: Settings,
    clients_file: tuple[Path, str],
    tmp_path: Path,
) -> None:
    path, secret = clients_file
    env = {
        **redis_backend.env(),
        "AUTHSVC_KEY_PREFIX": settings.key_prefix,
        "AUTHSVC_BCRYPT_ROUNDS": "4",
        "AUTHSVC_CLIENTS_FILE": str(path),
        "AUTHSVC_DATA_DIR": str(tmp_path / "data"),
    }
    with Service(env, log=tmp_path / "authsvc.log") as authsvc:
        authsvc.wait_ready()
        backend_env = {
            "AUTHSVC_URL": authsvc.url,
            "AUTHSVC_CLIENT_ID": "orders",
            "AUTHSVC_CLIENT_SECRET": secret,
            "PYTHONPATH": str(ROOT),
        }
        with Service(backend_env, log=tmp_path / "backend.log", program=program) as backend:
            backend.wait_ready()
            async with aiohttp.ClientSession() as http:
                await _flow(http, authsvc.url, backend.url)
            # uvicorn re-raises SIGTERM once it has shut down gracefully: -15 is its clean exit.
            assert backend.stop() in ((0, -15) if "fastapi" in program[0] else (0,))
        assert authsvc.stop() == 0


async def _flow(http: aiohttp.ClientSession, authsvc: str, backend: str) -> None:
    credentials = {"email": "example@example.com", "password": "correct horse battery"}
    async with http.post(f"{authsvc}/v1/auth/signup", json=credentials) as r:
        user_id = (await r.json())["user_id"]
    async with http.post(f"{authsvc}/v1/auth/login", json=credentials) as r:
        tokens: dict[str, Any] = await r.json()
    auth = {"Authorization": f"Bearer {tokens['access_token']}"}
    async with http.get(f"{backend}/orders", headers=auth) as r:
        assert (r.status, (await r.json())["user_id"]) == (200, user_id)
    async with http.get(f"{backend}/orders") as r:
        assert r.status == 401
        assert (await r.json())["error"] == "invalid_token"
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    async with http.post(f"{authsvc}/v1/auth/logout", headers=auth) as r:
        assert r.status == 204
    started = time.monotonic()
    while True:
        async with http.get(f"{backend}/orders", headers=auth) as r:
            if r.status == 401:
                break
            assert r.status == 200
        assert time.monotonic() - started < 1.0, "the backend still serves an ended session"
        await asyncio.sleep(0.005)


async def test_nodes_jose_verifies_access_tokens_with_the_remote_jwks(
    authsvc: Client, tmp_path: Path
) -> None:
    """An independent JOSE library in another language accepts authsvc's tokens."""
    await signup(authsvc, "jose@example.com")
    tokens = await login(authsvc, "jose@example.com")
    install = await asyncio.to_thread(
        subprocess.run,
        ["npm", "install", "--silent", "--no-audit", "--no-fund", "jose@5"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "npm_config_update_notifier": "false"},
    )
    assert install.returncode == 0, install.stderr
    script = tmp_path / "verify.mjs"
    script.write_text(
        "import { createRemoteJWKSet, jwtVerify } from 'jose';\n"
        "const [url, token] = process.argv.slice(2);\n"
        "const jwks = createRemoteJWKSet(new URL(url));\n"
        "const { payload, protectedHeader } = await jwtVerify(token, jwks, {\n"
        "  issuer: 'authsvc', audience: 'authsvc', typ: 'at+jwt' });\n"
        "console.log(JSON.stringify({ sub: payload.sub, sid: payload.sid,"
        " alg: protectedHeader.alg }));\n"
    )
    url = str(authsvc.make_url("/.well-known/jwks.json"))
    node = await asyncio.create_subprocess_exec(
        "node", str(script), url, tokens["access_token"], stdout=subprocess.PIPE, cwd=tmp_path
    )
    out, _ = await node.communicate()
    assert node.returncode == 0
    assert json.loads(out)["sid"] == tokens["session_id"]
