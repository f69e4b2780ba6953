"""The shared, pipelined script connection (store/channel.py): replies in order, errors in
place, and recovery from every way a connection fails."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Callable

import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, NoScriptError, ResponseError

from authsvc.store.channel import Channel
from authsvc.store.client import connect
from tests.conftest import RedisServer


async def send(channel: Channel, commands: list[tuple[object, ...]]) -> list[object]:
    """The replies to `commands` sent as one batch, the errors Redis answered in place;
    ConnectionError once the channel's retries are used up."""
    loop = asyncio.get_running_loop()
    futures = [loop.create_future() for _ in commands]
    channel.submit(commands, futures)
    await asyncio.wait(futures)
    replies = [f.exception() if f.exception() is not None else f.result() for f in futures]
    for reply in replies:
        if isinstance(reply, RedisConnectionError):
            raise reply
    return replies


def _channel(port: int, *, setup: list[tuple[object, ...]] | None = None) -> Channel:
    async def address() -> tuple[str, int]:
        return "127.0.0.1", port

    return Channel(address, setup=setup or [], connect_timeout=0.5, reply_timeout=0.3)


async def test_concurrent_batches_get_their_own_replies_in_order(
    redis_server: RedisServer,
) -> None:
    channel = _channel(redis_server.port)
    try:

        async def batch(n: int) -> list[object]:
            return await send(channel, [("ECHO", f"{n}-{i}") for i in range(n % 7 + 1)])

        replies = await asyncio.gather(*(batch(n) for n in range(200)))
        assert replies == [[f"{n}-{i}" for i in range(n % 7 + 1)] for n in range(200)]
    finally:
        channel.close()


async def test_an_error_reply_takes_its_own_place_only(redis_server: RedisServer) -> None:
    channel = _channel(redis_server.port)
    try:
        replies = await send(
            channel, [("ECHO", "a"), ("EVALSHA", "0" * 40, 0), ("INCRBY", "x", "y"), ("ECHO", "b")]
        )
        assert replies[0] == "a"
        assert isinstance(replies[1], NoScriptError)
        assert type(replies[2]) is ResponseError
        assert replies[3] == "b"
    finally:
        channel.close()


async def test_setup_selects_the_database_of_the_url(redis_server: RedisServer) -> None:
    channel = _channel(redis_server.port, setup=[("SELECT", 5), ("CLIENT", "SETNAME", "t")])
    try:
        await send(channel, [("SET", "channel-db-test", "5")])
        assert await send(channel, [("CLIENT", "GETNAME")]) == ["t"]
    finally:
        channel.close()
    plain = redis.Redis(port=redis_server.port, db=5)
    try:
        assert plain.get("channel-db-test") == b"5"
    finally:
        plain.close()


async def test_a_killed_connection_is_replaced_and_the_batch_sent_again(
    redis_server: RedisServer,
) -> None:
    channel = _channel(redis_server.port)
    admin = redis.Redis(port=redis_server.port)
    try:
        await send(channel, [("CLIENT", "SETNAME", "victim")])
        killed = admin.client_kill_filter(_type="normal", skipme=True)
        assert killed >= 1
        assert await send(channel, [("ECHO", "again")]) == ["again"]
    finally:
        channel.close()
        admin.close()


async def test_the_client_sends_scripts_over_its_channel(redis_server: RedisServer) -> None:
    client = connect(redis_server.url, cluster=False)
    assert client.channel is not None  # type: ignore[union-attr]
    try:
        sha = await client.script_load("return ARGV[1]")
        replies = await asyncio.gather(
            *(client.evalsha_batched(sha, [], [str(i)]) for i in range(50))  # type: ignore[union-attr]
        )
        assert replies == [str(i) for i in range(50)]
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def _fake_redis(
    answer: Callable[[int], bytes | None],
) -> AsyncIterator[tuple[int, list[int]]]:
    """A server on loopback that answers every read on its n-th connection with
    `answer(n)` (None: never answers); yields its port and the connections it has had."""
    connections: list[int] = []
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = len(connections)
        connections.append(number)
        writers.append(writer)
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                reply = answer(number)
                if reply is not None:
                    writer.write(reply)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], connections
    finally:
        server.close()
        for writer in writers:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


@pytest.mark.parametrize(
    "first",
    [
        b"-READONLY You can't write against a read only replica.\r\n",  # a demoted primary
        b"%%% not RESP\r\n",  # garbled
        None,  # hung: no answer within the reply timeout
    ],
)
async def test_a_failing_connection_is_dropped_and_a_new_one_answers(first: bytes | None) -> None:
    async with _fake_redis(lambda n: first if n == 0 else b"+OK\r\n") as (port, connections):
        channel = _channel(port)
        try:
            assert await send(channel, [("SET", "k", "v")]) == ["OK"]
        finally:
            channel.close()
        assert len(connections) == 2


