"""System calls, context switches and CPU per request of one worker, per thread, side by side.

    taskset -c 1 .venv/bin/python -m loadtests.bench.syscalls [--measures rps,sse]
        [--contenders bare,bare-rsgi,gateway-sqlite,gateway-redis] [--before DIR] [--seconds 4]
        [--reads | --profile TOP]

Counts, not timings: `perf stat --per-thread` on the worker's threads (kernel tracepoints, so the
worker is not slowed down the way strace slows it) while wrk drives it, then each count divided
by the requests wrk completed. The threads are told apart by their nice value and their share of
the worker's CPU (from /proc/PID/task), split into user and system time (clock ticks: 10 ms
each, so a 3 s run reads to about ±3 us per request at 1,000 requests/s). `futex` calls are
threads handing the GIL (or a lock) to each other; a wake of a helper thread that then takes the
GIL costs a hand-off on both sides. `wakes` are the wake-ups a thread makes (of the worker's
other threads, of the client or the upstream); `packets` the packets it sends (on loopback the
receiving socket's work is done in the sender's thread too: an ACK to the upstream costs the
worker its receipt as well). Runs are bounded (wrk -d, perf's own timeout) and every process is
stopped at the end.

`--profile TOP`: where that CPU goes, user and kernel, instead of the counts: `perf record -e
cpu-clock` of the worker's threads (the instruction counts of `worker_instructions` and
`read_cost` see user space only), each thread's CPU per request with its kernel part, and the TOP
symbols over all threads, in us per request.

`--reads`: what each read is of, instead of the counts above: `perf record` of the worker's
read/recvfrom/write/writev/epoll_ctl system calls (their fd and what they returned), each fd told
apart by what it is while the load runs (a TCP connection to a port, from a client, an eventfd),
so a read of the upstream is told from an event loop's wake-up; per thread and kind: calls per
request, mean bytes per read or write, and the sizes (median, share under 512 bytes) of the
upstream reads and of the writes to the client (what the load generator reads), with the
client's writes' recurring sizes per request (the head alone, the body's end alone: 5 bytes).
`epoll_ctl` per request shows a socket taken out of epoll (libuv's re-arms after a paused
read go through its io_uring: `io_uring_enter` in the counts).

`--core-profile TOP`: the load generator's core instead of the worker (`perf record -a -C 1 -e
cpu-clock -g` while wrk drives the contender): each program's CPU per request there (the
upstream nginx, wrk, idle) with its kernel part by system call, and the TOP (program, symbol)
pairs. On the saturated per-line measures that core is full, so what a contender's way of
reading costs the upstream and wrk decides its rate (decision 0012, 19zzzzk: the gateway's
upstream pays its extra inside `writev`, per segment and per ACK).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from loadtests.bench.contenders import CLIENT_CORE
from loadtests.bench.measure import WrkResult, _tree, wrk, wrk_script
from loadtests.bench.side_by_side import BEFORE, CHOICES, WRK_MEASURES, Contender, started

EVENTS = [
    "syscalls:sys_enter_futex",
    "syscalls:sys_enter_epoll_wait",
    "syscalls:sys_enter_epoll_pwait",
    "syscalls:sys_enter_write",
    "syscalls:sys_enter_writev",
    "syscalls:sys_enter_read",
    "syscalls:sys_enter_recvfrom",
    "syscalls:sys_enter_getrandom",
    "syscalls:sys_enter_getpid",
    # libuv batches its epoll_ctl calls through an io_uring of its own: a socket whose reading
    # was stopped and started again (a hold) costs two `io_uring_enter` at the next poll (an
    # EPOLL_CTL_ADD that fails with EEXIST, then an EPOLL_CTL_MOD), no `epoll_ctl` (19zzzza).
    "syscalls:sys_enter_epoll_ctl",
    "syscalls:sys_enter_io_uring_enter",
    "raw_syscalls:sys_enter",
    "context-switches",
    "cpu-migrations",
    # Counted in the waker's thread: the wakes each thread makes (of another thread of the
    # worker, of a client or the upstream's process on the other core).
    "sched:sched_wakeup",
    # Packets the thread sends (on loopback, the receiving socket's work runs in the sender's
    # context too): data to the client, the request and ACKs to the upstream.
    "net:net_dev_xmit",
]
SHORT = {event: event.rsplit("enter_", 1)[-1].split(":")[-1] for event in EVENTS}
SHORT["raw_syscalls:sys_enter"] = "all"
SHORT["context-switches"] = "cs"
SHORT["cpu-migrations"] = "migr"
SHORT["sched:sched_wakeup"] = "wakes"
SHORT["net:net_dev_xmit"] = "packets"
SHORT["syscalls:sys_enter_epoll_pwait"] = "epoll_pw"
SHORT["syscalls:sys_enter_epoll_ctl"] = "epoll_ct"
SHORT["syscalls:sys_enter_io_uring_enter"] = "io_uring"


def worker_pid(pid: int) -> int:
    """The process of the tree that has used the most CPU (under Granian: the worker)."""

    def ticks(p: int) -> int:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return -1
        return int(fields[11]) + int(fields[12])

    return max(_tree(pid), key=ticks)


def threads(pid: int) -> dict[int, tuple[int, int, int]]:
    """tid -> (nice, utime, stime), the times in clock ticks."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(task.name)] = (int(fields[16]), int(fields[11]), int(fields[12]))
    return out


