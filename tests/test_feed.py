"""The revocation feed fails closed: a killed or silent subscription, a handler that fails
and a message it cannot read each start a new epoch, so that no session learnt before is
trusted without asking Redis again. Real redis-server (single and cluster), real kills."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis
from aiohttp import web

from authsvc.domain.clock import Clock
from authsvc.domain.errors import InvalidToken
from authsvc.domain.gate import SessionGate
from authsvc.settings import Settings
from authsvc.store.client import Client, connect
from authsvc.store.revocations import Revocation, RevocationFeed, parse
from authsvc.store.sessions import Ended, LiveSession
from authsvc.web.context import FEED, SERVICE
from tests.conftest import Backend, ClientFactory
from tests.helpers import bearer, login, me_status, signup

_channels = itertools.count()
PAUSE = 1.5  # seconds that CLIENT PAUSE stops every node in the silent-subscription test


def _channel() -> str:
    return f"feed{os.getpid()}-{next(_channels)}:revocations"


def _ports(url: str, cluster: bool) -> list[int]:
    """The port of the server, or of every master of the cluster."""
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    if not cluster:
        return [port]
    with redis.Redis(port=port) as r:
        return sorted({int(shard[2][1]) for shard in r.execute_command("CLUSTER", "SLOTS")})


def _on_every_node(url: str, cluster: bool, *command: str) -> list[Any]:
    """Run `command` on the server, or on every master of the cluster; the replies."""
    replies = []
    for port in _ports(url, cluster):
        with redis.Redis(port=port) as r:
            replies.append(r.execute_command(*command))
    return replies


async def _until(
    condition: Callable[[], bool], within: float, *, since: float | None = None
) -> float:
    """Poll `condition` until it holds, failing once `within` seconds have passed since
    `since` (a time.monotonic(); now by default); the seconds it took."""
    started = time.monotonic() if since is None else since
    while not condition():
        assert time.monotonic() - started < within, f"condition not met within {within} s"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


@contextlib.asynccontextmanager
async def _running(
    backend: Backend, channel: str, on_revoke: Callable[[Revocation], None]
) -> AsyncIterator[tuple[RevocationFeed, Client, asyncio.Task[None]]]:
    """A feed on its own client, running and subscribed; cancelled and closed afterwards."""
    client = connect(backend.url, cluster=backend.cluster)
    feed = RevocationFeed(client, channel, on_revoke)
    task = asyncio.create_task(feed.run())
    try:
        async with asyncio.timeout(5):
            await feed.wait_subscribed()
        await _until(lambda: feed.healthy, 5.0)
        yield feed, client, task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.aclose()


def _app(client: Any) -> web.Application:
    app = client.app
    assert isinstance(app, web.Application)
    return app


def _cached(app: web.Application, session_id: str) -> bool:
    """Does the app's gate hold `session_id` as live? (Reads the gate's private cache, only
    to check a test's premise: that the instance answers without asking Redis.)"""
    gate: SessionGate = app[SERVICE]._gate
    return session_id in gate._live


