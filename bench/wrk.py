"""Running wrk pinned to the load core and reading what its Lua `done()` prints."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

LUA_DIR = Path(__file__).resolve().parent / "lua"
PERCENTILES = ("50", "75", "90", "95", "99", "99.9")
REQUEST_TIMEOUT = 10  # seconds before wrk counts a request as timed out
GRACE = 30.0  # seconds a wrk process may overrun its duration before it is killed


@dataclasses.dataclass(frozen=True, slots=True)
class Load:
    """One wrk invocation: a Lua script against a URL, with its files in `env`."""

    script: str
    url: str
    connections: int
    threads: int
    duration: float
    env: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True)
class Result:
    """What one wrk run measured. Latencies are in milliseconds."""

    requests: int
    duration_s: float
    errors: int
    latency_ms: dict[str, float]
    max_ms: float

    @property
    def rps(self) -> float:
        """Completed requests per second (non-2xx included; see `errors`)."""
        return self.requests / self.duration_s if self.duration_s else 0.0


def start(load: Load, core: int) -> subprocess.Popen[str]:
    """Start wrk for `load`, pinned to `core`; read it with `finish`."""
    argv = [
        "taskset",
        "-c",
        str(core),
        "wrk",
        "-t",
        str(load.threads),
        "-c",
        str(load.connections),
        "-d",
        f"{load.duration:g}s",
        "--timeout",
        f"{REQUEST_TIMEOUT}s",
        "-s",
        str(LUA_DIR / load.script),
        load.url,
    ]
    return subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **load.env},
    )


def finish(process: subprocess.Popen[str], duration: float) -> Result:
    """Wait for wrk (bounded) and parse its BENCH_JSON line."""
    try:
        out, err = process.communicate(timeout=duration + GRACE)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise RuntimeError("wrk did not finish in time") from None
    if process.returncode != 0:
        raise RuntimeError(f"wrk failed ({process.returncode}): {err.strip() or out.strip()}")
    return parse(out)


def run(load: Load, core: int, tick: Callable[[float], None] | None = None) -> Result:
    """Run one wrk process to completion, calling `tick(elapsed)` about twice a second."""
    process = start(load, core)
    wait_ticking([process], load.duration, tick)
    return finish(process, load.duration)


def wait_ticking(
    processes: Sequence[subprocess.Popen[Any]],
    duration: float,
    tick: Callable[[float], None] | None,
) -> None:
    """Return once every process has exited or `duration + GRACE` has passed."""
    started = time.monotonic()
    while any(p.poll() is None for p in processes):
        elapsed = time.monotonic() - started
        if elapsed > duration + GRACE:
            return
        if tick is not None:
            tick(min(elapsed, duration))
        time.sleep(0.5)


def parse(output: str) -> Result:
    """The Result in wrk's output; RuntimeError if the script printed none."""
    for line in output.splitlines():
        if line.startswith("BENCH_JSON "):
            data = json.loads(line.removeprefix("BENCH_JSON "))
            break
    else:
        raise RuntimeError(f"no BENCH_JSON line in wrk output:\n{output}")
    errors = data["errors"]
    return Result(
        requests=int(data["requests"]),
        duration_s=data["duration_us"] / 1e6,
        errors=sum(int(v) for v in errors.values()),
        latency_ms={p: data["latency_us"][p] / 1000 for p in PERCENTILES},
        max_ms=data["max_us"] / 1000,
    )