def count(pid: int, seconds: float, load: threading.Thread) -> dict[int, dict[str, int]]:
    """perf stat per thread of `pid` while `load` runs; tid -> event -> count."""
    command = ["perf", "stat", "--per-thread", "-x", ",", "-p", str(pid)]
    for event in EVENTS:
        command += ["-e", event]
    perf = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)  # perf attached
    load.start()
    load.join(timeout=seconds + 60)
    perf.send_signal(2)
    _, err = perf.communicate(timeout=30)
    return per_thread(err)


def per_thread(perf_stat: str) -> dict[int, dict[str, int]]:
    """`perf stat --per-thread -x ,` output (`comm-tid,count,unit,event,...`) as tid -> event
    (shortened) -> count; lines without a whole count (`<not counted>`, task-clock's msec) are
    left out."""
    found: dict[int, dict[str, int]] = {}
    for line in perf_stat.splitlines():
        parts = line.split(",")
        if len(parts) < 4 or "-" not in parts[0] or not parts[1].strip().isdigit():
            continue
        tid = int(parts[0].rsplit("-", 1)[1])
        found.setdefault(tid, {})[SHORT.get(parts[3], parts[3])] = int(parts[1])
    return found


def warmed(
    contender: Contender, scenario: str, connections: int, tmp: Path, tag: str
) -> tuple[Path, str, int]:
    """The scenario's wrk script and URL for `contender`, after a second of warm-up; and the
    pid of its worker."""
    script = wrk_script(
        tmp / f"{tag}-{contender.name}-{scenario}.lua",
        contender.body(scenario),
        contender.headers | {"Content-Type": "application/json"},
    )
    url = contender.base_url + contender.path(scenario)
    wrk(url, script, connections, 1)  # warm-up
    return script, url, worker_pid(contender.pid)


def loader(
    url: str, script: Path, connections: int, seconds: float
) -> tuple[threading.Thread, list[WrkResult]]:
    """The measured load, as a thread not yet started, and the list its result goes into."""
    results: list[WrkResult] = []
    load = threading.Thread(target=lambda: results.append(wrk(url, script, connections, seconds)))
    return load, results


def rate(results: list[WrkResult]) -> float:
    """The load's requests per second (wrk's result is missing when wrk failed)."""
    if not results:
        raise RuntimeError("wrk gave no result (it failed or outlived its time)")
    return results[0].requests_per_s


