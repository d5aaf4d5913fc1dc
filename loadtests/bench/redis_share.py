"""What sharing the worker's core with redis-server costs the worker: the Redis store's gap
split between redis-server's own CPU, being preempted by a real-time process, and the Redis
path in the worker.

    .venv/bin/python -m loadtests.bench.redis_share [--measures rps,sse] [--seconds 2]
        [--reps 6] [--modes embedded,redis0,redis1,dummy] [--dummy-split 1[,8...]]
        [--touch-kb 0] [--bursts] [--profile] [--samples-out F]

`side_by_side`'s processes (the fake upstream and wrk on core 1; the embedded gateway and the one
on Redis on core 0, one worker each; redis-server at real-time priority, SCHED_FIFO) and the
speed probes, and per round, in turn (the order reversed every other round):
- `embedded`: the embedded contender, redis-server idle on core 0 beside it (the control for an
  idle neighbour);
- `redis0`: the Redis contender, redis-server on core 0 (as `make bench` since issue 19zzzze);
- `redis1`: the Redis contender, redis-server moved to core 1 (`taskset`, still real-time);
- `dummy`: the embedded contender beside redis_dummy.py at SCHED_FIFO on core 0, waking as often
  a second and burning as much CPU a wake as redis-server did in the last `redis0` round (the
  decisive control: if the embedded worker loses as much beside it, the cost is sharing a core
  with any woken real-time process, not the Redis client). `--dummy-split 1,8` runs it twice a
  round: `dummy` as sized, `dummy/8` with the same CPU in 8 times as many, 8 times shorter wakes
  (whether the bursts' length is what costs the worker).
Per round: requests a second; the worker's CPU (and its system part), voluntary switches (its
sleeps) and involuntary ones (its preemptions) a request; redis-server's (or the dummy's) CPU,
wakes (voluntary switches) a request and a second, and commands a request (`INFO commandstats`,
FCALLs apart);
each core's speed probe; with `--bursts`, the neighbour's bursts on a core (from `perf record -e
sched:sched_switch`, filtered in the kernel to its main thread: each run from being switched in
to being switched out, µs: median, 90th percentile, longest; what its wakes' average hides);
with `--profile`, py-spy on the worker (every Python thread, idle samples left out, not pausing
it), each function's share of the round's samples times the worker's CPU a request: its µs a
request, by itself and with what it calls.
Then, per measure, medians by mode and each round's worker µs a request against the same round's
`embedded`, and with `--profile` the functions whose µs a request differ most from `embedded`'s.
Needs root (chrt). Every run is bounded (wrk -d, timeouts).
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import orjson

from loadtests.bench import contenders as c
from loadtests.bench import side_by_side as s
from loadtests.bench.measure import (
    SpeedProbe,
    _kb,
    _tree,
    tree_cpu_s,
    tree_cpu_split_s,
    wrk,
    wrk_script,
)
from loadtests.bench.redis_costs import commandstats
from loadtests.bench.redis_dummy import Plan

MODES = ("embedded", "redis0", "redis1", "dummy")
PROFILE_RATE = 500  # py-spy's samples a second
NOT_A_REQUEST = ("config|resetstat", "info", "ping", "hello", "client|setinfo", "client|setname")


def switches(pid: int, tree: bool = True) -> tuple[int, int]:
    """(voluntary, involuntary) context switches so far of a process's threads (and, with
    `tree`, its descendants'): a voluntary one is a sleep, each ended by a wake-up; an
    involuntary one is a preemption."""
    voluntary = involuntary = 0
    for p in _tree(pid) if tree else [pid]:
        for task in Path(f"/proc/{p}/task").glob("*/status"):
            voluntary += _kb(str(task), "voluntary_ctxt_switches:")
            involuntary += _kb(str(task), "nonvoluntary_ctxt_switches:")
    return voluntary, involuntary


def redis_port(pid: int) -> int:
    """From redis-server's process title, `redis-server 127.0.0.1:PORT` (it rewrites its
    command line)."""
    title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return int(title.split()[1].rsplit(":", 1)[1])


def commands(port: int) -> tuple[int, int]:
    """(every command, FCALLs) redis-server has run since its start, the bench's own aside."""
    stats = commandstats(port)
    every = sum(calls for name, (calls, _) in stats.items() if name not in NOT_A_REQUEST)
    return every, stats.get("fcall", (0, 0))[0]


