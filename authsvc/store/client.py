"""Redis clients: a single server, a cluster, or the embedded in-process default."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, TypeAlias

import fakeredis
import redis.asyncio as aioredis
from fakeredis.aioredis import FakeAsyncRedisConnection
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.connection import HiredisRespSerializer
from redis.exceptions import ClusterError, RedisClusterException, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from authsvc.store.channel import Address, Channel

log = logging.getLogger(__name__)

Client: TypeAlias = "aioredis.Redis | RedisCluster"

# Bounded everywhere: a dead Redis turns into a 503 within about two seconds.
SOCKET_TIMEOUT = 0.5
CONNECT_TIMEOUT = 0.5
POOL_SIZE = 64
POOL_WAIT = 1.0
# A cluster command that keeps meeting MOVED / ASK / TRYAGAIN (a slot being migrated) is
# refused with ClusterError("TTL exhausted") after redis-py's own 16 redirections; it was
# never executed, so it is tried again this many times, after these pauses (seconds).
CLUSTER_REDIRECT_RETRIES = (0.05, 0.2)
# How Redis refuses a script that reaches a key of its slot that has already moved.
NON_LOCAL_KEY = "Script attempted to access a non local key"
# Where the primary has replicas, a change that ends sessions is acknowledged only once a
# replica has it (`replicated`), within this many milliseconds (well inside SOCKET_TIMEOUT).
REPLICA_WAIT_MS = 300
# Sentinel lookups: short, and tried once per Sentinel (the client's own retries try again).
SENTINEL_TIMEOUT = 0.3


class NotReplicated(RedisConnectionError):
    """The primary ran the change but no replica confirmed it in time: a failover now could
    undo it. Answered 503; the client retries, and the scripts are safe to replay."""


# Retries nothing (redis-py adds `retry_on_error` to a Retry's errors: pass it empty too).
NO_RETRY = Retry(NoBackoff(), 0, supported_errors=())


def _retry() -> Retry:
    # Two quick retries; every script is safe to replay (see the script headers).
    return Retry(ExponentialBackoff(cap=0.2, base=0.02), retries=2)


class HiredisPackingConnection(Connection):
    """redis-py's asyncio connection packs commands in Python, while its sync client uses
    hiredis's C packer when hiredis is installed (it is: redis[hiredis]). This connection
    uses that packer too: the same bytes at less than half the cost."""

    _packer = HiredisRespSerializer()  # type: ignore[no-untyped-call, unused-ignore]

    def pack_command(self, *args: Any) -> list[bytes]:
        packed: list[bytes] = self._packer.pack(*args)
        return packed


async def _take_turn(gate: asyncio.Semaphore) -> None:
    """Become one of the POOL_SIZE commands in flight, waiting at most POOL_WAIT."""
    if not gate.locked():
        await gate.acquire()  # free: returns at once, without arming a timer
        return
    try:
        async with asyncio.timeout(POOL_WAIT):
            await gate.acquire()
    except TimeoutError:
        raise RedisConnectionError("No connection available.") from None


_Call: TypeAlias = "tuple[tuple[Any, ...], asyncio.Future[Any]]"  # a command, its reply


class BoundedRedis(aioredis.Redis):
    """redis-py's async client for one server, with two additions.

    - A bounded pool that waits: at most POOL_SIZE commands (or pipelines) in flight, the
      next waits up to POOL_WAIT for its turn, then fails with ConnectionError. (redis-py's
      BlockingConnectionPool does the same, but arms a timer and takes a condition lock for
      every command.)
    - Automatic pipelining of scripts (`evalsha_batched`): the calls made in one event-loop
      iteration travel together, as one non-transactional pipeline. Under load many requests
      run their script at nearly the same moment; one by one, each pays redis-py's whole
      per-command cost (pool checkout, retry wrapper, a write, a read), which is most of a
      refresh's client time. Nothing waits for a batch to fill: it is sent on the next loop
      iteration, so a lone call goes out at once. A pipeline that meets a connection error
      is sent again whole by redis-py, which is safe because every script is idempotent.
      On a server reached over plain TCP (directly or through Sentinel) the batches travel
      on a `Channel` of their own instead (see channel.py): one connection, outside the
      pool's bound, where a batch costs no task and its replies go straight to the callers.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._gate = asyncio.Semaphore(POOL_SIZE)
        self._batch: list[_Call] = []
        self._loop: asyncio.AbstractEventLoop | None = None  # the current batch's
        self._senders: set[asyncio.Task[None]] = set()
        self.channel: Channel | None = None
        # Online replicas the primary reported at the last look (`watch_replicas`). Behind
        # Sentinel there are replicas by design: `replicated` always waits there.
        self.replicas = 0
        self.behind_sentinel = False

    async def watch_replicas(self, every: float = 1.0) -> None:
        """Keep `replicas` up to date, and drop the connections when the server they reach
        is no longer a primary (a demoted one answers reads with stale data), until
        cancelled."""
        failing = False
        while True:
            try:
                info = await self.info("replication")
            except RedisError as exc:
                if not failing:
                    log.warning("cannot read INFO replication (%r): replica count kept", exc)
                failing = True
            else:
                failing = False
                if info.get("role") != "master":
                    log.warning(
                        "storage is not a primary (role %s): reconnecting", info.get("role")
                    )
                    # Idle ones only: cutting one in use under a command breaks it with a
                    # non-Redis error; those in use are idle by a later look.
                    await self.connection_pool.disconnect(inuse_connections=False)
                    if self.channel is not None:
                        self.channel.drop()
                else:  # online ones only: one in its first sync acknowledges nothing yet
                    self.replicas = sum(
                        1
                        for name, replica in info.items()
                        if name.startswith("slave")
                        and isinstance(replica, dict)
                        and replica.get("state") == "online"
                    )
            await asyncio.sleep(every)

    async def replicated(self, marker: str) -> None:
        """Return once a replica has every write the primary made before this call, from
        any connection (where there are replicas; else at once); NotReplicated if none
        confirms in time. `marker` is a key this writes: WAIT counts from its connection's
        last write, so a write of its own makes it cover everything before (replication is
        one ordered stream), even when the change being confirmed wrote nothing this time
        (a retry) or went out on another connection."""
        if not (self.behind_sentinel or self.replicas > 0):
            return
        await _take_turn(self._gate)
        try:
            pipe = self.pipeline(transaction=False)
            pipe.incr(marker)
            pipe.wait(1, REPLICA_WAIT_MS)
            _, confirmed = await pipe.execute()
        finally:
            self._gate.release()
        if int(confirmed) < 1:
            raise NotReplicated("no replica confirmed the change in time")

    async def evalsha_replicated(
        self, sha: str, keys: list[str], args: list[Any], marker: str
    ) -> Any:
        """EVALSHA acknowledged only once a replica has it (where there are replicas):
        `INCR marker` and WAIT go in the same pipeline, on the same connection, so the WAIT
        confirms the very primary that ran the script. After a connection error redis-py
        sends the whole pipeline again, perhaps to a promoted replica; the scripts are safe
        to replay, and there the replay makes the change again before it is confirmed."""
        wait = self.behind_sentinel or self.replicas > 0
        await _take_turn(self._gate)
        try:
            pipe = self.pipeline(transaction=False)
            pipe.evalsha(sha, len(keys), *keys, *args)
            if wait:
                pipe.incr(marker)
                pipe.wait(1, REPLICA_WAIT_MS)
            replies = await pipe.execute(raise_on_error=False)
        finally:
            self._gate.release()
        if isinstance(replies[0], Exception):
            raise replies[0]
        if wait and (isinstance(replies[-1], Exception) or int(replies[-1]) < 1):
            raise NotReplicated("no replica confirmed the change in time")
        return replies[0]

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        """Close, after the batches in flight (their connections would be handed back to
        a closed pool, still open)."""
        if self._senders:
            await asyncio.wait(self._senders, timeout=POOL_WAIT)
        if self.channel is not None:
            self.channel.close()
        await super().aclose(close_connection_pool)

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        await _take_turn(self._gate)
        try:
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        finally:
            self._gate.release()

    def evalsha_batched(self, sha: str, keys: list[str], args: list[Any]) -> asyncio.Future[Any]:
        """EVALSHA in the next batch; the future has the reply or the error (NoScriptError
        when the script is not loaded: it did not run)."""
        loop = self._loop
        if not self._batch or loop is None:  # once a batch: see signing.BatchSigner
            loop = self._loop = asyncio.get_running_loop()
            loop.call_soon(self._send_batch)
        future: asyncio.Future[Any] = loop.create_future()
        self._batch.append((("EVALSHA", sha, len(keys), *keys, *args), future))
        return future

    def _send_batch(self) -> None:
        batch, self._batch = self._batch, []
        if self.channel is not None:
            self.channel.submit([command for command, _ in batch], [f for _, f in batch])
            return
        assert self._loop is not None  # set with the batch's first call
        sender = self._loop.create_task(self._send(batch))
        self._senders.add(sender)  # a reference until done, so it is not collected
        sender.add_done_callback(self._senders.discard)

    async def _send(self, batch: list[_Call]) -> None:
        try:
            await _take_turn(self._gate)
            try:
                pipe = self.pipeline(transaction=False)
                for command, _ in batch:
                    pipe.execute_command(*command)
                replies = await pipe.execute(raise_on_error=False)
            finally:
                self._gate.release()
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        except BaseException:  # cancelled (shutdown): nobody gets an answer
            for _, future in batch:
                future.cancel()
            raise
        for (_, future), reply in zip(batch, replies, strict=True):
            if future.done():  # its caller was cancelled
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)


