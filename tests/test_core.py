"""The core flows on a real Redis: signup, login with the session limit, refresh, logout."""

from __future__ import annotations

import asyncio
import datetime
import io
import json
import re
import time
import traceback

import pytest

from authsvc.domain.clock import Clock
from authsvc.domain.errors import NotFound
from authsvc.metrics import RequestStats
from authsvc.settings import Settings
from authsvc.web.access_log import AccessLog
from authsvc.web.observe import _refuse
from tests.conftest import ClientFactory, with_
from tests.helpers import PASSWORD, Client, bearer, login, me_status, raw_redis, refresh, signup


async def test_signup_login_me_refresh_logout(client: Client) -> None:
    user_id = await signup(client, "  Alice@Example.COM ")
    tokens = await login(client, "alice@example.com")
    assert tokens["token_type"] == "Bearer"
    assert tokens["expires_in"] == 900
    me = await client.get("/v1/me", headers=bearer(tokens))
    assert await me.json() == {
        "user_id": user_id,
        "email": "alice@example.com",
        "session_id": tokens["session_id"],
    }
    status, renewed = await refresh(client, tokens["refresh_token"])
    assert status == 200
    assert renewed["refresh_token"] != tokens["refresh_token"]
    assert renewed["session_id"] == tokens["session_id"]
    logout = await client.post("/v1/auth/logout", headers=bearer(renewed))
    assert logout.status == 204
    assert await me_status(client, renewed) == 401
    assert (await refresh(client, renewed["refresh_token"]))[0] == 401


async def test_signup_with_registered_email_in_other_case_is_409(client: Client) -> None:
    await signup(client, "bob@example.com")
    response = await client.post(
        "/v1/auth/signup", json={"email": "BOB@example.com", "password": PASSWORD}
    )
    assert response.status == 409
    assert (await response.json())["error"] == "email_taken"


async def test_concurrent_signups_of_one_email_register_it_once(client: Client) -> None:
    responses = await asyncio.gather(
        *(
            client.post("/v1/auth/signup", json={"email": "race@example.com", "password": PASSWORD})
            for _ in range(20)
        )
    )
    assert sorted(r.status for r in responses) == [201] + [409] * 19


async def test_wrong_password_and_unknown_email_answer_alike(client: Client) -> None:
    await signup(client, "carol@example.com")
    wrong = await client.post(
        "/v1/auth/login", json={"email": "carol@example.com", "password": "wrong password"}
    )
    unknown = await client.post(
        "/v1/auth/login", json={"email": "nobody@example.com", "password": "wrong password"}
    )
    assert wrong.status == unknown.status == 401
    assert await wrong.json() == await unknown.json()
    ignore = {"Date", "X-Request-Id"}
    assert {k for k in wrong.headers if k not in ignore} == {
        k for k in unknown.headers if k not in ignore
    }


async def test_concurrent_logins_leave_exactly_the_limit_and_no_orphans(
    client: Client, settings: Settings
) -> None:
    user_id = await signup(client, "dave@example.com")
    results = await asyncio.gather(*(login(client, "dave@example.com") for _ in range(200)))
    assert len({r["session_id"] for r in results}) == 200
    r = raw_redis(settings, decode_responses=True)
    index = f"{settings.key_prefix}:{{u:{user_id}}}:s"
    members = await r.zrange(index, 0, -1)
    hashes = [k async for k in r.scan_iter(f"{index}:*")]
    await r.aclose()
    assert len(members) == settings.session_limit
    assert sorted(k.rsplit(":", 1)[1] for k in hashes) == sorted(members)
    live = [t for t in results if await me_status(client, t) == 200]
    assert sorted(t["session_id"] for t in live) == sorted(members)


async def test_login_beyond_limit_evicts_least_recently_used(
    make_client: ClientFactory, settings: Settings, clock: Clock
) -> None:
    client = await make_client(with_(settings, session_limit=3))
    await signup(client, "erin@example.com")
    sessions = []
    for _ in range(3):
        sessions.append(await login(client, "erin@example.com"))
        clock.advance(1)
    # Refreshing the oldest makes the second one the least recently used.
    status, sessions[0] = await refresh(client, sessions[0]["refresh_token"])
    assert status == 200
    clock.advance(1)
    fourth = await login(client, "erin@example.com")
    assert [await me_status(client, t) for t in (*sessions, fourth)] == [200, 401, 200, 200]
    listed = await client.get("/v1/sessions", headers=bearer(fourth))
    ids = [s["session_id"] for s in (await listed.json())["sessions"]]
    assert ids == [fourth["session_id"], sessions[0]["session_id"], sessions[2]["session_id"]]


async def test_passwords_differing_after_byte_72_are_different(client: Client) -> None:
    base = "é" * 40  # 80 bytes of UTF-8
    await signup(client, "frank@example.com", base + "A")
    ok = await client.post(
        "/v1/auth/login", json={"email": "frank@example.com", "password": base + "A"}
    )
    bad = await client.post(
        "/v1/auth/login", json={"email": "frank@example.com", "password": base + "B"}
    )
    assert (ok.status, bad.status) == (200, 401)