def split_of(mode: str) -> int:
    """How many parts a dummy mode's wakes are split into: `dummy` 1, `dummy/8` 8."""
    return int(mode.partition("/")[2] or 1)


def expanded(modes: list[str], splits: list[int]) -> list[str]:
    """`dummy` in `modes` as one mode per split (`dummy` for 1, `dummy/N` for N)."""
    dummies = ["dummy" if n == 1 else f"dummy/{n}" for n in splits]
    return [m for mode in modes for m in (dummies if mode == "dummy" else [mode])]


SWITCH = re.compile(rb"(\d+\.\d+):.*prev_pid=(\d+) .*next_pid=(\d+)")


def bursts_us(script: bytes, pid: int) -> list[float]:
    """Each run of `pid` on a core, µs, from `perf script` lines of `sched:sched_switch` events
    (in time order): from a switch to it to the next switch away from it."""
    runs: list[float] = []
    since: float | None = None
    for match in SWITCH.finditer(script):
        at, prev_pid, next_pid = float(match[1]), int(match[2]), int(match[3])
        if prev_pid == pid and since is not None:
            runs.append((at - since) * 1e6)
            since = None
        if next_pid == pid:
            since = at
    return runs


@contextmanager
def traced(pid: int, directory: Path) -> Iterator[list[float]]:
    """The bursts of `pid` while the block runs (the list is filled when it ends): perf on the
    load generator's core, its events filtered in the kernel to `pid`'s switches."""
    data = directory / "bursts.data"
    command = ["perf", "record", "-q", "-o", str(data), "-e", "sched:sched_switch", "-a",
               "--filter", f"prev_pid == {pid} || next_pid == {pid}"]  # fmt: skip
    perf = c.pinned(c.CLIENT_CORE, command, directory / "perf.log")
    time.sleep(0.3)  # perf's buffers set up before the round starts
    runs: list[float] = []
    try:
        yield runs
    finally:
        c.stop(perf)
    script = subprocess.run(["perf", "script", "-i", str(data), "-F", "time,trace"],
                            capture_output=True, check=True, timeout=60).stdout  # fmt: skip
    runs += bursts_us(script, pid)


@contextmanager
def sampled(pid: int, raw: Path, seconds: float) -> Iterator[None]:
    """py-spy's raw stacks of `pid`'s tree while the block runs (from the client's core)."""
    binary = shutil.which("py-spy") or str(c.BIN / "py-spy")
    command = [binary, "record", "--pid", str(pid), "--subprocesses", "--nonblocking",
               "--rate", str(PROFILE_RATE), "--duration", str(max(1, int(seconds))),
               "--format", "raw", "--output", str(raw)]  # fmt: skip
    spy = c.pinned(c.CLIENT_CORE, command, raw.with_suffix(".log"))
    time.sleep(0.2)  # attached before the round starts
    try:
        yield
    finally:
        try:
            spy.wait(timeout=seconds + 30)
        finally:
            c.stop(spy)


def _function(frame: str) -> str:
    """`name (/a/b/dir/file.py:12)` -> `name (dir/file.py)`: a function, whichever line ran."""
    found = re.fullmatch(r"(.*) \((.*):\d+\)", frame)
    if found is None:
        return frame
    return f"{found[1]} ({'/'.join(found[2].split('/')[-2:])})"


def by_function(raw: str) -> tuple[int, dict[str, int], dict[str, int]]:
    """From py-spy's raw stacks (`frame;frame;... count`, the leaf last): the samples, and each
    function's (`name (dir/file.py)`) samples as the leaf and anywhere in the stack."""
    total = 0
    own: dict[str, int] = {}
    within: dict[str, int] = {}
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [
            _function(frame)
            for frame in stack.split(";")
            if not frame.startswith(("process ", "thread "))
        ]
        total += n
        if frames:
            own[frames[-1]] = own.get(frames[-1], 0) + n
        for name in dict.fromkeys(frames):
            within[name] = within.get(name, 0) + n
    return total, own, within


def per_request(
    rows: list[dict[str, float]], profiles: list[str], inclusive: bool
) -> dict[str, float]:
    """Each function's µs a request: its share of a round's samples times the round's worker
    CPU a request, averaged over the rounds."""
    out: dict[str, float] = {}
    for row, raw in zip(rows, profiles, strict=True):
        total, own, within = by_function(raw)
        for name, n in (within if inclusive else own).items():
            out[name] = out.get(name, 0.0) + row["worker_cpu_us"] * n / max(1, total) / len(rows)
    return out


