"""Resource servers (API backends): how long after a logout at authsvc does a backend that uses
authsvc.resource refuse the session, and what does the middleware cost a request?

    .venv/bin/python bench/backends.py                 # 50 trials, 3 rounds of 10 s each way

Starts a redis-server, `authsvc serve` (bcrypt cost 4, so the trials' logins are quick) with a
service client, and backends from bench/resource_backend.py:
- delay: per trial, log in, GET the protected backend (200: it now knows the session), log out
  at authsvc, and poll the backend with the same token until it answers 401; the delay is from
  the moment authsvc answered the logout. Target: max under 100 ms.
- cost: wrk (on core 1) against the same handler with and without the middleware (on core 0),
  one token, rounds alternating; the ratio of the median requests per second. Target: >= 0.7.
Stops what it started by pid."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import wrk
from client import Account, login, request, signup
from procs import require_tools, start_authsvc, start_baseline, start_redis

from authsvc.domain.clients import add_client


def trial(authsvc: int, backend: int, account: Account) -> float:
    """Seconds from authsvc's logout answer to the backend's first 401."""
    tokens = login(authsvc, account)
    auth = {"Authorization": f"Bearer {tokens.access}"}
    if request(backend, "GET", "/me", headers=auth)[0] != 200:
        raise RuntimeError("the backend did not accept a fresh session")
    status, _, _ = request(authsvc, "POST", "/v1/auth/logout", headers=auth)
    if status != 204:
        raise RuntimeError(f"logout answered {status}")
    done = time.perf_counter()
    while request(backend, "GET", "/me", headers=auth)[0] == 200:
        if time.perf_counter() - done > 5:
            raise RuntimeError("the backend still accepts the session after 5 s")
    return time.perf_counter() - done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    require_tools()
    with tempfile.TemporaryDirectory(prefix="authsvc-resource-") as tmp:
        workdir = Path(tmp)
        secret = add_client(workdir / "clients.json", "bench", ["introspect", "revocations"])
        started = [start_redis("redis", core=1, workdir=workdir)]
        try:
            env = {
                "AUTHSVC_BCRYPT_ROUNDS": "4",
                "AUTHSVC_CLIENTS_FILE": str(workdir / "clients.json"),
                "AUTHSVC_IP_RATE_LIMIT": "0",
            }
            authsvc = start_authsvc(
                "authsvc", core=1, workdir=workdir, redis=started[0], extra_env=env, source=None
            )
            started.append(authsvc)
            backend_env = {
                "AUTHSVC_URL": f"http://127.0.0.1:{authsvc.port}",
                "AUTHSVC_CLIENT_ID": "bench",
                "AUTHSVC_CLIENT_SECRET": secret,
            }
            protected = start_baseline(
                "protected",
                "resource_backend.py",
                core=0,
                workdir=workdir,
                args=["--protected"],
                extra_env=backend_env,
            )
            started.append(protected)
            bare = start_baseline("bare", "resource_backend.py", core=0, workdir=workdir, args=[])
            started.append(bare)
            account = signup(authsvc.port, "resource")
            delays = sorted(
                trial(authsvc.port, protected.port, account) * 1000 for _ in range(args.trials)
            )
            tokens = login(authsvc.port, account)
            headers = workdir / "headers.txt"
            headers.write_text(f"Authorization: Bearer {tokens.access}\n")
            rps: dict[str, list[float]] = {"bare": [], "protected": []}
            for _ in range(args.rounds):
                for name, proc in (("bare", bare), ("protected", protected)):
                    load = wrk.Load(
                        "get.lua",
                        f"http://127.0.0.1:{proc.port}/me",
                        args.connections,
                        1,
                        args.seconds,
                        {"BENCH_HEADERS": str(headers)},
                    )
                    result = wrk.run(load, core=1)
                    if result.errors:
                        raise RuntimeError(f"{name}: {result.errors} non-2xx answers")
                    rps[name].append(result.rps)
        finally:
            for proc in reversed(started):
                proc.stop()
    median = {name: statistics.median(values) for name, values in rps.items()}
    ratio = median["protected"] / median["bare"]
    print(
        f"logout -> refusal at the backend, {len(delays)} trials (ms): min {delays[0]:.2f}  "
        f"median {statistics.median(delays):.2f}  max {delays[-1]:.2f}  "
        f"(target: max < 100: {'met' if delays[-1] < 100 else 'MISSED'})"
    )
    print(
        f"GET /me requests/s, median of {args.rounds} rounds: bare {median['bare']:,.0f}  "
        f"protected {median['protected']:,.0f}  ratio {ratio:.2f} "
        f"(target >= 0.70: {'met' if ratio >= 0.7 else 'MISSED'})"
    )
    for name, values in rps.items():
        print(f"  {name:9} rounds: {', '.join(f'{v:,.0f}' for v in values)}")


if __name__ == "__main__":
    main()
