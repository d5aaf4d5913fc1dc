"""How fast a core runs a fixed piece of Python, sampled while the bench runs beside it.

    taskset -c CORE .venv/bin/python -m loadtests.bench.speed_probe OUT [--for-s 3600]

Every 50 ms: the thread CPU time (ns) of the same small interpreter loop (~0.25 ms), written to
OUT as `monotonic_ns cpu_ns` lines. It runs at SCHED_IDLE, so it takes the core only when
nothing else wants it (0.5 % of an idle core; less beside a busy contender), and its CPU time,
not its wall time, is read: being made to wait does not count, the core's speed does. On a VM
the host can slow a core without taking it (its hyperthread sibling or its caches shared with
another guest, its clock lowered): no steal is counted then, but this loop takes longer, as does
everything on that core (decision 0012, 19zzzzb). `measure.SpeedProbe` starts one per core.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

PERIOD_S = 0.05


def work() -> int:
    """The fixed piece: dict and int operations, as an interpreter's request path does."""
    counts: dict[int, int] = {}
    for i in range(3000):
        counts[i & 255] = counts.get(i & 255, 0) + i
    return len(counts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--for-s", type=float, default=3600.0)
    args = parser.parse_args()
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    deadline = time.monotonic() + args.for_s
    with args.out.open("w", buffering=1) as out:
        while time.monotonic() < deadline:
            started = time.thread_time_ns()
            work()
            out.write(f"{time.monotonic_ns()} {time.thread_time_ns() - started}\n")
            time.sleep(PERIOD_S)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
