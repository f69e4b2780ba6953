"""The single-server client: automatic pipelining of scripts (BoundedRedis.evalsha_batched)
over its shared connection (store/channel.py), and command packing by hiredis."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import RedisError

from authsvc.store.client import BoundedRedis, HiredisPackingConnection, connect
from authsvc.store.keys import Keys
from authsvc.store.scripts import Scripts
from authsvc.store.sessions import Rotation, SessionStore, SessionTimes
from tests.conftest import RedisServer, free_port

DAY_MS = 86_400_000


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[BoundedRedis]:
    client = connect(redis_server.url, cluster=False)
    assert isinstance(client, BoundedRedis)
    yield client
    await client.aclose()


def _store(client: BoundedRedis, name: str) -> SessionStore:
    return SessionStore(
        client, Keys(f"{name}{os.getpid()}"), Scripts(client), SessionTimes(DAY_MS, DAY_MS), int
    )


def _count_batches(client: BoundedRedis, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of commands in each batch the client's channel sends from now on."""
    sent: list[int] = []
    channel = client.channel
    assert channel is not None
    submit = channel.submit

    def counting(commands: Any, futures: Any) -> None:
        sent.append(len(commands))
        submit(commands, futures)

    monkeypatch.setattr(channel, "submit", counting)
    return sent


async def _logged_in(store: SessionStore, client: BoundedRedis, user: str, sessions: int) -> None:
    await client.hset(store.keys.user(user), mapping={"email": f"{user}@example.com", "pv": 0})
    for i in range(sessions):
        await store.create(
            user_id=user,
            session_id=f"s{i}",
            password_version="0",
            limit=sessions,
            policy="evict",
            user_agent="test",
            ip="127.0.0.1",
        )


async def test_concurrent_script_calls_travel_in_one_pipeline(
    client: BoundedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(client, "batch")
    users = [f"u{i}" for i in range(50)]
    for user in users:
        await _logged_in(store, client, user, 1)
    sent = _count_batches(client, monkeypatch)
    results = await asyncio.gather(
        *(
            store.rotate(
                user_id=u, session_id="s0", generation=0, grace_ms=10_000, user_agent="", ip=""
            )
            for u in users
        )
    )
    assert [r.outcome for r in results] == [Rotation.ROTATED] * 50
    assert [r.generation for r in results] == [1] * 50
    assert sent == [50]


async def test_a_batch_after_a_script_flush_loads_the_script_and_answers_every_call(
    client: BoundedRedis,
) -> None:
    store = _store(client, "flush")
    await _logged_in(store, client, "alice", 5)
    await client.script_flush()
    listed = await asyncio.gather(*(store.list("alice") for _ in range(20)))
    assert [len(rows) for rows in listed] == [5] * 20


async def test_a_cancelled_caller_leaves_the_rest_of_its_batch_answered(
    client: BoundedRedis,
) -> None:
    store = _store(client, "cancel")
    await _logged_in(store, client, "bob", 3)
    calls = [asyncio.ensure_future(store.list("bob")) for _ in range(10)]
    await asyncio.sleep(0)  # all ten are in one batch, not yet sent
    calls[3].cancel()
    done = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(done[3], asyncio.CancelledError)
    assert [len(rows) for i, rows in enumerate(done) if i != 3] == [3] * 9  # type: ignore[arg-type]


async def test_a_batch_that_cannot_reach_redis_fails_every_call_with_a_redis_error() -> None:
    client = connect(f"redis://127.0.0.1:{free_port()}/0", cluster=False)
    assert isinstance(client, BoundedRedis)
    try:
        scripts = Scripts(client)
        outcomes = await asyncio.gather(
            *(scripts.throttle(keys=["k"], args=[1, 1000, "hit", 0, ""]) for _ in range(5)),
            return_exceptions=True,
        )
        assert all(isinstance(o, RedisError) for o in outcomes), outcomes
    finally:
        await client.aclose()


def test_hiredis_packing_sends_the_bytes_redis_py_would() -> None:
    args = ("EVALSHA", "f" * 40, 2, "p:{u:ab}:s", "p:{u:ab}:s:cd", "cd", 17, 1_764_190_000_000)
    ours = HiredisPackingConnection().pack_command(*args)
    assert b"".join(ours) == b"".join(Connection().pack_command(*args))


def test_tls_and_unix_socket_urls_keep_their_own_connection_class_and_no_channel() -> None:
    def connection_class(url: str) -> tuple[type, bool]:
        client = connect(url, cluster=False)
        assert isinstance(client, BoundedRedis)
        cls: type = client.connection_pool.connection_class
        return cls, client.channel is not None

    # Scripts travel on a channel (plain TCP) only where the connections are plain TCP.
    assert connection_class("redis://127.0.0.1:6379/0") == (HiredisPackingConnection, True)
    assert connection_class("rediss://127.0.0.1:6379/0") == (SSLConnection, False)
    assert connection_class("unix:///tmp/redis.sock") == (UnixDomainSocketConnection, False)
