"""Time: this process's wall clock, and the shift that tests add to time everywhere.

Every decision that instances must agree on (grace windows, idle and absolute lifetimes,
throttling windows) is taken inside a Lua script with Redis's own `TIME`, so clock skew
between instances changes none of them. Tests move time without sleeping by advancing the
shift, which the scripts add to `TIME` (it is 0 outside tests)."""

from __future__ import annotations

import datetime
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


def rfc3339(seconds: float) -> str:
    """A Unix time as RFC 3339 UTC with milliseconds (`2026-11-26T15:42:24.123Z`)."""
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
