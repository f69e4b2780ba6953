"""Wall-clock time, injectable so that tests move time instead of sleeping."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """A source of Unix time in seconds."""

    def __call__(self) -> float: ...


system_clock: Clock = time.time


class FrozenClock:
    """A clock that moves only when told to (for tests and benchmarks)."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self.now += seconds
