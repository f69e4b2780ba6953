"""Redis bytes per session, measured through authsvc's own store layer.

Starts a private redis-server on a free loopback port, creates accounts and sessions with
AccountStore.create and SessionStore.create (the real Lua scripts), and reports the growth of
INFO used_memory per session and per account, plus MEMORY USAGE of sample keys.

    .venv/bin/python bench/capacity.py                      # 20,000 users x 5 sessions
    .venv/bin/python bench/capacity.py --redis-config hash-max-listpack-value=256
    .venv/bin/python bench/capacity.py --cluster            # cluster-mode key bookkeeping

To measure a changed layout, copy authsvc/ somewhere, edit the copy and put its parent first
on PYTHONPATH; the run prints which authsvc package it used."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import random
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from procs import free_port, start_redis

import authsvc
from authsvc.domain.tokens import new_id
from authsvc.store.accounts import AccountStore
from authsvc.store.keys import Keys
from authsvc.store.scripts import Scripts
from authsvc.store.sessions import SessionStore, SessionTimes

GIB = 1 << 30
ENCODING_SAMPLE = 1000  # session hashes whose encoding is counted
TARGET_BYTES_PER_SESSION = 350  # issue 13
IDLE_TTL_MS = 1_209_600_000  # config/authsvc.example.toml: session_idle_ttl
MAX_TTL_MS = 2_592_000_000  # session_max_ttl
# Real user agents, 46 to 139 characters (mean 113 as drawn), of several versions each:
# the packing dictionary (store/user_agents.py) holds no version numbers.
USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/142.0.0.0 Safari/537.36 Edg/142.0.3595.53",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/18.1.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; SM-A546B) AppleWebKit/537.36 (KHTML, like Gecko) "
    "SamsungBrowser/26.0 Chrome/122.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (iPad; CPU OS 17_7 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "CriOS/131.0.6778.73 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/130.0.0.0 Safari/537.36 OPR/115.0.0.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) Gecko/20100101 Firefox/128.0",
    "MyApp/3.2.1 (iPhone15,2; iOS 18.1; Scale/3.00)",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
)
# The shape of a bcrypt hash: "$2b$12$" + 22 characters of salt + 31 of digest = 60.
BCRYPT_ALPHABET = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
FIRST_NAMES = ("anna", "ben", "carla", "david", "elena", "farid", "grace", "hugo", "ines")
DOMAINS = ("gmail.com", "outlook.com", "yahoo.com", "icloud.com", "example-corp.com")


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    """What to create."""

    users: int
    sessions_per_user: int
    concurrency: int
    prefix: str
    seed: int


@dataclasses.dataclass(frozen=True, slots=True)
class Sample:
    """MEMORY USAGE and encoding of one key."""

    name: str
    key: str
    bytes: int
    encoding: str


async def used_memory(client: aioredis.Redis) -> int:
    """INFO used_memory less client buffers (mem_clients_normal: this benchmark's own
    connections), once steady: a keyspace dict being rehashed holds two tables until
    activerehashing (a millisecond per server cron tick) has moved it."""
    last = -1
    for _ in range(50):
        await asyncio.sleep(0.2)
        info = await client.info("memory")
        used = int(info["used_memory"]) - int(info["mem_clients_normal"])
        if used == last:
            break
        last = used
    return last


async def in_batches(jobs: list[Callable[[], Awaitable[object]]], size: int) -> None:
    """Run the jobs, at most `size` at a time, batch after batch."""
    for start in range(0, len(jobs), size):
        await asyncio.gather(*(job() for job in jobs[start : start + size]))


def password_hash(rng: random.Random) -> str:
    """A 60-character string shaped like a bcrypt hash."""
    return "$2b$12$" + "".join(rng.choices(BCRYPT_ALPHABET, k=53))


async def sample(client: aioredis.Redis, name: str, key: str) -> Sample:
    """MEMORY USAGE (every element counted) and OBJECT ENCODING of `key`."""
    size = await client.memory_usage(key, samples=0)
    encoding = await client.object("ENCODING", key)
    return Sample(name, key, int(size or 0), str(encoding))


async def run(plan: Plan, port: int) -> None:
    rng = random.Random(plan.seed)
    pool = aioredis.BlockingConnectionPool(
        host="127.0.0.1", port=port, max_connections=plan.concurrency, decode_responses=True
    )
    client = aioredis.Redis(connection_pool=pool)
    keys = Keys(plan.prefix)
    scripts = Scripts(client)
    accounts = AccountStore(client, keys, scripts, int)

    def logged_in_last_week() -> int:  # what the scripts add to Redis's time
        return -rng.randrange(7 * 86_400_000)

    times = SessionTimes(IDLE_TTL_MS, MAX_TTL_MS)
    sessions = SessionStore(client, keys, scripts, times, logged_in_last_week)
    try:
        # Load every script first, so the script cache is part of the baseline.
        for script in vars(scripts).values():
            await client.script_load(script.text)
        users = [
            (new_id(), f"{rng.choice(FIRST_NAMES)}.{i}@{rng.choice(DOMAINS)}")
            for i in range(plan.users)
        ]
        now_ms = int(time.time() * 1000)

        base = await used_memory(client)
        started = time.monotonic()
        account_jobs: list[Callable[[], Awaitable[object]]] = [
            functools.partial(accounts.create, uid, email, password_hash(rng), now_ms)
            for uid, email in users
        ]
        await in_batches(account_jobs, plan.concurrency)
        after_accounts = await used_memory(client)

        ua_lengths: list[int] = []
        session_jobs: list[Callable[[], Awaitable[object]]] = []
        some_sessions: list[tuple[str, str]] = []  # (user id, session id), for sampling
        for uid, _ in users:
            for _ in range(plan.sessions_per_user):
                sid = new_id()
                if len(some_sessions) < ENCODING_SAMPLE:
                    some_sessions.append((uid, sid))
                # As the service stores it (AuthService.login cuts it to this length).
                ua = rng.choice(USER_AGENTS)
                ua_lengths.append(len(ua))
                ip = ".".join(str(rng.randrange(1, 255)) for _ in range(4))
                # Logins spread over the last week (logged_in_last_week).
                session_jobs.append(
                    functools.partial(
                        sessions.create,
                        user_id=uid,
                        session_id=sid,
                        password_version="0",  # noqa: S106 (a version, not a password)
                        limit=plan.sessions_per_user,
                        policy="evict",
                        user_agent=ua,
                        ip=ip,
                    )
                )
        await in_batches(session_jobs, plan.concurrency)
        elapsed = time.monotonic() - started
        after_sessions = await used_memory(client)

        n_sessions = plan.users * plan.sessions_per_user
        uid0 = users[0][0]
        dbsize = await client.dbsize()
        if dbsize != plan.users * (3 + plan.sessions_per_user):  # email, user, index
            raise RuntimeError(f"{dbsize} keys: some sessions were evicted or not stored")
        hashtables = 0
        for uid, sid in some_sessions:
            hashtables += await client.object("ENCODING", keys.session(uid, sid)) == "hashtable"
        samples = [
            await sample(client, "session hash", keys.session(*some_sessions[0])),
            await sample(client, "session index (zset)", keys.session_index(uid0)),
            await sample(client, "user hash", keys.user(uid0)),
            await sample(client, "email -> user id", keys.email(users[0][1])),
        ]
        report(
            plan,
            n_sessions=n_sessions,
            per_session=(after_sessions - after_accounts) / n_sessions,
            per_account=(after_accounts - base) / plan.users,
            samples=samples,
            ua_mean=sum(ua_lengths) / len(ua_lengths),
            elapsed=elapsed,
            dbsize=dbsize,
            hashtables=(hashtables, len(some_sessions)),
            used=(base, after_accounts, after_sessions),
        )
    finally:
        await client.aclose()
        await pool.disconnect()


def report(
    plan: Plan,
    *,
    n_sessions: int,
    per_session: float,
    per_account: float,
    samples: list[Sample],
    ua_mean: float,
    elapsed: float,
    dbsize: int,
    hashtables: tuple[int, int],
    used: tuple[int, int, int],
) -> None:
    base, after_accounts, after_sessions = used
    print(f"authsvc package        {Path(authsvc.__file__).parent}")
    print(
        f"created                {plan.users:,} accounts, {n_sessions:,} sessions "
        f"({plan.users:,} users x {plan.sessions_per_user}) in {elapsed:.1f} s; "
        f"{dbsize:,} keys"
    )
    print(f"mean user agent        {ua_mean:.0f} chars")
    print(
        f"used_memory            base {base:,}  +accounts {after_accounts:,}  "
        f"+sessions {after_sessions:,}"
    )
    verdict = "OK" if per_session <= TARGET_BYTES_PER_SESSION else "OVER"
    print(
        f"bytes per session      {per_session:,.0f}  (session + 1/{plan.sessions_per_user} "
        f"index; the user hash counts with the account; target <= "
        f"{TARGET_BYTES_PER_SESSION}: {verdict})"
    )
    print(f"bytes per account      {per_account:,.0f}")
    print(f"sessions per GiB       {GIB / per_session:,.0f}")
    print("MEMORY USAGE samples (key name and object; not the expires entry or dict buckets):")
    for s in samples:
        print(f"  {s.name:22} {s.bytes:5} B  {s.encoding:10} {s.key}")
    by_name = {s.name: s.bytes for s in samples}
    parts = (
        by_name["session hash"]
        + (by_name["session index (zset)"] + by_name["user hash"]) / plan.sessions_per_user
    )
    print(
        f"  sum of parts per session {parts:,.0f} B; the rest ({per_session - parts:,.0f} B) "
        "is keyspace/expires dict buckets and entries"
    )
    print(
        f"session hashes in hashtable encoding: {hashtables[0]} of {hashtables[1]} sampled "
        "(listpack needs every value <= hash-max-listpack-value, default 64 bytes)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--sessions-per-user", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=64, help="scripts in flight")
    parser.add_argument("--prefix", default="authsvc", help="key prefix (key_prefix)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--redis-config",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra redis-server setting, e.g. hash-max-listpack-value=128 (repeatable)",
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="run redis-server in cluster mode (one node with all slots)",
    )
    args = parser.parse_args()
    plan = Plan(args.users, args.sessions_per_user, args.concurrency, args.prefix, args.seed)
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="authsvc-capacity-") as workdir:
        config = list(args.redis_config)
        if args.cluster:  # the bus port would be port + 10000, maybe past 65535
            config += ["cluster-enabled=yes", f"cluster-port={free_port()}"]
        server = start_redis("redis", core=1, workdir=Path(workdir), port=port, config=config)
        try:
            asyncio.run(_main(plan, port, cluster=args.cluster))
        finally:
            server.stop()


async def _main(plan: Plan, port: int, *, cluster: bool) -> None:
    probe = aioredis.Redis(host="127.0.0.1", port=port, decode_responses=True)
    try:
        if cluster:
            # One node owning every slot: keys carry the cluster's per-key bookkeeping and
            # the scripts run under cluster rules, yet a plain client reaches every key.
            command: Any = probe.execute_command  # untyped in redis-py
            await command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
            for _ in range(100):
                if "cluster_state:ok" in await command("CLUSTER", "INFO"):
                    break
                await asyncio.sleep(0.1)
            else:
                raise RuntimeError("the one-node cluster did not become ready")
    finally:
        await probe.aclose()
    await run(plan, port)


if __name__ == "__main__":
    main()