class BoundedRedisCluster(RedisCluster):
    """redis-py's async RedisCluster with what a server needs of it:

    - A bounded pool that waits. redis-py gives each node up to `max_connections`
      connections and raises MaxConnectionsError at once beyond that; here at most
      POOL_SIZE commands are in flight per client (so per node, as a command holds at most
      one connection of each node at a time), and a command waits up to POOL_WAIT for its
      turn, then fails with ConnectionError, as BoundedRedis does.
    - Redirections: MOVED and ASK are followed by redis-py, TRYAGAIN is retried by it a few
      times; a command still refused after that, or a script refused for a key that has
      already moved, is tried again (CLUSTER_REDIRECT_RETRIES).
      A MOVED only updates that slot's owner (`reinitialize_steps=0`): redis-py's default
      closes every connection on every fifth MOVED to re-read the layout, which breaks the
      commands in flight (replayed after a ConnectionError, or failed with AttributeError
      when caught while connecting).
    - It learns the layout before routing a command. redis-py routes commands issued before
      that (a burst at start-up, or after it closed itself on CLUSTERDOWN) to random
      masters; two thirds meet MOVED, and the closing above turns the burst into errors.
    - Every failure is a RedisError: redis-py raises RedisClusterException (not a RedisError)
      when no node answers or slots are uncovered; that becomes ConnectionError, so callers
      answer 503 as they do for a single server.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._gate = asyncio.Semaphore(POOL_SIZE)

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        await _take_turn(self._gate)
        try:
            pauses = iter(CLUSTER_REDIRECT_RETRIES)
            while True:
                if self.get_default_node() is None:
                    await self.start()  # see the class comment
                try:
                    return await super().execute_command(*args, **kwargs)
                except (ClusterError, ResponseError) as exc:
                    # Exactly ClusterError: the redirections ran out. Subclasses
                    # (ClusterDownError) were already retried by redis-py.
                    pause = next(pauses, None)
                    if not _slot_moving(exc) or pause is None:
                        raise
                await asyncio.sleep(pause)
        except RedisClusterException as exc:
            raise RedisConnectionError(f"Redis Cluster: {exc}") from exc
        finally:
            self._gate.release()

    async def start(self) -> None:
        """Learn the cluster's nodes and slots (once; again after a failure)."""
        try:
            await self.initialize()
        except RedisClusterException as exc:
            raise RedisConnectionError(f"Redis Cluster: {exc}") from exc

    def node_client(self, index: int) -> tuple[str, aioredis.Redis]:
        """A plain client, with its own connection, for node number `index` (modulo the
        number of known nodes, in a fixed order): its name and the client. Call `start`
        first. Credentials, TLS and timeouts are those of this client."""
        nodes = sorted(self.get_nodes(), key=lambda n: n.name)
        if not nodes:
            raise RedisConnectionError("Redis Cluster: no node known")
        node = nodes[index % len(nodes)]
        kwargs = dict(self.get_connection_kwargs())
        connection_class: type[Connection] = kwargs.pop("connection_class") or Connection
        for cluster_only in ("max_connections", "response_callbacks", "host", "port", "retry"):
            kwargs.pop(cluster_only, None)
        pool = aioredis.ConnectionPool(
            connection_class=connection_class,
            host=node.host,
            port=int(node.port),
            retry=NO_RETRY,
            **kwargs,
        )
        return node.name, aioredis.Redis.from_pool(pool)


