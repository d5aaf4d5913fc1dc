"""Who wakes whom in one worker under load: each thread's sleeps and preemptions, and what ended
them, per request, side by side.

    taskset -c 1 .venv/bin/python -m loadtests.bench.wakes [--measures rps,sse]
        [--contenders gateway-sqlite,gateway-redis] [--before DIR] [--before-store redis]
        [--redis-core 0|1] [--seconds 3] [--reps 1] [--top 14]

Counts, not timings (`syscalls` counts the `futex` calls and switches; this says which thread's
wake ended which thread's wait, and why). While wrk drives the worker, `perf record -a` of
kernel tracepoints filtered in the kernel to the worker's threads (and the store's server,
redis-server, whose tasks are named apart): the entries and exits of the system calls that
sleep or wake (`futex`, `epoll_wait`, `epoll_pwait`, `write`, `writev`: so each thread's call
in progress is known at every instant), their switches out (asleep, or preempted: by whom) and
every wake of one of them (`sched_waking`, taken in the waker's context: a traced thread, or
another process such as wrk or the upstream, or an interrupt on an idle core). Each thread is
named by its /proc/PID/task/TID/comm and nice value (`main`: the process's first thread, where
the event loop runs; under Granian, `tokio-rt-worker` is its runtime thread and the nameless
`python (0)` its blocking thread, which takes the GIL to hand each request to the loop with
`call_soon_threadsafe`; the nice-19 ones are the request log's writer and the embedded store's
SQLite thread). From /proc/PID/task/TID/schedstat: each thread's time on the CPU and runnable
but waiting for it, and its slices (times it was put on the CPU), a request; from /proc/stat
the server core's idle share.

Per thread, a request: sleeps, preemptions (and by whom), `futex` waits (by where the futex
lives: in libpython's static data, the interpreter's runtime state where the GIL's mutex and
condition variable are; a Rust library's; the heap) and wakes (those that woke a thread); its
`epoll_wait` returns a second and a request, by the timeout it passed ("0": a poll; ">0": a
timer pending; "none") and whether it returned no event ("empty": after a wait with a timeout,
only a timer was due). Then the wakes, a request: the thread woken [the call it slept in] <-
the waker [the call it was in]. Python 3.11's GIL is a mutex and a condition variable: a
thread that wants it while another holds it waits in `futex` and is woken by the holder's
`futex` wake when dropped, so GIL hand-offs read `A [futex wait] <- B [futex wake]`; the loop
woken by `call_soon_threadsafe` (an eventfd) reads `main [epoll_pwait] <- B [write]`.

On the stream measures (`--measures lines,anth --contenders bare,gateway-sqlite
--connections 64`) "a request" is a stream. Each window's line gives the cores' speed-probe
medians while perf recorded (~225 µs a fast core, ~350 a slow one: decision 0012), and a
"hand-offs" line sums the wakes that pass work between the loop and the other threads
(`handoffs`): the loop woken in its poll by a socket, by an eventfd `write` (Granian's
`call_soon_threadsafe`) or by a timer alone; Granian's runtime woken by the loop's `write` (a
response piece handed to it, a `receive()` spawned); the GIL handed each way; the loop's
preemptions. perf's tracepoints cost every traced thread and every process's system calls,
so a traced run is slower than `side_by_side`'s (the rates and states are not the bench's;
the counts per request are what it reads).

Runs are bounded (wrk -d, perf's own `sleep`) and every process is stopped at the end.
Decision 0010, twenty-eighth pass (issue 19zzzzzg); the hand-offs and probes, decision 0012,
thirty-third pass (issue 19zzzzzp).
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from loadtests.bench.contenders import SERVER_CORE
from loadtests.bench.measure import SpeedProbe
from loadtests.bench.side_by_side import BEFORE, CHOICES, WRK_MEASURES, Contender, started
from loadtests.bench.syscalls import TICKS, loader, rate, warmed

# The x86-64 system calls recorded: those a thread sleeps in or wakes another with.
CALLS = {202: "futex", 232: "epoll_wait", 281: "epoll_pwait", 1: "write", 20: "writev"}
FUTEX = 202
EPOLL = (232, 281)
FUTEX_WAITS = {0, 9}  # FUTEX_WAIT, FUTEX_WAIT_BITSET (the op's flags masked off)
FUTEX_WAKES = {1, 10}  # FUTEX_WAKE, FUTEX_WAKE_BITSET
FUTEX_OP = 0x7F  # (FUTEX_PRIVATE_FLAG 0x80 and FUTEX_CLOCK_REALTIME 0x100 off)
WAIT_OUTCOMES = {0: "woken", -110: "timed out", -11: "changed"}  # 0, -ETIMEDOUT, -EAGAIN


@dataclass
class Thread:
    """What one traced thread did while perf recorded."""

    name: str
    calls: collections.Counter[str] = field(default_factory=collections.Counter)
    sleeps: int = 0
    preempted_by: collections.Counter[str] = field(default_factory=collections.Counter)
    futex_waits: collections.Counter[str] = field(default_factory=collections.Counter)
    futex_wakes: int = 0
    futex_woke: int = 0  # wakes that woke a thread
    polls: collections.Counter[str] = field(default_factory=collections.Counter)
    in_call: tuple[int, tuple[int, ...]] | None = None  # (number, arguments) in progress

    @property
    def timer_only(self) -> int:
        """`epoll_wait` returns with no event after waiting with a timeout: a timer was due."""
        return self.polls[">0 empty"]


def names(pid: int, store_pid: int | None = None) -> dict[int, str]:
    """tid -> "comm (nice N)" of every thread of `pid` ("comm (main)" for its first thread),
    and of `store_pid` (redis-server: "redis-server <comm>")."""
    found = {}
    for process in (pid, store_pid):
        if process is None:
            continue
        for task in Path(f"/proc/{process}/task").iterdir():
            try:
                comm = (task / "comm").read_text().strip()
                nice = int((task / "stat").read_text().rsplit(")", 1)[1].split()[16])
            except (OSError, IndexError, ValueError):
                continue
            tid = int(task.name)
            if process == store_pid:
                found[tid] = f"redis-server {comm}" if comm != "redis-server" else comm
            else:
                found[tid] = f"{comm} (main)" if tid == pid else f"{comm} ({nice})"
    return found


def schedstats(tids: list[int]) -> dict[int, tuple[int, int, int]]:
    """tid -> (ns on the CPU, ns runnable but waiting for it, slices), from schedstat."""
    found = {}
    for tid in tids:
        try:
            run, wait, slices = Path(f"/proc/{tid}/schedstat").read_text().split()
        except (OSError, ValueError):
            continue
        found[tid] = (int(run), int(wait), int(slices))
    return found


def idle_ticks(core: str) -> int:
    """The core's idle clock ticks so far (/proc/stat)."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{core} "):
            return int(line.split()[4])
    return 0