def burst_figures(runs: list[float]) -> dict[str, float]:
    if not runs:
        return {}
    ordered = sorted(runs)
    return {
        "bursts": float(len(ordered)),
        "burst_p50_us": statistics.median(ordered),
        "burst_p90_us": ordered[int(0.9 * (len(ordered) - 1))],
        "burst_max_us": ordered[-1],
    }


def move(pid: int, core: str) -> None:
    """redis-server's threads to `core`, keeping their scheduling policy (SCHED_FIFO)."""
    command = ["taskset", "-a", "-p", "-c", core, str(pid)]
    subprocess.run(command, check=True, capture_output=True, timeout=10)


@dataclass
class Neighbour:
    """The process whose wake-ups the round measures: redis-server, or the dummy."""

    pid: int
    port: int = 0  # redis-server's, for its command counts

    def counters(self) -> tuple[float, int, int, int]:
        cpu = tree_cpu_s(self.pid)
        voluntary, _ = switches(self.pid)
        every, fcalls = commands(self.port) if self.port else (0, 0)
        return cpu, voluntary, every, fcalls


def dummy(plan: Plan, seconds: float, directory: Path, touch_kb: int) -> subprocess.Popen[bytes]:
    command = ["chrt", "--fifo", "1", sys.executable, "-m", "loadtests.bench.redis_dummy",
               "--wakes-per-s", f"{plan.wakes_per_s:.1f}", "--burn-us", f"{plan.burn_us:.2f}",
               "--for-s", f"{seconds:.1f}", "--touch-kb", str(touch_kb)]  # fmt: skip
    return c.pinned(c.SERVER_CORE, command, directory / "dummy.log", {"PYTHONPATH": str(c.REPO)})


def one_round(contender: s.Contender, url: str, script: Path, connections: int, seconds: float,
              neighbour: Neighbour) -> dict[str, float]:  # fmt: skip
    (user0, system0), (vol0, invol0) = tree_cpu_split_s(contender.pid), switches(contender.pid)
    n_cpu0, n_wakes0, every0, fcalls0 = neighbour.counters()
    wall0 = time.monotonic()
    result = wrk(url, script, connections, seconds)
    wall = time.monotonic() - wall0
    (user, system), (vol, invol) = tree_cpu_split_s(contender.pid), switches(contender.pid)
    cpu, cpu0 = user + system, user0 + system0
    n_cpu, n_wakes, every, fcalls = neighbour.counters()
    done = max(1, result.completed or round(result.requests_per_s * seconds))
    return {
        "requests_per_s": result.requests_per_s,
        "worker_cpu_us": (cpu - cpu0) * 1e6 / done,
        "worker_system_us": (system - system0) * 1e6 / done,
        "worker_sleeps": (vol - vol0) / done,
        "worker_preempted": (invol - invol0) / done,
        "neighbour_cpu_us": (n_cpu - n_cpu0) * 1e6 / done,
        "neighbour_wakes": (n_wakes - n_wakes0) / done,
        "neighbour_wakes_per_s": (n_wakes - n_wakes0) / wall,
        "neighbour_us_a_wake": (n_cpu - n_cpu0) * 1e6 / max(1, n_wakes - n_wakes0),
        "redis_commands": (every - every0) / done,
        "redis_fcalls": (fcalls - fcalls0) / done,
        "_wakes": float(n_wakes - n_wakes0),
        "_cpu_s": n_cpu - n_cpu0,
        "_wall_s": wall,
    }


Rounds = dict[str, dict[str, list[dict[str, float]]]]  # measure -> mode -> rounds


Profiles = dict[str, dict[str, list[str]]]  # measure -> mode -> each round's raw stacks


