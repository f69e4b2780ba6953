"""CPU accounting from /proc: is the service core idle, and who else used it during a run.

The machine is shared; each run records how much of the service core went to processes
other than the benchmark's servers, and how much the hypervisor stole."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")  # clock ticks per second


@dataclasses.dataclass(frozen=True, slots=True)
class Sample:
    """Cumulative clock ticks of one core and of the benchmark's server processes."""

    core_task: int  # user + nice + system on the core
    core_steal: int
    core_total: int
    servers: int  # CPU ticks of the benchmark's own processes (see process_ticks)


def process_ticks(pids: list[int]) -> int:
    """CPU ticks, over all threads, of the processes `pids` and of their children that
    have been waited for (so the driver's count includes every finished wrk)."""
    total = 0
    for pid in pids:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
        fields = stat.rpartition(")")[2].split()
        total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return total


def sample(core: int, pids: list[int]) -> Sample:
    """The counters now."""
    for line in Path("/proc/stat").read_text(encoding="utf-8").splitlines():
        if line.startswith(f"cpu{core} "):
            user, nice, system, idle, iowait, irq, softirq, steal = map(int, line.split()[1:9])
            return Sample(
                core_task=user + nice + system,
                core_steal=steal,
                core_total=user + nice + system + idle + iowait + irq + softirq + steal,
                servers=process_ticks(pids),
            )
    raise RuntimeError(f"no cpu{core} in /proc/stat")


def foreign(before: Sample, after: Sample) -> dict[str, float]:
    """Shares of the core's time between two samples: used by other processes, stolen."""
    total = max(1, after.core_total - before.core_total)
    others = (after.core_task - before.core_task) - (after.servers - before.servers)
    return {
        "others": round(max(0, others) / total, 4),
        "steal": round((after.core_steal - before.core_steal) / total, 4),
    }


def processes() -> dict[int, tuple[str, int]]:
    """Every process's name and utime + stime, for naming who made a run noisy."""
    found: dict[int, tuple[str, int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text(encoding="utf-8")
        except OSError:
            continue  # exited meanwhile
        name = stat[stat.find("(") + 1 : stat.rfind(")")]
        fields = stat.rpartition(")")[2].split()
        found[int(entry.name)] = (name, int(fields[11]) + int(fields[12]))
    return found


def busiest(
    before: dict[int, tuple[str, int]], after: dict[int, tuple[str, int]], skip: set[int]
) -> list[str]:
    """The three processes (not in `skip`) that used the most CPU between the snapshots."""
    used = [
        (ticks - before.get(pid, (name, 0))[1], f"{name}[{pid}]")
        for pid, (name, ticks) in after.items()
        if pid not in skip
    ]
    return [f"{label} {delta / TICKS:.1f}s" for delta, label in sorted(used)[-3:][::-1] if delta]


def core_ticks(core: int) -> int:
    """user + nice + system ticks of one core so far."""
    return sample(core, []).core_task
