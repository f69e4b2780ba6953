"""The outbox streams as the delivery workers see them: one consumer group (`GROUP`) for
every instance, so that each event goes to one consumer and stays pending until it is
acknowledged. An event whose consumer went away is taken over once it has been idle for
`claim_idle_ms` (XAUTOCLAIM); a consumer keeps what it retries by touching it (`hold`)."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterable
from typing import Any

from redis.exceptions import ResponseError

from authsvc.domain.clock import rfc3339
from authsvc.store.client import Client
from authsvc.store.keys import Keys
from authsvc.store.scripts import Scripts

log = logging.getLogger(__name__)

GROUP = "authsvc-webhooks"
# Streams counted per pipeline in a sweep: a cluster has 16384 outboxes, and one pipeline of
# them all would hold the event loop for a noticeable time.
SWEEP_CHUNK = 1024


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """One queued event. `webhook_id` names it for receivers, the same on every attempt."""

    stream: str
    entry_id: str
    kind: str
    at_ms: int
    data: dict[str, Any]
    webhook_id: str

    def body(self) -> str:
        """The JSON body every attempt sends."""
        payload = {"type": self.kind, "timestamp": rfc3339(self.at_ms / 1000), "data": self.data}
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


@dataclasses.dataclass(frozen=True, slots=True)
class Backlog:
    """What a sweep found: streams with entries, how many in all, the oldest entry's time."""

    streams: list[str]
    events: int
    oldest_ms: int | None


class Outbox:
    """Take, hold and finish events as consumer `consumer`."""

    def __init__(
        self, client: Client, keys: Keys, scripts: Scripts, consumer: str, claim_idle_ms: int
    ) -> None:
        self._client = client
        self._keys = keys
        self._scripts = scripts
        self.consumer = consumer
        self._claim_idle_ms = claim_idle_ms
        self._grouped: set[str] = set()  # streams whose group this process has made sure of
        self.used: set[str] = set()  # streams this consumer has read

    async def take(self, stream: str, count: int) -> list[Event]:
        """Up to `count` events nobody has taken yet."""
        reply = await self._grouped_call(
            stream, self._client.xreadgroup, GROUP, self.consumer, {stream: ">"}, count=count
        )
        self.used.add(stream)
        return [e for entries in reply or [] for e in self._events(stream, entries[1])]

    async def reclaim(self, stream: str, count: int) -> list[Event]:
        """Up to `count` events whose consumer has not touched them for the claim time (it
        stopped or died); they are this consumer's now."""
        found: list[Event] = []
        cursor = "0-0"
        while len(found) < count:
            reply = await self._grouped_call(
                stream,
                self._client.xautoclaim,
                stream,
                GROUP,
                self.consumer,
                self._claim_idle_ms,
                start_id=cursor,
                count=count - len(found),
            )
            cursor, entries = reply[0], reply[1]
            found.extend(self._events(stream, entries))
            if cursor == "0-0":
                break
        if found:
            self.used.add(stream)
        return found

    async def hold(self, events: Iterable[Event], *, release: bool = False) -> None:
        """Touch events this consumer is retrying, so that nobody takes them over; or, with
        `release`, mark them long idle, so that the next sweep anywhere takes them over."""
        idle = 10 * self._claim_idle_ms if release else 0
        by_stream: dict[str, list[str | bytes | int | memoryview[int]]] = {}
        for event in events:
            by_stream.setdefault(event.stream, []).append(event.entry_id)
        for stream, ids in by_stream.items():
            await self._client.xclaim(stream, GROUP, self.consumer, 0, ids, idle=idle, justid=True)

    async def done(self, event: Event) -> None:
        """Acknowledge and remove a delivered (or abandoned) event."""
        await self._scripts.ack_event(keys=[event.stream], args=[GROUP, event.entry_id])

    async def backlog(self) -> Backlog:
        """Every outbox stream with entries (pending or not yet taken)."""
        streams, total = [], 0
        names = self._keys.outboxes()
        for start in range(0, len(names), SWEEP_CHUNK):
            chunk = names[start : start + SWEEP_CHUNK]
            pipe = self._client.pipeline(transaction=False)
            for name in chunk:
                pipe.xlen(name)
            for name, length in zip(chunk, await pipe.execute(), strict=True):
                if length:
                    streams.append(name)
                    total += int(length)
        oldest = None
        for name in streams:
            first = await self._client.xrange(name, count=1)
            if first:
                at = int(str(first[0][0]).partition("-")[0])
                oldest = at if oldest is None else min(oldest, at)
        return Backlog(streams, total, oldest)

    async def _grouped_call(self, stream: str, command: Any, *args: Any, **kwargs: Any) -> Any:
        if stream not in self._grouped:
            await self._make_group(stream)
        try:
            return await command(*args, **kwargs)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self._make_group(stream)  # the stream was deleted (a flushed Redis)
            return await command(*args, **kwargs)

    async def _make_group(self, stream: str) -> None:
        try:  # from the first entry: events queued before any worker ran are delivered
            await self._client.xgroup_create(stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._grouped.add(stream)

    def _events(self, stream: str, entries: list[Any]) -> list[Event]:
        events = []
        for entry_id, fields in entries:
            if not fields:  # deleted meanwhile (Redis < 7 reports those here)
                continue
            try:
                data = json.loads(fields["d"])
                event = Event(
                    stream,
                    entry_id,
                    fields["t"],
                    int(fields["ms"]),
                    data,
                    self._webhook_id(stream, entry_id),
                )
            except (KeyError, ValueError, TypeError):
                log.error("outbox entry %s %s cannot be read; left in place", stream, entry_id)
                continue
            events.append(event)
        return events

    def _webhook_id(self, stream: str, entry_id: str) -> str:
        # Entry ids are unique within a stream; a cluster's streams differ by their tag.
        if not self._keys.cluster:
            return f"evt_{entry_id}"
        tag = stream[stream.index("{") + 1 : stream.index("}")]
        return f"evt_{tag}_{entry_id}"