def run(args: argparse.Namespace, directory: Path) -> tuple[Rounds, Profiles]:
    rounds: Rounds = {}
    profiles: Profiles = {}
    names = ["upstream", "gateway-sqlite", "gateway-redis"]
    with s.started(directory, names, redis_core=c.SERVER_CORE, redis_realtime=True) as found, \
            SpeedProbe(directory) as speed:  # fmt: skip
        redis_pid = found["gateway-redis"].store_pid
        assert redis_pid is not None
        redis = Neighbour(redis_pid, redis_port(redis_pid))
        try:
            for measure in args.measures:
                scenario, connections = s.WRK_MEASURES[measure]
                scripts, urls = {}, {}
                for name in names[1:]:
                    contender = found[name]
                    headers = contender.headers | {"Content-Type": "application/json"}
                    path = directory / f"{name}-{scenario}.lua"
                    scripts[name] = wrk_script(path, contender.body(scenario), headers)
                    urls[name] = contender.base_url + contender.path(scenario)
                    wrk(urls[name], scripts[name], connections, 1)  # warm-up
                per: dict[str, list[dict[str, float]]] = {mode: [] for mode in args.modes}
                stacks: dict[str, list[str]] = {mode: [] for mode in args.modes}
                plan = Plan(0.0, 0.0)
                for rep in range(args.reps):
                    for mode in args.modes if rep % 2 == 0 else args.modes[::-1]:
                        name = "gateway-redis" if mode.startswith("redis") else "gateway-sqlite"
                        move(redis_pid, "1" if mode == "redis1" else c.SERVER_CORE)
                        process = None
                        neighbour = redis
                        if mode.startswith("dummy"):
                            if not plan.wakes_per_s:
                                continue  # no redis0 round yet to size it from
                            process = dummy(plan.split(split_of(mode)), args.seconds + 1.8,
                                            directory, args.touch_kb)  # fmt: skip
                            neighbour = Neighbour(process.pid)
                        time.sleep(0.4)  # the last round's settle batch; the dummy started
                        none: list[float] = []
                        tracing: AbstractContextManager[list[float]] = (
                            traced(neighbour.pid, directory) if args.bursts else nullcontext(none)
                        )
                        raw = directory / f"profile-{measure}-{rep}-{mode.replace('/', '-')}.txt"
                        profiling: AbstractContextManager[None] = (
                            sampled(found[name].pid, raw, args.seconds)
                            if args.profile
                            else nullcontext()
                        )
                        try:
                            with tracing as runs, profiling:
                                started_at = time.monotonic()
                                row = one_round(found[name], urls[name], scripts[name],
                                                connections, args.seconds, neighbour)  # fmt: skip
                                probes = speed.between(started_at, time.monotonic())
                        finally:
                            if process is not None:
                                c.stop(process)
                        row |= burst_figures(runs)
                        for core, us in probes.items():
                            row[f"probe{core}_us"] = us
                        if probes.get(c.SERVER_CORE):  # the worker's cost in its core's speed
                            row["worker_cpu_in_probes"] = row["worker_cpu_us"] / probes["0"]
                        if mode == "redis0":
                            plan = Plan.like(int(row["_wakes"]), row["_cpu_s"], row["_wall_s"])
                        shown = ", ".join(f"{k} {v:.3f}" for k, v in row.items()
                                          if not k.startswith("_"))  # fmt: skip
                        print(f"  {measure} round {rep + 1} {mode}: {shown}", flush=True)
                        per[mode].append(row)
                        if args.profile:
                            stacks[mode].append(raw.read_text() if raw.exists() else "")
                rounds[measure] = per
                profiles[measure] = stacks
        finally:
            move(redis_pid, c.SERVER_CORE)
    return rounds, profiles


def against_embedded(per: dict[str, list[dict[str, float]]], mode: str, key: str) -> list[float]:
    """Each round's `key` in `mode` minus the same round's in `embedded` (rounds paired by
    index; a mode with fewer rounds, the dummy's first, is paired from the end)."""
    mine, base = per.get(mode, []), per.get("embedded", [])
    pairs = zip(mine[::-1], base[::-1], strict=False)
    return [a[key] - b[key] for a, b in pairs][::-1]


def summary(rounds: Rounds) -> str:
    lines = []
    for measure, per in rounds.items():
        modes = [m for m in per if per[m]]
        lines.append(f"\n{measure} (medians of each mode's rounds)")
        lines.append(f"  {'':26s}" + "".join(f"{m:>12s}" for m in modes))
        keys = [k for k in per[modes[0]][0] if not k.startswith("_")]
        for key in dict.fromkeys(keys + [k for m in modes for k in per[m][0]]):
            if key.startswith("_"):
                continue
            cells = [statistics.median(r.get(key, 0.0) for r in per[m]) for m in modes]
            lines.append(f"  {key:26s}" + "".join(f"{v:12.3f}" for v in cells))
        for mode in modes:
            if mode == "embedded":
                continue
            cpu = against_embedded(per, mode, "worker_cpu_us")
            scaled = against_embedded(per, mode, "worker_cpu_in_probes")
            rate = [
                a["requests_per_s"] / b["requests_per_s"]
                for a, b in zip(per[mode][::-1], per["embedded"][::-1], strict=False)
            ][::-1]
            lines.append(
                f"  {mode} - embedded, worker us a request per round: "
                + ", ".join(f"{d:+.1f}" for d in cpu)
                + f" (median {statistics.median(cpu):+.1f}); rate ratio "
                + ", ".join(f"{r:.2f}" for r in rate)
                + f" (median {statistics.median(rate):.2f}); in core-0 probes "
                + ", ".join(f"{d:+.3f}" for d in scaled)
                + f" (median {statistics.median(scaled):+.3f})"
            )
    return "\n".join(lines)


