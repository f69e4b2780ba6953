"""Throttle windows in Redis, shared by every instance (see throttle.lua)."""

from __future__ import annotations

from collections.abc import Callable

from authsvc.store.scripts import Scripts

BUSY = -1  # `take`: the window is full of checks still in flight; try again shortly


class ThrottleStore:
    """Count attempts in a throttle's window. A replay of a call after a lost reply counts
    twice, which only errs towards throttling."""

    def __init__(self, scripts: Scripts, shift_ms: Callable[[], int]) -> None:
        self._scripts = scripts
        self._shift_ms = shift_ms

    async def hit(self, key: str, limit: int, window_ms: int) -> int:
        """Count one attempt: 0, or the milliseconds until the full window ends."""
        return await self._call(key, limit, window_ms, "hit")

    async def take(self, key: str, limit: int, window_ms: int) -> int:
        """Start a password check: 0, BUSY, or the milliseconds until the window ends."""
        return await self._call(key, limit, window_ms, "take")

    async def settle(self, key: str, window_ms: int, *, failed: bool) -> None:
        """End a check that `take` started: a failure stays counted, the rest do not."""
        await self._call(key, 0, window_ms, "fail" if failed else "pass")

    async def _call(self, key: str, limit: int, window_ms: int, op: str) -> int:
        return int(
            await self._scripts.throttle(keys=[key], args=[limit, window_ms, op, self._shift_ms()])
        )
