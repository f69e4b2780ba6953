"""authsvc benchmark (issues 6 and 13): authsvc against two aiohttp baselines on uvloop, in
one run on one CPU.

    .venv/bin/python bench/run.py            # full run, about 15 minutes
    .venv/bin/python bench/run.py --quick    # smoke run: 1 round of 2 s, 10k sessions stored

Starts its own redis-servers, authsvc and the baselines pinned to one core and wrk pinned to
another, measures every scenario in interleaved rounds, prints a table and writes
results.json and latency.png. See bench/README.md."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import io
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import client
import cpuload
import fill
import hotspots
import procs
import report
import working_set
import wrk
from client import Account, Tokens
from procs import Proc

from authsvc.settings import Settings

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
SHIPPED = Settings()  # authsvc's defaults: bcrypt cost, session limit, lifetimes
LOGIN_ACCOUNTS = 8  # accounts the login load cycles through
# Seconds after which the working set's access tokens are renewed before a run (they live
# SHIPPED.access_token_ttl seconds).
RENEW_AFTER = SHIPPED.access_token_ttl * 0.6
WARM_RPS = 2_000  # requests/s of a pass where every token is new (a conservative figure)
HOTSPOTS = 15  # functions listed per profiled scenario
SETTLE_WINDOW = 0.5  # seconds; see settle()
SETTLE_TIMEOUT = 20.0


@dataclasses.dataclass(frozen=True, slots=True)
class Config:
    """What the command line asked for."""

    quick: bool
    rounds: int
    duration: int
    login_duration: int
    warmup: int
    connections: int
    login_connections: int
    get_threads: int
    small_store: int
    large_store: int
    working_set: int
    service_core: int
    load_core: int
    out: Path
    profile: bool
    profile_seconds: int
    keep_workdir: bool
    ref: str | None
    max_noise: float
    retries: int
    retry_budget: int


def parse_args(argv: Sequence[str] | None) -> Config:
    """The Config for `argv`; --quick changes the defaults, explicit flags still win."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 1 round, 2 s, 10k sessions")
    p.add_argument("--rounds", type=int, help="measured runs per scenario (default 5; quick 1)")
    p.add_argument("--duration", type=int, help="seconds per run (default 5; quick 2)")
    p.add_argument("--login-duration", type=int, help="seconds per login run (default 15)")
    p.add_argument("--warmup", type=int, help="seconds of warm-up per scenario (default 2)")
    p.add_argument("--connections", type=int, default=16, help="wrk connections (default 16)")
    p.add_argument("--login-connections", type=int, default=4)
    p.add_argument("--large-store", type=int, help="sessions stored (default 1,000,000)")
    p.add_argument("--small-store", type=int, default=1_000)
    p.add_argument(
        "--working-set", type=int, help="live sessions of the working-set run (default 20,000)"
    )
    p.add_argument("--service-core", type=int, default=0)
    p.add_argument("--load-core", type=int, default=1)
    p.add_argument("--out", type=Path, help="output folder (default bench/results[/quick])")
    p.add_argument("--profile", action="store_true", help="py-spy /v1/me and refresh at the end")
    p.add_argument("--profile-seconds", type=int, default=15)
    p.add_argument("--keep-workdir", action="store_true", help="keep logs and token files")
    p.add_argument(
        "--ref",
        help="measure authsvc as committed at this git ref (default: the working tree)",
    )
    p.add_argument(
        "--max-noise",
        type=float,
        default=0.10,
        help="share of the service core other processes may take before a run is repeated",
    )
    p.add_argument("--retries", type=int, default=2, help="repeats of one noisy run (2)")
    p.add_argument("--retry-budget", type=int, default=12, help="repeats in all (12)")
    a = p.parse_args(argv)
    q = a.quick
    cfg = Config(
        quick=q,
        rounds=a.rounds or (1 if q else 5),
        duration=a.duration or (2 if q else 5),
        login_duration=a.login_duration or (2 if q else 15),
        warmup=a.warmup or (1 if q else 2),
        connections=a.connections,
        login_connections=a.login_connections,
        get_threads=min(4, a.connections),
        small_store=a.small_store,
        large_store=a.large_store or (10_000 if q else 1_000_000),
        working_set=a.working_set or (2_000 if q else 20_000),
        service_core=a.service_core,
        load_core=a.load_core,
        out=a.out or BENCH_DIR / ("results/quick" if q else "results"),
        profile=a.profile,
        profile_seconds=a.profile_seconds if not q else min(a.profile_seconds, 5),
        keep_workdir=a.keep_workdir,
        ref=a.ref,
        max_noise=a.max_noise,
        retries=max(0, a.retries),
        retry_budget=max(0, a.retry_budget),
    )
    if min(cfg.rounds, cfg.duration, cfg.login_duration, cfg.warmup, cfg.connections) < 1:
        p.error("rounds, durations and connections must be positive")
    return cfg


