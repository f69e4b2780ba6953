"""One connection that every request's script shares, pipelined: the hot path to Redis.

redis-py's asyncio client pays, for each pipeline it sends, a pool checkout under a lock, a
task and a timer to bound the write (`asyncio.wait_for`), and a timer and several coroutine
layers for every reply. Here a batch of commands is packed by hiredis and written at once,
with no task and no timer of its own, and the protocol hands each reply straight to its
caller's future as it arrives: Redis answers the commands of one connection in the order
they were sent, so replies are matched by order. One watchdog timer per connection drops it
when batches have waited a whole reply timeout without a reply arriving (a connection that
is slow but answering is kept, as redis-py's per-read timeout keeps it). (Measured under
the benchmark's refresh load: 153 -> 138 µs of the service's CPU per refresh against a
coroutine sending each batch and awaiting it.)

Failures keep the client's semantics. A connection that breaks, times out or reaches a
primary that has been demoted (READONLY) is dropped, and every batch still unanswered on it
is sent again (after RETRY_PAUSES) on a new connection, which looks up the primary again
(through Sentinel, where there is one); after the last retry its callers get
ConnectionError. That is safe because every script is idempotent (see the script headers).
An error Redis answers (NoScriptError, ResponseError, ...: redis-py's classes), a reply that
is not UTF-8 and a command that cannot be packed are their callers' alone."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

import hiredis
from redis._parsers import BaseParser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, ReadOnlyError, ResponseError

# Pauses (seconds) before sending a failed batch again: as many retries as redis-py's
# client does with the same errors (store.client._retry).
RETRY_PAUSES = (0.02, 0.04)

Address = Callable[[], Awaitable[tuple[str, int]]]


class _Batch:
    """Commands packed together, and a future for each one's reply."""

    __slots__ = ("futures", "packed", "sent", "tries")

    def __init__(self, packed: bytes, futures: list[asyncio.Future[Any]], tries: int) -> None:
        self.packed = packed
        self.futures = futures
        self.tries = tries  # sends that failed so far
        self.sent = 0.0  # loop time of the latest send


Lost = Callable[[list[_Batch], BaseException], None]


