"""Bad input on every endpoint gets the contract's JSON error, never a 500, and writes nothing."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import statistics
import time
from importlib import resources
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from authsvc.domain.clock import Clock
from authsvc.domain.keys import KeyRing
from authsvc.domain.service import EMAIL_PATTERN
from authsvc.logs import JsonFormatter
from authsvc.settings import Settings
from tests.conftest import ClientFactory, with_
from tests.helpers import PASSWORD, Client, bearer, login, me_status, raw_redis, refresh, signup

BODY_ROUTES = ["/v1/auth/signup", "/v1/auth/login", "/v1/auth/refresh"]
JSON = {"Content-Type": "application/json"}


async def _error(response: Any) -> tuple[int, str]:
    body = await response.json()
    assert set(body) == {"error", "error_description"}
    return response.status, body["error"]


@pytest.mark.parametrize("route", [*BODY_ROUTES, "/v1/auth/password"])
@pytest.mark.parametrize(
    ("body", "headers", "expected"),
    [
        (b"x" * (64 * 1024 + 1), {"Content-Type": "text/plain"}, (413, "payload_too_large")),
        (b'{"email": "a@b.co"}', {"Content-Type": "text/plain"}, (415, "unsupported_media_type")),
        (b"", {}, (415, "unsupported_media_type")),
        (b"{not json", JSON, (400, "invalid_request")),
        (b"[" * 30_000 + b"]" * 30_000, JSON, (400, "invalid_request")),
        (b'{"a":' * 10_000 + b"1" + b"}" * 10_000, JSON, (400, "invalid_request")),
        (b'{"email": "\xff\xfe", "password": "x"}', JSON, (400, "invalid_request")),
        (b'"just a string"', JSON, (400, "invalid_request")),
        (b"[]", JSON, (400, "invalid_request")),
        (b"null", JSON, (400, "invalid_request")),
        (
            b'{"email": 1, "password": [], "refresh_token": {}, "current_password": 2}',
            JSON,
            (400, "invalid_request"),
        ),
        (b"{}", JSON, (400, "invalid_request")),
    ],
)
async def test_malformed_bodies(
    client: Client, route: str, body: bytes, headers: dict[str, str], expected: tuple[int, str]
) -> None:
    auth = {}
    if route == "/v1/auth/password":
        await signup(client, "body@example.com")
        auth = bearer(await login(client, "body@example.com"))
    response = await client.post(route, data=body, headers={**headers, **auth})
    assert await _error(response) == expected


async def test_chunked_body_over_limit_is_413(client: Client) -> None:
    async def chunks() -> Any:
        for _ in range(80):
            yield b" " * 1024

    response = await client.post("/v1/auth/login", data=chunks(), headers=JSON)
    assert await _error(response) == (413, "payload_too_large")


@pytest.mark.parametrize(
    ("email", "password"),
    [
        ("not-an-email", PASSWORD),
        ("nul\x00@example.com", PASSWORD),
        ("ctrl\x07@example.com", PASSWORD),
        ("two@@example.com", PASSWORD),
        ("a@localhost", PASSWORD),
        ("x" * 250 + "@example.com", PASSWORD),
        ("ok@example.com", "short"),
        ("ok@example.com", "x" * 257),
        ("lone\ud800@example.com", PASSWORD),
    ],
)
async def test_signup_rejects_bad_email_or_password(
    client: Client, settings: Settings, email: str, password: str
) -> None:
    response = await client.post("/v1/auth/signup", json={"email": email, "password": password})
    assert await _error(response) == (400, "invalid_request")
    r = raw_redis(settings)
    assert [k async for k in r.scan_iter(f"{settings.key_prefix}:*")] == []
    await r.aclose()


async def test_any_unicode_password_works_including_nul_and_lone_surrogates(
    client: Client,
) -> None:
    for i, password in enumerate(["nul\x00nul\x00nul", "surrogate \ud800\udfff!", "😀" * 8]):
        await signup(client, f"odd{i}@example.com", password)
        await login(client, f"odd{i}@example.com", password)


def test_openapi_states_the_email_rule_the_code_applies() -> None:
    document = json.loads(resources.files("authsvc.web").joinpath("openapi.json").read_text())
    email = document["components"]["schemas"]["Credentials"]["properties"]["email"]
    assert email["pattern"] == EMAIL_PATTERN


def _hs256(header: dict[str, Any], claims: dict[str, Any], key: bytes) -> str:
    """Algorithm confusion: HMAC with the public key as the secret."""
    signing_input = _unsigned(claims, header).rstrip(".").encode()
    mac = hmac.new(key, signing_input, hashlib.sha256).digest()
    return signing_input.decode() + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def _unsigned(claims: dict[str, Any], header: dict[str, Any]) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part(header)}.{part(claims)}."


async def test_bearer_tokens_that_are_not_valid_access_tokens(
    client: Client, keyring: KeyRing, clock: Clock
) -> None:
    await signup(client, "bearer@example.com")
    tokens = await login(client, "bearer@example.com")
    good = tokens["access_token"]
    claims = jwt.decode(good, options={"verify_signature": False})
    header = jwt.get_unverified_header(good)
    public_pem = keyring.signing.verifier.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    head, _, signature = good.split(".")
    tampered_claims = (
        base64.urlsafe_b64encode(json.dumps({**claims, "sub": "someone-else"}).encode())
        .rstrip(b"=")
        .decode()
    )
    cases = [
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "Bearer ",
        "Bearer garbage",
        "Bearer " + "A" * 10_000,
        "Bearer " + tokens["refresh_token"],
        "Bearer " + _unsigned(claims, {"alg": "none", "typ": "at+jwt", "kid": header["kid"]}),
        "Bearer " + _hs256({**header, "alg": "HS256"}, claims, public_pem),
        "Bearer " + f"{head}.{tampered_claims}.{signature}",
        "Bearer "
        + jwt.encode(claims, keyring.signing.signer, "ES256", headers={"kid": header["kid"]}),
    ]
    for authorization in cases:
        response = await client.get("/v1/me", headers={"Authorization": authorization})
        assert await _error(response) == (401, "invalid_token"), authorization[:40]
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    missing = await client.get("/v1/me")
    assert await _error(missing) == (401, "invalid_token")
    assert "error=" not in missing.headers["WWW-Authenticate"]
    clock.advance(901)
    assert await me_status(client, tokens) == 401


@pytest.mark.parametrize(
    "token",
    # ... "a.b.0.é": a non-ASCII MAC once reached hmac.compare_digest, whose TypeError was a 500
    ["", "garbage", "a.b.c.d", "a.b.-1.d", "a.b.01.d", "é.b.0.d", "a.b.0.é", "x" * 60_000],
)
async def test_garbage_refresh_tokens_are_invalid_grant(client: Client, token: str) -> None:
    response = await client.post("/v1/auth/refresh", json={"refresh_token": token})
    assert await _error(response) == (401, "invalid_grant")


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/nope", (404, "not_found")),
        ("PUT", "/v1/me", (405, "method_not_allowed")),
        ("GET", "/v1/auth/login", (405, "method_not_allowed")),
    ],
)
async def test_unknown_routes_and_methods(
    client: Client, method: str, path: str, expected: tuple[int, str]
) -> None:
    response = await client.request(method, path)
    assert await _error(response) == expected
    if expected[0] == 405:
        assert response.headers["Allow"]


async def test_failed_logins_throttle_the_email_for_its_window_only(
    make_client: ClientFactory, settings: Settings, clock: Clock
) -> None:
    client = await make_client(with_(settings, login_failure_limit=3, login_failure_window=60))
    await signup(client, "victim@example.com")
    await signup(client, "bystander@example.com")
    for _ in range(3):
        wrong = await client.post(
            "/v1/auth/login", json={"email": "victim@example.com", "password": "wrong guess"}
        )
        assert wrong.status == 401
    right = await client.post(
        "/v1/auth/login", json={"email": "VICTIM@example.com", "password": PASSWORD}
    )
    assert await _error(right) == (429, "rate_limited")
    assert 1 <= int(right.headers["Retry-After"]) <= 60
    await login(client, "bystander@example.com")
    clock.advance(int(right.headers["Retry-After"]))
    await login(client, "victim@example.com")


async def test_unknown_emails_are_throttled_like_registered_ones(
    make_client: ClientFactory, settings: Settings
) -> None:
    client = await make_client(with_(settings, login_failure_limit=2))
    statuses = []
    for _ in range(3):
        response = await client.post(
            "/v1/auth/login", json={"email": "ghost@example.com", "password": "whatever1"}
        )
        statuses.append(response.status)
    assert statuses == [401, 401, 429]


async def test_attempts_per_client_ip_are_limited(
    make_client: ClientFactory, settings: Settings, clock: Clock
) -> None:
    client = await make_client(
        with_(
            settings,
            ip_rate_limit=3,
            ip_rate_window=10,
            trusted_proxies=(ipaddress.ip_network("127.0.0.0/8"),),
        )
    )
    body = {"email": "ip@example.com", "password": "whatever1"}
    for _ in range(3):
        assert (await client.post("/v1/auth/login", json=body)).status == 401
    limited = await client.post("/v1/auth/login", json=body)
    assert await _error(limited) == (429, "rate_limited")
    other_ip = await client.post(
        "/v1/auth/login", json=body, headers={"X-Forwarded-For": "203.0.113.9"}
    )
    assert other_ip.status == 401
    clock.advance(10)
    assert (await client.post("/v1/auth/login", json=body)).status == 401


async def test_unknown_email_takes_as_long_as_wrong_password(
    make_client: ClientFactory, settings: Settings
) -> None:
    client = await make_client(with_(settings, bcrypt_rounds=9, login_failure_limit=1000))
    await signup(client, "timing@example.com")
    samples: dict[str, list[float]] = {"timing@example.com": [], "absent@example.com": []}
    for _ in range(15):
        for email, times in samples.items():
            started = time.perf_counter()
            response = await client.post(
                "/v1/auth/login", json={"email": email, "password": "wrong password"}
            )
            times.append(time.perf_counter() - started)
            assert response.status == 401
    known, unknown = (statistics.median(t) for t in samples.values())
    assert 0.75 < unknown / known < 1.33, (known, unknown)


async def test_logs_of_a_whole_session_lifecycle_hold_no_secret(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    password = "a very secret passphrase"
    await signup(client, "logs@example.com", password)
    tokens = await login(client, "logs@example.com", password)
    _, renewed = await refresh(client, tokens["refresh_token"])
    await refresh(client, tokens["refresh_token"])
    await client.get("/v1/me", headers=bearer(renewed))
    await client.post(
        "/v1/auth/password",
        json={"current_password": password, "new_password": "another secret phrase"},
        headers=bearer(renewed),
    )
    await client.post("/v1/auth/logout", headers=bearer(renewed))
    formatter = JsonFormatter()
    text = "\n".join(formatter.format(record) for record in caplog.records)
    assert "login" in text
    secrets = [password, "another secret phrase"]
    for t in (tokens, renewed):
        secrets += [t["access_token"], t["refresh_token"], t["refresh_token"].rsplit(".", 1)[1]]
        secrets += t["access_token"].split(".")
    for secret in secrets:
        assert secret not in text


async def test_failed_login_writes_no_session(client: Client, settings: Settings) -> None:
    user_id = await signup(client, "nohalf@example.com")
    await client.post(
        "/v1/auth/login", json={"email": "nohalf@example.com", "password": "nope nope"}
    )
    r = raw_redis(settings)
    keys = [k async for k in r.scan_iter(f"{settings.key_prefix}:{{u:{user_id}}}:*")]
    assert keys == [f"{settings.key_prefix}:{{u:{user_id}}}:user".encode()]  # the account only
    await r.aclose()


async def test_a_user_agent_that_is_not_utf8_is_stored_with_its_bad_bytes_replaced(
    client: Client,
) -> None:
    await signup(client, "ua@example.com")
    body = json.dumps({"email": "ua@example.com", "password": PASSWORD}).encode()
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(
        b"POST /v1/auth/login HTTP/1.1\r\nHost: authsvc\r\nContent-Type: application/json\r\n"
        b"User-Agent: caf\xe9 \xff\xfe browser\r\nConnection: close\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    status_line, _, payload = (await reader.read()).partition(b"\r\n\r\n")
    writer.close()
    assert status_line.startswith(b"HTTP/1.1 200"), status_line
    sessions = await client.get("/v1/sessions", headers=bearer(json.loads(payload)))
    assert [s["user_agent"] for s in (await sessions.json())["sessions"]] == ["caf? ?? browser"]