class Progress:
    """One status line on stderr, rewritten in place on a terminal."""

    def __init__(self) -> None:
        self.total = 0
        self.done = 0
        self.label = ""
        self.started = time.monotonic()
        self._tty = sys.stderr.isatty()

    def step(self, label: str) -> None:
        """Start the next measured step."""
        self.done += 1
        self.label = label
        self._show(f"[{self.done:>2}/{self.total}] {label}", final=not self._tty)

    def tick(self, elapsed: float, duration: float) -> None:
        """Time within the current step."""
        if self._tty:
            self._show(f"[{self.done:>2}/{self.total}] {self.label}  {elapsed:4.1f}/{duration}s")

    def note(self, text: str, *, final: bool = True) -> None:
        """A setup stage."""
        if final or self._tty:
            self._show(text, final=final)

    def _show(self, text: str, *, final: bool = False) -> None:
        elapsed = int(time.monotonic() - self.started)
        line = f"{elapsed // 60:d}:{elapsed % 60:02d} {text}"
        if self._tty:
            sys.stderr.write("\r\x1b[K" + line + ("\n" if final else ""))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


@dataclasses.dataclass
class World:
    """The servers and what the loads need from them."""

    cfg: Config
    workdir: Path
    procs: dict[str, Proc]
    me_tokens: list[Tokens] = dataclasses.field(default_factory=list)
    refresh_accounts: dict[str, list[Account]] = dataclasses.field(default_factory=dict)
    login_file: Path = Path()
    cookie_file: Path = Path()
    fills: dict[str, fill.FillStats] = dataclasses.field(default_factory=dict)
    ws: working_set.WorkingSet | None = None
    ws_warm: bool = False  # every token of `ws` has been presented once
    retries_left: int = 0
    source_commit: str = ""
    discarded: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def url(self, name: str, path: str = "/") -> str:
        """The URL of `path` on server `name`."""
        return f"http://127.0.0.1:{self.procs[name].port}{path}"

    def port(self, name: str) -> int:
        """The port of server `name`."""
        return self.procs[name].port


Loads = Callable[[World, int], dict[str, wrk.Load]]


@dataclasses.dataclass(frozen=True, slots=True)
class Scenario:
    """A step of a round: one or more wrk loads that run together."""

    label: str
    loads: Loads
    long: bool = False  # runs for --login-duration


# ---------------------------------------------------------------- setup


