"""Sessions: one hash each, indexed per user by a sorted set scored by last use."""

from __future__ import annotations

import dataclasses
import enum

from authsvc.store.client import Client
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


class Rotation(enum.Enum):
    """How a refresh attempt ended."""

    ROTATED = 1
    UNKNOWN = 0
    REUSED = 2


@dataclasses.dataclass(frozen=True, slots=True)
class RotateResult:
    """A rotation's outcome; the other fields are set when ROTATED."""

    outcome: Rotation
    generation: int = 0
    created_ms: int = 0
    last_used_ms: int = 0


class SessionStore:
    """The session scripts, typed."""

    def __init__(self, client: Client, keys: Keys, scripts: Scripts, times: SessionTimes) -> None:
        self._client = client
        self._keys = keys
        self._scripts = scripts
        self._times = times

    async def create(
        self,
        *,
        user_id: str,
        session_id: str,
        email: str,
        now_ms: int,
        limit: int,
        user_agent: str,
        ip: str,
    ) -> list[str]:
        """Store a new session, evicting the least recently used beyond `limit`.

        Returns the evicted session ids. Safe to replay with the same `session_id`."""
        k = self._keys
        evicted: list[str] = await self._scripts.create_session(
            keys=[k.session_index(user_id), k.session(user_id, session_id), k.user(user_id)],
            args=[
                session_id,
                now_ms,
                self._times.idle_ms,
                self._times.max_ms,
                limit,
                k.channel,
                email,
                user_agent,
                ip,
            ],
        )
        return evicted

    async def rotate(
        self, *, user_id: str, session_id: str, generation: int, now_ms: int, grace_ms: int
    ) -> RotateResult:
        """Advance the session's refresh generation (see rotate_session.lua)."""
        k = self._keys
        reply = await self._scripts.rotate_session(
            keys=[k.session_index(user_id), k.session(user_id, session_id)],
            args=[
                session_id,
                generation,
                now_ms,
                self._times.idle_ms,
                self._times.max_ms,
                grace_ms,
                k.channel,
            ],
        )
        outcome = Rotation(int(reply[0]))
        if outcome is Rotation.ROTATED:
            return RotateResult(outcome, int(reply[1]), int(reply[2]), int(reply[3]))
        return RotateResult(outcome)

    async def revoke(self, user_id: str, *, only: str | None = None, keep: str = "") -> list[str]:
        """End one session (`only`) or all of the user's but `keep`; returns those ended."""
        ended: list[str] = await self._scripts.revoke_sessions(
            keys=[self._keys.session_index(user_id)],
            args=[self._keys.channel, only or "*", keep],
        )
        return ended

    async def list(self, user_id: str, now_ms: int) -> list[SessionRow]:
        """The user's live sessions, most recently used first."""
        flat = await self._scripts.list_sessions(
            keys=[self._keys.session_index(user_id)],
            args=[now_ms, self._times.idle_ms, self._times.max_ms],
        )
        return [
            SessionRow(flat[i], int(flat[i + 1]), int(flat[i + 2]), flat[i + 3], flat[i + 4])
            for i in range(0, len(flat), 5)
        ]

    async def probe(self, user_id: str, session_id: str, now_ms: int) -> str | None:
        """The user's email if the session is live, else None."""
        email = await self._scripts.probe_session(
            keys=[self._keys.session(user_id, session_id), self._keys.user(user_id)],
            args=[now_ms, self._times.idle_ms, self._times.max_ms],
        )
        return str(email) if email else None

    async def ping(self) -> bool:
        """True when storage answers."""
        return bool(await self._client.ping())