def measure(
    contender: Contender, scenario: str, connections: int, seconds: float, tmp: Path
) -> str:
    name = contender.name
    script, url, pid = warmed(contender, scenario, connections, tmp, "sys")
    before = threads(pid)
    load, results = loader(url, script, connections, seconds)
    counts = count(pid, seconds, load)
    after = threads(pid)
    per_s = rate(results)
    done = per_s * max(1, round(seconds))
    lines = [f"{name}, {scenario}, {connections} connections: {done:.0f} requests "
             f"({per_s:.0f}/s), load {os.getloadavg()[0]:.2f}"]  # fmt: skip
    total: dict[str, float] = {}
    rows = []
    per_tick = 1e6 / TICKS / max(done, 1)  # a clock tick, in us per request
    all_user = all_system = 0.0
    for tid, per in counts.items():
        nice, user_after, system_after = after.get(tid, (0, 0, 0))
        _, user_before, system_before = before.get(tid, (0, 0, 0))
        user = (user_after - user_before) * per_tick
        system = (system_after - system_before) * per_tick
        all_user, all_system = all_user + user, all_system + system
        for event, value in per.items():
            total[event] = total.get(event, 0) + value
        if sum(per.values()) == 0:
            continue
        rows.append((user + system, user, system, tid, nice, per))
    rows.sort(reverse=True)
    heads = [SHORT[e] for e in EVENTS]
    lines.append("  thread (nice)     cpu us/req (user  sys) " + " ".join(f"{h:>8}" for h in heads))
    for cpu, user, system, tid, nice, per in rows:
        cells = " ".join(f"{per.get(h, 0) / max(done, 1):8.2f}" for h in heads)
        lines.append(f"  {tid:>8} ({nice:>3})  {cpu:10.1f} ({user:5.0f} {system:4.0f}) {cells}")
    cells = " ".join(f"{total.get(h, 0) / max(done, 1):8.2f}" for h in heads)
    all_cpu = all_user + all_system
    lines.append(f"  {'all':>8}        {all_cpu:10.1f} ({all_user:5.0f} {all_system:4.0f}) {cells}")
    return "\n".join(lines)


TICKS = os.sysconf("SC_CLK_TCK")
READ_EVENTS = [
    "syscalls:sys_enter_read",
    "syscalls:sys_exit_read",
    "syscalls:sys_enter_recvfrom",
    "syscalls:sys_exit_recvfrom",
    "syscalls:sys_enter_write",
    "syscalls:sys_exit_write",
    "syscalls:sys_enter_writev",
    "syscalls:sys_exit_writev",
    "syscalls:sys_enter_epoll_ctl",
]


def fd_kinds(pid: int, own_port: int) -> dict[int, str]:
    """fd -> what it is: "tcp to :PORT" (a connection the worker made: its upstream, Redis),
    "tcp from a client" (one to `own_port`), "eventfd", "pipe", a file's path."""
    kinds: dict[int, str] = {}
    sockets: dict[str, int] = {}
    for entry in Path(f"/proc/{pid}/fd").iterdir():
        try:
            link = os.readlink(entry)
        except OSError:
            continue
        found = re.fullmatch(r"socket:\[(\d+)\]", link)
        if found:
            sockets[found.group(1)] = int(entry.name)
            kinds[int(entry.name)] = "socket"
        else:
            kinds[int(entry.name)] = "eventfd" if "eventfd" in link else link.split(":")[0]
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in sockets:
                local = int(fields[1].rsplit(":", 1)[1], 16)
                remote = int(fields[2].rsplit(":", 1)[1], 16)
                what = "tcp from a client" if local == own_port else f"tcp to :{remote}"
                kinds[sockets[fields[9]]] = what
    return kinds


