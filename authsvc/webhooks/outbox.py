"""The outbox streams as the delivery workers see them: one consumer group (`GROUP`) for
every instance, so that each event goes to one consumer and stays pending until it is
acknowledged. An event whose consumer went away is taken over once it has been idle for
`claim_idle_ms` (XAUTOCLAIM); a consumer keeps what it retries by touching it (`hold`)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import secrets
from collections.abc import Iterable
from typing import Any

from redis.exceptions import ResponseError

from authsvc.domain.clock import rfc3339
from authsvc.store import addresses, user_agents
from authsvc.store.client import Client
from authsvc.store.keys import Keys
from authsvc.store.scripts import Scripts

log = logging.getLogger(__name__)

GROUP = "authsvc-webhooks"
# Streams looked at per pipeline in a sweep, with a pause for the event loop in between: a
# cluster has 16384 outboxes.
SWEEP_CHUNK = 256
# Oldest entries a sweep reads per stream: to measure their age, and to drop the expired.
SWEEP_HEAD = 100


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """One queued event. `webhook_id` names it for receivers, the same on every attempt;
    an entry that cannot be read has `kind` "" (it is dropped)."""

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
    """What a sweep found: streams with entries, how many in all, the time of the oldest
    that is still to be delivered, and the entries older than the cutoff."""

    streams: list[str]
    events: int
    oldest_ms: int | None
    expired: list[tuple[str, str]]  # (stream, entry id)


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
        self._salts: dict[str, str] = {}  # stream -> what makes its webhook ids unique
        self._names = keys.outboxes()

    async def take(self, stream: str, count: int) -> list[Event]:
        """Up to `count` events nobody has taken yet."""
        reply = await self._grouped_call(
            stream, self._client.xreadgroup, GROUP, self.consumer, {stream: ">"}, count=count
        )
        return [e for entries in reply or [] for e in await self._events(stream, entries[1])]

    async def reclaim(self, stream: str, count: int) -> list[Event]:
        """Up to `count` events whose consumer has not touched them for the claim time (it
        stopped or died); they are this consumer's now."""
        reply = await self._grouped_call(
            stream,
            self._client.xautoclaim,
            stream,
            GROUP,
            self.consumer,
            self._claim_idle_ms,
            start_id="0-0",
            count=count,
        )
        return await self._events(stream, reply[1])

    async def hold(self, events: Iterable[Event], *, release: bool = False) -> set[str]:
        """Touch events this consumer is retrying, so that nobody takes them over; or, with
        `release`, mark them long idle, so that the next sweep anywhere takes them over.
        Returns the webhook ids of those no longer this consumer's (taken over)."""
        by_stream: dict[str, dict[str, str]] = {}
        for event in events:
            by_stream.setdefault(event.stream, {})[event.entry_id] = event.webhook_id
        lost: set[str] = set()
        for stream, ids in by_stream.items():
            pending = await self._client.xpending_range(
                stream, GROUP, min="-", max="+", count=len(ids) + 1000, consumername=self.consumer
            )
            mine = {str(p["message_id"]) for p in pending} & set(ids)
            lost.update(webhook_id for entry_id, webhook_id in ids.items() if entry_id not in mine)
            if mine:
                await self._client.xclaim(
                    stream,
                    GROUP,
                    self.consumer,
                    0,
                    list(mine),
                    idle=10 * self._claim_idle_ms if release else 0,
                    justid=True,
                )
        return lost

    async def done(self, event: Event) -> None:
        """Acknowledge and remove a delivered (or abandoned) event."""
        await self._scripts.ack_event(keys=[event.stream], args=[GROUP, event.entry_id])

    async def drop(self, stream: str, entry_id: str) -> None:
        """Acknowledge and remove an entry by its id."""
        await self._scripts.ack_event(keys=[stream], args=[GROUP, entry_id])

    async def backlog(self, cutoff_ms: int) -> Backlog:
        """Every outbox stream with entries (pending or not yet taken); entries queued
        before `cutoff_ms` (scripts' time) are listed as expired."""
        streams, total = [], 0
        for start in range(0, len(self._names), SWEEP_CHUNK):
            chunk = self._names[start : start + SWEEP_CHUNK]
            pipe = self._client.pipeline(transaction=False)
            for name in chunk:
                pipe.xlen(name)
            for name, length in zip(chunk, await pipe.execute(), strict=True):
                if length:
                    streams.append(name)
                    total += int(length)
            await asyncio.sleep(0)
        oldest, expired = None, []
        for start in range(0, len(streams), SWEEP_CHUNK):
            chunk = streams[start : start + SWEEP_CHUNK]
            pipe = self._client.pipeline(transaction=False)
            for name in chunk:
                pipe.xrange(name, count=SWEEP_HEAD)
            for name, entries in zip(chunk, await pipe.execute(), strict=True):
                for entry_id, fields in entries:
                    at = _at_ms(fields)
                    if at is None or at < cutoff_ms:
                        expired.append((name, str(entry_id)))
                    else:
                        oldest = at if oldest is None else min(oldest, at)
                        break
        return Backlog(streams, total, oldest, expired)

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
        self._salts.pop(stream, None)

    async def _salt(self, stream: str) -> str:
        """A random word kept beside the stream (same slot), made once: with the entry id it
        makes webhook ids unique across installations, and after a flushed Redis, whose new
        entry ids may repeat old ones."""
        salt = self._salts.get(stream)
        if salt is None:
            mine = secrets.token_hex(4)
            found = await self._client.set(f"{stream}:salt", mine, nx=True, get=True)
            salt = self._salts[stream] = mine if found is None else str(found)
        return salt

    async def _events(self, stream: str, entries: list[Any]) -> list[Event]:
        events = []
        for entry_id, fields in entries:
            if not fields:  # deleted meanwhile (Redis < 7 reports those here)
                continue
            webhook_id = f"evt_{await self._salt(stream)}_{entry_id}"
            try:
                data = json.loads(fields["d"])
                # Session events carry the user agent and address as the hash keeps them.
                if "user_agent" in data:
                    data["user_agent"] = user_agents.unpack(data["user_agent"])
                if "ip" in data:
                    data["ip"] = addresses.unpack(data["ip"])
                event = Event(stream, entry_id, fields["t"], int(fields["ms"]), data, webhook_id)
            except (KeyError, ValueError, TypeError, AttributeError):
                event = Event(stream, entry_id, "", 0, {}, webhook_id)
            events.append(event)
        return events


def _at_ms(fields: Any) -> int | None:
    try:
        return int(fields["ms"])
    except (KeyError, TypeError, ValueError):
        return None
