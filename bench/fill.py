"""Filling a Redis with sessions laid out exactly as authsvc stores them.

For each made-up user: the email's user id, the user hash, 1 to `limit` session hashes
(`gen c u ua ip`, as create_session.lua and rotate_session.lua write them) and the
sorted-set index scored by last use, each with the TTL authsvc would have given it.
Written with a pipelined redis-py loop; see authsvc/store/keys.py for the names."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import random
import time
from collections.abc import Callable

import redis
from redis.typing import EncodableT, FieldT

from authsvc.store import addresses, user_agents

BATCH_USERS = 2_000  # users per pipeline round trip
USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/18.1 Safari/605.1.15",
    "okhttp/4.12.0",
    "MyApp/5.3.1 (Android 15; Pixel 8)",
)
# The shape of a real bcrypt hash; nobody logs in to a filler account.
FILLER_PASSWORD_HASH = "$2b$12$" + "x" * 53


@dataclasses.dataclass(frozen=True, slots=True)
class Layout:
    """Key prefix and session policy of the authsvc instance that reads the data."""

    prefix: str = "authsvc"
    limit: int = 5
    idle_ttl_ms: int = 1_209_600_000
    max_ttl_ms: int = 2_592_000_000


@dataclasses.dataclass(frozen=True, slots=True)
class FillStats:
    """What a fill wrote and how long it took."""

    sessions: int
    users: int
    seconds: float
    redis_keys: int
    used_memory_mb: float


def fill(
    url: str,
    sessions: int,
    *,
    layout: Layout,
    seed: int,
    progress: Callable[[int], None] | None = None,
) -> FillStats:
    """Write `sessions` sessions of made-up users into the Redis at `url`."""
    rng = random.Random(seed)
    client = redis.Redis.from_url(url)
    started = time.monotonic()
    now_ms = int(time.time() * 1000)
    written = users = 0
    try:
        while written < sessions:
            pipe = client.pipeline(transaction=False)
            for _ in range(BATCH_USERS):
                if written >= sessions:
                    break
                count = min(rng.randint(1, layout.limit), sessions - written)
                _add_user(pipe, rng, layout, now_ms, seed * 10_000_000 + users, count)
                written += count
                users += 1
            pipe.execute()
            if progress is not None:
                progress(written)
        info = client.info("memory")
        keys = int(client.dbsize())
    finally:
        client.close()
    return FillStats(
        sessions=written,
        users=users,
        seconds=time.monotonic() - started,
        redis_keys=keys,
        used_memory_mb=int(info["used_memory"]) / 2**20,
    )


def _add_user(
    pipe: redis.client.Pipeline,
    rng: random.Random,
    layout: Layout,
    now_ms: int,
    number: int,
    count: int,
) -> None:
    user_id = _random_id(rng)
    email = f"filler-{number}@bench.example"
    tag = f"{layout.prefix}:{{u:{user_id}}}"
    digest = hashlib.sha256(email.encode()).hexdigest()[:32]
    joined = now_ms - rng.randrange(30 * 86_400_000)
    pipe.set(f"{layout.prefix}:{{e:{digest}}}:uid", user_id)
    pipe.hset(
        f"{tag}:user", mapping={"email": email, "pw": FILLER_PASSWORD_HASH, "pv": 0, "c": joined}
    )
    index: dict[str, int] = {}
    for _ in range(count):
        session_id, last_used = _add_session(pipe, rng, layout, now_ms, tag)
        index[session_id] = last_used
    pipe.zadd(f"{tag}:s", index)
    pipe.pexpire(f"{tag}:s", layout.idle_ttl_ms)


def _add_session(
    pipe: redis.client.Pipeline,
    rng: random.Random,
    layout: Layout,
    now_ms: int,
    tag: str,
) -> tuple[str, int]:
    session_id = _random_id(rng)
    # Alive: created within the absolute lifetime, used within the idle lifetime.
    created = now_ms - rng.randrange(layout.max_ttl_ms * 2 // 3)
    last_used = now_ms - rng.randrange(min(now_ms - created, layout.idle_ttl_ms * 2 // 3) + 1)
    fields: dict[FieldT, EncodableT] = {
        "gen": rng.randrange(200),
        "c": created,
        "u": last_used,
        # As SessionStore.create stores them.
        "ua": user_agents.pack(rng.choice(USER_AGENTS)),
        "ip": addresses.pack(_random_ip(rng)),
    }
    key = f"{tag}:s:{session_id}"
    pipe.hset(key, mapping=fields)
    ttl = min(last_used + layout.idle_ttl_ms, created + layout.max_ttl_ms) - now_ms
    pipe.pexpire(key, ttl)
    return session_id, last_used


def _random_ip(rng: random.Random) -> str:
    return (
        f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
    )


def _random_id(rng: random.Random) -> str:
    # The shape of authsvc's new_id(): 128 random bits, URL-safe base64 without padding.
    return base64.urlsafe_b64encode(rng.randbytes(16)).rstrip(b"=").decode()
