"""A Sentinel failover, measured from outside: how many requests are refused (503) and how
long the service is without a primary when the primary is killed.

    .venv/bin/python bench/failover.py [--failovers 5]

Starts a primary, a replica and three redis-sentinel (down-after-milliseconds 1000; the
topology of tests/sentinel.py) and `authsvc serve` with AUTHSVC_REDIS_SENTINELS, logs in
eight sessions and keeps refreshing them (each client keeps its token on a 503 and tries
again, as clients should). Then, for each failover: kill -9 the primary, wait until every
refresh succeeds again, start the old primary as the new one's replica. Prints each
failover and the medians. Stops what it started by pid."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from client import Tokens, login, request, signup
from procs import VENV_BIN, free_port, spawn, wait_http

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.sentinel import SentinelSet  # the tests' topology, not a copy

CLIENTS = 8
SETTLE = 1.0  # seconds of load before each kill


class Load:
    """Clients that refresh their session in a loop and record (time, status)."""

    def __init__(self, port: int, sessions: list[Tokens]) -> None:
        self.port = port
        self.tokens = list(sessions)
        self.results: list[tuple[float, int]] = []
        self.stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(CLIENTS)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join()

    def _run(self, i: int) -> None:
        while not self.stop.is_set():
            body = {"refresh_token": self.tokens[i].refresh}
            status, _, data = request(self.port, "POST", "/v1/auth/refresh", body)
            self.results.append((time.monotonic(), status))
            if status == 200:
                reply = json.loads(data)
                self.tokens[i] = Tokens(reply["access_token"], reply["refresh_token"])
            time.sleep(0.01)


def one_failover(topology: SentinelSet, load: Load) -> tuple[int, float, set[int]]:
    """Kill the primary under load; (503s, seconds from the kill to the first refresh
    that succeeded after the last refused one, statuses seen)."""
    time.sleep(SETTLE)
    start = len(load.results)
    killed = time.monotonic()
    topology.kill_primary()
    while True:  # until every client has succeeded since the last refusal
        time.sleep(0.1)
        seen = load.results[start:]
        refused = [t for t, status in seen if status != 200]
        if refused and sum(1 for t, s in seen if s == 200 and t > refused[-1]) >= CLIENTS:
            break
        if time.monotonic() - killed > 60:
            raise RuntimeError("the service did not come back within 60 s")
    seen = load.results[start:]
    last_refused = max(t for t, status in seen if status != 200)
    back = min(t for t, status in seen if status == 200 and t > last_refused)
    topology.wait_failover()  # the old primary returns, as a replica
    return sum(1 for _, s in seen if s == 503), back - killed, {s for _, s in seen}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--failovers", type=int, default=5)
    count = parser.parse_args().failovers
    with tempfile.TemporaryDirectory(prefix="authsvc-failover-") as tmp:
        workdir = Path(tmp)
        topology = SentinelSet(workdir, down_after_ms=1000)
        port = free_port()
        env = {
            "AUTHSVC_REDIS_SENTINELS": topology.env_value,
            "AUTHSVC_BCRYPT_ROUNDS": "4",
            "AUTHSVC_TRUSTED_PROXIES": "127.0.0.1/32",
            "AUTHSVC_DATA_DIR": str(workdir / "keys"),
            "AUTHSVC_LOG_LEVEL": "warning",
        }
        argv = [str(VENV_BIN / "authsvc"), "serve", "--port", str(port)]
        authsvc = None
        try:
            topology.start()
            authsvc = spawn(
                "authsvc", argv, core=0, port=port, log=workdir / "authsvc.log", env=env
            )
            wait_http(authsvc, "/readyz")
            sessions = [login(port, signup(port, f"failover{i}")) for i in range(CLIENTS)]
            rows = []
            with Load(port, sessions) as load:
                for n in range(count):
                    refused, seconds, statuses = one_failover(topology, load)
                    rows.append((refused, seconds))
                    print(
                        f"failover {n + 1}: {refused} refused (503), {seconds:.2f} s without"
                        f" service; statuses seen {sorted(statuses)}",
                        flush=True,
                    )
            refused_median = statistics.median(r for r, _ in rows)
            seconds_median = statistics.median(s for _, s in rows)
            print(
                f"median of {count}: {refused_median:g} requests refused,"
                f" {seconds_median:.2f} s without service"
                f" ({CLIENTS} clients refreshing back to back, down-after-milliseconds 1000)"
            )
        finally:
            if authsvc is not None:
                authsvc.stop()
            topology.stop()


if __name__ == "__main__":
    main()
