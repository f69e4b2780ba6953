"""The delivery worker: takes events from the outboxes, POSTs them signed in the Standard
Webhooks format, and retries what fails.

Retries back off exponentially with jitter from 1 s up to 30 s between tries and go on for a
day (RETRY_FOR); `webhook-id` stays the same, so receivers can deduplicate. All events go to
one receiver, so failures are tracked for it as a whole too (a circuit): after a failed
round only one event is tried, at the backoff's pace, until one gets through; then the
backlog flows again. A receiver that recovers therefore gets every event within about 30 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import random
import time
from collections.abc import Callable

import aiohttp
from standardwebhooks.webhooks import Webhook

from authsvc.domain.clock import Clock
from authsvc.metrics import Metrics
from authsvc.store.client import Client, pubsub_client
from authsvc.webhooks.outbox import Event, Outbox

log = logging.getLogger(__name__)

FIRST_RETRY = 1.0  # seconds
MAX_RETRY = 30.0
RETRY_FOR_MS = 86_400_000  # an event that has failed for this long is given up (logged)
ATTEMPT_TIMEOUT = 10.0  # seconds per POST
MAX_HELD = 1000  # events one worker holds at once; the rest wait in Redis
SENDERS = 16  # POSTs in flight at once: a round of tries, which lasts ATTEMPT_TIMEOUT at most
# A sweep counts the entries of every outbox: one on a single Redis, 16384 on a cluster,
# where the doorbell does the quick work and sweeps catch what it missed.
SWEEP_EVERY = 1.0
CLUSTER_SWEEP_EVERY = 10.0
# An event untouched this long is taken over by another consumer. A worker touches what it
# holds at every sweep, which comes at least once per sweep interval and round of tries.
CLAIM_IDLE_MS = 60_000


def backoff(failures: int, rand: Callable[[], float] = random.random) -> float:
    """Seconds before the next try after `failures` failed ones: doubling from FIRST_RETRY,
    capped at MAX_RETRY, each between half and all of it (jitter that never waits longer)."""
    delay: float = min(MAX_RETRY, FIRST_RETRY * 2.0 ** (failures - 1))
    return delay * (0.5 + rand() / 2)


@dataclasses.dataclass(slots=True)
class _Held:
    event: Event
    failures: int = 0
    due: float = 0.0  # loop time of the next try


class WebhookWorker:
    """Delivers the outboxes' events to `url` until cancelled; `close` hands back the rest."""

    def __init__(
        self,
        *,
        client: Client,
        outbox: Outbox,
        bell: str,
        url: str,
        secret: str,
        metrics: Metrics,
        clock: Clock,
        sweep_every: float,
    ) -> None:
        self._client = client
        self._outbox = outbox
        self._bell = bell
        self._url = url
        self._signer = Webhook(secret)
        self._metrics = metrics
        self._clock = clock
        self._sweep_every = sweep_every
        self._held: dict[str, _Held] = {}  # by webhook id
        self._rung: set[str] = set()  # streams the doorbell named since the last look
        self._wake = asyncio.Event()
        self._next_sweep = 0.0
        self._failures = 0  # rounds in a row without a delivery
        self._circuit_until = 0.0  # no try before this loop time
        self._http: aiohttp.ClientSession | None = None

    async def run(self) -> None:
        """Deliver until cancelled."""
        loop = asyncio.get_running_loop()
        timeout = aiohttp.ClientTimeout(total=ATTEMPT_TIMEOUT)
        self._http = aiohttp.ClientSession(timeout=timeout)
        listener = asyncio.create_task(self._listen(), name="authsvc.webhook_bell")
        try:
            while True:
                try:
                    await self._fill(loop.time())
                    await self._deliver(loop.time())
                except Exception as exc:  # Redis away: try again after a pause
                    log.warning("webhook worker: %r", exc)
                    await asyncio.sleep(1.0)
                await self._sleep(loop.time())
        finally:
            listener.cancel()
            with contextlib.suppress(BaseException):
                await listener
            await self._http.close()

    async def close(self) -> None:
        """Hand back the events this worker holds (after `run` was cancelled): they look
        long idle, and the next sweep of any instance takes them over."""
        if self._held:
            await self._outbox.hold((h.event for h in self._held.values()), release=True)
            self._held.clear()

    async def _fill(self, now: float) -> None:
        streams, self._rung = self._rung, set()
        if now >= self._next_sweep:
            self._next_sweep = now + self._sweep_every
            backlog = await self._outbox.backlog()
            streams.update(backlog.streams)
            self._metrics.webhook_undelivered.set(backlog.events)
            oldest = 0.0
            if backlog.oldest_ms is not None:
                oldest = max(0.0, time.time() - backlog.oldest_ms / 1000)
            self._metrics.webhook_oldest.set(oldest)
            if self._held:  # keep what is being retried from being taken over
                await self._outbox.hold(h.event for h in self._held.values())
        for stream in sorted(streams):
            room = MAX_HELD - len(self._held)
            if room <= 0:
                break
            stale = await self._outbox.reclaim(stream, room)
            # While the receiver fails, nothing new is taken, but for one event to try it
            # with when nothing else is held.
            want = room - len(stale) if not self._failures else int(not self._held and not stale)
            fresh = await self._outbox.take(stream, want) if want > 0 else []
            self._metrics.webhook_queued.inc(len(fresh))
            for event in (*stale, *fresh):
                self._held.setdefault(event.webhook_id, _Held(event, due=now))

    async def _deliver(self, now: float) -> None:
        if now < self._circuit_until:
            return
        due = sorted((h for h in self._held.values() if h.due <= now), key=lambda h: h.event.at_ms)
        # One round of tries at a time; while the receiver fails, one try to see if it is back.
        due = due[: 1 if self._failures else SENDERS]
        if not due:
            return
        results = await asyncio.gather(*(self._attempt(held) for held in due))
        now = asyncio.get_running_loop().time()
        if any(results):
            if self._failures:
                log.info("webhook receiver reachable again")
                self._next_sweep = now  # fetch what waited meanwhile
            self._failures = 0
            return
        self._failures += 1
        self._circuit_until = now + backoff(self._failures)
        if self._failures == 1:
            log.warning("webhook receiver failing; retrying with backoff")

    async def _attempt(self, held: _Held) -> bool:
        event = held.event
        if await self._post(event):
            await self._outbox.done(event)
            del self._held[event.webhook_id]
            self._metrics.webhook_delivered.inc()
            return True
        self._metrics.webhook_failures.inc()
        if self._clock() * 1000 - event.at_ms >= RETRY_FOR_MS:
            await self._outbox.done(event)
            del self._held[event.webhook_id]
            self._metrics.webhook_dropped.inc()
            log.error("webhook %s (%s) given up after a day", event.webhook_id, event.kind)
            return False
        held.failures += 1
        held.due = asyncio.get_running_loop().time() + backoff(held.failures)
        return False

    async def _post(self, event: Event) -> bool:
        assert self._http is not None
        body = event.body()
        sent_at = datetime.datetime.fromtimestamp(time.time(), datetime.UTC)
        headers = {
            "content-type": "application/json",
            "user-agent": "authsvc-webhooks",
            "webhook-id": event.webhook_id,
            "webhook-timestamp": str(int(sent_at.timestamp())),
            "webhook-signature": self._signer.sign(event.webhook_id, sent_at, body),
        }
        try:
            async with self._http.post(
                self._url, data=body.encode(), headers=headers, allow_redirects=False
            ) as response:
                ok = 200 <= response.status < 300
                if not ok:
                    log.debug("webhook %s: receiver answered %s", event.webhook_id, response.status)
                return ok
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.debug("webhook %s: %r", event.webhook_id, exc)
            return False

    async def _sleep(self, now: float) -> None:
        wake_at = self._next_sweep
        if self._held:
            soonest = min(h.due for h in self._held.values())
            wake_at = min(wake_at, max(soonest, self._circuit_until))
        self._wake.clear()
        if self._rung:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, wake_at - now)):
                await self._wake.wait()

    async def _listen(self) -> None:
        """The doorbell: a hint of which stream has news. A lost subscription only delays
        events until the next sweep, which comes at once after it is made again."""
        attempt = 0
        while True:
            try:
                _, client = await pubsub_client(self._client, attempt)
                attempt += 1
                pubsub = client.pubsub()
                try:
                    await pubsub.subscribe(self._bell)
                    self._next_sweep = 0.0  # whatever rang before this was missed
                    self._wake.set()
                    while True:
                        message = await pubsub.get_message(timeout=5.0)
                        if message is None:
                            await pubsub.ping()
                        elif message["type"] == "message":
                            self._rung.add(message["data"])
                            self._wake.set()
                finally:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()  # type: ignore[no-untyped-call]
                    await client.aclose()
            except Exception as exc:
                log.debug("webhook doorbell lost: %r", exc)
                await asyncio.sleep(1.0)