async def test_password_is_nfc_normalized(client: Client) -> None:
    await signup(client, "gina@example.com", "cafe\u0301 au lait")
    tokens = await login(client, "gina@example.com", "caf\u00e9 au lait")
    assert tokens["session_id"]


async def test_health_and_readiness(client: Client) -> None:
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200
    assert ready.headers["X-Request-Id"]


async def test_request_id_is_kept_when_sane_and_generated_otherwise(client: Client) -> None:
    kept = await client.get("/healthz", headers={"X-Request-Id": "abc-123"})
    assert kept.headers["X-Request-Id"] == "abc-123"
    replaced = await client.get("/healthz", headers={"X-Request-Id": "bad id\twith junk"})
    generated = {(await client.get("/healthz")).headers["X-Request-Id"] for _ in range(3)} | {
        replaced.headers["X-Request-Id"]
    }
    assert len(generated) == 4
    assert all(re.fullmatch(r"[0-9a-f]{24}", request_id) for request_id in generated)


def test_access_log_writes_one_json_line_per_request_in_batches() -> None:
    stream = io.BytesIO()
    access_log = AccessLog(stream, json=True, enabled=True)
    an_hour_ago = time.perf_counter() - 3600
    access_log.record((an_hour_ago, 0.000123, "req-1", "GET", "/v1/me", 200))
    access_log.record((time.perf_counter(), 0.25, "req-2", "POST", "/v1/auth/login", 401))
    assert stream.getvalue() == b""
    access_log.flush()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["request_id"] for line in lines] == ["req-1", "req-2"]
    assert lines[1] | {"ts": ""} == {
        "ts": "",
        "level": "info",
        "logger": "authsvc.access",
        "msg": "request",
        "request_id": "req-2",
        "method": "POST",
        "route": "/v1/auth/login",
        "status": 401,
        "duration_ms": 250.0,
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", lines[0]["ts"])
    logged = datetime.datetime.fromisoformat(lines[0]["ts"]).timestamp()
    assert abs(logged - (time.time() - 3600)) < 5  # when the request ended, on the wall clock


async def test_metrics_count_requests_by_route_and_outcomes(client: Client) -> None:
    await signup(client, "metrics@example.com")
    await login(client, "metrics@example.com")
    await client.post("/v1/auth/login", json={"email": "metrics@example.com", "password": "x" * 9})
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.content_type == "text/plain"
    text = await response.text()
    assert 'authsvc_http_requests_total{route="/v1/auth/login",status="200"} 1.0' in text
    assert 'authsvc_http_requests_total{route="/v1/auth/login",status="401"} 1.0' in text
    assert 'authsvc_logins_total{outcome="success"} 1.0' in text
    assert 'authsvc_logins_total{outcome="failure"} 1.0' in text
    assert "authsvc_http_request_duration_seconds_bucket" in text


async def test_every_refusal_raises_an_error_of_its_own() -> None:
    # One instance raised again and again keeps growing its traceback (and every request's
    # frames with it).
    refuse = _refuse(NotFound)
    raised = []
    for _ in range(3):
        with pytest.raises(NotFound) as caught:
            await refuse(None)  # type: ignore[arg-type]
        raised.append(caught.value)
    assert len({id(error) for error in raised}) == 3
    depths = {len(traceback.extract_tb(error.__traceback__)) for error in raised}
    assert len(depths) == 1


def test_request_stats_count_every_record_once_across_folds() -> None:
    stats = RequestStats()
    me, login = stats.recorder("/v1/me"), stats.recorder("/v1/auth/login")
    for seconds in (0.0005, 0.002, 0.002, 3.0):
        me((200, seconds))
    login((401, 0.3))
    stats.fold()
    me((401, 0.0001))
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in stats.collect()
        for s in family.samples
    }

    def sample(name: str, **labels: str) -> float:
        return samples[name, tuple(sorted(labels.items()))]

    assert sample("authsvc_http_requests_total", route="/v1/me", status="200") == 4
    assert sample("authsvc_http_requests_total", route="/v1/me", status="401") == 1
    assert sample("authsvc_http_requests_total", route="/v1/auth/login", status="401") == 1
    bucket = "authsvc_http_request_duration_seconds_bucket"
    assert sample(bucket, route="/v1/me", le="0.001") == 2  # cumulative: 0.0005, 0.0001
    assert sample(bucket, route="/v1/me", le="0.0025") == 4
    assert sample(bucket, route="/v1/me", le="2.5") == 4
    assert sample(bucket, route="/v1/me", le="+Inf") == 5
    assert sample(bucket, route="/v1/auth/login", le="0.25") == 0
    assert sample(bucket, route="/v1/auth/login", le="0.5") == 1
    total = sample("authsvc_http_request_duration_seconds_sum", route="/v1/me")
    assert abs(total - 3.0046) < 1e-9
    stats.fold()  # nothing new: nothing counted twice
    again = [s for family in stats.collect() for s in family.samples if s.labels.get("status")]
    assert sum(s.value for s in again) == 6