def _slot_moving(exc: Exception) -> bool:
    """Was the command refused because its slot is being migrated? Then it did not run, or
    stopped before its first write: a script that reads every key first fails on a key that
    already moved before it changes anything (see the script headers)."""
    if isinstance(exc, ResponseError):
        return str(exc).startswith(NON_LOCAL_KEY)
    return type(exc) is ClusterError


def connect(url: str, *, cluster: bool) -> Client:
    """A client for `url` (any node of a cluster when `cluster`); no I/O happens yet."""
    common: dict[str, Any] = {
        "decode_responses": True,
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "health_check_interval": 15,
    }
    if cluster:
        # redis-py retries ConnectionError and TimeoutError (re-reading the cluster's
        # layout first) as many times as `retry` says; MOVED/ASK/TRYAGAIN see above.
        return BoundedRedisCluster.from_url(
            url, max_connections=POOL_SIZE, retry=_retry(), reinitialize_steps=0, **common
        )
    plain = url.startswith("redis://")  # rediss:// and unix:// bring their own connections
    if plain:
        common["connection_class"] = HiredisPackingConnection
    # BoundedRedis keeps to POOL_SIZE commands in flight; the client owns its pool and
    # closes it with itself.
    client: BoundedRedis = BoundedRedis.from_url(  # type: ignore[assignment]
        url,
        max_connections=POOL_SIZE,
        retry=_retry(),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        **common,
    )
    if plain:
        kwargs = client.connection_pool.connection_kwargs
        server = (str(kwargs.get("host", "localhost")), int(kwargs.get("port", 6379)))

        async def address() -> tuple[str, int]:
            return server

        client.channel = _channel(address, kwargs)
    return client


