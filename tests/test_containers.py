"""The container files, run for real: the project's Dockerfile built with podman, and its
docker-compose.yml brought up with every profile by Debian's docker-compose against
`podman system service`.

Where no registry can be reached (CI here), `scripts/container-bases` first builds stand-ins
for python:3.11-slim and redis:7-alpine (Debian bookworm with Debian's Python and Redis,
tagged with the official names); the Dockerfile and compose file run unchanged. podman
without systemd runs no health checks by itself, so a helper thread runs
`podman healthcheck run` for the stack's containers, as a container engine would.
Everything is torn down by name and process id, also when a test fails."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from tests.helpers import PASSWORD

ROOT = Path(__file__).resolve().parent.parent
CONTAINERS_CONF = ROOT / "scripts" / "containers.conf"
BUILD_FILES = ("Dockerfile", ".dockerignore", "docker-compose.yml", "pyproject.toml", "README.md")
UP_TIMEOUT = 600  # seconds for `up --build` (the first build downloads the wheels)
# Each profile's authsvc service, and the variable that moves its published port.
PROFILES = {
    "default": ("authsvc", "HTTP_PORT"),
    "cluster": ("authsvc-cluster", "CLUSTER_HTTP_PORT"),
    "ha": ("authsvc-ha", "HA_HTTP_PORT"),
}


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not installed (apt-get install podman runc debootstrap docker-compose)"
        )
    return path


class Engine:
    """podman with the project's containers.conf, and its Docker-compatible API socket."""

    def __init__(self, directory: Path) -> None:
        if os.geteuid() != 0:
            pytest.fail("the container tests need root (rootful podman, debootstrap)")
        self.podman = _tool("podman")
        self.compose = _tool("docker-compose")
        self.env = {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}
        self.socket = directory / "podman.sock"
        self.env["DOCKER_HOST"] = f"unix://{self.socket}"
        self._service: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        subprocess.run(
            ["bash", str(ROOT / "scripts" / "container-bases")], env=self.env, check=True
        )
        self._service = subprocess.Popen(
            [self.podman, "system", "service", "--time=0", f"unix://{self.socket}"],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while not self.socket.exists():
            assert time.monotonic() < deadline, "podman system service did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        if self._service is not None:
            self._service.terminate()
            try:
                self._service.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._service.kill()
                self._service.wait()
        self.run("image", "prune", "-f", check=False)  # the build stages left behind

    def run(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        done = subprocess.run(
            [self.podman, *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and done.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)}: {done.stderr[-2000:]}")
        return done.stdout.strip()

    def inspect(self, name: str) -> dict[str, Any]:
        found: list[dict[str, Any]] = json.loads(self.run("inspect", name))
        return found[0]


class HealthChecks:
    """Runs the health checks of the containers whose names start with `label` every second,
    as an engine with systemd would. podman 4.3 keeps a container's failing streak across a
    restart (Docker starts it afresh), so checks are held off while the stack stops: a check
    that met a container on its way down would count against it after the restart, and
    compose refuses to start what depends on an unhealthy container."""

    def __init__(self, engine: Engine, label: str) -> None:
        self._engine = engine
        self._label = label
        self._stop = threading.Event()
        self._turn = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._turn:
                try:
                    names = self._engine.run("ps", "--format", "{{.Names}}", check=False).split()
                    for name in names:
                        if name.startswith(self._label):
                            self._engine.run("healthcheck", "run", name, check=False, timeout=30)
                except subprocess.TimeoutExpired:
                    pass  # a slow check is tried again; the test's own deadlines decide
            self._stop.wait(1.0)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """No checks while the block runs."""
        with self._turn:
            yield

    def __enter__(self) -> HealthChecks:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    podman = Engine(tmp_path_factory.mktemp("podman"))
    try:
        podman.start()
        yield podman
    finally:
        podman.stop()


def _http(port: int, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else {}
    except urllib.error.HTTPError as error:
        raw = error.read()
        return error.code, json.loads(raw) if raw else {}


def _until(condition: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError, urllib.error.URLError):
            result = condition()
            if result:
                return result
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(0.5)


def _flow(port: int, email: str) -> dict[str, Any]:
    """Signup, login and one refresh through a published port; the session's tokens."""
    credentials = {"email": email, "password": PASSWORD}
    assert _http(port, "POST", "/v1/auth/signup", credentials)[0] == 201
    status, tokens = _http(port, "POST", "/v1/auth/login", credentials)
    assert status == 200, tokens
    status, tokens = _http(
        port, "POST", "/v1/auth/refresh", {"refresh_token": tokens["refresh_token"]}
    )
    assert status == 200, tokens
    return tokens


def _refresh(port: int, tokens: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    return _http(port, "POST", "/v1/auth/refresh", {"refresh_token": tokens["refresh_token"]})


def test_the_image_serves_as_uid_10001_is_healthy_and_stops_with_0(
    engine: Engine,
) -> None:
    image = f"localhost/authsvc-test:{os.getpid()}"
    name = f"authsvc-test-{os.getpid()}"
    port = free_port()
    engine.run("build", "--format", "docker", "-t", image, str(ROOT), timeout=UP_TIMEOUT)
    try:
        engine.run("run", "-d", "--init", "--name", name, "-p", f"127.0.0.1:{port}:8080", image)
        _until(lambda: _http(port, "GET", "/healthz")[0] == 200, 30, "/healthz")
        engine.run("healthcheck", "run", name)  # the image's own HEALTHCHECK passes
        built = engine.inspect(image)
        check = built.get("Healthcheck") or built["Config"]["Healthcheck"]
        assert check["Test"][0] == "CMD-SHELL"
        _flow(port, "image@example.com")
        assert engine.run("exec", name, "id", "-u") == "10001"
        engine.run("stop", "-t", "20", name)
        assert engine.inspect(name)["State"]["ExitCode"] == 0
    finally:
        engine.run("rm", "-f", name, check=False)
        engine.run("rmi", "-f", image, check=False)


@pytest.mark.parametrize("profile", list(PROFILES))
def test_the_compose_stack_serves_survives_a_restart_and_stops_with_0(
    engine: Engine, profile: str, tmp_path: Path
) -> None:
    project = f"authsvcci{os.getpid()}{profile}"
    service, port_variable = PROFILES[profile]
    # Every published port moved, not only this profile's: the default authsvc comes up too.
    env = {**engine.env, **{variable: str(free_port()) for _, variable in PROFILES.values()}}
    port = int(env[port_variable])
    for name in BUILD_FILES:
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(
        ROOT / "authsvc", tmp_path / "authsvc", ignore=shutil.ignore_patterns("__pycache__")
    )
    (tmp_path / "config").mkdir()
    jwks = tmp_path / "config" / "jwks.json"
    subprocess.run(
        [str(Path(sys.executable).parent / "authsvc"), "keys", "generate", "--out", str(jwks)],
        check=True,
        capture_output=True,
    )
    os.chown(jwks, 10001, 10001)  # as the compose file's comments tell users to
    compose = [engine.compose, "-p", project]
    if profile != "default":
        compose += ["--profile", profile]

    def run_compose(*args: str, timeout: float = 300) -> None:
        done = subprocess.run(
            [*compose, *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, (
            f"docker-compose {' '.join(args)}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}\n"
            + _health_report(engine, project)
        )

    container = f"{project}_{service}_1"
    try:
        with HealthChecks(engine, project) as checks:

            def restart() -> None:
                with checks.held():
                    run_compose("stop")
                run_compose("up", "-d")
                _until(lambda: _healthy(engine, container), 120, f"{container} healthy again")

            run_compose("up", "-d", "--build", timeout=UP_TIMEOUT)
            _until(lambda: _healthy(engine, container), 120, f"{container} healthy")
            tokens = _flow(port, f"{profile}@example.com")

            # Everything stops and starts again: the sessions are in Redis's files.
            restart()
            status, tokens = _until(
                lambda: _ok(_refresh(port, tokens)), 90, "a refresh after the restart"
            )
            assert status == 200
            if profile == "ha":
                assert _named_primary(engine, project) == "redis-primary"
                tokens = _fail_over(engine, project, port, tokens)
                # A restart after the failover keeps the roles Sentinel gave (the files in
                # the volumes), and the session made before both.
                restart()
                status, tokens = _until(lambda: _ok(_refresh(port, tokens)), 90, "a refresh")
                assert status == 200
                assert _named_primary(engine, project) == "redis-replica"

        engine.run("stop", "-t", "20", container)
        assert engine.inspect(container)["State"]["ExitCode"] == 0
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired):  # keep the test's own failure
            subprocess.run(
                [*compose, "down", "-v", "--remove-orphans", "--rmi", "local"],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                timeout=300,
            )


def _fail_over(engine: Engine, project: str, port: int, tokens: dict[str, Any]) -> dict[str, Any]:
    """Freeze the primary (its name stays resolvable, as a hung host's would); the Sentinels
    promote the replica and authsvc follows; the session made before still refreshes."""
    primary, replica = f"{project}_redis-primary_1", f"{project}_redis-replica_1"
    sentinels = [f"{project}_redis-sentinel-{n}_1" for n in (1, 2, 3)]
    # The replica has all the primary had, and every Sentinel knows it for a good one.
    _until(lambda: _in_sync(engine, replica, sentinels), 60, "the replica in sync")
    engine.run("pause", primary)
    try:
        try:
            status, tokens = _until(
                lambda: _ok(_refresh(port, tokens)), 90, "service after the failover"
            )
        except AssertionError as failure:
            logs = [engine.run("logs", "--tail", "30", name, check=False) for name in sentinels]
            raise AssertionError("\n".join([str(failure), *logs])) from None
        assert status == 200
        assert _named_primary(engine, project) == "redis-replica"
        _flow(port, "after-failover@example.com")
    finally:
        engine.run("unpause", primary, check=False)
    return tokens


def _in_sync(engine: Engine, replica: str, sentinels: list[str]) -> bool:
    info = engine.run("exec", replica, "redis-cli", "info", "replication")
    if "master_link_status:up" not in info:
        return False
    for sentinel in sentinels:
        command = ["redis-cli", "-p", "26379", "sentinel", "replicas", "mymaster"]
        fields = engine.run("exec", sentinel, *command).split("\n")
        view = dict(zip(fields[::2], fields[1::2], strict=False))
        if view.get("flags") != "slave" or view.get("master-link-status") != "ok":
            return False
    return True


def _health_report(engine: Engine, label: str) -> str:
    """Each container's health: status, failing streak and its last checks' output."""
    lines = []
    for name in engine.run("ps", "-a", "--format", "{{.Names}}", check=False).split():
        if name.startswith(label):
            try:
                health = engine.inspect(name)["State"].get("Health") or {}
            except AssertionError:  # gone meanwhile
                continue
            last = [
                (entry.get("ExitCode"), entry.get("Output", "").strip()[:80])
                for entry in (health.get("Log") or [])[-3:]
            ]
            lines.append(
                f"{name}: {health.get('Status')} streak {health.get('FailingStreak')} {last}"
            )
    return "\n".join(lines)


def _named_primary(engine: Engine, project: str) -> str:
    sentinel = f"{project}_redis-sentinel-1_1"
    command = ["redis-cli", "-p", "26379", "sentinel", "get-master-addr-by-name", "mymaster"]
    return engine.run("exec", sentinel, *command).split()[0]


def _ok(result: tuple[int, dict[str, Any]]) -> tuple[int, dict[str, Any]] | None:
    status, _ = result
    assert status in (200, 503), result  # nothing else while Redis comes and goes
    return result if status == 200 else None


def _healthy(engine: Engine, name: str) -> bool:
    state = engine.inspect(name)["State"]
    health = state.get("Health") or state.get("Healthcheck") or {}
    return bool(state.get("Running")) and health.get("Status") == "healthy"
