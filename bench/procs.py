"""The processes the benchmark starts: redis-server, authsvc and the two baselines.

Each is pinned to one core with `taskset -c`, listens on a free loopback port, writes its
output to a log file in the work directory and is stopped by its pid."""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import redis

VENV_BIN = Path(sys.executable).parent
BENCH_DIR = Path(__file__).resolve().parent
START_TIMEOUT = 30.0  # seconds a server gets to answer after it was started
STOP_TIMEOUT = 15.0  # seconds between SIGTERM and SIGKILL


class Proc:
    """A started server: its process, port and log file."""

    def __init__(self, name: str, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.name = name
        self.process = process
        self.port = port
        self.log = log

    @property
    def pid(self) -> int:
        """The server's pid (taskset execs the command, so it is the server's own)."""
        return self.process.pid

    def pids(self) -> list[int]:
        """The server's pid and those of its children (the workers of `--workers N`)."""
        found = [self.pid]
        for task in Path(f"/proc/{self.pid}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                found += [int(pid) for pid in task.read_text(encoding="utf-8").split()]
        return found

    def check_alive(self) -> None:
        """RuntimeError if the process has exited."""
        code = self.process.poll()
        if code is not None:
            raise RuntimeError(f"{self.name} exited with status {code}; see {self.log}")

    def stop(self) -> None:
        """SIGTERM by pid, then SIGKILL if it does not exit in time."""
        if self.process.poll() is not None:
            return
        os.kill(self.pid, signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.kill(self.pid, signal.SIGKILL)
            self.process.wait(STOP_TIMEOUT)


def free_port() -> int:
    """A loopback TCP port that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def require_tools() -> None:
    """RuntimeError naming the first missing external tool."""
    for tool in ("taskset", "redis-server", "wrk"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed (see bench/README.md)")


def spawn(
    name: str,
    argv: list[str],
    *,
    core: int | str,
    port: int,
    log: Path,
    env: dict[str, str] | None,
) -> Proc:
    """Start `argv` pinned to `core` (or a taskset list such as "0,1") in the log's folder,
    its output appended to `log`."""
    with log.open("ab") as out:
        process = subprocess.Popen(
            ["taskset", "-c", str(core), *argv],
            cwd=log.parent,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # Ctrl-C reaches the driver only; it stops the servers
        )
    return Proc(name, process, port, log)


def start_redis(
    name: str,
    *,
    core: int,
    workdir: Path,
    port: int | None = None,
    config: Sequence[str] = (),
) -> Proc:
    """A redis-server without persistence on loopback, on `port` (default: a free one),
    with extra `name=value` settings from `config`; returns once it answers PING."""
    port = free_port() if port is None else port
    argv = [
        "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(workdir),
    ]
    for setting in config:
        key, _, value = setting.partition("=")
        argv += [f"--{key}", value]
    proc = spawn(name, argv, core=core, port=port, log=workdir / f"{name}.log", env=None)
    _ready_or_stop(proc, lambda: _wait_redis(proc))
    return proc


def redis_url(proc: Proc) -> str:
    """The URL of a redis-server started by `start_redis`."""
    return f"redis://127.0.0.1:{proc.port}/0"


def start_authsvc(
    name: str,
    *,
    core: int | str,
    workdir: Path,
    redis: Proc,
    extra_env: dict[str, str],
    source: Path | None,
    workers: int = 1,
) -> Proc:
    """`authsvc serve --port P [--workers N]` as shipped, with AUTHSVC_REDIS_URL and
    `extra_env` set; the authsvc package comes from `source` when given, else from the
    installed one."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHSVC_")}
    env.update(extra_env)
    if source is not None:
        env["PYTHONPATH"] = str(source)  # ahead of the editable install's finder
    env["AUTHSVC_REDIS_URL"] = redis_url(redis)
    env["AUTHSVC_DATA_DIR"] = str(workdir / "keys")
    argv = [str(VENV_BIN / "authsvc"), "serve", "--port", str(port), "--workers", str(workers)]
    proc = spawn(name, argv, core=core, port=port, log=workdir / f"{name}.log", env=env)
    _ready_or_stop(proc, lambda: wait_http(proc, "/readyz"))
    _ready_or_stop(proc, lambda: _wait_listening(proc, workers))
    return proc


def _wait_listening(proc: Proc, workers: int) -> None:
    # Each worker logs "listening" once its socket is bound; before that, SO_REUSEPORT
    # sends every connection to the workers already listening.
    deadline = time.monotonic() + START_TIMEOUT
    while proc.log.read_text(encoding="utf-8").count('"listening"') < workers:
        proc.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{proc.name}: not all {workers} workers listen; see {proc.log}")
        time.sleep(0.1)


def start_baseline(
    name: str,
    script: str,
    *,
    core: int,
    workdir: Path,
    args: list[str],
    extra_env: dict[str, str] | None = None,
) -> Proc:
    """One of the apps in bench/ (`--port P` plus `args`), with `extra_env` set."""
    port = free_port()
    argv = [sys.executable, str(BENCH_DIR / script), "--port", str(port), *args]
    env = None if extra_env is None else {**os.environ, **extra_env}
    proc = spawn(name, argv, core=core, port=port, log=workdir / f"{name}.log", env=env)
    _ready_or_stop(proc, lambda: wait_http(proc, "/healthz"))
    return proc


def _ready_or_stop(proc: Proc, wait: Callable[[], None]) -> None:
    # The caller only learns of a server that answered; one that did not is stopped here.
    try:
        wait()
    except BaseException:
        proc.stop()
        raise


def wait_http(proc: Proc, path: str) -> None:
    """Wait until GET `path` answers 200."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        proc.check_alive()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", proc.port, timeout=2)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                conn.close()
                return
            conn.close()
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{proc.name} did not answer GET {path}; see {proc.log}")
        time.sleep(0.1)


def _wait_redis(proc: Proc) -> None:
    client = redis.Redis(port=proc.port, socket_connect_timeout=0.5)
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while True:
            proc.check_alive()
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{proc.name} did not answer PING; see {proc.log}")
            time.sleep(0.05)
    finally:
        client.close()