def profile_summary(rounds: Rounds, profiles: Profiles, shown: int = 20) -> str:
    """Per measure and mode, the functions whose µs a request (by themselves, then with what
    they call) differ most from `embedded`'s."""
    lines = []
    for measure, stacks in profiles.items():
        per = rounds[measure]
        for inclusive in (False, True):
            base = per_request(per["embedded"], stacks["embedded"], inclusive)
            for mode in (m for m in per if m != "embedded" and per[m]):
                mine = per_request(per[mode], stacks[mode], inclusive)
                names = sorted(set(base) | set(mine),
                               key=lambda n: -abs(mine.get(n, 0.0) - base.get(n, 0.0)))  # fmt: skip
                what = "with what they call" if inclusive else "by themselves"
                lines.append(f"\n{measure}: {mode} - embedded, µs a request, {what} "
                             f"({mode} / embedded)")  # fmt: skip
                lines += [
                    f"  {mine.get(n, 0.0) - base.get(n, 0.0):+7.2f}  "
                    f"({mine.get(n, 0.0):6.2f} / {base.get(n, 0.0):6.2f})  {n}"
                    for n in names[:shown]
                ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measures", type=lambda t: t.split(","), default=["rps", "sse"])
    parser.add_argument("--modes", type=lambda t: t.split(","), default=list(MODES))
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--reps", type=int, default=6)
    parser.add_argument("--touch-kb", type=int, default=0, help="the dummy's buffer read a wake")
    parser.add_argument(
        "--dummy-split",
        type=lambda t: [int(n) for n in t.split(",")],
        default=[1],
        help="N[,M...]: a dummy round for each, waking N times as often and burning 1/N as much "
        "a wake (the same CPU in shorter bursts); 1 is the dummy as sized",
    )
    parser.add_argument(
        "--bursts",
        action="store_true",
        help="the neighbour's runs on a core, from perf's sched_switch events (needs perf)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy on the worker each round: each function's µs a request, against embedded",
    )
    parser.add_argument("--samples-out", type=Path, help="every round's figures (JSON)")
    args = parser.parse_args()
    if not set(args.modes) <= set(MODES) or "embedded" not in args.modes:
        parser.error(f"--modes among {','.join(MODES)}, embedded among them")
    if "dummy" in args.modes and "redis0" not in args.modes:
        parser.error("the dummy is sized from the redis0 rounds: name both")
    if not set(args.measures) <= {"rps", "sse", "event", "lines", "lat"}:
        parser.error("--measures among rps,sse,event,lines,lat")
    if not (1 <= args.seconds <= 10 and 1 <= args.reps <= 12 and 0 <= args.touch_kb <= 8192):
        parser.error("bounds: --seconds 1..10, --reps 1..12, --touch-kb 0..8192")
    if not all(1 <= n <= 100 for n in args.dummy_split) or len(set(args.dummy_split)) < len(
        args.dummy_split
    ):
        parser.error("bounds: --dummy-split 1..100, each once")
    if args.bursts and shutil.which("perf") is None:
        parser.error("--bursts needs perf")
    args.modes = expanded(args.modes, args.dummy_split)
    if not c.realtime_allowed():
        parser.error("needs root and chrt (redis-server and the dummy at SCHED_FIFO)")
    with tempfile.TemporaryDirectory(prefix="klawd-redis-share-") as tmp:
        rounds, profiles = run(args, Path(tmp))
    if args.samples_out is not None:
        args.samples_out.write_bytes(orjson.dumps(rounds))
    print(summary(rounds))
    if args.profile:
        print(profile_summary(rounds, profiles))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
