"""The revocation feed: a subscription to the channel that every script that ends a session
publishes on. It fails closed: whenever messages could have been missed (a lost, killed or
silent connection, a message it cannot read, any error at all) it starts a new epoch, so
that whatever was learnt before is thrown away, and it is `healthy` only while the
subscription has answered within the last DEAD_AFTER seconds."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from typing import NamedTuple

from authsvc.store.client import Client, pubsub_client

log = logging.getLogger(__name__)

PING_EVERY = 0.2  # seconds between liveness checks of the subscription
# Seconds without any reply before the subscription counts as lost: within the second that
# revocations promise, and several pings' worth, so that a busy event loop does not flap it.
DEAD_AFTER = 0.9


class Revocation(NamedTuple):
    """One ended session, as the channel announces it."""

    session_id: str
    user_id: str
    reason: str


def parse(payload: str) -> Revocation | None:
    """A channel message (see _lib.lua); None for a format this version cannot read."""
    if " " not in payload:  # authsvc 0.1 published the bare session id
        return Revocation(payload, "", "") if payload else None
    version, _, rest = payload.partition(" ")
    parts = rest.split(" ")
    if version != "1" or len(parts) != 3:
        return None
    return Revocation(*parts)


class RevocationFeed:
    """Delivers ended sessions to `on_revoke`; `healthy` while surely subscribed."""

    def __init__(
        self,
        client: Client,
        channel: str,
        on_revoke: Callable[[Revocation], None],
        *,
        on_reset: Callable[[], None] | None = None,
        start: int | None = None,
    ) -> None:
        self._client = client
        self._channel = channel
        self._on_revoke = on_revoke
        self._on_reset = on_reset  # called whenever messages may have been missed
        # On a cluster, the node to subscribe on first (an index into the nodes sorted by
        # name); by default a random one, which spreads instances over the nodes.
        self._attempts = secrets.randbelow(1 << 16) if start is None else start
        self.epoch = 0
        self.source = ""  # where the current subscription is (a cluster node's name)
        self._subscribed = False
        self._last_reply = 0.0
        # `healthy` until then (monotonic): the last reply plus DEAD_AFTER while subscribed,
        # 0 otherwise; one comparison on the hot path.
        self._trusted_until = 0.0
        self._ready = asyncio.Event()

    @property
    def healthy(self) -> bool:
        """True while subscribed and answering: a feed that has gone quiet, or whose task
        died, stops being trusted by itself, without waiting to notice."""
        return time.monotonic() < self._trusted_until

    async def wait_subscribed(self) -> None:
        """Wait until the first subscription is live."""
        await self._ready.wait()

    async def run(self) -> None:
        """Subscribe, listen, and resubscribe after any failure, until cancelled."""
        delay = 0.05
        while True:
            epoch = self.epoch
            try:
                await self._listen()
            except Exception as exc:
                # A cancellation that meets a read timeout can surface as TimeoutError: a
                # feed that is being stopped must stop, not resubscribe.
                if _cancelling():
                    raise asyncio.CancelledError from exc
            if self.epoch > epoch + 1:  # it had subscribed: start again quickly
                delay = 0.05
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _listen(self) -> None:
        # A cluster gives a client for another node on every attempt (see pubsub_client).
        # The client never reconnects by itself: a reconnect must be seen, as a new epoch.
        source, client = await pubsub_client(self._client, self._attempts)
        self._attempts += 1
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(self._channel)
            last_ping = self._last_reply = time.monotonic()
            while True:
                message = await pubsub.get_message(timeout=PING_EVERY)
                now = time.monotonic()
                if message is not None:
                    self._last_reply = now
                    if self._subscribed:
                        self._trusted_until = now + DEAD_AFTER
                    kind = message["type"]
                    if kind == "message":
                        self._deliver(message["data"])
                    elif kind == "subscribe":
                        if self._subscribed:  # subscribed again without being told
                            raise ConnectionError("the subscription was made again")
                        self.epoch += 1
                        self.source = source
                        self._subscribed = True
                        self._trusted_until = now + DEAD_AFTER
                        self._ready.set()
                        log.info("revocation feed subscribed (%s)", source)
                if now - self._last_reply > DEAD_AFTER:
                    raise ConnectionError("no reply from the revocation channel")
                if now - last_ping >= PING_EVERY:
                    await pubsub.ping()
                    last_ping = now
        except BaseException as exc:
            if self._subscribed and not isinstance(exc, asyncio.CancelledError):
                log.warning("revocation feed lost: %r", exc)
            raise
        finally:
            # Distrusted before anything else runs: closing the connection awaits, and
            # meanwhile the gate must not admit from what this subscription taught it.
            self._reset()
            try:
                await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
            finally:
                await client.aclose()

    def _reset(self, *, subscribed: bool = False) -> None:
        was, self._subscribed = self._subscribed, subscribed
        self._trusted_until = time.monotonic() + DEAD_AFTER if subscribed else 0.0
        self.epoch += 1
        if was and self._on_reset is not None:
            self._on_reset()

    def _deliver(self, payload: str) -> None:
        revocation = parse(payload)
        if revocation is None:
            log.warning("revocation message in an unknown format: forgetting every session")
            self._reset(subscribed=True)
            return
        self._on_revoke(revocation)


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class RevocationStreams:
    """The feed's revocations, fanned out to the open revocation streams of this process.

    Each stream gets a bounded queue; a stream that falls behind, and every stream whenever
    the feed may have missed messages, is ended (None in its queue): its client reconnects
    and treats what it learnt before as stale, which is how it learns that something was
    missed."""

    QUEUE_SIZE = 10_000

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[Revocation | None]] = set()

    def open(self) -> asyncio.Queue[Revocation | None]:
        """A new stream's queue; `close` it when the stream ends."""
        queue: asyncio.Queue[Revocation | None] = asyncio.Queue(self.QUEUE_SIZE + 1)
        self._queues.add(queue)
        return queue

    def close(self, queue: asyncio.Queue[Revocation | None]) -> None:
        """Forget a stream's queue."""
        self._queues.discard(queue)

    def publish(self, revocation: Revocation) -> None:
        """Hand a revocation to every stream."""
        for queue in list(self._queues):
            if queue.qsize() >= self.QUEUE_SIZE:
                self._end(queue)
            else:
                queue.put_nowait(revocation)

    def end_all(self) -> None:
        """End every stream (messages may have been missed, or the process is stopping)."""
        for queue in list(self._queues):
            self._end(queue)

    def _end(self, queue: asyncio.Queue[Revocation | None]) -> None:
        self._queues.discard(queue)
        queue.put_nowait(None)  # the queue keeps one place free for this
