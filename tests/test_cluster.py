"""authsvc on a real three-master Redis Cluster that this module starts: revocations across
masters, script cache per node, MOVED / TRYAGAIN during slot migration, the cluster client."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import redis
from redis.crc import key_slot
from redis.exceptions import AskError
from redis.exceptions import ConnectionError as RedisConnectionError

from authsvc.settings import Settings
from authsvc.store.client import BoundedRedisCluster, connect, pubsub_client
from authsvc.store.keys import Keys
from authsvc.store.revocations import Revocation, RevocationFeed
from authsvc.store.scripts import Scripts, script_text
from authsvc.store.sessions import SessionStore, SessionTimes
from tests.cluster import RedisCluster3
from tests.conftest import ClientFactory, free_port
from tests.helpers import bearer, login, me_status, refresh, signup

_prefixes = itertools.count()
DAY_MS = 86_400_000


@pytest.fixture(scope="module")
def cluster3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster3]:
    cluster = RedisCluster3(tmp_path_factory.mktemp("cluster3"))
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster_settings(cluster3: RedisCluster3) -> Settings:
    return Settings(
        redis_url=cluster3.url,
        redis_cluster=True,
        key_prefix=f"c{os.getpid()}-{next(_prefixes)}",
        bcrypt_rounds=4,
        ip_rate_limit=0,
        log_format="text",
    )


@pytest.fixture
async def store_client(cluster3: RedisCluster3) -> AsyncIterator[BoundedRedisCluster]:
    client = connect(cluster3.url, cluster=True)
    assert isinstance(client, BoundedRedisCluster)
    yield client
    await client.aclose()


def _node(port: int) -> redis.Redis:
    return redis.Redis(port=port, decode_responses=True, socket_timeout=5)


def _owner(cluster: RedisCluster3, key: str) -> int:
    """The port of the master that serves `key`'s slot, asked of the first node."""
    slot = key_slot(key.encode())
    with _node(cluster.ports[0]) as r:
        for start, end, master, *_ in r.execute_command("CLUSTER", "SLOTS"):
            if int(start) <= slot <= int(end):
                return int(master[1])
    raise AssertionError(f"slot {slot} not served")


def _errorstat(port: int, error: str) -> int:
    with _node(port) as r:
        stats: dict[str, Any] = r.info("errorstats")
    entry = stats.get(f"errorstat_{error}", {"count": 0})
    return int(entry["count"])


class SlotMove:
    """Moves one slot between masters the way redis-cli --cluster reshard does."""

    def __init__(self, cluster: RedisCluster3, slot: int, source: int, target: int) -> None:
        self.cluster, self.slot, self.source, self.target = cluster, slot, source, target
        with _node(source) as s, _node(target) as t:
            self.source_id = str(s.execute_command("CLUSTER", "MYID"))
            self.target_id = str(t.execute_command("CLUSTER", "MYID"))

    def begin(self) -> None:
        with _node(self.target) as t:
            t.execute_command("CLUSTER", "SETSLOT", self.slot, "IMPORTING", self.source_id)
        with _node(self.source) as s:
            s.execute_command("CLUSTER", "SETSLOT", self.slot, "MIGRATING", self.target_id)

    def migrate(self, keys: list[str]) -> None:
        with _node(self.source) as s:
            s.execute_command("MIGRATE", "127.0.0.1", self.target, "", 0, 5000, "KEYS", *keys)

    def finish(self) -> None:
        with _node(self.source) as s:
            rest = s.execute_command("CLUSTER", "GETKEYSINSLOT", self.slot, 1000)
        if rest:
            self.migrate(list(rest))
        for port in (self.target, self.source, *self.cluster.ports):
            with _node(port) as r:
                r.execute_command("CLUSTER", "SETSLOT", self.slot, "NODE", self.target_id)


