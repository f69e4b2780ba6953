"""Time: this process's wall clock, and the shift that tests add to time everywhere.

Every decision that instances must agree on (grace windows, idle and absolute lifetimes,
throttling windows) is taken inside a Lua script with Redis's own `TIME`, so clock skew
between instances changes none of them. Tests move time without sleeping by advancing the
shift, which the scripts add to `TIME` (it is 0 outside tests)."""

from __future__ import annotations

import time


class Clock:
    """Unix time in seconds as this process sees it."""

    def __init__(self) -> None:
        self.shift = 0.0

    def __call__(self) -> float:
        return time.time() + self.shift

    @property
    def shift_ms(self) -> int:
        """What scripts add to Redis's time, in milliseconds."""
        return round(self.shift * 1000)

    def advance(self, seconds: float) -> None:
        """Move time forward, here and in Redis (for tests and benchmarks)."""
        self.shift += seconds


system_clock = Clock()
