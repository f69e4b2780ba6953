"""One connection that every request's script shares, pipelined: the hot path to Redis.

redis-py's asyncio client pays, for each pipeline it sends, a pool checkout under a lock, a
task and a timer to bound the write (`asyncio.wait_for`), and a timer and several coroutine
layers for every reply: under the benchmark's refresh load that was about 38 µs of the
service's CPU per refresh. Here a batch of commands is packed by hiredis and written at
once, and the protocol hands each reply to its caller as it arrives: Redis answers the
commands of one connection in the order they were sent, so replies are matched by order.
One timer bounds a whole batch.

Failures keep the client's semantics. A connection that breaks, times out or reaches a
primary that has been demoted (READONLY) is dropped, every batch in flight on it fails with
ConnectionError, and each batch is sent again (RETRY_PAUSES) on a new connection, which
looks up the primary again (through Sentinel, where there is one). That is safe because
every script is idempotent (see the script headers). Error replies are redis-py's exception
classes (NoScriptError, ResponseError, ...), returned in place of the reply."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

import hiredis
from redis._parsers import BaseParser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, ResponseError

# Pauses (seconds) before sending a failed batch again: as many retries as redis-py's
# client does with the same errors (store.client._retry).
RETRY_PAUSES = (0.02, 0.04)

Address = Callable[[], Awaitable[tuple[str, int]]]


class _Protocol(asyncio.Protocol):
    """The connection: writes commands, hands replies out in order."""

    def __init__(self) -> None:
        self._reader = hiredis.Reader(
            encoding="utf-8", replyError=BaseParser.parse_error, protocolError=RedisConnectionError
        )
        self._waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self.lost: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def send(self, packed: bytes, count: int) -> list[asyncio.Future[Any]]:
        """Write `count` packed commands; a future for each reply."""
        transport = self._transport
        # Closing: a failed write schedules connection_lost, and writes until then are lost.
        if self.lost is not None or transport is None or transport.is_closing():
            raise RedisConnectionError(f"Redis connection lost: {self.lost!r}")
        loop = self._loop
        futures = [loop.create_future() for _ in range(count)]
        self._waiting.extend(futures)
        transport.write(packed)
        return futures

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        waiting = self._waiting
        try:
            while (reply := reader.gets()) is not False:
                future = waiting.popleft()
                if not future.done():  # its caller gave up (timeout, cancellation)
                    future.set_result(reply)
        except (RedisConnectionError, IndexError) as exc:  # garbled, or a reply nobody sent
            self.close(RedisConnectionError(f"Redis protocol error: {exc!r}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or RedisConnectionError("Redis closed the connection"))

    def close(self, why: BaseException) -> None:
        """Drop the connection: every reply still awaited fails with ConnectionError."""
        self._fail(why)
        if self._transport is not None:
            self._transport.abort()

    def _fail(self, why: BaseException) -> None:
        if self.lost is None:
            self.lost = why
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(RedisConnectionError(f"Redis connection lost: {why!r}"))
                # Marked as seen: a batch's sender awaits only its last reply, so the others'
                # errors would each be logged as never retrieved, thousands a Redis hiccup.
                future.exception()


class Channel:
    """Sends batches of commands over one shared, pipelined connection, made on first
    use and again after a failure.

    `address` names the server to connect to (asked again for every new connection: a
    Sentinel lookup follows a failover), `setup` the commands that prepare a connection
    (AUTH, SELECT, CLIENT SETNAME)."""

    def __init__(
        self,
        address: Address,
        *,
        setup: Sequence[tuple[Any, ...]],
        connect_timeout: float,
        reply_timeout: float,
    ) -> None:
        self._address = address
        self._setup = b"".join(hiredis.pack_command(command) for command in setup)
        self._setup_count = len(setup)
        self._connect_timeout = connect_timeout
        self._reply_timeout = reply_timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None

    async def send(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """The replies to `commands`, sent together: each is the reply, or the error Redis
        answered (a ResponseError); ConnectionError once the retries are used up."""
        packed = b"".join(hiredis.pack_command(command) for command in commands)
        for pause in (*RETRY_PAUSES, None):
            protocol = None
            try:
                protocol = await self._connected()
                futures = protocol.send(packed, len(commands))
                async with asyncio.timeout(self._reply_timeout):
                    await futures[-1]  # answered in order: the last comes last
                replies = [future.result() for future in futures]
                if any(isinstance(reply, ReadOnlyError) for reply in replies):
                    raise RedisConnectionError("the primary has been demoted (READONLY)")
                return replies
            except (RedisConnectionError, TimeoutError, OSError) as exc:
                if protocol is not None:
                    protocol.close(exc)
                if pause is None:
                    if isinstance(exc, RedisConnectionError):
                        raise
                    raise RedisConnectionError(f"Redis: {exc!r}") from exc
                await asyncio.sleep(pause)
        raise AssertionError("unreachable")

    def drop(self) -> None:
        """Close the connection (a new one is made on next use): the server it reaches is no
        longer the primary."""
        if self._protocol is not None:
            self._protocol.close(RedisConnectionError("dropped: not a primary"))
            self._protocol = None

    async def _connected(self) -> _Protocol:
        protocol = self._protocol
        if protocol is not None and protocol.lost is None:
            return protocol
        connecting = self._connecting
        if connecting is None or connecting.done():  # one attempt at a time, for every caller
            connecting = self._connecting = asyncio.ensure_future(self._connect())
            # Its failure is every waiting caller's; with none left, nobody else's.
            connecting.add_done_callback(lambda done: done.cancelled() or done.exception())
        return await asyncio.shield(connecting)

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        # The lookup has its own bounds (a Sentinel is asked with SENTINEL_TIMEOUT each).
        host, port = await self._address()
        protocol = None
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, protocol = await loop.create_connection(_Protocol, host, port)
                if self._setup_count:
                    futures = protocol.send(self._setup, self._setup_count)
                    await futures[-1]
                    for future in futures:
                        if isinstance(future.result(), ResponseError):
                            raise future.result()
        except BaseException as exc:
            if protocol is not None:
                protocol.close(exc)
            raise
        self._protocol = protocol
        return protocol

    def close(self) -> None:
        """Close the connection, and stop making one."""
        if self._connecting is not None:
            self._connecting.cancel()
        self.drop()