def static_ranges(pid: int) -> list[tuple[int, int, str]]:
    """The writable mappings of files in `pid` (start, end, file name): a futex there is in a
    library's static data (libpython's: the interpreter's runtime state, where the GIL is)."""
    ranges = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[1].startswith("rw") and fields[5].startswith("/"):
            start, end = (int(part, 16) for part in fields[0].split("-"))
            ranges.append((start, end, fields[5].rsplit("/", 1)[-1]))
    return ranges


def place(address: int, ranges: list[tuple[int, int, str]]) -> str:
    for start, end, name in ranges:
        if start <= address < end:
            return name[:20]
    return "heap/anon"


def filters(tids: list[int]) -> list[tuple[str, str]]:
    """(event, kernel filter) pairs of `record`: the threads' calls in CALLS, their switches
    out, the wakes of them."""

    def any_of(field_name: str, values: list[int]) -> str:
        return " || ".join(f"{field_name} == {value}" for value in values)

    calls = f"({any_of('common_pid', tids)}) && ({any_of('id', sorted(CALLS))})"
    return [
        ("raw_syscalls:sys_enter", calls),
        ("raw_syscalls:sys_exit", calls),
        ("sched:sched_switch", any_of("prev_pid", tids)),
        ("sched:sched_waking", any_of("pid", tids)),
    ]