def start_servers(w: World, progress: Progress) -> None:
    """Redis (two stores, filled), the two baselines and one authsvc per store."""
    cfg = w.cfg
    for name, size in (("redis_small", cfg.small_store), ("redis_large", cfg.large_store)):
        w.procs[name] = procs.start_redis(name, core=cfg.load_core, workdir=w.workdir)
        w.fills[name] = _fill(w, name, size, progress)
    core, workdir = cfg.service_core, w.workdir
    w.procs["bare"] = procs.start_baseline(
        "bare", "baseline_bare.py", core=core, workdir=workdir, args=[]
    )
    w.procs["session"] = procs.start_baseline(
        "session",
        "baseline_session.py",
        core=core,
        workdir=workdir,
        args=["--redis-url", procs.redis_url(w.procs["redis_small"])],
    )
    # The driver is a trusted proxy: it and wrk put made-up client addresses in
    # X-Forwarded-For, so that the per-address login limit sees many clients, as it would
    # in production, instead of throttling the one loopback address.
    env = {"AUTHSVC_TRUSTED_PROXIES": "127.0.0.1/32"}
    source = export_ref(w, cfg.ref) if cfg.ref else None
    for name, store in (("authsvc", "redis_small"), ("authsvc_large", "redis_large")):
        w.procs[name] = procs.start_authsvc(
            name, core=core, workdir=workdir, redis=w.procs[store], extra_env=env, source=source
        )
    # The working set's sessions are made by logins, 20,000 of them: at the shipped bcrypt
    # cost that alone would take over an hour, so this instance hashes at the lowest cost.
    # Nothing else differs, and GET /v1/me does not hash.
    w.procs["redis_ws"] = procs.start_redis("redis_ws", core=cfg.load_core, workdir=workdir)
    w.procs["authsvc_ws"] = procs.start_authsvc(
        "authsvc_ws",
        core=core,
        workdir=workdir,
        redis=w.procs["redis_ws"],
        extra_env={**env, "AUTHSVC_BCRYPT_ROUNDS": "4"},
        source=source,
    )
    # `--workers 2` on both cores (the load generator shares the second one), on the small
    # store: the same sessions and key set as "authsvc".
    w.procs["authsvc_w2"] = procs.start_authsvc(
        "authsvc_w2",
        core=f"{core},{cfg.load_core}",
        workdir=workdir,
        redis=w.procs["redis_small"],
        extra_env=env,
        source=source,
        workers=2,
    )
    progress.note("servers up: " + ", ".join(f"{n} pid {p.pid}" for n, p in w.procs.items()))


def export_ref(w: World, ref: str) -> Path:
    """authsvc/ as committed at `ref`, unpacked under the work directory."""
    w.source_commit = _git("rev-parse", "--verify", f"{ref}^{{commit}}")
    if not w.source_commit:
        raise RuntimeError(f"--ref {ref}: not a commit")
    archive = subprocess.run(
        ["git", "archive", "--format=tar", w.source_commit, "authsvc"],
        cwd=REPO_DIR,
        capture_output=True,
        check=True,
        timeout=60,
    )
    target = w.workdir / "src"
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(target, filter="data")
    return target


def _fill(w: World, name: str, size: int, progress: Progress) -> fill.FillStats:
    def show(done: int) -> None:
        progress.note(f"filling {name}: {done:,}/{size:,} sessions", final=False)

    layout = fill.Layout(
        limit=SHIPPED.session_limit,
        idle_ttl_ms=SHIPPED.session_idle_ttl * 1000,
        max_ttl_ms=SHIPPED.session_max_ttl * 1000,
    )
    stats = fill.fill(procs.redis_url(w.procs[name]), size, layout=layout, seed=size, progress=show)
    progress.note(
        f"filled {name}: {stats.sessions:,} sessions of {stats.users:,} users in "
        f"{stats.seconds:.1f} s ({stats.redis_keys:,} keys, {stats.used_memory_mb:.0f} MB)"
    )
    return stats