class _Protocol(asyncio.Protocol):
    """The connection: writes batches, hands replies out in order, and gives the batches
    still unanswered to `lost` when it fails."""

    def __init__(self, lost: Lost, reply_timeout: float) -> None:
        self._reader = hiredis.Reader(
            encoding="utf-8", replyError=BaseParser.parse_error, protocolError=RedisConnectionError
        )
        self._lost = lost
        self._reply_timeout = reply_timeout
        self._batches: collections.deque[_Batch] = collections.deque()  # unanswered, in order
        self._answered = 0  # replies received of the oldest batch
        self._heard = 0.0  # loop time of the latest data received
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._watchdog: asyncio.TimerHandle | None = None
        self.broken: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def send(self, batch: _Batch) -> None:
        """Write `batch`; its replies go to its futures."""
        transport = self._transport
        # Closing: a failed write schedules connection_lost, and writes until then are lost.
        if self.broken is not None or transport is None or transport.is_closing():
            self._lost([batch], self.broken or RedisConnectionError("connection closing"))
            return
        batch.sent = now = self._loop.time()
        self._batches.append(batch)
        transport.write(batch.packed)
        if self._watchdog is None:
            self._watchdog = self._loop.call_at(now + self._reply_timeout, self._watch)

    def data_received(self, data: bytes) -> None:
        self._heard = self._loop.time()
        reader = self._reader
        reader.feed(data)
        batches = self._batches
        try:
            while True:
                try:
                    reply = reader.gets()
                except UnicodeDecodeError as undecodable:  # consumed: that caller's error
                    reply = undecodable
                if reply is False:
                    break
                if isinstance(reply, ReadOnlyError):  # this batch goes to the new primary
                    self.close(RedisConnectionError("the primary has been demoted (READONLY)"))
                    return
                batch = batches[0]
                future = batch.futures[self._answered]
                self._answered += 1
                if self._answered == len(batch.futures):
                    batches.popleft()
                    self._answered = 0
                if future.done():  # its caller gave up (cancelled)
                    continue
                if isinstance(reply, Exception):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        except (RedisConnectionError, IndexError) as exc:  # garbled, or a reply nobody sent
            self.close(RedisConnectionError(f"Redis protocol error: {exc!r}"))

    def _watch(self) -> None:
        self._watchdog = None
        if not self._batches:
            return
        # Waiting since the oldest batch was sent, or since the latest reply if later.
        deadline = max(self._batches[0].sent, self._heard) + self._reply_timeout
        if self._loop.time() >= deadline:
            self.close(TimeoutError(f"no reply from Redis within {self._reply_timeout} s"))
        else:
            self._watchdog = self._loop.call_at(deadline, self._watch)

    def connection_lost(self, exc: Exception | None) -> None:
        self._break(exc or RedisConnectionError("Redis closed the connection"))

    def close(self, why: BaseException) -> None:
        """Drop the connection: the batches still unanswered go to `lost`."""
        self._break(why)
        if self._transport is not None:
            self._transport.abort()

    def _break(self, why: BaseException) -> None:
        if self.broken is None:
            self.broken = why
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        batches, self._batches = list(self._batches), collections.deque()
        self._answered = 0
        if batches:
            self._lost(batches, why)


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
        self._connecting: asyncio.Task[_Protocol] | None = None
        self._waiting: list[_Batch] = []  # for the connection being made
        self._closed = False

    def submit(
        self, commands: Sequence[tuple[Any, ...]], futures: list[asyncio.Future[Any]]
    ) -> None:
        """Send `commands` together. Each future gets its command's reply, or the error
        Redis answered (a ResponseError), or ConnectionError once the retries are used up."""
        try:
            packed = b"".join([hiredis.pack_command(command) for command in commands])
        except Exception as exc:  # an argument hiredis cannot send (None, a dict, ...)
            _fail(futures, DataError(f"cannot send: {exc!r}"))
            return
        if commands:  # an empty batch has no reply to wait for
            self._send(_Batch(packed, futures, tries=0))

    def _send(self, batch: _Batch) -> None:
        protocol = self._protocol
        if protocol is not None and protocol.broken is None:
            protocol.send(batch)
        elif self._closed:
            _fail(batch.futures, RedisConnectionError("the channel is closed"))
        else:
            self._waiting.append(batch)
            if self._connecting is None:
                self._connecting = asyncio.ensure_future(self._connect())
                self._connecting.add_done_callback(self._connected)

    def _lost(self, batches: list[_Batch], why: BaseException) -> None:
        """Send `batches` again after a pause, or fail them once their retries are used up."""
        loop = asyncio.get_running_loop()
        for batch in batches:
            if all(future.done() for future in batch.futures):  # nobody waits any more
                continue
            if self._closed or batch.tries == len(RETRY_PAUSES):
                _fail(batch.futures, RedisConnectionError(f"Redis connection lost: {why!r}"))
            else:
                loop.call_later(RETRY_PAUSES[batch.tries], self._send, batch)
                batch.tries += 1

    def drop(self, why: str = "dropped: not a primary") -> None:
        """Close the connection (a new one is made on next use): the server it reaches is no
        longer the primary."""
        if self._protocol is not None:
            self._protocol.close(RedisConnectionError(why))
            self._protocol = None

    def _connected(self, connecting: asyncio.Task[_Protocol]) -> None:
        self._connecting = None
        waiting, self._waiting = self._waiting, []
        if connecting.cancelled():
            why: BaseException = RedisConnectionError("the channel is closed")
        elif (error := connecting.exception()) is not None:
            why = error
        else:
            self._protocol = protocol = connecting.result()
            for batch in waiting:
                protocol.send(batch)
            if self._closed:  # while it was being made: its batches fail with the others
                self.drop("the channel is closed")
            return
        if isinstance(why, (RedisConnectionError, TimeoutError, OSError)):
            self._lost(waiting, why)
            return
        # Not a connection's failure: the setup was refused (AUTH, SELECT), or a bug.
        error = why if isinstance(why, ResponseError) else RedisConnectionError(f"Redis: {why!r}")
        for batch in waiting:
            _fail(batch.futures, error)

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        # The lookup has its own bounds (a Sentinel is asked with SENTINEL_TIMEOUT each).
        host, port = await self._address()
        protocol = None
        futures = [loop.create_future() for _ in range(self._setup_count)]
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, protocol = await loop.create_connection(
                    lambda: _Protocol(self._lost, self._reply_timeout), host, port
                )
                if futures:
                    # Never retried: its failure is the connection's.
                    protocol.send(_Batch(self._setup, futures, tries=len(RETRY_PAUSES)))
                    await asyncio.wait(futures)
                    for error in [future.exception() for future in futures]:
                        if error is not None:
                            raise error
        except BaseException as exc:
            if protocol is not None:
                protocol.close(exc)
            for future in futures:  # their errors are this one: seen
                if future.done() and not future.cancelled():
                    future.exception()
            raise
        return protocol

    def close(self) -> None:
        """Close the connection, and stop making one: batches in flight fail."""
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
        self.drop("the channel is closed")


def _fail(futures: list[asyncio.Future[Any]], error: Exception) -> None:
    for future in futures:
        if not future.done():
            # An exception of its own each: one raised by several callers would gather
            # all their tracebacks.
            future.set_exception(type(error)(*error.args))
