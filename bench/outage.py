"""Redis outage behaviour, measured from outside: how fast requests that need Redis answer
503 while it is down, and how soon the service is ready again after it returns.

    .venv/bin/python bench/outage.py

Starts a redis-server and `authsvc serve` (bcrypt cost 4), logs in, stops Redis by its pid,
times 20 requests each of GET /v1/me, POST /v1/auth/refresh and GET /readyz, starts Redis
again on the same port (empty: no persistence) and times until /readyz answers 200 and a new
signup and login work, without restarting authsvc. Stops what it started by pid."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from client import login, request, signup
from procs import free_port, start_authsvc, start_redis, wait_http


def timed(
    port: int, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, float]:
    """A request's status and how long it took, in seconds."""
    started = time.perf_counter()
    status, _, _ = request(port, method, path, body, headers)
    return status, time.perf_counter() - started


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="authsvc-outage-") as tmp:
        workdir = Path(tmp)
        port = free_port()
        server = start_redis("redis", core=1, workdir=workdir, port=port)
        env = {"AUTHSVC_BCRYPT_ROUNDS": "4", "AUTHSVC_TRUSTED_PROXIES": "127.0.0.1/32"}
        authsvc = start_authsvc(
            "authsvc", core=0, workdir=workdir, redis=server, extra_env=env, source=None
        )
        try:
            tokens = login(authsvc.port, signup(authsvc.port, "outage"))
            auth = {"Authorization": f"Bearer {tokens.access}"}
            server.stop()
            stopped = time.perf_counter()
            calls = {
                "GET /v1/me": ("GET", "/v1/me", None, auth),
                "POST /v1/auth/refresh": (
                    "POST",
                    "/v1/auth/refresh",
                    {"refresh_token": tokens.refresh},
                    None,
                ),
                "GET /readyz": ("GET", "/readyz", None, None),
            }
            for name, (method, path, body, headers) in calls.items():
                results = [timed(authsvc.port, method, path, body, headers) for _ in range(20)]
                statuses = sorted({status for status, _ in results})
                seconds = sorted(s for _, s in results)
                print(
                    f"Redis down  {name:22s} statuses {statuses}  "
                    f"median {statistics.median(seconds) * 1000:.1f} ms  "
                    f"max {seconds[-1] * 1000:.1f} ms"
                )
            healthz, _ = timed(authsvc.port, "GET", "/healthz")
            print(f"Redis down  GET /healthz             status {healthz}")
            print(f"(Redis was down for {time.perf_counter() - stopped:.1f} s)")
            server = start_redis("redis", core=1, workdir=workdir, port=port)
            back = time.perf_counter()
            wait_http(authsvc, "/readyz")
            ready = time.perf_counter() - back
            login(authsvc.port, signup(authsvc.port, "after"))
            print(
                f"Redis back  /readyz 200 after {ready * 1000:.0f} ms; signup and login work "
                f"{(time.perf_counter() - back) * 1000:.0f} ms after the restart, same process"
            )
        finally:
            authsvc.stop()
            server.stop()


if __name__ == "__main__":
    main()
