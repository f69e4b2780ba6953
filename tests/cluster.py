"""A three-master Redis Cluster on loopback, started and stopped by the test suite."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis

SIZE = 3
START_TIMEOUT = 10.0  # seconds for each node to answer PING
CREATE_TIMEOUT = 60.0  # seconds for `redis-cli --cluster create`
STATE_TIMEOUT = 30.0  # seconds for every node to report cluster_state:ok


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports on loopback that nothing listens on right now."""
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for _ in range(count):
            s = stack.enter_context(socket.socket())
            s.bind(("127.0.0.1", 0))
            ports.append(int(s.getsockname()[1]))
        return ports


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (scripts/test names the Debian packages)")
    return path


def _info_fields(reply: object) -> dict[str, str]:
    """CLUSTER INFO as strings, whether redis-py parsed it into a dict or not."""
    if isinstance(reply, dict):
        return {str(k): str(v) for k, v in reply.items()}
    text = reply.decode() if isinstance(reply, bytes) else str(reply)
    return dict(line.strip().split(":", 1) for line in text.splitlines() if ":" in line)


class RedisCluster3:
    """Three redis-server processes, each a master of a third of the slots, no replicas.

    `url` names the first node; a cluster client discovers the others from it."""

    def __init__(self, directory: Path) -> None:
        self.server_binary = binary("redis-server")
        self.cli_binary = binary("redis-cli")
        self.directory = directory
        # Client ports and cluster-bus ports, chosen explicitly: the default bus port
        # (port + 10000) can fall outside the valid range for a high ephemeral port.
        ports = free_ports(2 * SIZE)
        self.ports = ports[:SIZE]
        self.bus_ports = ports[SIZE:]
        self.url = f"redis://127.0.0.1:{self.ports[0]}/0"
        self.urls = [f"redis://127.0.0.1:{p}/0" for p in self.ports]
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        """Start the nodes, create the cluster and wait until every node serves all slots."""
        try:
            for port, bus_port in zip(self.ports, self.bus_ports, strict=True):
                self.processes.append(self._spawn(port, bus_port))
            for port in self.ports:
                self._wait_ping(port)
            self._create()
            self._wait_state_ok()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every node (by its process id) and wait for each to exit."""
        processes, self.processes = self.processes, []
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)

    def _spawn(self, port: int, bus_port: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                self.server_binary,
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(self.directory / f"nodes-{port}.conf"),
                "--cluster-port",
                str(bus_port),
                "--port",
                str(port),
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

    def _wait_ping(self, port: int) -> None:
        client = redis.Redis(port=port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + START_TIMEOUT
        try:
            while True:
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:
                    pass
                self._check_alive()
                if time.monotonic() > deadline:
                    pytest.fail(f"redis-server on port {port} did not answer in {START_TIMEOUT}s")
                time.sleep(0.02)
        finally:
            client.close()

    def _create(self) -> None:
        nodes = [f"127.0.0.1:{p}" for p in self.ports]
        command = [self.cli_binary, "--cluster", "create", *nodes]
        command += ["--cluster-replicas", "0", "--cluster-yes"]
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=CREATE_TIMEOUT, check=False
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"redis-cli --cluster create did not finish in {CREATE_TIMEOUT}s")
        if done.returncode != 0:
            pytest.fail(
                f"redis-cli --cluster create failed ({done.returncode}):\n"
                f"{done.stdout}\n{done.stderr}"
            )

    def _wait_state_ok(self) -> None:
        """Poll CLUSTER INFO on every node until all report state ok, all slots assigned
        and all nodes known; fail with the last answers after STATE_TIMEOUT."""
        clients = [
            redis.Redis(port=p, socket_timeout=1.0, decode_responses=True) for p in self.ports
        ]
        deadline = time.monotonic() + STATE_TIMEOUT
        last: dict[int, str] = {}
        try:
            while True:
                self._check_alive()
                ready = 0
                for port, client in zip(self.ports, clients, strict=True):
                    try:
                        info = client.cluster("INFO")
                    except redis.RedisError as exc:
                        last[port] = repr(exc)
                        continue
                    fields = _info_fields(info)
                    last[port] = " ".join(f"{k}:{v}" for k, v in fields.items())
                    if (
                        fields.get("cluster_state") == "ok"
                        and fields.get("cluster_slots_ok") == "16384"
                        and fields.get("cluster_known_nodes") == str(SIZE)
                    ):
                        ready += 1
                if ready == SIZE:
                    return
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"cluster not ok after {STATE_TIMEOUT}s; last CLUSTER INFO per port:\n"
                        + "\n".join(f"{p}: {t!r}" for p, t in last.items())
                    )
                time.sleep(0.05)
        finally:
            for client in clients:
                client.close()

    def _check_alive(self) -> None:
        for port, process in zip(self.ports, self.processes, strict=False):
            code = process.poll()
            if code is not None:
                pytest.fail(f"redis-server on port {port} exited with status {code}")
