"""Throttling, shared in Redis by every instance and atomic under concurrency.

A password check is counted against its email's window *before* bcrypt runs and uncounted
when it did not fail, so that any number of concurrent guesses, on any number of instances,
get at most `failure_limit` wrong-password verifications per window. Checks beyond the limit
while others are still in flight wait for those to end (they may be right passwords: two
logins of one user at once are not an attack); beyond the limit of failures they get 429."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import random
import secrets
import time
from collections.abc import AsyncIterator

from redis.exceptions import RedisError

from authsvc.domain.errors import RateLimited
from authsvc.store.keys import Keys
from authsvc.store.throttles import BUSY, ThrottleStore

BUSY_WAIT = 5.0  # seconds a check waits for checks in flight before it gets 429


class Throttle:
    """Password checks per email and attempts per client address."""

    def __init__(
        self,
        store: ThrottleStore,
        keys: Keys,
        *,
        failure_limit: int,
        failure_window: int,
        ip_limit: int,
        ip_window: int,
    ) -> None:
        self._store = store
        self._keys = keys
        self._failure_limit = failure_limit
        self._failure_window_ms = failure_window * 1000
        self._ip_limit = ip_limit
        self._ip_window_ms = ip_window * 1000

    async def count_attempt(self, ip: str) -> None:
        """Count a login or signup from `ip` (IPv6: its /64); RateLimited beyond the limit."""
        if self._ip_limit == 0:
            return
        key = self._keys.ip_attempts(address_bucket(ip))
        wait_ms = await self._store.hit(key, self._ip_limit, self._ip_window_ms)
        if wait_ms:
            raise RateLimited(retry_after=_seconds(wait_ms))

    async def check_client_address(self, ip: str) -> None:
        """RateLimited while `ip` has used up its failed client authentications."""
        key = self._keys.ip_client_failures(address_bucket(ip))
        wait_ms = await self._store.peek(key, self._failure_limit, self._failure_window_ms)
        if wait_ms:
            raise RateLimited(retry_after=_seconds(wait_ms))

    async def count_client_failure(self, name: str, ip: str) -> None:
        """Count a failed client authentication for its name and address; RateLimited once
        either has used up its window (the caller answers 429 instead of 401).

        A right secret is refused only for its address, never for its name: anyone can send
        wrong secrets under a gateway's name, and a name lock-out would lock the gateway out.
        Secrets are 256 random bits, so the count bounds noise, not guessing."""
        waits = [
            await self._store.hit(key, self._failure_limit, self._failure_window_ms)
            for key in (
                self._keys.client_failures(name),
                self._keys.ip_client_failures(address_bucket(ip)),
            )
        ]
        if any(waits):
            raise RateLimited(retry_after=_seconds(max(waits)))

    @contextlib.asynccontextmanager
    async def password_check(self, email: str) -> AsyncIterator[Verdict]:
        """Around one password check of `email` (registered or not): RateLimited when its
        window has no check left. Set `verdict.failed` when the password was wrong."""
        key, check = self._keys.login_failures(email), secrets.token_urlsafe(9)
        limit, window_ms = self._failure_limit, self._failure_window_ms
        give_up = time.monotonic() + BUSY_WAIT
        while wait_ms := await self._store.take(key, limit, window_ms, check):
            if wait_ms != BUSY:
                raise RateLimited(retry_after=_seconds(wait_ms))
            if time.monotonic() > give_up:
                raise RateLimited("too many password checks in progress", retry_after=1)
            await asyncio.sleep(random.uniform(0.02, 0.08))  # noqa: S311 (jitter)
        verdict = Verdict()
        try:
            yield verdict
        finally:
            # A check that could not run (storage, a full hash queue) is uncounted; if that
            # fails too, its count stays until the window ends (errs towards throttling) and
            # the caller sees the first failure.
            with contextlib.suppress(RedisError, OSError):
                await asyncio.shield(self._store.settle(key, check, failed=verdict.failed))


class Verdict:
    """What a password check found."""

    __slots__ = ("failed",)

    def __init__(self) -> None:
        self.failed = False


def address_bucket(ip: str) -> str:
    """What a client address is counted as: an IPv4 address itself (also when written as
    IPv4-mapped IPv6), an IPv6 address by its /64, which one subscriber usually holds whole."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def _seconds(ms: int) -> int:
    return max(1, -(-ms // 1000))
