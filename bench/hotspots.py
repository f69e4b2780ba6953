"""Optional profiling (`run.py --profile`): py-spy samples authsvc under load, and the
collapsed stacks it writes are summed up into the functions with the most self time."""

from __future__ import annotations

import collections
import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

RATE = 200  # samples per second


@dataclasses.dataclass(frozen=True, slots=True)
class Hotspot:
    """A function and its share of the samples in which Python code held the GIL."""

    function: str
    self_share: float
    total_share: float


def py_spy() -> str:
    """The py-spy executable (installed with bench/requirements.txt)."""
    found = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if found is None:
        raise RuntimeError("py-spy is not installed: pip install -r bench/requirements.txt")
    return found


def record(pid: int, seconds: float, out: Path, core: int) -> subprocess.Popen[bytes]:
    """Start sampling `pid` for `seconds` into collapsed stacks at `out`."""
    argv = [
        "taskset",
        "-c",
        str(core),
        py_spy(),
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(max(1, int(seconds))),
        "--rate",
        str(RATE),
        "--format",
        "raw",
        "--nolineno",
        "--gil",  # only the thread running Python: idle pool threads would count as busy
        "--output",
        str(out),
    ]
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)


def top(raw: Path, count: int) -> tuple[int, list[Hotspot]]:
    """Busy samples in `raw` and the `count` functions with the most self time."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(encoding="utf-8").splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack or not samples.isdigit():
            continue
        frames = stack.split(";")
        n = int(samples)
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    if not total:
        return 0, []
    return total, [
        Hotspot(function, n / total, inclusive[function] / total)
        for function, n in own.most_common(count)
    ]
