"""High availability through Redis Sentinel (contract section 7), with real processes: a
primary, a replica and three redis-sentinel on loopback (tests/sentinel.py).

authsvc finds the primary through Sentinel and follows a failover without a restart; during
it every answer is 200, 401 or 503 and none hangs; a change that ends sessions is
acknowledged only once the replica has it, so no failover brings an ended session back."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from authsvc.settings import Settings
from tests.conftest import ClientFactory
from tests.helpers import PASSWORD, Client, bearer, login, me_status, refresh, signup
from tests.sentinel import SentinelSet

# No answer takes longer: socket timeouts of 0.5 s, two quick retries, WAIT of 0.3 s.
SLOWEST = 3.0


@pytest.fixture(scope="module")
def sentinels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSet]:
    topology = SentinelSet(tmp_path_factory.mktemp("sentinel"))
    try:
        topology.start()
        yield topology
    finally:
        topology.stop()


@pytest.fixture
def ha_settings(sentinels: SentinelSet, request: pytest.FixtureRequest) -> Settings:
    return Settings(
        redis_sentinels=tuple(("127.0.0.1", port) for port in sentinels.sentinel_ports),
        key_prefix=f"ha-{request.node.name}",
        bcrypt_rounds=4,
        ip_rate_limit=0,
        log_format="text",
    )


async def _timed(call: Any) -> tuple[int, float]:
    started = time.monotonic()
    response = await call
    await response.read()
    return response.status, time.monotonic() - started


async def test_an_ending_is_acknowledged_only_once_the_replica_has_it(
    make_client: ClientFactory, ha_settings: Settings, sentinels: SentinelSet
) -> None:
    app = await make_client(ha_settings)
    await signup(app, "durable@example.com")
    tokens = await login(app, "durable@example.com")
    assert (await refresh(app, tokens["refresh_token"]))[0] == 200
    await _until_replicas_known(app)

    sentinels.pause_replica()
    try:
        status, took = await _timed(app.post("/v1/auth/logout", headers=bearer(tokens)))
        assert status == 503
        assert took < SLOWEST
        response = await app.post("/v1/auth/logout", headers=bearer(tokens))  # still paused
        assert response.status == 503
        assert "Retry-After" in response.headers
        assert (await response.json())["error"] == "unavailable"
        # A login that evicts nothing ends nothing: it does not wait (the contract lets a
        # failover lose it; the user logs in again).
        status, took = await _timed(
            app.post("/v1/auth/login", json={"email": "durable@example.com", "password": PASSWORD})
        )
        assert (status, took < SLOWEST) == (200, True)
    finally:
        sentinels.resume_replica()
    # The client retries its logout: acknowledged now that the replica has it.
    assert await _acknowledged(app, "/v1/auth/logout", tokens) == 204
    assert await me_status(app, tokens) == 401


async def test_a_failover_keeps_every_session_and_undoes_no_ending(
    make_client: ClientFactory, ha_settings: Settings, sentinels: SentinelSet
) -> None:
    app = await make_client(ha_settings)
    emails = [f"ha{i}@example.com" for i in range(12)]
    for email in emails:
        await signup(app, email)
    sessions = [await login(app, email) for email in emails]
    ended, live = sessions[:4], sessions[4:]
    await _until_replicas_known(app)
    for tokens in ended:
        assert await _acknowledged(app, "/v1/auth/logout", tokens) == 204

    statuses: Counter[int] = Counter()
    slowest = 0.0
    stop = asyncio.Event()

    async def keep_refreshing(index: int) -> None:
        nonlocal slowest
        while not stop.is_set():
            started = time.monotonic()
            status, body = await refresh(app, live[index]["refresh_token"])
            slowest = max(slowest, time.monotonic() - started)
            statuses[status] += 1
            if status == 200:  # on 503 the client keeps its token and tries again
                live[index] = body
            await asyncio.sleep(0.02)

    workers = [asyncio.create_task(keep_refreshing(i)) for i in range(len(live))]
    try:
        await asyncio.sleep(0.3)
        sentinels.kill_primary()
        await asyncio.to_thread(sentinels.wait_failover)
        await _until_all_refresh(app, live)
    finally:
        stop.set()
        await asyncio.gather(*workers)

    assert set(statuses) <= {200, 401, 503}, statuses
    assert statuses[503] > 0  # the failover was seen
    assert statuses[401] == 0  # no live session was lost, none looked like token reuse
    assert slowest < SLOWEST
    for tokens in ended:  # and no ending was undone
        assert (await refresh(app, tokens["refresh_token"]))[0] == 401
        assert await me_status(app, tokens) == 401


async def _acknowledged(app: Client, path: str, tokens: dict[str, Any]) -> int:
    """POST `path` as a client does: again after a 503 (no replica confirmed in time, which
    a loaded machine can make happen), for up to 5 s; the final status."""
    deadline = time.monotonic() + 5
    while True:
        response = await app.post(path, headers=bearer(tokens))
        await response.read()
        if response.status != 503 or time.monotonic() > deadline:
            return response.status
        await asyncio.sleep(0.1)


async def _until_replicas_known(app: Client) -> None:
    # authsvc reads the primary's replica count once a second.
    from authsvc.web.context import REDIS

    client: Any = app.app[REDIS] if app.app is not None else None
    deadline = time.monotonic() + 5
    while client.replicas < 1:
        assert time.monotonic() < deadline, "authsvc never saw the replica"
        await asyncio.sleep(0.05)


async def _until_all_refresh(app: Client, live: list[dict[str, Any]]) -> None:
    deadline = time.monotonic() + 20
    while True:
        results = [await refresh(app, tokens["refresh_token"]) for tokens in live]
        if all(status == 200 for status, _ in results):
            live[:] = [body for _, body in results]
            return
        assert all(status in (200, 503) for status, _ in results), results
        for i, (status, body) in enumerate(results):
            if status == 200:
                live[i] = body
        assert time.monotonic() < deadline, "service did not come back after the failover"
        await asyncio.sleep(0.1)


def test_the_sentinel_topology_is_the_one_the_tests_claim(sentinels: SentinelSet) -> None:
    import redis

    primary = redis.Redis(port=sentinels.primary)
    try:
        info: Any = primary.info("replication")
        assert info["role"] == "master"
        assert info["connected_slaves"] == 1
    finally:
        primary.close()
    assert len(sentinels.sentinel_ports) == 3
    assert Path(sentinels.sentinel).name == "redis-sentinel"


async def test_a_retried_logout_all_ends_nothing_made_since(
    make_client: ClientFactory, ha_settings: Settings
) -> None:
    # A token of a session ended by logout-all is accepted again only to acknowledge a
    # retry: it must not end the sessions the user made afterwards.
    app = await make_client(ha_settings)
    await signup(app, "retry-all@example.com")
    old = await login(app, "retry-all@example.com")
    assert await _acknowledged(app, "/v1/auth/logout-all", old) == 204
    new = await login(app, "retry-all@example.com")
    assert await _acknowledged(app, "/v1/auth/logout-all", old) == 204
    assert await me_status(app, new) == 200
    assert (await refresh(app, new["refresh_token"]))[0] == 200
    assert await _acknowledged(app, "/v1/auth/logout", new) == 204
    assert await _acknowledged(app, "/v1/auth/logout", new) == 204  # a retry
    assert (
        await app.post("/v1/auth/logout-all", headers=bearer(new))
    ).status == 401  # not its reason


async def test_a_rotation_lost_in_a_failover_does_not_look_like_reuse(
    make_client: ClientFactory, ha_settings: Settings, sentinels: SentinelSet
) -> None:
    import redis

    from authsvc.store.keys import Keys

    app = await make_client(ha_settings)
    user_id = await signup(app, "lost-rotation@example.com")
    tokens = await login(app, "lost-rotation@example.com")
    status, rotated = await refresh(app, tokens["refresh_token"])
    assert status == 200
    # What the promoted replica has when the rotation had not reached it: generation 0.
    primary = redis.Redis(port=sentinels.primary)
    try:
        key = Keys(ha_settings.key_prefix).session(user_id, tokens["session_id"])
        primary.hset(key, "gen", 0)
    finally:
        primary.close()
    status, again = await refresh(app, rotated["refresh_token"])
    assert status == 200, again  # its token is authentic: carry on from it
    assert (await refresh(app, again["refresh_token"]))[0] == 200
    assert (await refresh(app, tokens["refresh_token"]))[0] == 401  # the first one is old
