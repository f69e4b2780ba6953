"""The delivery worker: takes events from the outboxes, POSTs them signed in the Standard
Webhooks format, and retries what fails.

Retries back off exponentially with jitter from 1 s up to 30 s between tries of an event and
go on for a day (RETRY_FOR_MS); `webhook-id` stays the same, so receivers can deduplicate.
All events go to one receiver, so its health is tracked as a whole too (a circuit): after a
round in which it did not answer (or answered 408, 429, 5xx), only the oldest event is
tried, at most CIRCUIT_MAX apart, until it answers; then the backlog flows again. A
receiver that recovers therefore gets every event within about 30 s. An event that the
receiver refuses (another 4xx) is retried on its own schedule and holds up nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import enum
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
MAX_RETRY = 30.0  # between tries of one event
CIRCUIT_MAX = 10.0  # between probes of a failing receiver: it gets the backlog soon after
RETRY_FOR_MS = 86_400_000  # an event undelivered this long is given up (logged, counted)
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


def backoff(
    failures: int, rand: Callable[[], float] = random.random, cap: float = MAX_RETRY
) -> float:
    """Seconds before the next try after `failures` failed ones: doubling from FIRST_RETRY,
    capped at `cap`, each between half and all of it (jitter that never waits longer)."""
    delay: float = min(cap, FIRST_RETRY * 2.0 ** (failures - 1))
    return delay * (0.5 + rand() / 2)


class Outcome(enum.Enum):
    """How one try went, as far as the receiver's health goes."""

    DELIVERED = 1
    REFUSED = 2  # the receiver answered, but not 2xx: this event is retried on its own
    DOWN = 3  # no answer, a timeout, 408, 429 or 5xx: the receiver is failing
    DROPPED = 4  # unreadable, or undelivered for a day: given up


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
        self._more: set[str] = set()  # streams that may have more than was taken
        self._wake = asyncio.Event()
        self._next_sweep = 0.0
        self._failures = 0  # rounds in a row in which the receiver was down
        self._circuit_until = 0.0  # no try before this loop time
        self._redis_offset_ms = 0.0  # Redis's clock minus this process's, at the last sweep
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
                    self._next_sweep = 0.0  # what rang meanwhile is found by the next sweep
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
        held, self._held = self._held, {}
        if held:
            await self._outbox.hold((h.event for h in held.values()), release=True)

    def _now_ms(self) -> float:
        # The scripts' time (Redis's, with the test shift), which events are stamped with.
        return time.time() * 1000 + self._redis_offset_ms + self._clock.shift_ms

    async def _fill(self, now: float) -> None:
        streams = self._rung | self._more
        self._rung, self._more = set(), set()
        if now >= self._next_sweep:
            self._next_sweep = now + self._sweep_every
            await self._sweep(now, streams)
        for stream in sorted(streams):
            room = MAX_HELD - len(self._held)
            if room <= 0:  # the sweeps find these again once there is room
                break
            fresh = await self._outbox.take(stream, room)
            if len(fresh) == room:  # there may be more: look again at once
                self._more.add(stream)
            self._metrics.webhook_queued.inc(len(fresh))
            self._hold(fresh, now)

    async def _sweep(self, now: float, streams: set[str]) -> None:
        """Touch what is held, find every stream with entries, give up what is a day old
        and take over what a stopped consumer left."""
        if self._held:
            for webhook_id in await self._outbox.hold(h.event for h in self._held.values()):
                self._held.pop(webhook_id, None)  # taken over by another instance
        seconds, micros = await self._client.time()
        self._redis_offset_ms = seconds * 1000 + micros / 1000 - time.time() * 1000
        now_ms = self._now_ms()
        backlog = await self._outbox.backlog(int(now_ms - RETRY_FOR_MS))
        if backlog.expired:
            expired = set(backlog.expired)
            for stream, entry_id in backlog.expired:
                await self._outbox.drop(stream, entry_id)
            self._held = {
                k: h
                for k, h in self._held.items()
                if (h.event.stream, h.event.entry_id) not in expired
            }
            self._metrics.webhook_dropped.inc(len(expired))
            log.error("%d webhook events given up after a day undelivered", len(expired))
        self._metrics.webhook_undelivered.set(backlog.events - len(backlog.expired))
        oldest = 0.0 if backlog.oldest_ms is None else (now_ms - backlog.oldest_ms) / 1000
        self._metrics.webhook_oldest.set(max(0.0, oldest))
        for stream in backlog.streams:
            room = MAX_HELD - len(self._held)
            if room > 0:
                self._hold(await self._outbox.reclaim(stream, room), now)
        streams.update(backlog.streams)

    def _hold(self, events: list[Event], now: float) -> None:
        for event in events:
            self._held.setdefault(event.webhook_id, _Held(event, due=now))

    async def _deliver(self, now: float) -> None:
        if now < self._circuit_until:
            return
        if self._failures:  # the receiver has been down: one try, the oldest, to see
            due = sorted(self._held.values(), key=lambda h: h.event.at_ms)[:1]
        else:
            ready = (h for h in self._held.values() if h.due <= now)
            due = sorted(ready, key=lambda h: h.event.at_ms)[:SENDERS]
        if not due:
            return
        outcomes = set(await asyncio.gather(*(self._attempt(held) for held in due)))
        now = asyncio.get_running_loop().time()
        if outcomes & {Outcome.DELIVERED, Outcome.REFUSED}:  # it answers
            if self._failures:
                log.info("webhook receiver answering again")
                self._next_sweep = now  # fetch what waited meanwhile
            self._failures = 0
        elif Outcome.DOWN in outcomes:
            self._failures += 1
            self._circuit_until = now + backoff(self._failures, cap=CIRCUIT_MAX)
            if self._failures == 1:
                log.warning("webhook receiver failing; probing it with backoff")

    async def _attempt(self, held: _Held) -> Outcome:
        event = held.event
        if not event.kind:
            log.error("outbox entry %s %s cannot be read; dropped", event.stream, event.entry_id)
            return await self._give_up(event)
        status = await self._post(event)
        if status is not None and 200 <= status < 300:
            await self._outbox.done(event)
            self._held.pop(event.webhook_id, None)
            self._metrics.webhook_delivered.inc()
            return Outcome.DELIVERED
        self._metrics.webhook_failures.inc()
        if self._now_ms() - event.at_ms >= RETRY_FOR_MS:
            log.error("webhook %s (%s) given up after a day", event.webhook_id, event.kind)
            return await self._give_up(event)
        held.failures += 1
        held.due = asyncio.get_running_loop().time() + backoff(held.failures)
        if status is None or status in (408, 429) or status >= 500:
            return Outcome.DOWN
        return Outcome.REFUSED

    async def _give_up(self, event: Event) -> Outcome:
        await self._outbox.done(event)
        self._held.pop(event.webhook_id, None)
        self._metrics.webhook_dropped.inc()
        return Outcome.DROPPED

    async def _post(self, event: Event) -> int | None:
        """The receiver's status, or None for no answer."""
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
                if response.status >= 300:
                    log.debug("webhook %s: receiver answered %s", event.webhook_id, response.status)
                return response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.debug("webhook %s: %r", event.webhook_id, exc)
            return None

    async def _sleep(self, now: float) -> None:
        wake_at = self._next_sweep
        if self._held:
            soonest = min(h.due for h in self._held.values())
            wake_at = min(wake_at, self._circuit_until if self._failures else soonest)
        self._wake.clear()
        if self._rung or self._more:
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
                        await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
                    await client.aclose()
            except Exception as exc:
                log.debug("webhook doorbell lost: %r", exc)
                await asyncio.sleep(1.0)