def syscall_sizes(
    script_out: str, kinds: dict[int, str]
) -> tuple[collections.Counter[tuple[int, str, str]], dict[tuple[int, str, str], list[int]]]:
    """`perf script -F tid,event,trace` of the READ_EVENTS: the calls by (thread, call, what
    its fd is: `kinds`, cut to 22 characters), and what each returned (bytes, or -errno)."""
    calls: collections.Counter[tuple[int, str, str]] = collections.Counter()
    sizes: dict[tuple[int, str, str], list[int]] = collections.defaultdict(list)
    entered: dict[int, tuple[str, str]] = {}
    for line in script_out.splitlines():
        found = re.match(r"\s*(\d+)\s+\S+:sys_(enter|exit)_(\w+):\s*(.*)$", line)
        if not found:
            continue
        tid, side, call, trace = int(found[1]), found[2], found[3], found[4]
        if side == "enter":
            fd_field = re.search(r"\bfd: (0x[0-9a-f]+|\d+)", trace) or re.search(
                r"\bepfd: (0x[0-9a-f]+|\d+)", trace
            )
            fd = int(fd_field[1], 0) if fd_field else -1
            kind = "-" if call == "epoll_ctl" else kinds.get(fd, "closed since")[-22:]
            calls[(tid, call, kind)] += 1
            entered[tid] = (call, kind)
        elif tid in entered:
            call, kind = entered.pop(tid)
            returned = re.search(r"(0x[0-9a-f]+|-?\d+)\s*$", trace)
            if returned:  # (an error, -errno, is printed as a 64-bit hex number)
                value = int(returned[1], 0)
                sizes[(tid, call, kind)].append(value - (1 << 64) if value >= 1 << 63 else value)
    return calls, sizes


def size_note(sizes: list[int]) -> str:
    """The sizes of one kind of read or write (bytes, each > 0): their median and the share
    under 512 bytes (a piece of an event or two, not a batch of them)."""
    ordered = sorted(sizes)
    small = sum(1 for n in ordered if n < 512) / len(ordered)
    return f"median {ordered[len(ordered) // 2]} B, {small:.0%} under 512 B"


def recurring_sizes(sizes: list[int], done: float, top: int = 4) -> str:
    """The `top` exact sizes that recur most among one kind of write, each with its count per
    request: a write that carries no events has a size of its own that recurs (the response's
    head alone, its headers' length; the chunked body's end alone, `0\\r\\n\\r\\n`, 5 bytes),
    where writes of events vary with how many they carry (issue 19zzzzy)."""
    counted = collections.Counter(sizes).most_common()
    recurring = [(size, count) for size, count in counted if count > 1][:top]
    return ", ".join(f"{size} B {count / done:.2f}" for size, count in recurring)


def reads(contender: Contender, scenario: str, connections: int, seconds: float, tmp: Path) -> str:
    """`--reads`: each read/recvfrom/write of the worker's threads by what its fd is."""
    name = contender.name
    script, url, pid = warmed(contender, scenario, connections, tmp, "reads")
    data = tmp / f"reads-{name}-{scenario}.data"
    command = ["perf", "record", "-q", "-o", str(data), "-p", str(pid)]
    for event in READ_EVENTS:
        command += ["-e", event]
    perf = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)  # perf attached
    load, results = loader(url, script, connections, seconds)
    load.start()
    time.sleep(seconds / 2)  # the connections are open: what each fd is
    kinds = fd_kinds(pid, int(contender.base_url.rsplit(":", 1)[1]))
    load.join(timeout=seconds + 60)
    perf.send_signal(2)
    perf.wait(timeout=60)
    per_s = rate(results)
    done = max(1.0, per_s * max(1, round(seconds)))
    script_out = subprocess.run(
        ["perf", "script", "-i", str(data), "-F", "tid,event,trace"],
        capture_output=True, text=True, timeout=300, check=False,
    ).stdout  # fmt: skip
    calls, sizes = syscall_sizes(script_out, kinds)
    lines = [f"{name}, {scenario}, {connections} connections: {done:.0f} requests "
             f"({per_s:.0f}/s), load {os.getloadavg()[0]:.2f}"]  # fmt: skip
    lines.append(f"  {'thread':>8} {'call':10} {'fd':22} {'per req':>8} {'bytes':>7}  sizes")
    for (tid, call, kind), count in sorted(calls.items(), key=lambda item: -item[1]):
        got = [n for n in sizes.get((tid, call, kind), []) if n > 0]
        mean = f"{sum(got) / len(got):7.0f}" if got else f"{'':7}"
        upstream_read = kind.startswith("tcp to") and call in ("read", "recvfrom")
        client_write = kind == "tcp from a client" and call in ("write", "writev")
        note = size_note(got) if got and (upstream_read or client_write) else ""
        if got and client_write:
            note += f"; recurring (a request): {recurring_sizes(got, done)}"
        lines.append(f"  {tid:>8} {call:10} {kind:22} {count / done:8.2f} {mean}  {note}")
    return "\n".join(lines)


