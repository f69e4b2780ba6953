"""Revocation delay across instances: how long after a logout on instance A does instance B,
which had already admitted the session, refuse its access token?

    .venv/bin/python bench/revocation.py            # 50 trials, prints the distribution

Starts a redis-server and two `authsvc serve` processes on it (bcrypt cost 4, so that the
logins of the trials are quick), then per trial: log in on A, GET /v1/me on B (200: B now
serves the session from its memory), log out on A, and poll B's /v1/me with the same token
until it answers 401. The delay is from the moment A answered the logout. Stops what it
started by pid."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from client import Account, login, request, signup
from procs import start_authsvc, start_redis


def _me(port: int, access: str) -> int:
    status, _, _ = request(port, "GET", "/v1/me", headers={"Authorization": f"Bearer {access}"})
    return status


def trial(a: int, b: int, account: Account) -> float:
    """Seconds from A's logout answer to B's first 401."""
    tokens = login(a, account)
    if _me(b, tokens.access) != 200:
        raise RuntimeError("instance B did not accept a fresh session")
    status, _, _ = request(
        a, "POST", "/v1/auth/logout", headers={"Authorization": f"Bearer {tokens.access}"}
    )
    if status != 204:
        raise RuntimeError(f"logout answered {status}")
    done = time.perf_counter()
    while _me(b, tokens.access) == 200:
        if time.perf_counter() - done > 5:
            raise RuntimeError("instance B still accepts the session after 5 s")
    return time.perf_counter() - done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="authsvc-revocation-") as tmp:
        workdir = Path(tmp)
        redis = start_redis("redis", core=1, workdir=workdir)
        env = {"AUTHSVC_BCRYPT_ROUNDS": "4", "AUTHSVC_TRUSTED_PROXIES": "127.0.0.1/32"}
        started = [redis]
        try:
            for name in ("authsvc_a", "authsvc_b"):
                started.append(
                    start_authsvc(
                        name, core=0, workdir=workdir, redis=redis, extra_env=env, source=None
                    )
                )
            a, b = started[1].port, started[2].port
            account = signup(a, "revocation")
            delays = sorted(trial(a, b, account) * 1000 for _ in range(args.trials))
        finally:
            for proc in reversed(started):
                proc.stop()
    p99 = delays[min(len(delays) - 1, int(len(delays) * 0.99))]
    print(
        f"revocation delay over {len(delays)} trials (ms): min {delays[0]:.2f}  "
        f"median {statistics.median(delays):.2f}  p99 {p99:.2f}  max {delays[-1]:.2f}"
    )


if __name__ == "__main__":
    main()