def create_accounts(w: World, progress: Progress) -> None:
    """Sign up the benchmark's accounts (one bcrypt each, at the service's cost)."""
    cfg = w.cfg
    progress.note("signing up accounts (bcrypt at the service's cost: a few seconds each batch)")
    for name in ("authsvc", "authsvc_large"):
        w.refresh_accounts[name] = [
            client.signup(w.port(name), f"refresh-{i}") for i in range(cfg.connections)
        ]
    me_accounts = [client.signup(w.port("authsvc"), f"me-{i}") for i in range(cfg.get_threads)]
    w.me_tokens = [client.login(w.port("authsvc"), a) for a in me_accounts]
    logins = [client.signup(w.port("authsvc"), f"login-{i}") for i in range(LOGIN_ACCOUNTS)]
    w.login_file = _write(w, "login_accounts.txt", [f"{a.email} {a.password}" for a in logins])
    cookies = [client.baseline_cookie(w.port("session")) for _ in range(cfg.get_threads)]
    w.cookie_file = _write(w, "session_cookies.txt", cookies)
    users = max(1, cfg.working_set // SHIPPED.session_limit)
    progress.note(f"working set: {users:,} users x {SHIPPED.session_limit} logins")
    w.ws = working_set.build(
        w.port("authsvc_ws"),
        procs.redis_url(w.procs["redis_ws"]),
        users,
        SHIPPED.session_limit,
        seed=users,
    )
    progress.note(
        f"working set: {w.ws.sessions:,} sessions in {w.ws.seconds:.0f} s, "
        f"{w.ws.bytes_per_session:.0f} B of Redis each, {w.ws.bytes_per_account:.0f} B a user"
    )


def check_endpoints(w: World) -> None:
    """Each GET scenario answers 200 before it is measured."""
    client.check_get(w.port("bare"), "/me", None)
    client.check_get(w.port("session"), "/me", _lines(w.cookie_file)[0])
    client.check_get(w.port("authsvc"), "/v1/me", _lines(_me_headers(w))[0])


def _write(w: World, name: str, lines: list[str]) -> Path:
    path = w.workdir / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n")


# ---------------------------------------------------------------- scenarios


def bare(w: World, seconds: int) -> dict[str, wrk.Load]:
    """GET /me on the bare aiohttp baseline."""
    return {"bare": _get(w, w.url("bare", "/me"), None, seconds)}


def session(w: World, seconds: int) -> dict[str, wrk.Load]:
    """GET /me with a session cookie on the aiohttp-session baseline."""
    return {"session": _get(w, w.url("session", "/me"), w.cookie_file, seconds)}


def me(w: World, seconds: int) -> dict[str, wrk.Load]:
    """Authenticated GET /v1/me."""
    return {"me": _me(w, seconds)}


def refresh_small(w: World, seconds: int) -> dict[str, wrk.Load]:
    """Refresh with rotation against the small store."""
    return {"refresh_small": _refresh(w, "authsvc", seconds)}


def refresh_large(w: World, seconds: int) -> dict[str, wrk.Load]:
    """Refresh with rotation against the large store."""
    return {"refresh_large": _refresh(w, "authsvc_large", seconds)}


def me_working_set(w: World, seconds: int) -> dict[str, wrk.Load]:
    """GET /v1/me with another of the working set's tokens on each request."""
    return {"me_ws": _working_set(w, seconds)}


def me_two_workers(w: World, seconds: int) -> dict[str, wrk.Load]:
    """GET /v1/me on `--workers 2`."""
    return {"me_w2": _get(w, w.url("authsvc_w2", "/v1/me"), _me_headers(w), seconds)}


def login(w: World, seconds: int) -> dict[str, wrk.Load]:
    """Logins at the service's bcrypt cost."""
    return {"login": _login(w, seconds)}


def storm(w: World, seconds: int) -> dict[str, wrk.Load]:
    """GET /v1/me and logins at once, two wrk processes."""
    return {"storm_me": _me(w, seconds), "storm_login": _login(w, seconds)}


SCENARIOS = (
    Scenario("baseline: bare aiohttp", bare),
    Scenario("baseline: aiohttp-session", session),
    Scenario("GET /v1/me", me),
    Scenario("GET /v1/me, working set", me_working_set),
    Scenario("GET /v1/me, --workers 2", me_two_workers),
    Scenario("refresh, small store", refresh_small),
    Scenario("refresh, large store", refresh_large),
    Scenario("login", login, long=True),
    Scenario("login storm + GET /v1/me", storm, long=True),
)


def _get(w: World, url: str, headers: Path | None, seconds: int) -> wrk.Load:
    env = {"BENCH_HEADERS": str(headers)} if headers else {}
    c = w.cfg.connections
    return wrk.Load("get.lua", url, c, w.cfg.get_threads, seconds, env)


def _me(w: World, seconds: int) -> wrk.Load:
    return _get(w, w.url("authsvc", "/v1/me"), _me_headers(w), seconds)


def _me_headers(w: World) -> Path:
    # Fresh access tokens for every run: a long benchmark outlives an access-token TTL.
    w.me_tokens = [client.refresh(w.port("authsvc"), t) for t in w.me_tokens]
    return _write(w, "me_headers.txt", [f"Authorization: Bearer {t.access}" for t in w.me_tokens])


def _working_set(w: World, seconds: int) -> wrk.Load:
    assert w.ws is not None
    if time.monotonic() - w.ws.made_at > RENEW_AFTER:
        w.ws = working_set.renew(w.port("authsvc_ws"), w.ws)
        w.ws_warm = False
    if not w.ws_warm:
        # Every token is checked once (a signature, a session probe) before it is measured:
        # at WARM_RPS, a pass long enough for the threads to reach every token.
        warm = _ws_load(w, max(w.cfg.warmup, math.ceil(len(w.ws.access_tokens) / WARM_RPS)))
        wrk.run(warm, w.cfg.load_core)
        w.ws_warm = True
    return _ws_load(w, seconds)


def _ws_load(w: World, seconds: int) -> wrk.Load:
    assert w.ws is not None
    path = _write(w, "ws_tokens.txt", w.ws.access_tokens)
    c = w.cfg.connections
    url = w.url("authsvc_ws", "/v1/me")
    return wrk.Load("tokens.lua", url, c, w.cfg.get_threads, seconds, {"BENCH_TOKENS": str(path)})


def _refresh(w: World, name: str, seconds: int) -> wrk.Load:
    # One new session per connection, each its own chain: the chains of the previous run
    # end with a request wrk cut off, so their last token may already be spent.
    tokens = [client.login(w.port(name), a) for a in w.refresh_accounts[name]]
    path = _write(w, f"refresh_tokens_{name}.txt", [t.refresh for t in tokens])
    c = w.cfg.connections
    return wrk.Load("refresh.lua", w.url(name), c, c, seconds, {"BENCH_TOKENS": str(path)})


def _login(w: World, seconds: int) -> wrk.Load:
    c = w.cfg.login_connections
    env = {"BENCH_USERS": str(w.login_file)}
    return wrk.Load("login.lua", w.url("authsvc"), c, 1, seconds, env)


def run_scenario(
    w: World, scenario: Scenario, seconds: int, progress: Progress
) -> dict[str, report.Run]:
    """Start the scenario's loads together and wait for all of them."""
    loads = scenario.loads(w, seconds)
    settle(w)
    before = _samples(w)
    everyone = cpuload.processes()
    started = {name: wrk.start(load, w.cfg.load_core) for name, load in loads.items()}
    wrk.wait_ticking(list(started.values()), seconds, lambda t: progress.tick(t, seconds))
    results = {name: wrk.finish(p, seconds) for name, p in started.items()}
    after = _samples(w)
    noise: dict[str, Any] = {core: cpuload.foreign(before[core], after[core]) for core in after}
    ours = {os.getpid(), *(p.pid for p in w.procs.values()), *(p.pid for p in started.values())}
    noise["busiest_others"] = cpuload.busiest(everyone, cpuload.processes(), ours)
    for proc in w.procs.values():
        proc.check_alive()
    return {name: report.Run(result, noise) for name, result in results.items()}


def measured_run(
    w: World, scenario: Scenario, seconds: int, progress: Progress
) -> dict[str, report.Run]:
    """A run on a quiet service core: repeated (bounded) while other processes took more
    than --max-noise of the core; after that the last attempt counts, marked as noisy."""
    cfg = w.cfg
    for attempt in range(cfg.retries + 1):
        runs = run_scenario(w, scenario, seconds, progress)
        busy = next(iter(runs.values())).busy
        if busy <= cfg.max_noise or attempt == cfg.retries or w.retries_left == 0:
            return runs
        w.retries_left -= 1
        w.discarded.append({"scenario": scenario.label, **next(iter(runs.values())).noise})
        progress.note(f"  other processes took {busy:.0%} of a core: repeating the run")
    raise AssertionError("unreachable")


def _samples(w: World) -> dict[str, cpuload.Sample]:
    # The service core runs the servers; the load core runs wrk (counted in the driver's
    # children once waited for), the redis-servers and the driver itself.
    servers = [pid for n, p in w.procs.items() if not n.startswith("redis") for pid in p.pids()]
    load = [os.getpid(), *(p.pid for name, p in w.procs.items() if name.startswith("redis"))]
    # The two workers of authsvc_w2 run on both cores: counted as the benchmark's on each.
    load += w.procs["authsvc_w2"].pids()[1:]
    return {
        "service_core": cpuload.sample(w.cfg.service_core, servers),
        "load_core": cpuload.sample(w.cfg.load_core, load),
    }


def settle(w: World) -> None:
    """Wait (bounded) until both cores are idle.

    wrk stops with requests in flight and the server still finishes them: a login cut off
    holds a second of bcrypt behind it, which must not run into the next measurement.
    Other processes on this shared machine get the same short chance to finish."""
    cores = (w.cfg.service_core, w.cfg.load_core)
    deadline = time.monotonic() + SETTLE_TIMEOUT
    before = [cpuload.core_ticks(c) for c in cores]
    while time.monotonic() < deadline:
        time.sleep(SETTLE_WINDOW)
        after = [cpuload.core_ticks(c) for c in cores]
        quiet = SETTLE_WINDOW * cpuload.TICKS * 0.05  # under 5% busy
        if all(a - b <= quiet for a, b in zip(after, before, strict=True)):
            return
        before = after


# ---------------------------------------------------------------- measuring


def bcrypt_seconds(cfg: Config, samples: int) -> list[float]:
    """Times of bcrypt verifies at the service's cost, pinned to the service's core."""
    argv = ["taskset", "-c", str(cfg.service_core), sys.executable]
    argv += [str(BENCH_DIR / "bcrypt_time.py"), "--rounds", str(SHIPPED.bcrypt_rounds)]
    argv += ["--samples", str(samples)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=True)
    times: list[float] = json.loads(done.stdout)
    return times


def measure(w: World, progress: Progress) -> tuple[dict[str, list[report.Run]], list[float]]:
    """A warm-up of every scenario, then `rounds` interleaved rounds of all of them."""
    cfg = w.cfg
    progress.total = len(SCENARIOS) * (cfg.rounds + 1) + (2 if cfg.profile else 0)
    runs: dict[str, list[report.Run]] = {}
    verify = bcrypt_seconds(cfg, 3)
    for scenario in SCENARIOS:
        progress.step(f"warm-up · {scenario.label}")
        run_scenario(w, scenario, cfg.warmup, progress)
    for round_no in range(1, cfg.rounds + 1):
        for scenario in SCENARIOS:
            progress.step(f"round {round_no}/{cfg.rounds} · {scenario.label}")
            seconds = cfg.login_duration if scenario.long else cfg.duration
            for name, run in measured_run(w, scenario, seconds, progress).items():
                runs.setdefault(name, []).append(run)
        verify += bcrypt_seconds(cfg, 3)
    return runs, verify


def profile(w: World, progress: Progress) -> dict[str, Any]:
    """py-spy on authsvc under /v1/me and refresh load: the top functions by self time."""
    found: dict[str, Any] = {}
    for label, loads in (("GET /v1/me", me), ("refresh, small store", refresh_small)):
        progress.step(f"profile · {label}")
        found.update(_profile_one(w, loads, progress))
    return found


def _profile_one(w: World, loads: Loads, progress: Progress) -> dict[str, Any]:
    cfg = w.cfg
    seconds = cfg.profile_seconds + 2
    name, load = next(iter(loads(w, seconds).items()))
    settle(w)
    load_proc = wrk.start(load, cfg.load_core)
    time.sleep(1)  # sample the steady state, not the connection set-up
    raw = cfg.out / f"profile_{name}.txt"
    spy = hotspots.record(w.procs["authsvc"].pid, cfg.profile_seconds, raw, cfg.load_core)
    wrk.wait_ticking([load_proc, spy], seconds, lambda t: progress.tick(t, seconds))
    result = wrk.finish(load_proc, seconds)
    total, top = hotspots.top(raw, HOTSPOTS) if raw.exists() else (0, [])
    return {
        name: {
            "samples": total,
            "rps_while_profiled": result.rps,
            "raw": str(raw.relative_to(REPO_DIR)) if raw.is_relative_to(REPO_DIR) else str(raw),
            "top_self": [dataclasses.asdict(h) for h in top],
        }
    }


# ---------------------------------------------------------------- output


TITLES = {
    "bare": "aiohttp bare (baseline)",
    "session": "aiohttp-session RedisStorage (baseline)",
    "me": "authsvc GET /v1/me",
    "me_ws": "authsvc GET /v1/me, {ws} sessions, a token a request",
    "me_w2": "authsvc GET /v1/me, --workers 2 (2 cores)",
    "refresh_small": "authsvc refresh, {small} sessions stored",
    "refresh_large": "authsvc refresh, {large} sessions stored",
    "login": "authsvc login (bcrypt cost {cost})",
    "storm_me": "authsvc GET /v1/me during login storm",
    "storm_login": "authsvc login during the storm",
}


def summaries(cfg: Config, runs: dict[str, list[report.Run]]) -> dict[str, report.Summary]:
    """Medians per scenario, in table order."""
    names = {
        "small": _count(cfg.small_store),
        "large": _count(cfg.large_store),
        "ws": _count(cfg.working_set),
        "cost": SHIPPED.bcrypt_rounds,
    }
    return {
        name: report.Summary(name, title.format(**names), tuple(runs[name]))
        for name, title in TITLES.items()
        if name in runs
    }


def _count(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1_000 and n % 1_000 == 0:
        return f"{n // 1_000}k"
    return f"{n:,}"


def meta(w: World, started: float, load_before: tuple[float, ...]) -> dict[str, Any]:
    """How, where and when the numbers were taken."""
    cfg = w.cfg
    return {
        "generated_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "wall_seconds": round(time.monotonic() - started, 1),
        "config": {
            **{k: v for k, v in dataclasses.asdict(cfg).items() if k != "out"},
            "bcrypt_rounds": SHIPPED.bcrypt_rounds,
            "session_limit": SHIPPED.session_limit,
        },
        "environment": {
            "cpu": _cpu_model(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
            "service_cores": sorted(os.sched_getaffinity(w.procs["authsvc"].pid)),
            "versions": _versions(),
            "authsvc_source": _source(w),
        },
        "stores": {name: dataclasses.asdict(stats) for name, stats in w.fills.items()},
        "working_set": _ws_meta(w.ws),
        # Runs repeated because other processes on this shared machine took more than
        # max_noise of the service core (see measured_run).
        "discarded_noisy_runs": w.discarded,
    }


def _ws_meta(ws: working_set.WorkingSet | None) -> dict[str, Any]:
    if ws is None:
        return {}
    shown = dataclasses.asdict(ws)
    for secret in ("access_tokens", "refresh_tokens", "made_at"):
        del shown[secret]
    return shown


def _source(w: World) -> dict[str, Any]:
    if w.cfg.ref:
        return {"ref": w.cfg.ref, "commit": w.source_commit}
    return {
        "ref": None,
        "head": _git("rev-parse", "HEAD"),
        "uncommitted_changes_in_authsvc": bool(_git("status", "--porcelain", "--", "authsvc")),
    }


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def _versions() -> dict[str, str]:
    found = {n: metadata.version(n) for n in ("aiohttp", "aiohttp-session", "redis", "bcrypt")}
    server = subprocess.run(["redis-server", "--version"], capture_output=True, text=True)
    found["redis-server"] = server.stdout.split()[2].removeprefix("v=")
    found["wrk"] = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split()[1]
    return found


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=REPO_DIR, capture_output=True, text=True)
    return done.stdout.strip()


def write_outputs(
    w: World, runs: dict[str, list[report.Run]], verify: list[float], extra: dict[str, Any]
) -> str:
    """results.json, latency.png; returns the table."""
    cfg = w.cfg
    s = summaries(cfg, runs)
    ceiling = report.Ceiling(tuple(verify), len(os.sched_getaffinity(w.procs["authsvc"].pid)))
    goals = report.targets(s, ceiling, w.ws.bytes_per_session if w.ws else None)
    cfg.out.mkdir(parents=True, exist_ok=True)
    report.write_json(cfg.out / "results.json", {**report.payload(s, goals, ceiling, extra)})
    subtitle = (
        f"{extra['environment']['cpu']}; service on core {cfg.service_core}, wrk on core "
        f"{cfg.load_core}; {cfg.connections} connections; median of {cfg.rounds} run(s)"
    )
    report.plot(cfg.out / "latency.png", s, subtitle)
    text = report.table(s, goals, ceiling)
    if "profile" in extra:
        text += "\n\n" + _profile_text(extra["profile"])
    (cfg.out / "results.txt").write_text(text + "\n", encoding="utf-8")
    return text


def _profile_text(found: dict[str, Any]) -> str:
    lines = []
    for name, data in found.items():
        lines.append(f"py-spy, {name}: top functions by self time ({data['samples']} samples)")
        for h in data["top_self"]:
            share = f"{h['self_share']:6.1%} self {h['total_share']:6.1%} total"
            lines.append(f"  {share}  {h['function']}")
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def check_machine(cfg: Config) -> None:
    """RuntimeError unless both cores exist and the tools are installed."""
    procs.require_tools()
    cores = os.sched_getaffinity(0)
    if cfg.service_core == cfg.load_core or not {cfg.service_core, cfg.load_core} <= cores:
        raise RuntimeError(
            f"need two distinct usable cores; have {sorted(cores)}, asked for service core "
            f"{cfg.service_core} and load core {cfg.load_core}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns the exit status (0 even when targets are missed)."""
    cfg = parse_args(argv)
    check_machine(cfg)
    os.sched_setaffinity(0, {cfg.load_core})  # the driver stays off the service's core
    started, load_before = time.monotonic(), os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="authsvc-bench-"))
    world = World(cfg, workdir, {}, retries_left=cfg.retry_budget)
    progress = Progress()
    cfg.out.mkdir(parents=True, exist_ok=True)  # --profile writes there before the results
    progress.note(f"work directory (logs, token files): {workdir}")
    ok = False
    try:
        start_servers(world, progress)
        create_accounts(world, progress)
        check_endpoints(world)
        runs, verify = measure(world, progress)
        extra = meta(world, started, load_before)
        if cfg.profile:
            extra["profile"] = profile(world, progress)
        text = write_outputs(world, runs, verify, extra)
        ok = True
    finally:
        for proc in reversed(world.procs.values()):
            proc.stop()
        if ok and not cfg.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            progress.note(f"kept {workdir}")
    progress.note(f"done; wrote {cfg.out}/results.json, latency.png, results.txt")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