def _channel(address: Address, kwargs: dict[str, Any]) -> Channel:
    """A Channel to `address` with the credentials, database and name of a pool's
    connection settings."""
    setup: list[tuple[Any, ...]] = []
    if kwargs.get("password") is not None:
        user = kwargs.get("username")
        setup.append(("AUTH", user, kwargs["password"]) if user else ("AUTH", kwargs["password"]))
    if kwargs.get("db"):
        setup.append(("SELECT", kwargs["db"]))
    if kwargs.get("client_name"):
        setup.append(("CLIENT", "SETNAME", kwargs["client_name"]))
    return Channel(
        address, setup=setup, connect_timeout=CONNECT_TIMEOUT, reply_timeout=SOCKET_TIMEOUT
    )


def connect_sentinel(sentinels: tuple[tuple[str, int], ...], service: str) -> BoundedRedis:
    """A client for the primary that `sentinels` name for `service`: each new connection
    asks them where it is, and one that finds its server demoted (READONLY) or gone is
    dropped, so the client follows a failover by itself. No primary: ConnectionError."""
    timeouts: dict[str, Any] = {
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": CONNECT_TIMEOUT,
    }
    # redis-py's default for these clients retries ten times with backoff: a Sentinel that
    # does not answer would hold every request for seconds.
    lookups = {
        "socket_timeout": SENTINEL_TIMEOUT,
        "socket_connect_timeout": SENTINEL_TIMEOUT,
        "retry": NO_RETRY,
        "retry_on_error": [],
    }
    manager = Sentinel(list(sentinels), sentinel_kwargs=lookups)  # type: ignore[no-untyped-call, unused-ignore]
    client: BoundedRedis = manager.master_for(
        service,
        redis_class=BoundedRedis,
        max_connections=POOL_SIZE,
        retry=_retry(),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        decode_responses=True,
        health_check_interval=15,
        **timeouts,
    )
    client.behind_sentinel = True
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    client.channel = _channel(pool.get_master_address, pool.connection_kwargs)
    return client


