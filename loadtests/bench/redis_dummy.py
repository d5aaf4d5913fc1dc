"""A stand-in for redis-server's wake-ups: a process that wakes as often as a given rate and
burns as much CPU a wake, to be run at real-time priority on the worker's core.

    chrt --fifo 1 taskset -c 0 .venv/bin/python -m loadtests.bench.redis_dummy \
        --wakes-per-s 900 --burn-us 60 [--for-s 3] [--touch-kb 0]

redis_share.py runs it beside the embedded contender, sized from a Redis round's redis-server
(its voluntary context switches a second: each is a sleep it was woken from; its CPU ÷ those):
if the embedded worker then pays what the Redis worker pays beside redis-server, the cost is
sharing a core with a woken real-time process, not the Redis client. It wakes on a timer at
fixed deadlines (redis-server wakes when a command arrives, so at the worker's own sends: the
timer's wakes fall anywhere in the worker's work instead). Its CPU is kept to the plan in total,
not a wake at a time: each wake burns until the process's CPU since the start reaches wakes so
far x `--burn-us`, so the interpreter's own cost of a wake (the sleep's return, the loop) is
part of the budget, not added to it. `--touch-kb`: each wake also reads that much of a buffer of
its own first (redis-server reads its keys, the Lua state and its buffers), to take a share of
the core's caches as well as its time. Bounded by `--for-s`.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Plan:
    wakes_per_s: float
    burn_us: float

    @classmethod
    def like(cls, wakes: int, cpu_s: float, wall_s: float) -> Plan:
        """As often and as costly a wake as a process that slept `wakes` times (its voluntary
        switches) and used `cpu_s` of CPU over `wall_s` seconds."""
        if wakes <= 0 or wall_s <= 0:
            return cls(0.0, 0.0)
        return cls(wakes / wall_s, cpu_s * 1e6 / wakes)

    def split(self, parts: int) -> Plan:
        """The same CPU a second in `parts` times as many wakes, each `parts` times shorter."""
        return Plan(self.wakes_per_s * parts, self.burn_us / parts)

    @property
    def period_s(self) -> float:
        return 1.0 / self.wakes_per_s if self.wakes_per_s > 0 else float("inf")


def next_deadline(deadline: float, period_s: float, now: float) -> float:
    """The next wake after `deadline`; if the process is already a whole period late (it was
    preempted, or the core was stopped), from now: no burst of catch-up wakes."""
    following = deadline + period_s
    return following if following > now - period_s else now + period_s


def cpu_target_s(wakes: int, burn_us: float) -> float:
    """The CPU (seconds since the start) the process should have used after `wakes` wakes."""
    return wakes * burn_us / 1e6


def run(plan: Plan, for_s: float, touch_kb: int = 0) -> int:
    """Wake per the plan until `for_s` has passed; returns the wakes made."""
    if plan.wakes_per_s <= 0:
        time.sleep(for_s)
        return 0
    buffer = bytearray(touch_kb * 1024)
    cpu0 = time.process_time()
    start = time.monotonic()
    end = start + for_s
    deadline = start + plan.period_s
    wakes = 0
    while deadline < end:
        time.sleep(max(0.0, deadline - time.monotonic()))
        wakes += 1
        if buffer:
            bytes(buffer)  # reads (and copies) the whole buffer
        target = cpu0 + cpu_target_s(wakes, plan.burn_us)
        while time.process_time() < target:
            pass
        deadline = next_deadline(deadline, plan.period_s, time.monotonic())
    return wakes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wakes-per-s", type=float, required=True)
    parser.add_argument("--burn-us", type=float, required=True)
    parser.add_argument("--for-s", type=float, default=3.0)
    parser.add_argument("--touch-kb", type=int, default=0)
    args = parser.parse_args()
    if not (0 <= args.wakes_per_s <= 20_000 and 0 <= args.burn_us <= 1_000):
        parser.error("bounds: --wakes-per-s 0..20000, --burn-us 0..1000")
    if not (0 < args.for_s <= 120 and 0 <= args.touch_kb <= 64 * 1024):
        parser.error("bounds: --for-s 0..120, --touch-kb 0..65536")
    if args.wakes_per_s * args.burn_us > 0.9e6:
        parser.error("the plan would take more than 90 % of the core")
    wakes = run(Plan(args.wakes_per_s, args.burn_us), args.for_s, args.touch_kb)
    print(f"{wakes} wakes", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
