"""Medians over runs, the targets of issue 13, and the three outputs: a table on stdout,
results.json and latency.png."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from wrk import PERCENTILES, Result

BARE, SESSION = "bare", "session"
NO_RATIO = frozenset({"login", "storm_login"})  # compared with the bcrypt ceiling instead


@dataclasses.dataclass(frozen=True, slots=True)
class Run:
    """One wrk result, with how busy other processes kept the service core meanwhile."""

    result: Result
    # {"service_core": {"others": share, "steal": share}, "load_core": {...},
    #  "busiest_others": ["name[pid] seconds", ...]}
    noise: dict[str, Any]

    @property
    def busy(self) -> float:
        """The larger share of a core (service or load) that went to other processes or
        was stolen by the hypervisor."""
        return max(
            float(self.noise[core]["others"]) + float(self.noise[core]["steal"])
            for core in ("service_core", "load_core")
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Summary:
    """One scenario: medians over its runs (latencies in ms)."""

    name: str
    title: str
    runs: tuple[Run, ...]

    @property
    def rps(self) -> float:
        """Median requests per second."""
        return statistics.median(r.result.rps for r in self.runs)

    def latency(self, percentile: str) -> float:
        """Median over runs of one latency percentile."""
        return statistics.median(r.result.latency_ms[percentile] for r in self.runs)

    @property
    def errors(self) -> int:
        """Failed or non-2xx requests over all runs."""
        return sum(r.result.errors for r in self.runs)

    @property
    def requests(self) -> int:
        """Requests over all runs."""
        return sum(r.result.requests for r in self.runs)

    @property
    def busy(self) -> float:
        """Median over runs of `Run.busy`."""
        return statistics.median(r.busy for r in self.runs)


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """A goal of issue 13 and whether this run met it."""

    name: str
    description: str
    value: float | None
    goal: float
    op: str  # ">=", "<" or "<="

    @property
    def met(self) -> bool | None:
        """None when the run lacks what the target needs."""
        if self.value is None:
            return None
        if self.op == ">=":
            return self.value >= self.goal
        if self.op == "<":
            return self.value < self.goal
        return self.value <= self.goal


@dataclasses.dataclass(frozen=True, slots=True)
class Ceiling:
    """The login ceiling: cores available to the service ÷ time of one bcrypt verify."""

    verify_seconds: tuple[float, ...]
    cores: int

    @property
    def verify_s(self) -> float:
        """The median verify: the same statistic as the login rps it is compared with, whose
        rounds meet the same noise on the shared core. (The fastest of N samples is an
        extreme value that keeps falling as N grows; it is reported beside.)"""
        return statistics.median(self.verify_seconds)

    @property
    def rps(self) -> float:
        """Logins per second that bcrypt alone allows."""
        return self.cores / self.verify_s


def targets(
    s: Mapping[str, Summary], ceiling: Ceiling, bytes_per_session: float | None
) -> list[Target]:
    """The targets of issue 13, computed from the medians."""

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or not b else a / b

    def rps(name: str) -> float | None:
        return s[name].rps if name in s else None

    def p99(name: str) -> float | None:
        return s[name].latency("99") if name in s else None

    return [
        Target(
            "me_vs_session",
            "/v1/me rps ÷ aiohttp-session rps",
            ratio(rps("me"), rps(SESSION)),
            3.0,
            ">=",
        ),
        Target(
            "me_working_set_vs_me",
            "/v1/me working set rps ÷ one-token rps",
            ratio(rps("me_ws"), rps("me")),
            0.8,
            ">=",
        ),
        Target(
            "refresh_vs_session",
            "refresh rps ÷ aiohttp-session rps",
            ratio(rps("refresh_small"), rps(SESSION)),
            0.9,
            ">=",
        ),
        Target(
            "login_vs_ceiling",
            "login rps ÷ bcrypt ceiling",
            ratio(rps("login"), ceiling.rps),
            0.95,
            ">=",
        ),
        Target("storm_me_p99", "/v1/me p99 during login storm (ms)", p99("storm_me"), 8.0, "<"),
        Target(
            "refresh_p99_large_vs_small",
            "refresh p99 large store ÷ small store",
            ratio(p99("refresh_large"), p99("refresh_small")),
            1.1,
            "<=",
        ),
        Target(
            "redis_bytes_per_session",
            "Redis bytes per session (working set)",
            bytes_per_session,
            350,
            "<=",
        ),
    ]


def figures(s: Mapping[str, Summary]) -> list[tuple[str, float | None]]:
    """Measured without a goal: what a second worker adds on this machine."""
    one, two = s.get("me"), s.get("me_w2")
    scaling = two.rps / one.rps if one and two and one.rps else None
    return [("/v1/me rps, --workers 2 on 2 cores ÷ 1 worker on 1 core", scaling)]


def table(s: Mapping[str, Summary], goals: Sequence[Target], ceiling: Ceiling) -> str:
    """The results as aligned text."""
    bare, session = s.get(BARE), s.get(SESSION)
    lines = [
        f"{'scenario':<40} {'rps':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} "
        f"{'vs bare':>7} {'vs session':>10} {'busy':>5}"
    ]
    for summary in s.values():
        lines.append(
            f"{summary.title:<40} {summary.rps:>9.1f} {summary.latency('50'):>8.2f} "
            f"{summary.latency('99'):>8.2f} {summary.errors:>7d} "
            f"{_ratio(summary, bare):>7} {_ratio(summary, session):>10} {summary.busy:>5.0%}"
        )
    lines.append(
        "busy: median over runs of the larger share of a core (service or load) that other "
        "processes took"
    )
    lines.append("")
    lines.append(
        f"bcrypt verify at the service's cost: {ceiling.verify_s * 1000:.1f} ms (median of "
        f"{len(ceiling.verify_seconds)}, fastest {min(ceiling.verify_seconds) * 1000:.1f} ms); "
        f"ceiling = {ceiling.cores} core(s) ÷ median = {ceiling.rps:.2f} logins/s"
    )
    lines.append("")
    lines.append(f"{'target':<44} {'value':>8} {'goal':>10}  met")
    for t in goals:
        value = "n/a" if t.value is None else f"{t.value:.2f}"
        verdict = {True: "yes", False: "MISSED", None: "n/a"}[t.met]
        lines.append(f"{t.description:<44} {value:>8} {t.op + ' ' + f'{t.goal:g}':>10}  {verdict}")
    lines.append("")
    for description, figure in figures(s):
        lines.append(f"{description:<56} {'n/a' if figure is None else f'{figure:.2f}':>8}")
    lines.append("(the load generator, wrk, runs on the second core: it shares it with a worker)")
    return "\n".join(lines)


def _ratio(summary: Summary, base: Summary | None) -> str:
    value = ratio_to(summary, base)
    return "-" if value is None else f"{value:.2f}"


def ratio_to(summary: Summary, base: Summary | None) -> float | None:
    """rps of `summary` ÷ rps of a baseline; None for logins or without the baseline."""
    if base is None or not base.rps or summary.name in NO_RATIO:
        return None
    return summary.rps / base.rps


def payload(
    s: Mapping[str, Summary], goals: Sequence[Target], ceiling: Ceiling, meta: dict[str, Any]
) -> dict[str, Any]:
    """Everything the run measured, for results.json."""
    bare, session = s.get(BARE), s.get(SESSION)
    return {
        **meta,
        "bcrypt": {
            "verify_seconds": list(ceiling.verify_seconds),
            "verify_s_fastest": min(ceiling.verify_seconds),
            "verify_s_median": ceiling.verify_s,
            "service_cores": ceiling.cores,
            "ceiling_rps": ceiling.rps,
        },
        "scenarios": {
            name: {
                "title": summary.title,
                "rps": summary.rps,
                "p50_ms": summary.latency("50"),
                "p99_ms": summary.latency("99"),
                "latency_ms": {p: summary.latency(p) for p in PERCENTILES},
                "errors": summary.errors,
                "requests": summary.requests,
                "busy_median": summary.busy,
                "vs_bare": ratio_to(summary, bare),
                "vs_session": ratio_to(summary, session),
                "runs": [
                    {**dataclasses.asdict(r.result), "rps": r.result.rps, "noise": r.noise}
                    for r in summary.runs
                ],
            }
            for name, summary in s.items()
        },
        "figures": dict(figures(s)),
        "targets": [
            {
                "name": t.name,
                "description": t.description,
                "value": t.value,
                "goal": f"{t.op} {t.goal:g}",
                "met": t.met,
            }
            for t in goals
        ],
    }


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """results.json, pretty-printed."""
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def plot(path: Path, s: Mapping[str, Summary], subtitle: str) -> None:
    """latency.png: median latency at each percentile, one line per scenario."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # x = number of nines, so that p50, p90, p99 and p99.9 are evenly spread.
    xs = [-math.log10(1 - float(p) / 100) for p in PERCENTILES]
    fig, ax = plt.subplots(figsize=(10, 6), dpi=110)
    for summary in s.values():
        if not summary.requests:
            continue  # nothing to draw on a log scale
        ys = [summary.latency(p) for p in PERCENTILES]
        ax.plot(xs, ys, marker="o", label=f"{summary.title} ({summary.rps:,.0f} rps)")
    ax.set_xticks(xs, [f"p{p}" for p in PERCENTILES])
    ax.set_yscale("log")
    ax.set_ylabel("latency, ms (log scale)")
    ax.set_xlabel("percentile (median over runs)")
    ax.set_title(f"authsvc benchmark: latency percentiles per scenario\n{subtitle}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