async def _eventually(condition: Callable[[], bool], within: float) -> None:
    """Poll `condition` until it holds; fail after `within` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def _sha(script: str) -> str:
    text = script_text(script).encode()
    return hashlib.sha1(text, usedforsecurity=False).hexdigest()


def _other_master(cluster: RedisCluster3, port: int) -> int:
    return next(p for p in cluster.ports if p != port)


def test_cluster_has_three_masters_serving_every_slot(cluster3: RedisCluster3) -> None:
    for port in cluster3.ports:
        with _node(port) as r:
            assert "cluster_state:ok" in str(r.execute_command("CLUSTER", "INFO"))
            masters = [
                line
                for line in str(r.execute_command("CLUSTER", "NODES")).splitlines()
                if "master" in line.split()[2]
            ]
            assert len(masters) == 3


async def test_revocation_from_a_script_on_one_master_reaches_subscribers_on_every_master(
    cluster3: RedisCluster3, store_client: BoundedRedisCluster
) -> None:
    keys = Keys(f"rev{os.getpid()}", cluster=True)
    store = SessionStore(
        store_client, keys, Scripts(store_client), SessionTimes(DAY_MS, DAY_MS), int
    )
    received: list[list[str]] = [[], [], []]

    def hearing(into: list[str]) -> Callable[[Revocation], None]:
        return lambda ended: into.append(ended.session_id)

    feeds = [
        RevocationFeed(store_client, keys.channel, hearing(received[i]), start=i) for i in range(3)
    ]
    tasks = [asyncio.create_task(f.run()) for f in feeds]
    try:
        async with asyncio.timeout(5):
            for feed in feeds:
                await feed.wait_subscribed()
        # One feed on each master.
        assert sorted(f.source for f in feeds) == sorted(f"127.0.0.1:{p}" for p in cluster3.ports)

        owner = _owner(cluster3, keys.session_index("alice"))
        await store_client.hset(keys.user("alice"), mapping={"email": "a@example.com", "pv": 0})
        args: dict[str, Any] = {"password_version": "0", "user_agent": "t", "ip": "127.0.0.1"}
        args["policy"] = "evict"
        await store.create(user_id="alice", session_id="s1", limit=5, **args)
        await store.create(user_id="alice", session_id="s2", limit=1, **args)
        assert await store.revoke("alice", "logout", only="s2") == ["s2"]

        await _eventually(lambda: all(r == ["s1", "s2"] for r in received), 1.0)
        # The eviction (create_session.lua) and the revocation (revoke_sessions.lua) ran on
        # `owner` and reached the feeds subscribed on the two other masters too.
        assert len({f.source for f in feeds} - {f"127.0.0.1:{owner}"}) == 2
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_feed_resubscribes_on_another_node_when_its_connection_is_killed(
    cluster3: RedisCluster3, store_client: BoundedRedisCluster
) -> None:
    channel = f"resub{os.getpid()}:revocations"
    received: list[str] = []
    feed = RevocationFeed(store_client, channel, lambda r: received.append(r.session_id), start=0)
    task = asyncio.create_task(feed.run())
    try:
        async with asyncio.timeout(5):
            await feed.wait_subscribed()
        first, epoch = feed.source, feed.epoch
        with _node(int(first.rsplit(":", 1)[1])) as r:
            assert r.execute_command("CLIENT", "KILL", "TYPE", "pubsub") >= 1
        await _eventually(lambda: feed.healthy and feed.epoch > epoch, 5.0)
        assert feed.source != first
        with _node(int(first.rsplit(":", 1)[1])) as r:
            r.publish(channel, "after")  # published on the old node, heard on the new one
        await _eventually(lambda: received == ["after"], 1.0)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_scripts_are_reloaded_after_a_flush_on_the_owning_node_only(
    cluster3: RedisCluster3, cluster_settings: Settings, make_client: ClientFactory
) -> None:
    client = await make_client(cluster_settings)
    user_id = await signup(client, "flush@example.com")
    tokens = await login(client, "flush@example.com")
    status, tokens = await refresh(client, tokens["refresh_token"])  # loads rotate_session
    assert status == 200, tokens
    owner = _owner(cluster3, Keys(cluster_settings.key_prefix).session_index(user_id))
    rotate = _sha("rotate_session")
    with _node(owner) as r:
        assert r.script_exists(rotate) == [True]
        r.script_flush()
        assert r.script_exists(rotate) == [False]
    noscript_before = _errorstat(owner, "NOSCRIPT")
    status, tokens = await refresh(client, tokens["refresh_token"])
    assert status == 200, tokens
    assert _errorstat(owner, "NOSCRIPT") == noscript_before + 1
    with _node(owner) as r:
        assert r.script_exists(rotate) == [True]
    await login(client, "flush@example.com")


async def test_requests_follow_moved_after_the_users_slot_is_migrated(
    cluster3: RedisCluster3, cluster_settings: Settings, make_client: ClientFactory
) -> None:
    client = await make_client(cluster_settings)
    user_id = await signup(client, "moved@example.com")
    tokens = await login(client, "moved@example.com")
    index = Keys(cluster_settings.key_prefix).session_index(user_id)
    source = _owner(cluster3, index)
    target = _other_master(cluster3, source)
    move = SlotMove(cluster3, key_slot(index.encode()), source, target)
    move.begin()
    move.finish()
    assert _owner(cluster3, index) == target
    moved_before = _errorstat(source, "MOVED")

    status, tokens = await refresh(client, tokens["refresh_token"])
    assert status == 200, tokens
    assert _errorstat(source, "MOVED") > moved_before  # the client's slot map was stale
    status, tokens = await refresh(client, tokens["refresh_token"])
    assert status == 200, tokens
    sessions = await client.get(
        "/v1/sessions", headers={"Authorization": f"Bearer {tokens['access_token']}"}
    )
    assert sessions.status == 200
    assert [s["session_id"] for s in (await sessions.json())["sessions"]] == [tokens["session_id"]]


async def test_tryagain_while_a_slot_is_half_migrated_is_retried_until_it_completes(
    cluster3: RedisCluster3, cluster_settings: Settings, make_client: ClientFactory
) -> None:
    client = await make_client(cluster_settings)
    user_id = await signup(client, "tryagain@example.com")
    tokens = await login(client, "tryagain@example.com")
    keys = Keys(cluster_settings.key_prefix)
    index = keys.session_index(user_id)
    source = _owner(cluster3, index)
    move = SlotMove(cluster3, key_slot(index.encode()), source, _other_master(cluster3, source))
    move.begin()
    # The session hash moves, its index does not yet: rotate_session.lua (both keys) is
    # refused with TRYAGAIN on the source until the migration completes.
    move.migrate([keys.session(user_id, tokens["session_id"])])
    tryagain_before = _errorstat(source, "TRYAGAIN")

    async def finish_later() -> None:
        await asyncio.sleep(0.3)
        await asyncio.to_thread(move.finish)

    finisher = asyncio.create_task(finish_later())
    started = time.monotonic()
    status, body = await refresh(client, tokens["refresh_token"])
    elapsed = time.monotonic() - started
    await finisher
    assert status == 200, body
    assert elapsed < 2.0
    assert _errorstat(source, "TRYAGAIN") > tryagain_before


async def test_a_stuck_migration_is_a_quick_503_not_a_500(
    cluster3: RedisCluster3, cluster_settings: Settings, make_client: ClientFactory
) -> None:
    client = await make_client(cluster_settings)
    user_id = await signup(client, "stuck@example.com")
    tokens = await login(client, "stuck@example.com")
    keys = Keys(cluster_settings.key_prefix)
    index = keys.session_index(user_id)
    source = _owner(cluster3, index)
    move = SlotMove(cluster3, key_slot(index.encode()), source, _other_master(cluster3, source))
    move.begin()
    move.migrate([keys.session(user_id, tokens["session_id"])])
    try:
        started = time.monotonic()
        response = await client.post(
            "/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
        )
        assert time.monotonic() - started < 3.0
        assert response.status == 503
        assert (await response.json())["error"] == "unavailable"
    finally:
        move.finish()
    status, body = await refresh(client, tokens["refresh_token"])
    assert status == 200, body


async def test_an_unreachable_cluster_raises_redis_errors_only() -> None:
    client = connect(f"redis://127.0.0.1:{free_port()}/0", cluster=True)
    try:
        started = time.monotonic()
        with pytest.raises(RedisConnectionError):
            await client.ping()
        with pytest.raises(RedisConnectionError):
            await pubsub_client(client, 0)
        assert time.monotonic() - started < 3.0
    finally:
        await client.aclose()


def _still_on(node: redis.Redis, key: str) -> bool:
    """Does `key` exist on `node`? A node migrating the key's slot answers ASK for a key it
    no longer holds."""
    try:
        return bool(node.exists(key))
    except AskError:
        return False


async def test_a_revocation_during_a_slot_migration_is_all_or_nothing(
    cluster3: RedisCluster3, cluster_settings: Settings, make_client: ClientFactory
) -> None:
    client = await make_client(cluster_settings)
    user_id = await signup(client, "halfway@example.com")
    sessions = [await login(client, "halfway@example.com") for _ in range(4)]
    first, second, third, fourth = sessions
    # With a tombstone hash in place, both keys the script declares (index and tombstones)
    # are still on the source, so the script runs there and meets the moved hash inside.
    logout = await client.post("/v1/auth/logout", headers=bearer(fourth))
    assert logout.status == 204
    keys = Keys(cluster_settings.key_prefix)
    index, ended = keys.session_index(user_id), keys.ended(user_id)
    source = _owner(cluster3, index)
    move = SlotMove(cluster3, key_slot(index.encode()), source, _other_master(cluster3, source))
    move.begin()
    try:
        with _node(source) as r:
            assert r.exists(ended) == 1
        move.migrate([keys.session(user_id, second["session_id"])])
        tryagain_before = _errorstat(source, "TRYAGAIN")
        errors_before = _errorstat(source, "ERR")

        started = time.monotonic()
        response = await client.post("/v1/auth/logout-all", headers=bearer(first))
        assert time.monotonic() - started < 3.0
        assert response.status == 503, await response.text()
        assert (await response.json())["error"] == "unavailable"
        assert "Retry-After" in response.headers
        # The script ran on the source and was refused inside, at the moved hash (not
        # with TRYAGAIN before it started, which is another path).
        assert _errorstat(source, "TRYAGAIN") == tryagain_before
        assert _errorstat(source, "ERR") > errors_before

        # Nothing was half done: the sessions still on the source are untouched.
        with _node(source) as r:
            for tokens in (first, third):
                assert _still_on(r, keys.session(user_id, tokens["session_id"]))
                assert r.hexists(ended, tokens["session_id"]) is False
            assert r.zcard(index) == 3
    finally:
        move.finish()

    response = await client.post("/v1/auth/logout-all", headers=bearer(first))
    assert response.status == 204, await response.text()
    fresh = await make_client(cluster_settings)  # no access-token verdicts cached
    for tokens in (first, second, third):
        assert await me_status(fresh, tokens) == 401
        status, body = await refresh(fresh, tokens["refresh_token"])
        assert (status, body["error"]) == (401, "invalid_grant")
