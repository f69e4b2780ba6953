"""Sessions: one hash each, indexed per user by a sorted set scored by last use."""

from __future__ import annotations

import dataclasses
import enum
import secrets
from collections.abc import Callable
from typing import NamedTuple

from authsvc.store import addresses, user_agents
from authsvc.store.client import Client, replicated
from authsvc.store.keys import Keys
from authsvc.store.scripts import Scripts


@dataclasses.dataclass(frozen=True, slots=True)
class SessionTimes:
    """Session lifetimes in milliseconds."""

    idle_ms: int
    max_ms: int


@dataclasses.dataclass(frozen=True, slots=True)
class SessionRow:
    """One live session as listed to its user."""

    session_id: str
    created_ms: int
    last_used_ms: int
    user_agent: str
    ip: str


@dataclasses.dataclass(frozen=True, slots=True)
class NewSession:
    """A session that login created: when (Redis's time), and the sessions it evicted."""

    created_ms: int
    evicted: list[str]


@dataclasses.dataclass(frozen=True, slots=True)
class LiveSession:
    """A live session as `probe` finds it (times: Redis's, ms)."""

    email: str
    created_ms: int
    last_used_ms: int
    generation: int
    now_ms: int


class Ended(NamedTuple):
    """A session that is not live, and why it ended (its tombstone's reason; "expired" for
    one without a tombstone: the token naming it was authentic, so it existed)."""

    reason: str


class Refused(enum.Enum):
    """Why login stored no session."""

    STALE_PASSWORD = 0  # the password changed since the login checked it, or the account went
    LIMIT_REACHED = 2  # at the session limit under the 'deny' policy


class Rotation(enum.Enum):
    """How a refresh attempt ended."""

    ROTATED = 1
    UNKNOWN = 0
    REUSED = 2


_ROTATIONS = {rotation.value: rotation for rotation in Rotation}


class RotateResult(NamedTuple):
    """A rotation's outcome; the other fields are set when ROTATED (times: Redis's, ms)."""

    outcome: Rotation
    generation: int = 0
    created_ms: int = 0
    last_used_ms: int = 0
    now_ms: int = 0
    reason: str = ""  # UNKNOWN: why the session ended


def call_id() -> str:
    """An id for one call of a script: a replay of the call by a client retry carries the
    same id and answers as the first run did. 48 random bits: it only has to tell apart the
    calls that concern one session (session hashes and tombstones keep it)."""
    return secrets.token_urlsafe(6)


