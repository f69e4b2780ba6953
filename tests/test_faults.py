"""Faults: a lost script cache, a Redis outage and recovery, SIGTERM under load, workers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import time
from pathlib import Path

import aiohttp
import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError

from authsvc.metrics import FLUSH_EVERY
from authsvc.settings import Settings
from authsvc.store import client as client_module
from authsvc.store.client import connect
from authsvc.store.revocations import RevocationFeed
from tests.conftest import Backend, ClientFactory, RedisServer, with_
from tests.helpers import Client, bearer, login, me_status, raw_redis, refresh, signup
from tests.process import Service


async def test_flushed_script_cache_is_reloaded_transparently(
    client: Client, settings: Settings
) -> None:
    await signup(client, "flush@example.com")
    tokens = await login(client, "flush@example.com")
    r = raw_redis(settings)
    await r.script_flush()
    await r.aclose()
    status, tokens = await refresh(client, tokens["refresh_token"])
    assert status == 200
    await login(client, "flush@example.com")


async def test_redis_outage_answers_503_quickly_and_recovers_without_restart(
    make_client: ClientFactory, settings: Settings, tmp_path: Path
) -> None:
    server = RedisServer(tmp_path)
    server.start()
    try:
        client = await make_client(with_(settings, redis_url=server.url, redis_cluster=False))
        await signup(client, "outage@example.com")
        tokens = await login(client, "outage@example.com")
        assert await me_status(client, tokens) == 200
        server.stop()

        for method, path, body in [
            ("POST", "/v1/auth/login", {"email": "outage@example.com", "password": "whatever1"}),
            ("POST", "/v1/auth/refresh", {"refresh_token": tokens["refresh_token"]}),
            ("GET", "/v1/me", None),
            ("GET", "/readyz", None),
        ]:
            started = time.monotonic()
            response = await client.request(method, path, json=body, headers=bearer(tokens))
            assert time.monotonic() - started < 2.0
            assert response.status == 503, (path, await response.text())
            assert (await response.json())["error"] == "unavailable"
            assert response.headers["Retry-After"]
        assert (await client.get("/healthz")).status == 200

        server.start()  # same port, empty data set
        deadline = time.monotonic() + 10
        while (await client.get("/readyz")).status != 200:
            assert time.monotonic() < deadline, "did not recover"
            await asyncio.sleep(0.05)
        await signup(client, "outage@example.com")
        again = await login(client, "outage@example.com")
        assert await me_status(client, again) == 200
        assert await me_status(client, tokens) == 401  # its session died with the data
    finally:
        server.stop()


async def test_sigterm_finishes_requests_in_flight_and_exits_zero(
    redis_backend: Backend, tmp_path: Path
) -> None:
    env = {
        **redis_backend.env(),
        "AUTHSVC_KEY_PREFIX": f"sigterm{os.getpid()}",
        "AUTHSVC_BCRYPT_ROUNDS": "11",
        "AUTHSVC_DATA_DIR": str(tmp_path / "data"),
        "AUTHSVC_IP_RATE_LIMIT": "0",
    }
    with Service(env, log=tmp_path / "serve.log") as service:
        service.wait_ready()
        creds = {"email": "drain@example.com", "password": "drain password"}
        async with aiohttp.ClientSession(service.url) as http:
            assert (await http.post("/v1/auth/signup", json=creds)).status == 201
            logins = [
                asyncio.ensure_future(http.post("/v1/auth/login", json=creds)) for _ in range(8)
            ]
            await asyncio.sleep(0.3)  # all eight are accepted and queued for bcrypt
            service.process.send_signal(signal.SIGTERM)
            responses = await asyncio.gather(*logins)
            assert [r.status for r in responses] == [200] * 8
        assert service.wait_exit() == 0


async def test_workers_accept_each_others_tokens_and_revocations(
    redis_backend: Backend, tmp_path: Path
) -> None:
    with await _two_workers(redis_backend, tmp_path, "workers") as service:
        creds = {"email": "workers@example.com", "password": "workers password"}
        async with aiohttp.ClientSession(service.url) as http:
            assert (await http.post("/v1/auth/signup", json=creds)).status == 201
            tokens = await (await http.post("/v1/auth/login", json=creds)).json()
        headers = {"Authorization": f"Bearer {tokens['access_token']}"}

        async def fresh_connection_status() -> int:
            async with aiohttp.ClientSession(service.url) as http:
                return (await http.get("/v1/me", headers=headers)).status

        assert [await fresh_connection_status() for _ in range(20)] == [200] * 20
        async with aiohttp.ClientSession(service.url) as http:
            assert (await http.post("/v1/auth/logout", headers=headers)).status == 204
        deadline = time.monotonic() + 1.0
        while 200 in [await fresh_connection_status() for _ in range(10)]:
            assert time.monotonic() < deadline, "a worker still accepts a revoked session"
        assert service.stop() == 0
    assert (tmp_path / "data" / "jwks.json").stat().st_mode & 0o777 == 0o600


async def test_every_scrape_of_any_worker_shows_the_whole_service(
    redis_backend: Backend, tmp_path: Path
) -> None:
    with await _two_workers(redis_backend, tmp_path, "metrics") as service:
        creds = {"email": "metrics@example.com", "password": "metrics password"}
        async with aiohttp.ClientSession(service.url) as http:
            assert (await http.post("/v1/auth/signup", json=creds)).status == 201
            assert (await http.post("/v1/auth/login", json=creds)).status == 200

        async def on_a_new_connection(path: str) -> tuple[str, str]:
            """The body, and which worker answered (its request ids' prefix)."""
            async with aiohttp.ClientSession(service.url) as http:
                response = await http.get(path)
                return await response.text(), response.headers["X-Request-Id"][:16]

        for _ in range(30):
            await on_a_new_connection("/openapi.json")
        counted = 'authsvc_http_requests_total{route="/openapi.json",status="200"} 30.0'
        deadline = time.monotonic() + FLUSH_EVERY + 5  # each worker flushes within FLUSH_EVERY
        while counted not in (await on_a_new_connection("/metrics"))[0]:
            assert time.monotonic() < deadline, "the workers' request counts never added up"
            await asyncio.sleep(0.1)
        scrapes = [await on_a_new_connection("/metrics") for _ in range(30)]
        assert len({worker for _, worker in scrapes}) == 2, "one worker answered every scrape"
        for text, _ in scrapes:
            assert counted in text
            assert 'authsvc_logins_total{outcome="success"} 1.0' in text
            assert 'authsvc_http_request_duration_seconds_count{route="/v1/auth/login"} 1.0' in text
        assert service.stop() == 0
    metrics_dir = re.findall(r"worker metrics in ([^\"]+)", service.log.read_text())[0]
    left = await asyncio.to_thread(os.path.exists, metrics_dir)
    assert not left, "the workers' metric files were left behind"


async def _two_workers(backend: Backend, tmp_path: Path, prefix: str) -> Service:
    """`authsvc serve --workers 2`, once both workers listen."""
    env = {
        **backend.env(),
        "AUTHSVC_KEY_PREFIX": f"{prefix}{os.getpid()}",
        "AUTHSVC_BCRYPT_ROUNDS": "4",
        "AUTHSVC_DATA_DIR": str(tmp_path / "data"),
    }
    service = Service(env, "--workers", "2", log=tmp_path / "serve.log")
    try:
        service.wait_ready()
        deadline = time.monotonic() + 20
        while len(_listening_pids(service.log)) < 2:
            assert time.monotonic() < deadline, "the second worker did not start"
            await asyncio.sleep(0.05)
    except BaseException:
        service.stop()
        raise
    return service


def _listening_pids(log: Path) -> set[int]:
    return {
        json.loads(line)["pid"]
        for line in log.read_text().splitlines()
        if '"msg": "listening"' in line
    }


class _TimeoutOnCancel:
    """A pub/sub client whose read turns a cancellation into TimeoutError, as a read
    timeout that meets the cancellation can."""

    subscriptions = 0

    def pubsub(self) -> _TimeoutOnCancel:
        return self

    async def subscribe(self, channel: str) -> None:
        self.subscriptions += 1
        if self.subscriptions > 1:  # ends the test's task instead of looping forever
            raise RuntimeError("subscribed again after being cancelled")

    async def get_message(self, **_: object) -> dict[str, str]:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise TimeoutError from None
        return {}

    async def aclose(self) -> None:
        pass


async def test_a_cancelled_feed_stops_even_when_the_cancellation_surfaces_as_a_timeout() -> None:
    feed = RevocationFeed(_TimeoutOnCancel(), "channel", lambda ended: None)  # type: ignore[arg-type]
    task = asyncio.create_task(feed.run())
    await asyncio.sleep(0.01)
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=1.0)
    assert done == {task}
    assert task.cancelled()


