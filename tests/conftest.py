"""Fixtures: a real redis-server started by the suite, settings, clocks and app clients."""

from __future__ import annotations

import dataclasses
import itertools
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web_runner import BaseRunner

from authsvc.app import HANDLER_ARGS, create_app
from authsvc.domain.clock import Clock
from authsvc.domain.keys import KeyRing, generate_jwks
from authsvc.settings import Settings
from tests.cluster import RedisCluster3

ClientFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]
_prefixes = itertools.count()


class ServingTestServer(TestServer):
    """A test server with the server limits that `authsvc serve` uses."""

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        return web.AppRunner(self.app, **kwargs, **HANDLER_ARGS)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--redis-backend",
        choices=("single", "cluster", "both"),
        default=os.environ.get("AUTHSVC_TEST_BACKEND", "both"),
        help="the Redis the tests run against (default: $AUTHSVC_TEST_BACKEND or both)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "redis_backend" in metafunc.fixturenames:
        chosen = metafunc.config.getoption("--redis-backend")
        names = ["single", "cluster"] if chosen == "both" else [chosen]
        metafunc.parametrize("redis_backend", names, indirect=True, scope="session")


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    """A redis-server process on loopback that tests may stop and start again."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (apt-get install redis-server)")
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server and wait until it answers."""
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        client.close()

    def stop(self) -> None:
        """Stop the server (by its process id) and wait for it to exit."""
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster3]:
    cluster = RedisCluster3(tmp_path_factory.mktemp("cluster"))
    cluster.start()
    yield cluster
    cluster.stop()


@dataclasses.dataclass(frozen=True)
class Backend:
    """The Redis that a test runs against: a single server or a three-master cluster."""

    name: str
    url: str
    cluster: bool

    def env(self) -> dict[str, str]:
        """The environment that points `authsvc serve` at this backend."""
        return {"AUTHSVC_REDIS_URL": self.url, "AUTHSVC_REDIS_CLUSTER": str(int(self.cluster))}


@pytest.fixture(scope="session")
def redis_backend(request: pytest.FixtureRequest) -> Backend:
    """Parametrized by pytest_generate_tests; starts only the backend chosen."""
    if request.param == "cluster":
        cluster: RedisCluster3 = request.getfixturevalue("redis_cluster")
        return Backend("cluster", cluster.url, cluster=True)
    server: RedisServer = request.getfixturevalue("redis_server")
    return Backend("single", server.url, cluster=False)


@pytest.fixture(scope="session")
def keyring() -> KeyRing:
    """One ES256 key set for the whole run (generating keys is slow only for RSA)."""
    return KeyRing.from_jwks(generate_jwks())


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def settings(redis_backend: Backend) -> Settings:
    """Settings for one test: its own key prefix on the shared backend, cheap bcrypt."""
    return Settings(
        redis_url=redis_backend.url,
        redis_cluster=redis_backend.cluster,
        key_prefix=f"t{os.getpid()}-{next(_prefixes)}",
        bcrypt_rounds=4,
        ip_rate_limit=0,
        log_format="text",
    )


@pytest.fixture
def make_client(aiohttp_client: Any, clock: Clock, keyring: KeyRing) -> ClientFactory:
    """Start an app (several may share one Redis) and return a test client for it."""

    async def make(s: Settings, **kwargs: Any) -> TestClient[web.Request, web.Application]:
        kwargs.setdefault("clock", clock)
        kwargs.setdefault("keyring", keyring)
        app = create_app(s, **kwargs)
        client: TestClient[web.Request, web.Application] = await aiohttp_client(
            ServingTestServer(app, host="127.0.0.1")
        )
        return client

    return make


@pytest.fixture
async def client(
    make_client: ClientFactory, settings: Settings
) -> TestClient[web.Request, web.Application]:
    return await make_client(settings)


def with_(settings: Settings, **changes: Any) -> Settings:
    """A copy of settings with some fields changed."""
    return replace(settings, **changes)
