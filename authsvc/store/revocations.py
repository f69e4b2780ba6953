"""The revocation feed: a subscription to the channel that every revoking script publishes
ended session ids on. Each (re)subscription starts a new epoch, so that whatever was learnt
while messages could have been missed is thrown away."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable

from redis.exceptions import RedisError

from authsvc.store.client import Client, pubsub_client

log = logging.getLogger(__name__)

PING_EVERY = 1.0  # seconds between liveness checks of the subscription
DEAD_AFTER = 3.0  # seconds without any reply before the subscription counts as lost


class RevocationFeed:
    """Delivers revoked session ids to `on_revoke`; `healthy` while subscribed."""

    def __init__(
        self,
        client: Client,
        channel: str,
        on_revoke: Callable[[str], None],
        *,
        start: int | None = None,
    ) -> None:
        self._client = client
        self._channel = channel
        self._on_revoke = on_revoke
        # On a cluster, the node to subscribe on first (an index into the nodes sorted by
        # name); by default a random one, which spreads instances over the nodes.
        self._attempts = secrets.randbelow(1 << 16) if start is None else start
        self.epoch = 0
        self.healthy = False
        self.source = ""  # where the current subscription is (a cluster node's name)
        self._ready = asyncio.Event()

    async def wait_subscribed(self) -> None:
        """Wait until the first subscription is live."""
        await self._ready.wait()

    async def run(self) -> None:
        """Subscribe, listen, and resubscribe after any failure, until cancelled."""
        delay = 0.05
        while True:
            try:
                await self._listen()
            except (RedisError, OSError) as exc:
                # A cancellation that meets a read timeout can surface as TimeoutError (an
                # OSError): a feed that is being stopped must stop, not resubscribe.
                if _cancelling():
                    raise asyncio.CancelledError from exc
                if self.healthy:
                    log.warning("revocation feed lost: %s", type(exc).__name__)
                    delay = 0.05
            self._lose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _lose(self) -> None:
        self.healthy = False
        self.epoch += 1

    async def _listen(self) -> None:
        # A cluster gives a client for another node on every attempt (see pubsub_client).
        source, client, owned = await pubsub_client(self._client, self._attempts)
        self._attempts += 1
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(self._channel)
            loop = asyncio.get_running_loop()
            last_reply = loop.time()
            last_ping = last_reply
            while True:
                message = await pubsub.get_message(timeout=PING_EVERY)
                now = loop.time()
                if message is not None:
                    last_reply = now
                    kind = message["type"]
                    if kind == "message":
                        self._on_revoke(message["data"])
                    elif kind == "subscribe":
                        self.epoch += 1
                        self.source = source
                        self.healthy = True
                        self._ready.set()
                        log.info("revocation feed subscribed (%s)", source)
                if now - last_reply > DEAD_AFTER:
                    raise ConnectionError("no reply from the revocation channel")
                if now - last_ping >= PING_EVERY:
                    await pubsub.ping()
                    last_ping = now
        finally:
            try:
                await pubsub.aclose()  # type: ignore[no-untyped-call]
            finally:
                if owned:
                    await client.aclose()


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
