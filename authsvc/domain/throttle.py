"""Throttling in fixed windows kept in Redis, so that every instance shares the counts."""

from __future__ import annotations

from authsvc.domain.clock import Clock
from authsvc.domain.errors import RateLimited
from authsvc.store.counters import CounterStore
from authsvc.store.keys import Keys


class Throttle:
    """Failed logins per email and attempts per client address."""

    def __init__(
        self,
        counters: CounterStore,
        keys: Keys,
        clock: Clock,
        *,
        failure_limit: int,
        failure_window: int,
        ip_limit: int,
        ip_window: int,
    ) -> None:
        self._counters = counters
        self._keys = keys
        self._clock = clock
        self._failure_limit = failure_limit
        self._failure_window = failure_window
        self._ip_limit = ip_limit
        self._ip_window = ip_window

    async def count_attempt(self, ip: str) -> None:
        """Count a login or signup from `ip`; RateLimited beyond the limit."""
        if self._ip_limit == 0:
            return
        window, retry_after = self._window(self._ip_window)
        count = await self._counters.hit(self._keys.ip_attempts(ip, window), self._ip_window * 1000)
        if count > self._ip_limit:
            raise RateLimited(retry_after=retry_after)

    async def check_login(self, email: str) -> None:
        """RateLimited while `email` has used up its failed logins in this window."""
        window, retry_after = self._window(self._failure_window)
        failures = await self._counters.peek(self._keys.login_failures(email, window))
        if failures >= self._failure_limit:
            raise RateLimited(retry_after=retry_after)

    async def count_failure(self, email: str) -> None:
        """Count a failed login for `email`, whether or not it is registered."""
        window, _ = self._window(self._failure_window)
        await self._counters.hit(
            self._keys.login_failures(email, window), self._failure_window * 1000
        )

    def _window(self, length: int) -> tuple[int, int]:
        """The current window's number and the whole seconds until it ends."""
        now = self._clock()
        window = int(now // length)
        return window, max(1, int((window + 1) * length - now + 0.999))