class SessionStore:
    """The session scripts, typed."""

    def __init__(
        self,
        client: Client,
        keys: Keys,
        scripts: Scripts,
        times: SessionTimes,
        shift_ms: Callable[[], int],
    ) -> None:
        self._client = client
        self.keys = self._keys = keys
        self._scripts = scripts
        self._times = times
        self._shift_ms = shift_ms

    async def create(
        self,
        *,
        user_id: str,
        session_id: str,
        password_version: str,
        limit: int,
        policy: str,
        user_agent: str,
        ip: str,
    ) -> NewSession | Refused:
        """Store a new session, at most `limit` (or the user's own limit) of them: beyond it
        the least recently used is evicted (`policy` "evict") or the login refused ("deny").

        Safe to replay with the same `session_id`."""
        k = self._keys
        reply = await self._scripts.create_session(
            keys=[
                k.session_index(user_id),
                k.session(user_id, session_id),
                k.user(user_id),
                k.ended(user_id),
                *k.user_outbox(user_id),
            ],
            args=[
                session_id,
                self._times.idle_ms,
                self._times.max_ms,
                limit,
                k.channel,
                user_id,
                user_agents.pack(user_agent),
                addresses.pack(ip),
                password_version,
                self._shift_ms(),
                policy,
                k.bell,
            ],
        )
        if int(reply[0]) != 1:
            return Refused(int(reply[0]))
        evicted = [str(victim) for victim in reply[2:]]
        if evicted:  # sessions ended: not acknowledged before a replica has it
            await self.replicated()
        return NewSession(int(reply[1]), evicted)

    async def rotate(
        self,
        *,
        user_id: str,
        session_id: str,
        generation: int,
        grace_ms: int,
        user_agent: str,
        ip: str,
    ) -> RotateResult:
        """Advance the session's refresh generation (see rotate_session.lua); `user_agent`
        and `ip` are the request's, for the event of a reused token."""
        k = self._keys
        reply = await self._scripts.rotate_session(
            keys=[
                k.session_index(user_id),
                k.session(user_id, session_id),
                k.ended(user_id),
                *k.user_outbox(user_id),
            ],
            args=[
                session_id,
                generation,
                self._times.idle_ms,
                self._times.max_ms,
                grace_ms,
                k.channel,
                user_id,
                self._shift_ms(),
                call_id(),
                k.bell,
                # Only a reuse event reads these: with webhooks off nothing is packed.
                user_agents.pack(user_agent) if k.bell else "",
                addresses.pack(ip) if k.bell else "",
            ],
        )
        outcome = _ROTATIONS[reply[0]]  # a dict: Rotation(n) costs ten times as much
        if outcome is Rotation.ROTATED:
            generation, created, used, now = map(int, reply[1:5])
            return RotateResult(outcome, generation, created, used, now)
        if outcome is Rotation.UNKNOWN:
            return RotateResult(outcome, reason=str(reply[1]) or "expired")
        await self.replicated()  # the session was revoked
        return RotateResult(outcome, reason="reuse_detected")

    async def revoke(
        self,
        user_id: str,
        reason: str,
        *,
        only: str | None = None,
        keep: str = "",
    ) -> list[str]:
        """End one session (`only`) or all of the user's but `keep`; returns those ended,
        once a replica has the change (where there are replicas; even when nothing ended
        this time: a retry must not be acknowledged before the first try is replicated)."""
        k = self._keys
        ended: list[str] = await self._scripts.revoke_sessions.replicated(
            marker=k.replication_marker,
            keys=[k.session_index(user_id), k.ended(user_id), *k.user_outbox(user_id)],
            args=[
                k.channel,
                only or "*",
                keep,
                reason,
                user_id,
                call_id(),
                self._shift_ms(),
                k.bell,
            ],
        )
        return ended

    async def list(self, user_id: str) -> list[SessionRow]:
        """The user's live sessions, most recently used first."""
        flat = await self._scripts.list_sessions(
            keys=[self._keys.session_index(user_id)],
            args=[self._times.idle_ms, self._times.max_ms, self._shift_ms()],
        )
        return [
            SessionRow(
                flat[i],
                int(flat[i + 1]),
                int(flat[i + 2]),
                user_agents.unpack(flat[i + 3]),
                addresses.unpack(flat[i + 4]),
            )
            for i in range(0, len(flat), 5)
        ]

    async def probe(self, user_id: str, session_id: str) -> LiveSession | Ended:
        """The session if it is live, else why it ended. Read-only."""
        reply = await self._scripts.probe_session(
            keys=[
                self._keys.session(user_id, session_id),
                self._keys.user(user_id),
                self._keys.session_index(user_id),
                self._keys.ended(user_id),
            ],
            args=[self._times.idle_ms, self._times.max_ms, self._shift_ms(), session_id],
        )
        if int(reply[0]) != 1:
            return Ended(str(reply[1]) or "expired")
        return LiveSession(str(reply[1]), *(int(value) for value in reply[2:6]))

    async def replicated(self) -> None:
        """Return once a replica has every change made so far (see
        BoundedRedis.replicated); NotReplicated (a ConnectionError: 503) if none confirms."""
        await replicated(self._client, self._keys.replication_marker)

    async def ping(self) -> bool:
        """True when storage answers."""
        return bool(await self._client.ping())
