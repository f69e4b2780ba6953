"""Redis clients: a single server, a cluster, or the embedded in-process default."""

from __future__ import annotations

from typing import Any, TypeAlias

import fakeredis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.exceptions import TryAgainError

Client: TypeAlias = "aioredis.Redis | RedisCluster"

# Bounded everywhere: a dead Redis turns into a 503 within about two seconds.
SOCKET_TIMEOUT = 0.5
CONNECT_TIMEOUT = 0.5
POOL_SIZE = 64
POOL_WAIT = 1.0


def _retry() -> Retry:
    # Two quick retries; every script is safe to replay (see the script headers).
    return Retry(ExponentialBackoff(cap=0.2, base=0.02), retries=2)


def connect(url: str, *, cluster: bool) -> Client:
    """A client for `url` (any node of a cluster when `cluster`); no I/O happens yet."""
    common: dict[str, Any] = {
        "decode_responses": True,
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "health_check_interval": 15,
    }
    if cluster:
        return RedisCluster.from_url(
            url,
            max_connections=POOL_SIZE,
            retry=_retry(),
            retry_on_error=[RedisConnectionError, RedisTimeoutError, TryAgainError],
            **common,
        )
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=POOL_SIZE, timeout=POOL_WAIT, **common
    )
    return aioredis.Redis(
        connection_pool=pool,
        retry=_retry(),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )


def embedded() -> aioredis.Redis:
    """An in-process Redis (fakeredis with Lua), for running without a Redis server."""
    client: aioredis.Redis = fakeredis.FakeAsyncRedis(
        server=fakeredis.FakeServer(version=(7,)), decode_responses=True
    )
    return client


def pubsub_client(client: Client) -> aioredis.Redis:
    """A plain client for the revocation channel. On a cluster any node will do: PUBLISH
    is broadcast to every node, so one subscription sees every message."""
    if isinstance(client, RedisCluster):
        node = client.get_default_node()
        return aioredis.Redis(
            host=node.host,
            port=int(node.port),
            decode_responses=True,
            socket_connect_timeout=CONNECT_TIMEOUT,
        )
    return client
