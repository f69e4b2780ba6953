"""The working set: live sessions made through authsvc's HTTP API, as clients make them.

`build` signs up users and logs each in `sessions_per_user` times with a real browser user
agent and its own client address (X-Forwarded-For; the driver is a trusted proxy), and
measures on the way how much Redis grew: per account at signup, per session at login."""

from __future__ import annotations

import dataclasses
import json
import random
import secrets
import time
from concurrent.futures import ThreadPoolExecutor

import client
import redis
from capacity import USER_AGENTS

THREADS = 8  # concurrent HTTP calls of the driver while building


@dataclasses.dataclass(frozen=True, slots=True)
class WorkingSet:
    """Live sessions and what they cost in Redis."""

    access_tokens: list[str] = dataclasses.field(repr=False)
    refresh_tokens: list[str] = dataclasses.field(repr=False)
    users: int
    sessions: int
    bytes_per_account: float
    bytes_per_session: float
    redis_keys: int
    seconds: float
    made_at: float  # time.monotonic() when the tokens were issued


def used_memory(r: redis.Redis) -> int:
    """INFO used_memory less client buffers, once steady (a dict being rehashed holds two
    tables until the server cron has moved it)."""
    last = -1
    for _ in range(50):
        time.sleep(0.2)
        info = r.info("memory")
        used = int(info["used_memory"]) - int(info["mem_clients_normal"])
        if used == last:
            break
        last = used
    return last


def build(port: int, redis_url: str, users: int, sessions_per_user: int, seed: int) -> WorkingSet:
    """`users` accounts with `sessions_per_user` live sessions each, on authsvc at `port`."""
    rng = random.Random(seed)
    started = time.monotonic()
    store = redis.Redis.from_url(redis_url)
    try:
        empty = used_memory(store)
        with ThreadPoolExecutor(THREADS) as pool:
            accounts = list(pool.map(lambda i: _signup(port, i), range(users)))
            _drop_attempt_counters(store)
            with_accounts = used_memory(store)
            logins = [
                (account, rng.choice(USER_AGENTS), _address(rng))
                for account in accounts
                for _ in range(sessions_per_user)
            ]
            rng.shuffle(logins)
            issued = list(pool.map(lambda job: _login(port, *job), logins))
        _drop_attempt_counters(store)
        with_sessions = used_memory(store)
        keys = int(store.dbsize())
    finally:
        store.close()
    return WorkingSet(
        access_tokens=[a for a, _ in issued],
        refresh_tokens=[r for _, r in issued],
        users=users,
        sessions=len(issued),
        bytes_per_account=(with_accounts - empty) / users,
        bytes_per_session=(with_sessions - with_accounts) / len(issued),
        redis_keys=keys,
        seconds=time.monotonic() - started,
        made_at=time.monotonic(),
    )


def _drop_attempt_counters(store: redis.Redis) -> None:
    # Each signup and login from a new address left that address's attempt counter, which
    # lasts one AUTHSVC_IP_RATE_WINDOW (a minute): not the accounts' or sessions' memory.
    counters = list(store.scan_iter(match="*}:attempts", count=1000))
    for at in range(0, len(counters), 1000):
        store.delete(*counters[at : at + 1000])


def renew(port: int, ws: WorkingSet) -> WorkingSet:
    """The same sessions with new tokens (one refresh each): access tokens outlive no
    benchmark longer than their lifetime."""
    with ThreadPoolExecutor(THREADS) as pool:
        issued = list(pool.map(lambda token: _refresh(port, token), ws.refresh_tokens))
    return dataclasses.replace(
        ws,
        access_tokens=[a for a, _ in issued],
        refresh_tokens=[r for _, r in issued],
        made_at=time.monotonic(),
    )


def _signup(port: int, i: int) -> client.Account:
    account = client.Account(f"ws-{i}-{secrets.token_hex(3)}@bench.example", "ws-" + "x" * 12)
    body = {"email": account.email, "password": account.password}
    _post(port, "/v1/auth/signup", body, {"X-Forwarded-For": f"10.9.{i >> 8 & 255}.{i & 255}"})
    return account


def _login(port: int, account: client.Account, user_agent: str, ip: str) -> tuple[str, str]:
    body = {"email": account.email, "password": account.password}
    reply = _post(port, "/v1/auth/login", body, {"User-Agent": user_agent, "X-Forwarded-For": ip})
    return reply["access_token"], reply["refresh_token"]


def _refresh(port: int, token: str) -> tuple[str, str]:
    reply = _post(port, "/v1/auth/refresh", {"refresh_token": token}, {})
    return reply["access_token"], reply["refresh_token"]


def _address(rng: random.Random) -> str:
    first, last = rng.randrange(1, 224), rng.randrange(1, 255)
    return f"{first}.{rng.randrange(256)}.{rng.randrange(256)}.{last}"


def _post(port: int, path: str, body: object, headers: dict[str, str]) -> dict[str, str]:
    status, _, data = client.request(port, "POST", path, body, headers)
    if status not in (200, 201):
        raise RuntimeError(f"POST {path}: {status}: {data[:200]!r}")
    reply: dict[str, str] = json.loads(data)
    return reply