async def test_a_session_ended_while_the_subscription_is_killed_is_refused_within_a_second(
    make_client: ClientFactory, settings: Settings
) -> None:
    a = await make_client(settings)
    b = await make_client(settings)
    feed_b = _app(b)[FEED]
    await signup(a, "killed@example.com")
    tokens = await login(a, "killed@example.com")
    await _until(lambda: feed_b.healthy, 5.0)
    response = await b.get("/v1/me", headers=bearer(tokens))
    assert response.status == 200, await response.text()
    session_id = (await response.json())["session_id"]
    assert _cached(_app(b), session_id)  # B now admits the session without asking Redis
    epoch = feed_b.epoch

    # Whether B's feed stopped trusting its subscription at some turn of the event loop
    # after the kill (rather than being reconnected and subscribed again under it).
    distrusted = False

    async def watch() -> None:
        nonlocal distrusted
        while True:
            distrusted = distrusted or not feed_b.healthy
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    try:
        killed_at = time.monotonic()
        url = settings.redis_url or ""
        killed = _on_every_node(url, settings.redis_cluster, "CLIENT", "KILL", "TYPE", "pubsub")
        assert sum(killed) >= 2  # A's subscription and B's
        logout = await a.post("/v1/auth/logout", headers=bearer(tokens))  # unheard by B
        assert logout.status == 204
        statuses = [await me_status(b, tokens)]
        while statuses[-1] != 401:
            assert statuses[-1] == 200, statuses
            assert time.monotonic() - killed_at < 1.0, f"B still admits the session: {statuses}"
            await asyncio.sleep(0.01)
            statuses.append(await me_status(b, tokens))
        assert time.monotonic() - killed_at < 1.0, statuses
        assert feed_b.epoch > epoch
        await _until(lambda: feed_b.healthy, 5.0)
        assert distrusted, "B's subscription was made again without the feed losing trust"
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    # And B stays closed to the session with its feed back.
    assert await me_status(b, tokens) == 401


async def test_a_subscription_that_goes_silent_stops_being_trusted_within_a_second(
    redis_backend: Backend,
) -> None:
    async with _running(redis_backend, _channel(), lambda ended: None) as (feed, _, _task):
        epoch = feed.epoch
        paused_at = time.monotonic()
        pause = ("CLIENT", "PAUSE", str(int(PAUSE * 1000)), "ALL")
        replies = _on_every_node(redis_backend.url, redis_backend.cluster, *pause)
        assert all(r in (True, b"OK", "OK") for r in replies), replies
        await _until(lambda: not feed.healthy, 1.0, since=paused_at)
        # Every node pauses for PAUSE seconds from when it ran the command, which was after
        # paused_at: until then nothing it says can make the feed trusted again.
        while time.monotonic() < paused_at + PAUSE:
            assert not feed.healthy, "trusted again while Redis was still paused"
            await asyncio.sleep(0.01)
        await _until(lambda: feed.healthy, 5.0)
        assert feed.epoch > epoch


async def test_a_feed_whose_handler_fails_fails_closed_and_resubscribes(
    redis_backend: Backend,
) -> None:
    channel = _channel()
    calls: list[Revocation] = []

    def on_revoke(ended: Revocation) -> None:
        calls.append(ended)
        if len(calls) == 1:
            raise RuntimeError("a bug in the handler")

    async with _running(redis_backend, channel, on_revoke) as (feed, client, task):
        epoch = feed.epoch
        await client.publish(channel, "1 sid1 uid1 logout")
        await _until(lambda: bool(calls), 1.0)
        # Looked at on every turn of the event loop, so that the state between the failure
        # and the resubscription (at least one 50 ms back-off) is not missed.
        deadline = time.monotonic() + 1.0
        while feed.epoch == epoch:
            assert time.monotonic() < deadline, "no new epoch after the handler failed"
            await asyncio.sleep(0)
        # The failure starts a new epoch, and the feed is not trusted until it has
        # subscribed again.
        assert not feed.healthy
        assert not task.done()
        lost = feed.epoch
        await _until(lambda: feed.healthy, 5.0)
        assert feed.epoch > lost  # the new subscription is an epoch of its own
        # Subscribed again: the next message is heard.
        await client.publish(channel, "1 sid2 uid2 logout")
        await _until(lambda: len(calls) == 2, 1.0)
        assert calls == [Revocation("sid1", "uid1", "logout"), Revocation("sid2", "uid2", "logout")]
        assert not task.done()


LIVE = LiveSession("gate@example.com", 0, 0, 0, 0)


