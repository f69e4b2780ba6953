"""Throttle windows in Redis, shared by every instance (see throttle.lua)."""

from __future__ import annotations

from collections.abc import Callable

from authsvc.store.scripts import Scripts

BUSY = -1  # `take`: the window is full of checks still in flight; try again shortly


class ThrottleStore:
    """Count attempts in a throttle's window (see throttle.lua for replays)."""

    def __init__(self, scripts: Scripts, shift_ms: Callable[[], int]) -> None:
        self._scripts = scripts
        self._shift_ms = shift_ms

    async def hit(self, key: str, limit: int, window_ms: int) -> int:
        """Count one attempt: 0, or the milliseconds until the full window ends."""
        return await self._call(key, limit, window_ms, "hit", "")

    async def peek(self, key: str, limit: int, window_ms: int) -> int:
        """0 while the window has room, else the milliseconds until it ends."""
        return await self._call(key, limit, window_ms, "peek", "")

    async def take(self, key: str, limit: int, window_ms: int, check: str) -> int:
        """Start password check `check` (an id unique to it): 0, BUSY, or the milliseconds
        until the window ends."""
        return await self._call(key, limit, window_ms, "take", check)

    async def settle(self, key: str, check: str, *, failed: bool) -> None:
        """End a check that `take` started: a failure stays counted, the rest do not."""
        await self._call(key, 0, 0, "fail" if failed else "pass", check)

    async def _call(self, key: str, limit: int, window_ms: int, op: str, check: str) -> int:
        args = [limit, window_ms, op, self._shift_ms(), check]
        return int(await self._scripts.throttle(keys=[key], args=args))