def profile(
    contender: Contender, scenario: str, connections: int, seconds: float, tmp: Path, top: int
) -> str:
    """`--profile`: where the worker's CPU goes, kernel and user, by `perf record -e cpu-clock
    -g` of every thread of the worker while the load runs (a sample every 200 us of CPU); each
    sample weighs the CPU per request it stands for. Per thread (by its place in the worker's
    CPU): its kernel part, split by the system call it was in (the first `__x64_sys_*` frame of
    the kernel's call chain; "irq" for an interrupt or softirq taken outside one); then the
    `top` symbols (with their object) over all threads."""
    name = contender.name
    script, url, pid = warmed(contender, scenario, connections, tmp, "prof")
    data = tmp / f"prof-{name}-{scenario}.data"
    command = ["perf", "record", "-q", "-g", "-e", "cpu-clock", "-F", "5000", "-o", str(data)]
    perf = subprocess.Popen(
        [*command, "-p", str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    time.sleep(0.3)  # perf attached
    before = threads(pid)
    load, results = loader(url, script, connections, seconds)
    load.start()
    load.join(timeout=seconds + 60)
    after = threads(pid)
    perf.send_signal(2)
    perf.wait(timeout=60)
    per_s = rate(results)
    done = max(1.0, per_s * max(1, round(seconds)))
    ticks = sum(sum(after[t][1:]) - sum(before.get(t, (0, 0, 0))[1:]) for t in after)
    # The CPU the samples stand for is the threads' while perf ran (a little more than wrk's
    # window), so each sample is weighed by the CPU per request of the whole window.
    script_out = subprocess.run(
        ["perf", "script", "-i", str(data), "-F", "tid,ip,sym,dso", "--no-demangle"],
        capture_output=True, text=True, timeout=300, check=False,
    ).stdout  # fmt: skip
    per_thread: collections.Counter[int] = collections.Counter()
    kernel: collections.Counter[tuple[int, str]] = collections.Counter()
    symbols: collections.Counter[tuple[str, str]] = collections.Counter()
    for tid, chain in _samples(script_out):
        per_thread[tid] += 1
        symbol, dso = chain[0]
        symbols[(symbol[:48], dso[:28])] += 1
        if dso.startswith("[kernel"):
            kernel[(tid, _kernel_path(chain))] += 1
    samples = sum(per_thread.values())
    cpu_us = ticks / TICKS * 1e6 / done
    weight = cpu_us / max(samples, 1)
    lines = [f"{name}, {scenario}, {connections} connections: {done:.0f} requests "
             f"({per_s:.0f}/s), CPU {cpu_us:.0f} us/req, {samples} samples, "
             f"load {os.getloadavg()[0]:.2f}"]  # fmt: skip
    for tid, count in per_thread.most_common():
        nice = after.get(tid, (0, 0, 0))[0]
        paths = sorted(((n, path) for (t, path), n in kernel.items() if t == tid), reverse=True)
        in_kernel = sum(n for n, _ in paths)
        split = ", ".join(f"{path} {n * weight:.1f}" for n, path in paths[:6])
        lines.append(f"  thread {tid} (nice {nice:>3}): {count * weight:6.1f} us/req, "
                     f"kernel {in_kernel * weight:6.1f} ({split})")  # fmt: skip
    for (symbol, dso), count in symbols.most_common(top):
        share = count / max(samples, 1)
        lines.append(f"  {count * weight:7.1f} us  {share:6.1%}  {symbol} ({dso})")
    return "\n".join(lines)


def core_profile(
    contender: Contender, scenario: str, connections: int, seconds: float, tmp: Path, top: int
) -> str:
    """`--core-profile`: where the load generator's core goes while wrk drives `contender`,
    every program on it sampled every 200 us of the core's time (idle too)."""
    script, url, _ = warmed(contender, scenario, connections, tmp, "core")
    data = tmp / f"core-{contender.name}-{scenario}.data"
    command = ["perf", "record", "-q", "-g", "-a", "-C", CLIENT_CORE, "-e", "cpu-clock"]
    perf = subprocess.Popen(
        [*command, "-F", "5000", "-o", str(data)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.3)  # perf attached
    load, results = loader(url, script, connections, seconds)
    load.start()
    load.join(timeout=seconds + 60)
    perf.send_signal(2)
    perf.wait(timeout=60)
    per_s = rate(results)
    done = max(1.0, per_s * seconds)
    script_out = subprocess.run(
        ["perf", "script", "-i", str(data), "-F", "comm,tid,ip,sym,dso", "--no-demangle"],
        capture_output=True, text=True, timeout=300, check=False,
    ).stdout  # fmt: skip
    head = f"{contender.name}, {scenario}, {connections} connections: {per_s:.0f}/s"
    # A sample stands for 200 us of the core; the window is wrk's plus perf's start and end,
    # so the idle line is a little high, the busy ones are not.
    return "\n".join([head, *core_lines(_comm_samples(script_out), 200 / done, top)])


def core_lines(
    samples: Iterator[tuple[str, list[tuple[str, str]]]], weight_us: float, top: int
) -> list[str]:
    """Per program (its comm, "idle" for the idle task): us per request, its kernel part by
    system call; then the `top` (program, symbol) pairs. `weight_us`: one sample's us per
    request."""
    programs: collections.Counter[str] = collections.Counter()
    kernel: collections.Counter[tuple[str, str]] = collections.Counter()
    symbols: collections.Counter[tuple[str, str]] = collections.Counter()
    for comm, chain in samples:
        program = "idle" if comm.startswith("swapper") else comm[:16]
        programs[program] += 1
        if chain[0][1].startswith("[kernel"):
            kernel[(program, _kernel_path(chain))] += 1
        symbols[(program, chain[0][0][:48])] += 1
    lines = []
    for program, count in programs.most_common():
        paths = sorted(((n, path) for (p, path), n in kernel.items() if p == program), reverse=True)
        split = ", ".join(f"{path} {n * weight_us:.1f}" for n, path in paths[:6])
        lines.append(f"  {program:16} {count * weight_us:7.1f} us/req  kernel: {split}")
    for (program, symbol), count in symbols.most_common(top):
        lines.append(f"  {count * weight_us:7.1f} us  {program:16} {symbol}")
    return lines


def _comm_samples(script_out: str) -> Iterator[tuple[str, list[tuple[str, str]]]]:
    """`perf script -F comm,tid,ip,sym,dso` of a `-g -a` record: (the program's comm, its
    frames from the leaf up, each (symbol, object))."""
    comm: str | None = None
    chain: list[tuple[str, str]] = []
    for line in [*script_out.splitlines(), ""]:
        frame = re.match(r"\s+[0-9a-f]+\s+(.*?)\s+\((.*)\)\s*$", line)
        if frame is not None and comm is not None:
            chain.append((frame[1].split("+0x")[0], frame[2].rsplit("/", 1)[-1]))
            continue
        if chain and comm is not None:
            yield comm, chain
        chain = []
        head = re.fullmatch(r"(\S.*?)\s+(\d+)\s*", line)
        comm = head[1] if head is not None else None


def _samples(script_out: str) -> Iterator[tuple[int, list[tuple[str, str]]]]:
    """`perf script -F tid,ip,sym,dso` of a `-g` record: (tid, its frames from the leaf up,
    each (symbol, object))."""
    tid = -1
    chain: list[tuple[str, str]] = []
    for line in [*script_out.splitlines(), ""]:
        head = re.fullmatch(r"\s*(\d+)\s*", line)
        frame = re.match(r"\s+[0-9a-f]+\s+(.*?)\s+\((.*)\)\s*$", line)
        if frame is not None and tid >= 0:
            symbol = frame[1].split("+0x")[0]
            chain.append((symbol, frame[2].rsplit("/", 1)[-1]))
            continue
        if chain:
            yield tid, chain
        chain = []
        tid = int(head[1]) if head is not None else -1


def _kernel_path(chain: list[tuple[str, str]]) -> str:
    """The system call a kernel sample was taken in (named by the function the syscall entry
    called: `ksys_read`, `do_epoll_wait`, ...; most `__x64_sys_*` are inlined), else its way
    into the kernel (the outermost kernel frame, in angle brackets: an interrupt, a fault)."""
    callee, outermost = "", "?"
    for symbol, dso in chain:
        if not dso.startswith("[kernel"):
            break
        if symbol in ("do_syscall_64", "x64_sys_call") and callee:
            return re.sub(r"^(__x64_sys_|__do_sys_|__se_sys_)", "", callee)[:24]
        if symbol not in ("do_syscall_64", "x64_sys_call"):
            callee = symbol
        outermost = symbol
    return f"<{outermost[:24]}>"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--measures", default="rps,sse")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument(
        "--contenders",
        type=lambda text: [n for n in CHOICES if n in text.split(",")],
        default=["bare", "gateway-sqlite"],
    )
    parser.add_argument("--before", type=Path, help=f"add {BEFORE}: this checkout's gateway")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--reads", action="store_true", help="each read and write by what its fd is (perf record)"
    )
    mode.add_argument(
        "--profile",
        type=int,
        metavar="TOP",
        help="perf record -e cpu-clock of the worker: CPU per request by thread, kernel and the "
        "TOP symbols",
    )
    mode.add_argument(
        "--core-profile",
        type=int,
        metavar="TOP",
        help=f"perf record of the load generator's core ({CLIENT_CORE}): CPU per request by "
        "program (nginx, wrk, idle), kernel and the TOP symbols",
    )
    args = parser.parse_args()
    if not (1 <= args.seconds <= 30 and 1 <= args.reps <= 5):
        parser.error("bounds: --seconds 1..30, --reps 1..5")
    if shutil.which("perf") is None:
        parser.error("perf is missing")
    names = list(args.contenders)
    if args.before is not None:
        names.append(BEFORE)
    with (
        tempfile.TemporaryDirectory(prefix="klawd-sys-") as tmp,
        started(Path(tmp), names, args.before) as found,
    ):
        for measure_name in args.measures.split(","):
            scenario, _ = WRK_MEASURES[measure_name]
            for _ in range(args.reps):
                for contender in found.values():
                    if args.profile:
                        print(profile(contender, scenario, args.connections, args.seconds,
                                      Path(tmp), args.profile))  # fmt: skip
                    elif args.core_profile:
                        if contender.name == "upstream":
                            continue  # (wrk against nginx alone: nothing to compare)
                        print(core_profile(contender, scenario, args.connections, args.seconds,
                                           Path(tmp), args.core_profile))  # fmt: skip
                    else:
                        run = reads if args.reads else measure
                        print(run(contender, scenario, args.connections, args.seconds, Path(tmp)))
                    print(flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