async def test_a_server_that_never_answers_fails_with_connection_error_in_bounded_time() -> None:
    async with _fake_redis(lambda n: None) as (port, connections):
        channel = _channel(port)
        try:
            async with asyncio.timeout(3):
                with pytest.raises(RedisConnectionError):
                    await send(channel, [("PING",)])
        finally:
            channel.close()
        assert len(connections) == 3  # the first try and two retries, each on a new connection


async def test_a_refused_setup_fails_the_batch_with_redis_s_error(
    redis_server: RedisServer,
) -> None:
    channel = _channel(redis_server.port, setup=[("SELECT", 99)])  # no such database
    try:
        (reply,) = await send(channel, [("PING",)])
        assert type(reply) is ResponseError
        assert "DB index" in str(reply)
    finally:
        channel.close()


async def test_a_failed_batch_leaves_no_unretrieved_errors_behind() -> None:
    # The first connection hangs: the batch times out there and is answered on the second.
    # Only its last reply is awaited; the others' errors must not be logged as never seen.
    unhandled: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, context: unhandled.append(context))
    async with _fake_redis(lambda n: None if n == 0 else b"+OK\r\n+OK\r\n") as (port, _):
        channel = _channel(port)
        try:
            assert await send(channel, [("PING",), ("PING",)]) == ["OK", "OK"]
        finally:
            channel.close()
    gc.collect()
    await asyncio.sleep(0)
    assert unhandled == []


async def test_a_batch_cut_off_halfway_is_sent_again_and_each_reply_reaches_its_caller() -> None:
    # The first connection answers the first command, then turns out to reach a demoted
    # primary: the whole batch goes again, and only the unanswered caller takes the new reply.
    first = b"$5\r\nfirst\r\n-READONLY You can't write against a read only replica.\r\n"
    async with _fake_redis(lambda n: first if n == 0 else b"$5\r\nagain\r\n$6\r\nsecond\r\n") as (
        port,
        connections,
    ):
        channel = _channel(port)
        try:
            assert await send(channel, [("GET", "a"), ("SET", "b", "v")]) == ["first", "second"]
        finally:
            channel.close()
        assert len(connections) == 2


async def test_a_caller_that_gave_up_leaves_the_others_their_replies(
    redis_server: RedisServer,
) -> None:
    channel = _channel(redis_server.port)
    try:
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in range(3)]
        channel.submit([("ECHO", "a"), ("ECHO", "b"), ("ECHO", "c")], futures)
        futures[1].cancel()
        assert await futures[0] == "a"
        assert await futures[2] == "c"
        assert await send(channel, [("ECHO", "d")]) == ["d"]
    finally:
        channel.close()


async def test_closing_fails_the_batches_in_flight_at_once() -> None:
    arrived = asyncio.Event()

    def never_answer(n: int) -> None:
        arrived.set()

    async with _fake_redis(never_answer) as (port, connections):
        channel = _channel(port)
        future = asyncio.get_running_loop().create_future()
        channel.submit([("PING",)], [future])
        await arrived.wait()
        channel.close()
        with pytest.raises(RedisConnectionError):
            await asyncio.wait_for(future, 0.1)  # not after the reply timeout and retries
        assert len(connections) == 1


async def test_a_connection_that_answers_slowly_is_kept() -> None:
    # Five replies 0.1 s apart: the batch takes longer than the reply timeout (0.3 s), but the
    # connection is never silent that long, so nothing is dropped and nothing sent again.
    writers: list[asyncio.StreamWriter] = []

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await reader.read(65536)
        for i in range(5):
            await asyncio.sleep(0.1)
            writer.write(f"+r{i}\r\n".encode())

    server = await asyncio.start_server(trickle, "127.0.0.1", 0)
    channel = _channel(server.sockets[0].getsockname()[1])
    try:
        replies = await send(channel, [("PING",)] * 5)
        assert replies == [f"r{i}" for i in range(5)]
        assert len(writers) == 1  # one connection
    finally:
        channel.close()
        server.close()
        for writer in writers:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def test_a_reply_that_is_not_utf8_is_its_caller_s_error_only(
    redis_server: RedisServer,
) -> None:
    plain = redis.Redis(port=redis_server.port)
    plain.set("channel-binary", b"\xff\xfe")
    channel = _channel(redis_server.port)
    try:
        (before,) = await send(channel, [("CLIENT", "ID")])
        replies = await send(channel, [("GET", "channel-binary"), ("ECHO", "fine")])
        assert isinstance(replies[0], UnicodeDecodeError)
        assert replies[1] == "fine"
        assert await send(channel, [("CLIENT", "ID")]) == [before]  # the same connection
    finally:
        channel.close()
        plain.close()


async def test_a_command_that_cannot_be_packed_fails_its_batch_at_once(
    redis_server: RedisServer,
) -> None:
    channel = _channel(redis_server.port)
    try:
        replies = await send(channel, [("SET", "k", None), ("ECHO", "unsent")])
        assert all(isinstance(reply, DataError) for reply in replies)
        assert await send(channel, [("ECHO", "next")]) == ["next"]
        channel.submit([], [])  # nothing to send, nothing to wait for
        assert await send(channel, [("ECHO", "after")]) == ["after"]
    finally:
        channel.close()
