"""Time of one bcrypt verify as authsvc does it (SHA-256 pre-hash, then checkpw).

Run by bench/run.py pinned to the service's core, while the service is idle:
`python bench/bcrypt_time.py --rounds 12 --samples 3` prints a JSON list of seconds."""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import secrets
import time

import bcrypt


def verify_times(rounds: int, samples: int) -> list[float]:
    """Seconds taken by each of `samples` successful verifies at cost `rounds`."""
    password = base64.b64encode(hashlib.sha256(secrets.token_bytes(16)).digest())
    hashed = bcrypt.hashpw(password, bcrypt.gensalt(rounds))
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        if not bcrypt.checkpw(password, hashed):
            raise RuntimeError("bcrypt verify failed")
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    """Print the verify times as a JSON list."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--samples", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(verify_times(args.rounds, args.samples)))


if __name__ == "__main__":
    main()