def record(tids: list[int], data: Path, seconds: float) -> subprocess.Popen[bytes]:
    """`perf record -a` of `filters(tids)`, stopped after `seconds` (its own `sleep`)."""
    command = ["perf", "record", "-q", "-a", "-o", str(data)]
    for event, on in filters(tids):
        command += ["-e", event, "--filter", on]
    command += ["--", "sleep", str(seconds)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def parse(
    script_out: str, named: dict[int, str], ranges: list[tuple[int, int, str]]
) -> tuple[dict[int, Thread], collections.Counter[tuple[str, str]]]:
    """`perf script -F comm,tid,event,trace` of `record`'s events: each thread's counts, and
    the wakes as (the woken [its call], the waker [its call]) -> count."""
    seen = {tid: Thread(name) for tid, name in named.items()}
    wakes: collections.Counter[tuple[str, str]] = collections.Counter()
    for line in script_out.splitlines():
        head, _, trace = line.partition(": ")
        parts = head.split()
        if len(parts) < 3 or not parts[-2].isdigit():
            continue
        comm, tid, event = " ".join(parts[:-2]), int(parts[-2]), parts[-1]
        thread = seen.get(tid)
        if event == "raw_syscalls:sys_enter":
            if thread is not None:
                thread.in_call = _call(trace)
                thread.calls[CALLS.get(thread.in_call[0], str(thread.in_call[0]))] += 1
        elif event == "raw_syscalls:sys_exit":
            if thread is not None:
                _exited(thread, trace, ranges)
        elif event == "sched:sched_switch":
            if thread is not None:
                if _field(trace, "prev_state").startswith("R"):
                    taker = seen.get(int(_field(trace, "next_pid") or -1))
                    thread.preempted_by[taker.name if taker else _field(trace, "next_comm")] += 1
                else:
                    thread.sleeps += 1
        elif event == "sched:sched_waking":
            woken = seen.get(int(_field(trace, "pid") or -1))
            if woken is None:
                continue
            if thread is not None:
                waker = f"{thread.name} [{_call_name(thread.in_call)}]"
            else:
                waker = "idle core (interrupt)" if comm.startswith("swapper") else f"other: {comm}"
            wakes[(f"{woken.name} [{_call_name(woken.in_call)}]", waker)] += 1
    return seen, wakes


def _call(trace: str) -> tuple[int, tuple[int, ...]]:
    """`NR 202 (7f01, 81, 1, 0, 0, 0)` (the arguments in hex) -> (202, (0x7f01, 0x81, ...))."""
    number, _, rest = trace.strip().removeprefix("NR ").partition(" ")
    return int(number), tuple(int(arg, 16) for arg in rest.strip("() ").split(", ") if arg)


def _exited(thread: Thread, trace: str, ranges: list[tuple[int, int, str]]) -> None:
    number, _, returned_text = trace.strip().removeprefix("NR ").partition(" = ")
    call, thread.in_call = thread.in_call, None
    if call is None or call[0] != int(number):
        return  # (entered before perf started)
    returned = int(returned_text)
    nr, args = call
    if nr == FUTEX:
        op = args[1] & FUTEX_OP
        if op in FUTEX_WAITS:
            outcome = WAIT_OUTCOMES.get(returned, "other")
            thread.futex_waits[f"{place(args[0], ranges)}, {outcome}"] += 1
        elif op in FUTEX_WAKES:
            thread.futex_wakes += 1
            thread.futex_woke += returned > 0
    elif nr in EPOLL:
        # (an int argument: perf shows the register, -1 as ffffffff)
        timeout = args[3] & 0xFFFFFFFF
        timeout -= (1 << 32) if timeout >= 1 << 31 else 0
        kind = "none" if timeout < 0 else "0" if timeout == 0 else ">0"
        thread.polls[f"{kind} empty" if returned == 0 else kind] += 1


def _field(trace: str, name: str) -> str:
    """`name=value` of a tracepoint's text (a value without spaces)."""
    start = trace.find(f"{name}=")
    return "" if start < 0 else trace[start + len(name) + 1 :].split(" ", 1)[0]


def _call_name(call: tuple[int, tuple[int, ...]] | None) -> str:
    if call is None:
        return "other"  # running, or in a call not recorded
    nr, args = call
    name = CALLS.get(nr, str(nr))
    if nr == FUTEX:
        op = args[1] & FUTEX_OP
        name += " wait" if op in FUTEX_WAITS else " wake" if op in FUTEX_WAKES else f" op {op}"
    return name


def wakes(
    contender: Contender,
    scenario: str,
    connections: int,
    seconds: float,
    tmp: Path,
    top: int,
    speed: SpeedProbe | None = None,
) -> str:
    script, url, pid = warmed(contender, scenario, connections, tmp, "wakes")
    named = names(pid, contender.store_pid)
    ranges = static_ranges(pid)
    data = tmp / f"wakes-{contender.name}-{scenario}.data"
    load, results = loader(url, script, connections, seconds + 1)
    load.start()
    time.sleep(0.5)  # the connections open and busy: perf records inside wrk's window
    scheduled, idle = schedstats(sorted(named)), idle_ticks(SERVER_CORE)
    began = time.monotonic()
    perf = record(sorted(named), data, seconds)
    perf.wait(timeout=seconds + 60)
    scheduled_after, idle = schedstats(sorted(named)), idle_ticks(SERVER_CORE) - idle
    probes = {} if speed is None else speed.between(began, time.monotonic())
    load.join(timeout=seconds + 60)
    per_s = rate(results)
    done = max(1.0, per_s * seconds)  # the requests inside perf's window
    script_out = subprocess.run(
        ["perf", "script", "-i", str(data), "-F", "comm,tid,event,trace"],
        capture_output=True, text=True, timeout=600, check=False,
    ).stdout  # fmt: skip
    seen, woken = parse(script_out, named, ranges)
    lines = [f"{contender.name}, {scenario}, {connections} connections: {per_s:.0f}/s, "
             f"core {SERVER_CORE} idle {idle / TICKS / seconds:.0%}, "
             f"load {os.getloadavg()[0]:.2f}{probed(probes)}; a request:"]  # fmt: skip
    lines.append(f"  {'thread':28} {'cpu us':>7} {'wait us':>7} {'slices':>6} {'sleeps':>6} "
                 f"{'preempt':>7} {'futex w':>7} {'wakes':>6} {'woke':>6}")  # fmt: skip
    rows = []
    for tid, thread in seen.items():
        start, end = scheduled.get(tid, (0, 0, 0)), scheduled_after.get(tid, (0, 0, 0))
        run, wait, slices = (b - a for a, b in zip(start, end, strict=True))
        rows.append((run, wait, slices, tid, thread))
    for run, wait, slices, tid, thread in sorted(rows, key=lambda row: -row[0]):
        if slices == 0 and not thread.calls:
            continue
        preempted = sum(thread.preempted_by.values())
        lines.append(
            f"  {f'{tid} {thread.name}'[:28]:28} {run / 1e3 / done:7.1f} {wait / 1e3 / done:7.1f} "
            f"{slices / done:6.2f} {thread.sleeps / done:6.2f} {preempted / done:7.2f} "
            f"{sum(thread.futex_waits.values()) / done:7.2f} {thread.futex_wakes / done:6.2f} "
            f"{thread.futex_woke / done:6.2f}"
        )
        notes = [
            ("calls", thread.calls.most_common(5)),
            ("preempted by", thread.preempted_by.most_common(4)),
            ("futex waits", thread.futex_waits.most_common(3)),
            ("epoll_wait by timeout", sorted(thread.polls.items())),
        ]
        for title, counts in notes:
            if counts:
                cells = ", ".join(f"{k} {n / done:.3f}" for k, n in counts)
                lines.append(f"  {'':30}{title}: {cells}")
        if thread.polls:
            lines.append(f"  {'':30}epoll_wait {sum(thread.polls.values()) / seconds:.0f}/s, "
                         f"timer-only {thread.timer_only / seconds:.0f}/s")  # fmt: skip
    cells = ", ".join(f"{name} {count / done:.2f}" for name, count in handoffs(seen, woken).items())
    lines.append(f"  hand-offs a request: {cells}")
    lines.append(f"  wakes ({sum(woken.values()) / done:.2f}): the woken [in] <- the waker [in]")
    for (sleeper, waker), count in woken.most_common(top):
        lines.append(f"    {count / done:6.3f}  {sleeper[:42]:42} <- {waker}")
    return "\n".join(lines)


def handoffs(
    seen: dict[int, Thread], woken: collections.Counter[tuple[str, str]]
) -> dict[str, int]:
    """The wakes of `parse` that pass work between the event loop (the `(main)` thread) and
    the others, by kind: the loop woken in its poll by a socket (another process's packet: the
    upstream's; or an interrupt on an idle core), by one of the worker's threads' `write` (an
    eventfd: Granian's `call_soon_threadsafe`), or by a timer alone; Granian's runtime
    (`tokio-rt-worker`) woken by the loop's `write` (a response or body piece handed to it,
    or a `receive()` spawned); GIL hand-offs either way (a `futex wait` ended by the other
    side's `futex wake`); and the loop's preemptions (by any thread)."""
    loop = next((t.name for t in seen.values() if t.name.endswith("(main)")), "")
    counts = dict.fromkeys(
        ("loop<-socket", "loop<-eventfd", "loop<-timer", "tokio<-loop", "GIL loop<-thread",
         "GIL thread<-loop", "loop preempted"),
        0,
    )  # fmt: skip
    for (sleeper, waker), count in woken.items():
        woken_name, _, woken_call = sleeper.rpartition(" [")
        waker_name, _, waker_call = waker.rpartition(" [")
        if woken_name == loop and woken_call.startswith("epoll"):
            if waker.startswith(("other: ", "idle core")):
                counts["loop<-socket"] += count
            elif waker_call == "write]":
                counts["loop<-eventfd"] += count
        elif woken_name.startswith("tokio-rt-worker") and waker == f"{loop} [write]":
            counts["tokio<-loop"] += count
        elif woken_call == "futex wait]" and waker_call == "futex wake]":
            if woken_name == loop:
                counts["GIL loop<-thread"] += count
            elif waker_name == loop:
                counts["GIL thread<-loop"] += count
    for thread in seen.values():
        if thread.name == loop:
            counts["loop<-timer"] = thread.timer_only
            counts["loop preempted"] = sum(thread.preempted_by.values())
    return counts


def probed(probes: dict[str, float]) -> str:
    """The cores' speed-probe medians over the traced window (µs: ~225 a fast core, ~350-380
    a slow one, decision 0012), as the report's rounds read them; "" without a reading."""
    cells = ", ".join(f"core {core} {us:.0f}" for core, us in sorted(probes.items()))
    return f", probe µs {cells}" if cells else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--measures", default="rps")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--top", type=int, default=14)
    parser.add_argument(
        "--contenders",
        type=lambda text: [n for n in CHOICES if n in text.split(",")],
        default=["gateway-sqlite", "gateway-redis"],
    )
    parser.add_argument("--before", type=Path, help=f"add {BEFORE}: this checkout's gateway")
    parser.add_argument("--before-store", choices=["sqlite", "redis"], default="sqlite")
    parser.add_argument(
        "--redis-core",
        default=SERVER_CORE,
        help="the core redis-server runs on (real-time where allowed): the worker's, as in "
        "`make bench`, or the load generator's",
    )
    args = parser.parse_args()
    if not (1 <= args.seconds <= 10 and 1 <= args.reps <= 5):
        parser.error("bounds: --seconds 1..10, --reps 1..5")
    if shutil.which("perf") is None:
        parser.error("perf is missing")
    chosen = list(args.contenders)
    if args.before is not None:
        chosen.append(BEFORE)
    with (
        tempfile.TemporaryDirectory(prefix="klawd-wakes-") as tmp,
        started(
            Path(tmp), chosen, args.before, args.redis_core, before_store=args.before_store
        ) as found,
        SpeedProbe(Path(tmp)) as speed,
    ):
        for measure in args.measures.split(","):
            scenario, _ = WRK_MEASURES[measure]
            for _ in range(args.reps):
                for contender in found.values():
                    print(wakes(contender, scenario, args.connections, args.seconds,
                                Path(tmp), args.top, speed), flush=True)  # fmt: skip
                    print(flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