async def test_a_message_in_an_unknown_format_makes_the_gate_forget_every_session(
    redis_backend: Backend,
) -> None:
    channel = _channel()
    received: list[Revocation] = []
    probes: list[str] = []

    async def probe(user_id: str, session_id: str) -> LiveSession | Ended:
        probes.append(session_id)
        return LIVE

    gate = SessionGate(probe, Clock(), recheck_after=60.0)

    def on_revoke(ended: Revocation) -> None:
        received.append(ended)
        gate.revoked(ended.session_id, ended.reason)

    async with _running(redis_backend, channel, on_revoke) as (feed, client, _task):
        gate.feed = feed
        assert await gate.admit("uid1", "sid1") == "gate@example.com"
        assert await gate.admit("uid1", "sid1") == "gate@example.com"
        assert probes == ["sid1"]  # the second admission came from the cache

        epoch = feed.epoch
        await client.publish(channel, "9 something new")
        await _until(lambda: feed.epoch > epoch, 1.0)
        assert received == []
        await _until(lambda: feed.healthy, 5.0)
        assert await gate.admit("uid1", "sid1") == "gate@example.com"
        assert probes == ["sid1", "sid1"]  # forgotten: asked Redis again

        # authsvc 0.1 published the bare session id: still a revocation.
        await client.publish(channel, "sid1")
        await _until(lambda: bool(received), 1.0)
        assert received == [Revocation("sid1", "", "")]
        with pytest.raises(InvalidToken):
            await gate.admit("uid1", "sid1")
        assert probes == ["sid1", "sid1"]


class _SteadyFeed:
    epoch = 1
    healthy = True


async def test_the_gate_keeps_the_most_recently_used_sessions() -> None:
    probes: list[str] = []

    async def probe(user_id: str, session_id: str) -> LiveSession | Ended:
        probes.append(session_id)
        return LIVE

    gate = SessionGate(probe, Clock(), recheck_after=60.0, cache_size=2)
    gate.feed = _SteadyFeed()
    for session_id in ("a", "b", "a", "c", "a", "b"):
        assert await gate.admit("uid", session_id) == "gate@example.com"
    # b was the least recently used when c came in; a stayed throughout.
    assert probes == ["a", "b", "c", "b"]


async def test_a_failed_delivery_is_distrusted_before_anything_else_runs(
    redis_backend: Backend,
) -> None:
    channel = _channel()
    probes: list[str] = []
    failed: list[Revocation] = []

    async def probe(user_id: str, session_id: str) -> LiveSession | Ended:
        probes.append(session_id)
        return LIVE

    gate = SessionGate(probe, Clock(), recheck_after=60.0)

    def on_revoke(ended: Revocation) -> None:
        failed.append(ended)
        raise RuntimeError("a bug in the handler: the revocation is not applied")

    async with _running(redis_backend, channel, on_revoke) as (feed, client, _task):
        gate.feed = feed
        await gate.admit("uid1", "sid1")
        await gate.admit("uid1", "sid1")
        assert probes == ["sid1"]  # cached
        await client.publish(channel, "1 sid1 uid1 logout")
        deadline = time.monotonic() + 1.0
        while not failed:
            assert time.monotonic() < deadline, "the message never reached the handler"
            await asyncio.sleep(0)
        # The first thing to run after the failed delivery must not be told "live" from the
        # cache: the message that was not applied may have ended this very session.
        await gate.admit("uid1", "sid1")
        assert probes == ["sid1", "sid1"], (feed.epoch, feed.healthy)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ("1 sid uid logout", Revocation("sid", "uid", "logout")),
        ("1 s-1_A u-9 password", Revocation("s-1_A", "u-9", "password")),
        ("sid", Revocation("sid", "", "")),  # authsvc 0.1: the bare session id
        ("", None),
        ("9 something new", None),
        ("2 sid uid logout", None),  # a later version
        ("1 sid uid", None),
        ("1 sid uid logout extra", None),
    ],
)
def test_parse_reads_the_channel_format(payload: str, expected: Revocation | None) -> None:
    assert parse(payload) == expected
