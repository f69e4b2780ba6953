"""A Redis primary, one replica and three Sentinels on loopback, for failover tests and the
failover benchmark. Every process is started here and stopped by its process id."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import redis

from tests.cluster import binary, free_ports

SERVICE = "mymaster"
SENTINELS = 3
QUORUM = 2


def _info(port: int) -> dict[str, Any]:
    """INFO replication of the server on `port`, or {} when it does not answer."""
    node = redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=0.5)
    try:
        info: dict[str, Any] = node.info("replication")
        return info
    except redis.RedisError:
        return {}
    finally:
        node.close()


def _until(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if callable(condition) and condition():
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout} s")
        time.sleep(0.05)


class SentinelSet:
    """Two redis-servers (a primary and its replica) watched by three Sentinels with
    `down_after_ms`. `primary` and `replica` are ports; they swap at each failover."""

    def __init__(self, directory: Path, *, down_after_ms: int = 1000) -> None:
        self.server = binary("redis-server")
        self.sentinel = binary("redis-sentinel")
        self.directory = directory
        ports = free_ports(2 + SENTINELS)
        self.primary, self.replica = ports[0], ports[1]
        self.sentinel_ports = ports[2:]
        self.down_after_ms = down_after_ms
        self._servers: dict[int, subprocess.Popen[bytes]] = {}
        self._sentinels: list[subprocess.Popen[bytes]] = []

    @property
    def env_value(self) -> str:
        """AUTHSVC_REDIS_SENTINELS for these Sentinels."""
        return ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)

    def start(self) -> None:
        self._start_server(self.primary)
        self._start_server(self.replica, replica_of=self.primary)
        replica = self.replica
        _until(lambda: _info(replica).get("master_link_status") == "up", 20, "replica in sync")
        for i, port in enumerate(self.sentinel_ports):
            conf = self.directory / f"sentinel-{i}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.directory}\n"
                f"logfile {self.directory / f'sentinel-{i}.log'}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary} {QUORUM}\n"
                f"sentinel down-after-milliseconds {SERVICE} {self.down_after_ms}\n"
                f"sentinel failover-timeout {SERVICE} 5000\n"
                f"sentinel parallel-syncs {SERVICE} 1\n"
            )
            self._sentinels.append(
                subprocess.Popen([self.sentinel, str(conf)], stdout=subprocess.DEVNULL)
            )
        for port in self.sentinel_ports:  # each knows the replica and the other Sentinels
            _until(lambda p=port: self._sentinel_sees_all(p), 20, f"sentinel {port} ready")

    def stop(self) -> None:
        """Stop every process (SIGCONT first, for one a test left stopped)."""
        for process in [*self._servers.values(), *self._sentinels]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGCONT)
            process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):  # stop the others anyway
                process.wait(timeout=10)
        self._servers.clear()
        self._sentinels.clear()

    def kill_primary(self) -> None:
        """kill -9 the primary."""
        process = self._servers.pop(self.primary)
        process.kill()
        process.wait(timeout=10)

    def wait_failover(self, timeout: float = 30.0) -> None:
        """Wait until every Sentinel names the replica as the primary and it acts as one;
        then start the old primary again, as the new one's replica, and wait until the
        pair is in sync (with the roles the Sentinels give them)."""
        old, new = self.primary, self.replica
        self._until_agreed(new, timeout)
        # Never promoted before it has the data: with down-after-milliseconds as short as
        # 1000, a Sentinel can take the new primary for down for a moment and fail over again,
        # and it would pick this replica while its first sync is still running, empty.
        self._start_server(old, replica_of=new, priority=0)
        self.wait_replicated(timeout)
        node = redis.Redis(port=old, socket_timeout=1)
        node.config_set("replica-priority", 100)
        node.close()

    def wait_replicated(self, timeout: float = 30.0) -> None:
        """Wait until the Sentinels agree on a primary, it acts as one, and the other server
        is its replica, in sync; `primary` and `replica` then name them."""

        def settled() -> bool:
            named = {self._named_primary(port) for port in self.sentinel_ports}
            if len(named) != 1 or None in named:
                return False
            primary = named.pop()
            assert primary is not None
            replica = self.replica if primary == self.primary else self.primary
            if _info(primary).get("role") != "master":
                return False
            if _info(replica).get("master_link_status") != "up":
                return False
            self.primary, self.replica = primary, replica
            return True

        try:
            _until(settled, timeout, "primary and replica in sync")
        except TimeoutError as exc:
            roles = {port: _info(port).get("role") for port in (self.primary, self.replica)}
            named = [self._named_primary(port) for port in self.sentinel_ports]
            raise TimeoutError(f"{exc}: roles {roles}, sentinels name {named}") from None

    def _until_agreed(self, primary: int, timeout: float) -> None:
        for port in self.sentinel_ports:
            _until(lambda p=port: self._named_primary(p) == primary, timeout, "failover")
        _until(lambda: _info(primary).get("role") == "master", timeout, "promotion")

    def pause_replica(self) -> None:
        """SIGSTOP the replica: connected in the primary's eyes, but acknowledging nothing."""
        os.kill(self._servers[self.replica].pid, signal.SIGSTOP)

    def resume_replica(self) -> None:
        os.kill(self._servers[self.replica].pid, signal.SIGCONT)

    def _start_server(
        self, port: int, *, replica_of: int | None = None, priority: int = 100
    ) -> None:
        args = [self.server, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--replica-priority", str(priority)]
        args += ["--appendonly", "no", "--dir", str(self.directory)]
        args += ["--dbfilename", f"dump-{port}.rdb"]
        if replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(replica_of)]
        self._servers[port] = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        node = redis.Redis(port=port, socket_connect_timeout=0.2)
        _until(node.ping, 10, f"redis-server {port} answering")
        node.close()

    def _sentinel_sees_all(self, port: int) -> bool:
        sentinel = redis.Redis(port=port, socket_timeout=1, decode_responses=True)
        try:
            state: Any = sentinel.sentinel_master(SERVICE)
            return int(state["num-slaves"]) >= 1 and int(state["num-other-sentinels"]) >= 2
        finally:
            sentinel.close()

    def _named_primary(self, port: int) -> int | None:
        sentinel = redis.Redis(port=port, socket_timeout=1, decode_responses=True)
        try:
            address: Any = sentinel.sentinel_get_master_addr_by_name(SERVICE)
            return int(address[1]) if address else None
        finally:
            sentinel.close()