async def close(client: Client) -> None:
    """Close a client, and the Sentinel clients behind it if it has them (even when closing
    the client itself fails or is cut short by a timeout)."""
    pool = getattr(client, "connection_pool", None)
    try:
        await client.aclose()
    finally:
        if isinstance(pool, SentinelConnectionPool):
            await pool.sentinel_manager.aclose()


def embedded() -> BoundedRedis:
    """An in-process Redis (fakeredis with Lua), for running without a Redis server: the
    same bounded, waiting, pipelining client as for a real server. (fakeredis's own client
    has redis-py's default pool, which fails beyond 100 concurrent commands.)"""
    pool = aioredis.BlockingConnectionPool(
        connection_class=FakeAsyncRedisConnection,
        server=fakeredis.FakeServer(version=(7,)),
        client_class=aioredis.Redis,
        max_connections=POOL_SIZE,
        timeout=POOL_WAIT,
        decode_responses=True,
    )
    client: BoundedRedis = BoundedRedis.from_pool(pool)  # type: ignore[assignment]
    return client


async def pubsub_client(client: Client, attempt: int) -> tuple[str, aioredis.Redis]:
    """A client of its own to subscribe with, for subscription attempt number `attempt`: a
    name for logs and the client, which the caller closes.

    Its connection never reconnects by itself. redis-py's PubSub otherwise reconnects and
    subscribes again inside a read, and messages published in between are lost without a
    sign; here the read fails, and the feed starts a new epoch.

    For a single server (or the embedded store) it is a connection to that server. On a
    cluster it is a plain client for one node: PUBLISH, including from a script, is
    broadcast to every node, so a subscription on any node sees every message. Each attempt
    takes the next node, so a subscription lost with its node is made again elsewhere."""
    if isinstance(client, BoundedRedisCluster):
        await client.start()
        return client.node_client(attempt)
    if isinstance(client, RedisCluster):
        raise TypeError("cluster clients come from connect()")
    pool = client.connection_pool
    kwargs = {**pool.connection_kwargs, "retry": NO_RETRY, "retry_on_error": []}
    own: aioredis.ConnectionPool
    if isinstance(pool, SentinelConnectionPool):  # on the primary, wherever it is now
        kwargs.pop("connection_pool")
        own = SentinelConnectionPool(  # type: ignore[no-untyped-call]
            pool.service_name, pool.sentinel_manager, max_connections=1, **kwargs
        )
        return "redis (sentinel)", aioredis.Redis.from_pool(own)
    own = aioredis.ConnectionPool(
        connection_class=pool.connection_class, max_connections=1, **kwargs
    )
    return "redis", aioredis.Redis.from_pool(own)


async def replicated(client: Client, marker: str) -> None:
    """BoundedRedis.replicated for a single primary; nothing for a cluster (whose scripts
    go out one by one, each primary with its own replicas: see the README) or the embedded
    store."""
    if isinstance(client, BoundedRedis):
        await client.replicated(marker)