def _masters(backend: Backend) -> list[int]:
    port = int(backend.url.rsplit(":", 1)[1].split("/")[0])
    if not backend.cluster:
        return [port]
    with redis.Redis(port=port) as r:
        return sorted({int(shard[2][1]) for shard in r.execute_command("CLUSTER", "SLOTS")})


async def test_a_full_pool_waits_for_a_free_connection_instead_of_failing(
    redis_backend: Backend,
) -> None:
    name = f"pool{os.getpid()}"
    client = connect(f"{redis_backend.url}?client_name={name}", cluster=redis_backend.cluster)
    key = f"{name}:{{u:pool}}:list"
    peak = 0

    async def count() -> None:
        nonlocal peak
        nodes = [redis.Redis(port=port) for port in _masters(redis_backend)]
        try:
            while True:
                for r in nodes:
                    peak = max(peak, sum(c["name"] == name for c in r.client_list()))
                await asyncio.sleep(0.01)
        finally:
            for r in nodes:
                r.close()

    counter = asyncio.create_task(count())
    try:
        # 3 * POOL_SIZE commands that each hold a connection for 0.1 s.
        replies = await asyncio.gather(
            *(client.blpop([key], timeout=0.1) for _ in range(3 * client_module.POOL_SIZE))
        )
        assert replies == [None] * (3 * client_module.POOL_SIZE)
    finally:
        counter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await counter
        await client.aclose()
    # POOL_SIZE for commands (and on a cluster the one redis-py keeps for the layout).
    assert client_module.POOL_SIZE // 2 < peak <= client_module.POOL_SIZE + 1


async def test_a_full_pool_gives_up_after_its_wait_with_a_connection_error(
    redis_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "POOL_WAIT", 0.05)
    client = connect(redis_backend.url, cluster=redis_backend.cluster)
    key = f"wait{os.getpid()}:{{u:wait}}:list"

    async def hold() -> None:
        await client.blpop([key], timeout=0.3)

    try:
        busy = [asyncio.create_task(hold()) for _ in range(client_module.POOL_SIZE)]
        await asyncio.sleep(0.05)
        with pytest.raises(RedisConnectionError, match="No connection available"):
            await client.get(key)
        await asyncio.gather(*busy)
        assert await client.get(key) is None
    finally:
        await client.aclose()
