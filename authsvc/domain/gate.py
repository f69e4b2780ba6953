"""Admission of access tokens without a Redis round trip per request.

A session is probed in Redis the first time this process sees it, then remembered as live
until the revocation feed names it or the feed's epoch changes (a reconnect, when messages
may have been missed). Revoked ids are remembered for one access-token lifetime, after
which no token of theirs can still be valid."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Protocol

from authsvc.domain.clock import Clock
from authsvc.domain.errors import InvalidToken
from authsvc.store.sessions import Ended, LiveSession

SESSION_CACHE_SIZE = 100_000  # default of AUTHSVC_SESSION_CACHE_SIZE


class Feed(Protocol):
    """What the gate needs to know of the revocation feed."""

    epoch: int

    @property
    def healthy(self) -> bool: ...


@dataclasses.dataclass(slots=True)
class _Live:
    email: str
    epoch: int
    checked_at: float


class SessionGate:
    """Says whether a session is live, and whose email it carries."""

    def __init__(
        self,
        probe: Callable[[str, str], Awaitable[LiveSession | Ended]],
        clock: Clock,
        *,
        recheck_after: float,
        cache_size: int = SESSION_CACHE_SIZE,
    ) -> None:
        self._probe = probe
        self._cache_size = cache_size
        self._clock = clock
        self._recheck_after = recheck_after
        self._live: OrderedDict[str, _Live] = OrderedDict()
        self._revoked: dict[str, tuple[float, str]] = {}  # session id -> (until, reason)
        self.feed: Feed | None = None

    def revoked(self, session_id: str, reason: str) -> None:
        """The feed says `session_id` ended, and why (feed callback; also called locally)."""
        self._live.pop(session_id, None)
        self._revoked[session_id] = (self._clock() + self._recheck_after, reason)

    def forget_expired(self) -> None:
        """Drop revoked ids older than any token they could have issued."""
        now = self._clock()
        for session_id in [s for s, (until, _) in self._revoked.items() if until <= now]:
            del self._revoked[session_id]

    async def why_ended(self, user_id: str, session_id: str) -> str:
        """Why the session ended; "" while it is live (a token of it merely expired). Asked
        of Redis, not of the live cache (an expired token may outlast what it knew); an
        ending is remembered, so asking again costs no round trip."""
        if session_id in self._revoked:
            return self._revoked[session_id][1]
        found = await self._probe(user_id, session_id)
        if isinstance(found, Ended):
            self.revoked(session_id, found.reason)
            return found.reason
        return ""

    def known_live(self, session_id: str, now: float) -> str | None:
        """The session's email if this process knows that it is live, without a round
        trip; None if Redis must be asked (`admit`). A revoked session is never known live:
        `revoked` forgets it."""
        live = self._live.get(session_id)
        if live is None:
            return None
        feed = self.feed
        if (
            feed is not None
            and feed.healthy
            and live.epoch == feed.epoch
            and now - live.checked_at < self._recheck_after
        ):
            self._live.move_to_end(session_id)  # least recently used goes first
            return live.email
        return None

    async def admit(self, user_id: str, session_id: str) -> str:
        """The session's email if it is live; InvalidToken if it ended."""
        if session_id in self._revoked:
            raise _ended(self._revoked[session_id][1])
        now = self._clock()
        email = self.known_live(session_id, now)
        if email is not None:
            return email
        feed = self.feed
        epoch = feed.epoch if feed is not None else -1
        found = await self._probe(user_id, session_id)
        if isinstance(found, Ended):
            self.revoked(session_id, found.reason)
            raise _ended(found.reason)
        if session_id in self._revoked:  # revoked while the probe was in flight
            raise _ended(self._revoked[session_id][1])
        email = found.email
        if feed is not None and feed.healthy and feed.epoch == epoch:
            self._live[session_id] = _Live(email, epoch, now)
            self._live.move_to_end(session_id)
            if len(self._live) > self._cache_size:
                self._live.popitem(last=False)
        return email


def _ended(reason: str) -> InvalidToken:
    return InvalidToken("session ended", reason=reason)
