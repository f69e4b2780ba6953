"""Fixed-window counters for throttling, shared by every instance."""

from __future__ import annotations

from authsvc.store.client import Client
from authsvc.store.scripts import Scripts


class CounterStore:
    """Count events per key and window."""

    def __init__(self, client: Client, scripts: Scripts) -> None:
        self._client = client
        self._scripts = scripts

    async def hit(self, key: str, window_ms: int) -> int:
        """Count one event; returns the window's count so far.

        A replay after a lost reply counts twice, which only errs towards throttling."""
        return int(await self._scripts.hit_counter(keys=[key], args=[window_ms]))

    async def peek(self, key: str) -> int:
        """The window's count without counting."""
        value = await self._client.get(key)
        return int(value) if value else 0
