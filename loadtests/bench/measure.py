"""Measuring one contender: wrk runs (throughput, latency), long streams, RSS of a process tree."""

from __future__ import annotations

import collections
import os
import re
import resource
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from loadtests.bench.contenders import CLIENT_CORE, REPO, SERVER_CORE, pinned, stop

UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


@dataclass(frozen=True)
class WrkResult:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    bad_responses: int  # non-2xx/3xx answers and socket errors
    # From the script's `done` hook (wrk_script): the requests completed in the window and
    # their mean latency, unrounded (wrk's report rounds them); 0 for a script without it.
    completed: int = 0
    mean_ms: float = 0.0

    def closed_loop_rate(self, connections: int) -> float:
        """Requests a second as `connections` ÷ the mean latency (Little's law for wrk's closed
        loop: each connection sends its next request as soon as the last one ends). Unlike
        `requests_per_s` it does not count whole requests in a fixed window: with requests
        as long as a paced stream (~1.3 s) every connection completes the same whole number
        of them in a 4 s window, so wrk's rate can only be connections x k / window (192 or
        128 streams/s at 256 connections), flipping on a 2 % change of the stream's length
        (decision 0012, 19zzzzb)."""
        return connections * 1000 / self.mean_ms if self.mean_ms else 0.0


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"wrk latency {text!r}")
    return float(match.group(1)) * UNITS[match.group(2)]


# The script's `done` hook: wrk's own counts, unrounded (WrkResult.completed, mean_ms).
DONE_HOOK = """function done(summary, latency, requests)
  io.write(string.format("klawd-wrk completed %d mean_us %.1f\\n", summary.requests, latency.mean))
end"""
_HOOK_LINE = re.compile(r"^klawd-wrk completed (\d+) mean_us ([\d.]+)$", re.MULTILINE)


def wrk_script(path: Path, body: bytes, headers: dict[str, str]) -> Path:
    lines = ['wrk.method = "POST"', f"wrk.body = {_lua_string(body.decode())}"]
    lines += [f"wrk.headers[{_lua_quoted(k)}] = {_lua_quoted(v)}" for k, v in headers.items()]
    lines.append(DONE_HOOK)
    path.write_text("\n".join(lines) + "\n")
    return path


def _lua_string(text: str) -> str:
    return "[==[" + text + "]==]"


def _lua_quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def wrk(url: str, script: Path, connections: int, seconds: float) -> WrkResult:
    """wrk pinned to the client core; bounded by -d and a subprocess timeout."""
    duration = f"-d{max(1, round(seconds))}s"
    command = ["taskset", "-c", CLIENT_CORE, "wrk", "-t1", f"-c{connections}", duration]
    command += ["--latency", "--timeout", "10s", "-s", str(script), url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=True)
    if done.stderr.strip():  # e.g. an error in the Lua script: the run measured nothing real
        raise RuntimeError(f"wrk: {done.stderr.strip()}")
    out = done.stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.MULTILINE)
    if rps is None or p50 is None or p99 is None:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    bad_count = int(bad.group(1)) if bad else 0
    if errors:
        bad_count += sum(int(g) for g in errors.groups())
    if bad_count:  # which kind, for whoever looks into it (the result keeps only the count)
        kinds = [found.group(0) for found in (bad, errors) if found is not None]
        print(f"wrk {url}: {'; '.join(kinds)}", file=sys.stderr)
    hook = _HOOK_LINE.search(out)
    completed, mean_ms = (int(hook.group(1)), float(hook.group(2)) / 1000) if hook else (0, 0.0)
    return WrkResult(
        float(rps.group(1)), _ms(p50.group(1)), _ms(p99.group(1)), bad_count, completed, mean_ms
    )


# The kernel's counters (machine-wide, /proc/net/netstat) that say a connection was dropped on
# a listen queue or its SYN resent: each resend waits 1 s, then 2 s (a 3 s tail: issue 19zzc).
LISTEN_COUNTERS = ("ListenOverflows", "ListenDrops", "TCPSynRetrans")


def listen_counters(netstat: Path = Path("/proc/net/netstat")) -> dict[str, int]:
    """LISTEN_COUNTERS now (TcpExt's header line names them, the next line gives the values)."""
    lines = netstat.read_text().splitlines()
    found: dict[str, int] = {}
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:") and values.startswith("TcpExt:"):
            found = dict(zip(names.split()[1:], map(int, values.split()[1:]), strict=False))
    return {name: found.get(name, 0) for name in LISTEN_COUNTERS}


# The kernel's socket diagnostics (netlink, as `ss` asks): the listening TCP sockets alone.
# /proc/net/tcp walks every socket hash bucket on each read: 4.2 ms of CPU here, so a sample
# every 20 ms took 16 % of a core from the shared machine during each timed round.
_SOCK_DIAG, _BY_FAMILY, _DUMP_REQUEST, _DONE, _ERROR = 4, 20, 0x301, 3, 2
_LISTEN = 10  # TCP_LISTEN


def accept_queues(ports: set[int]) -> dict[int, int]:
    """The accept queue of each listening socket on `ports`: connections the kernel has
    established that the server has not yet accepted (a listener's `idiag_rqueue` in the
    kernel's socket diagnostics; IPv4: every bench server listens on 127.0.0.1)."""
    # inet_diag_req_v2: family, protocol, ext, pad, states, then a zero socket id (48 bytes)
    request = struct.pack("=BBBBI", socket.AF_INET, socket.IPPROTO_TCP, 0, 0, 1 << _LISTEN)
    request += bytes(48)
    header = struct.pack("=IHHII", 16 + len(request), _BY_FAMILY, _DUMP_REQUEST, 1, 0)
    queues: dict[int, int] = {}
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _SOCK_DIAG) as diag:
        diag.sendto(header + request, (0, 0))
        while True:
            data = diag.recv(65536)
            at = 0
            while at < len(data):
                length, kind = struct.unpack_from("=IH", data, at)
                if kind == _DONE:
                    return queues
                if kind == _ERROR:
                    errno = -struct.unpack_from("=i", data, at + 16)[0]
                    raise OSError(errno, "sock_diag: " + os.strerror(errno))
                # inet_diag_msg after the 16-byte header: family, state, timer, retrans, the
                # socket id (its source port first, big-endian; 48 bytes), expires, rqueue
                port = struct.unpack_from(">H", data, at + 20)[0]
                if port in ports:
                    queued = struct.unpack_from("=I", data, at + 72)[0]
                    queues[port] = queues.get(port, 0) + queued
                at += (length + 3) & ~3


def nginx_accepts(base_url: str) -> int:
    """Connections nginx has accepted so far (its stub_status at /nginx-status; the probe's own
    connection counts as one)."""
    text = httpx.get(f"{base_url}/nginx-status", timeout=5).text
    match = re.search(r"server accepts handled requests\s+(\d+)", text)
    if match is None:
        raise RuntimeError(f"cannot read nginx's status:\n{text}")
    return int(match.group(1))


class ListenWatch:
    """What one round did to the listen queues: the kernel's LISTEN_COUNTERS over the round
    (machine-wide: another program's drops count too), the peak accept queue of each of
    `ports` (sampled every 20 ms in a thread) and, with `upstream`, how many connections the
    upstream's nginx accepted (a contender that reuses its upstream connections opens none
    after the warm-up; each one it opens waits in nginx's accept queue)."""

    def __init__(self, ports: dict[str, int], upstream: str | None = None) -> None:
        self.ports = ports
        self.upstream = upstream
        self.counters: dict[str, int] = {}
        self.peaks = dict.fromkeys(ports, 0)
        self.upstream_accepts: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        names = {port: name for name, port in self.ports.items()}
        while not self._stop.wait(0.02):
            for port, queued in accept_queues(set(names)).items():
                self.peaks[names[port]] = max(self.peaks[names[port]], queued)

    def __enter__(self) -> ListenWatch:
        self._counters = listen_counters()
        self._accepts = nginx_accepts(self.upstream) if self.upstream else 0
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        after = listen_counters()
        self.counters = {name: after[name] - self._counters[name] for name in after}
        if self.upstream:  # less this probe's own connection
            self.upstream_accepts = nginx_accepts(self.upstream) - self._accepts - 1

    def __str__(self) -> str:
        parts = [f"{name} {count}" for name, count in self.counters.items()]
        parts += [f"accept queue peak {name} {peak}" for name, peak in self.peaks.items()]
        if self.upstream_accepts is not None:
            parts.append(f"upstream accepted {self.upstream_accepts}")
        return ", ".join(parts)


class ClockWatch:
    """How far the wall clock moved against the monotonic one over a round (`step_s`): a
    machine paused and resumed (a VM snapshot) has its wall clock set forward when it resumes,
    and wrk times everything with the wall clock (gettimeofday), so such a round's rate and
    latencies are wrong, and each of its requests then in flight past --timeout counts as a
    timeout: one per connection (issue 19zzc's 64 bad responses, inferred)."""

    def __init__(
        self,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.wall = wall
        self.monotonic = monotonic
        self.step_s = 0.0

    def __enter__(self) -> ClockWatch:
        self._start = (self.wall(), self.monotonic())
        return self

    def __exit__(self, *exc: object) -> None:
        wall, monotonic = self._start
        self.step_s = (self.wall() - wall) - (self.monotonic() - monotonic)


def _tree(pid: int) -> list[int]:
    """A process and all its descendants, from /proc."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for status in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = status.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children[int(fields[1])].append(int(status.parent.name))
    found = []
    pending = [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        pending.extend(children.get(current, []))
    return found


def _kb(path: str, field: str) -> int:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_mb(pid: int) -> float:
    """RSS of a process and all its descendants, from /proc (pages a forked worker still
    shares with its parent count in both)."""
    return sum(_kb(f"/proc/{p}/status", "VmRSS:") for p in _tree(pid)) / 1024


def worker_rss_mb(pid: int) -> float:
    """RSS of the largest single process of the tree (under Granian: the worker)."""
    return max(_kb(f"/proc/{p}/status", "VmRSS:") for p in _tree(pid)) / 1024


def tree_pss_mb(pid: int) -> float:
    """PSS of the tree: each page divided among the processes sharing it, so a page the
    worker shares with its supervisor counts once."""
    return sum(_kb(f"/proc/{p}/smaps_rollup", "Pss:") for p in _tree(pid)) / 1024


def tree_syscalls(pid: int) -> tuple[int, int]:
    """The read and write system calls made so far by a process and its descendants that are
    alive (`syscr`, `syscw` of /proc/<pid>/io: read/readv/pread and write/writev/sendfile; not
    recv/send). For a uvloop worker that is each read of an upstream socket (libuv reads
    streams with read()) and each wake-up of its loop from another thread (an eventfd); Granian
    reads and writes its clients' sockets with recv/send, not counted. For nginx, each write of
    a chunk to a connection."""
    reads = writes = 0
    for p in _tree(pid):
        reads += _kb(f"/proc/{p}/io", "syscr:")
        writes += _kb(f"/proc/{p}/io", "syscw:")
    return reads, writes


def tree_cpu_s(pid: int) -> float:
    """CPU time (user + system, seconds) used so far by a process and its descendants that
    are alive, from /proc: on a shared machine, CPU per request does not depend on how much of
    the core the contender was given, where requests per second does."""
    return sum(tree_cpu_split_s(pid))


def tree_cpu_split_s(pid: int) -> tuple[float, float]:
    """`tree_cpu_s` as (user, system) seconds: the kernel's share (system calls, wakes) apart."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    stats: dict[int, list[str]] = {}
    for status in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = status.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(status.parent.name)] = fields
        children[int(fields[1])].append(int(status.parent.name))
    user = system = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        pending.extend(children.get(current, []))
        own = stats.get(current)
        if own is not None:
            user += int(own[11])  # utime, stime (after the comm field)
            system += int(own[12])
    return user / CLOCK_TICKS, system / CLOCK_TICKS


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _process_cpu(proc: Path) -> tuple[dict[int, int], dict[int, int]]:
    """Each process's CPU ticks so far (user + system, its own and its ended children's) and
    its parent, from `proc`'s stat files; kernel threads (children of kthreadd, pid 2) left
    out."""
    ticks: dict[int, int] = {}
    parents: dict[int, int] = {}
    for status in proc.glob("[0-9]*/stat"):
        try:
            fields = status.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, parent = int(status.parent.name), int(fields[1])
        if pid != 2 and parent != 2:
            ticks[pid], parents[pid] = sum(int(n) for n in fields[11:15]), parent
    return ticks, parents


class OthersWatch:
    """The CPU that programs outside the bench took during a round (`cores`: seconds of CPU per
    second of wall): every process but `bench` (the driver, whose descendants are the contenders,
    the upstream, Redis and wrk) and its descendants. A process started during the round counts
    from zero; one that ended during it is counted in its parent's children's time, which is why
    the sums are compared, not each process. On two cores a sibling's test run on the
    load generator's core moves the Anthropic measure's ratio from ~0.75x to ~1.1x the bare's
    (issue 19zzj), so a round that shared the machine is named in the report."""

    def __init__(
        self,
        bench: int | None = None,
        proc: Path = Path("/proc"),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bench = os.getpid() if bench is None else bench
        self.proc = proc
        self.monotonic = monotonic
        self.cores = 0.0

    def _others(self) -> dict[int, int]:
        ticks, parents = _process_cpu(self.proc)
        children: dict[int, list[int]] = collections.defaultdict(list)
        for pid, parent in parents.items():
            children[parent].append(pid)
        ours, pending = set(), [self.bench]
        while pending:
            current = pending.pop()
            ours.add(current)
            pending.extend(children.get(current, []))
        return {pid: n for pid, n in ticks.items() if pid not in ours}

    def __enter__(self) -> OthersWatch:
        self._start = (self._others(), self.monotonic())
        return self

    def __exit__(self, *exc: object) -> None:
        before, started = self._start
        after = self._others()
        ticks = max(0, sum(after.values()) - sum(before.values()))
        self.cores = ticks / CLOCK_TICKS / max(self.monotonic() - started, 1e-9)


class StealWatch:
    """The time the hypervisor gave each of the machine's cores to someone else during a round
    (`by_core`: the share of the round's wall clock, from /proc/stat's `steal` column; zero on
    bare metal). On this VM a contender's single-answer rounds move by up to ±20 % with the
    machine otherwise still (decision 0012, 19zzzq): a round the host took cores from is named in
    the report, as one that shared the machine with other programs is (OthersWatch)."""

    def __init__(
        self,
        stat: Path = Path("/proc/stat"),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stat = stat
        self.monotonic = monotonic
        self.by_core: dict[str, float] = {}

    def _steal(self) -> dict[str, int]:
        found = {}
        for line in self.stat.read_text().splitlines():
            fields = line.split()
            # cpuN user nice system idle iowait irq softirq steal ...; "cpu" alone is the sum
            if len(fields) > 8 and fields[0].startswith("cpu") and fields[0] != "cpu":
                found[fields[0]] = int(fields[8])
        return found

    def __enter__(self) -> StealWatch:
        self._start = (self._steal(), self.monotonic())
        return self

    def __exit__(self, *exc: object) -> None:
        before, started = self._start
        wall = max(self.monotonic() - started, 1e-9)
        self.by_core = {
            core: max(0, ticks - before.get(core, ticks)) / CLOCK_TICKS / wall
            for core, ticks in self._steal().items()
        }

    def __str__(self) -> str:
        return ", ".join(f"{core} {share:.0%}" for core, share in self.by_core.items())


class SpeedProbe:
    """speed_probe.py on each core for a whole run (one process each, SCHED_IDLE): `between`
    gives each core's median CPU time (µs) for the probe's fixed loop over a stretch of time,
    e.g. a round. On this VM a core reads ~225 or ~350-380 µs for seconds at a time, with no
    steal counted (an idle vCPU goes cold, and more): two rounds whose probes differ ran on
    machines of different speed (report.uneven_rounds)."""

    def __init__(self, directory: Path, cores: Sequence[str] = (SERVER_CORE, CLIENT_CORE)) -> None:
        self.files = {core: directory / f"speed-{core}.txt" for core in cores}
        self._processes: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> SpeedProbe:
        for core, path in self.files.items():
            command = [sys.executable, "-m", "loadtests.bench.speed_probe", str(path)]
            env = {"PYTHONPATH": str(REPO)}
            self._processes.append(pinned(core, command, path.with_suffix(".log"), env))
        return self

    def __exit__(self, *exc: object) -> None:
        for process in self._processes:
            stop(process)

    def between(self, start: float, end: float) -> dict[str, float]:
        """Each core's median µs over the samples taken from `start` to `end` (monotonic
        seconds); a core with no sample then is left out."""
        found = {}
        for core, path in self.files.items():
            samples = probe_samples(path.read_text() if path.exists() else "", start, end)
            if samples:
                found[core] = statistics.median(samples)
        return found


def probe_samples(text: str, start: float, end: float) -> list[float]:
    """The speed probe's samples (µs) taken from `start` to `end` (monotonic seconds)."""
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 2 and start <= int(fields[0]) / 1e9 <= end:
            found.append(int(fields[1]) / 1000)
    return found


_SS_COUNTER = re.compile(r"\b(segs_out|segs_in|data_segs_out):(\d+)")


def parse_ss(text: str) -> dict[str, tuple[int, int, int]]:
    """`ss -tinH`'s connections, by peer address: (segs_out, segs_in, data_segs_out). With
    `-i` each connection's counters follow its address line on lines of their own, indented."""
    found: dict[str, tuple[int, int, int]] = {}
    peer = None
    for line in text.splitlines():
        if line and not line[0].isspace():
            fields = line.split()
            peer = fields[-1] if len(fields) >= 4 else None
            continue
        counters = dict(_SS_COUNTER.findall(line))
        if peer is not None and counters:
            found[peer] = (
                int(counters.get("segs_out", 0)),
                int(counters.get("segs_in", 0)),
                int(counters.get("data_segs_out", 0)),
            )
            peer = None
    return found


def server_segments(port: int) -> dict[str, tuple[int, int, int]]:
    """The TCP segments each established connection of the server listening on `port` has sent
    and received so far (the kernel's per-socket counters, `ss`), by peer address; none without
    iproute2's `ss`."""
    command = ["ss", "-tinH", "state", "established", f"( sport = :{port} )"]
    try:
        found = subprocess.run(command, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return {}
    return parse_ss(found.stdout)


def segments_between(
    before: dict[str, tuple[int, int, int]], after: dict[str, tuple[int, int, int]]
) -> tuple[int, int, int]:
    """Segments sent, received and data segments sent between two `server_segments`: a
    connection opened meanwhile counts from zero; one closed meanwhile is not seen."""
    sums = [0, 0, 0]
    for peer, counts in after.items():
        start = before.get(peer, (0, 0, 0))
        if any(c < s for c, s in zip(counts, start, strict=True)):
            start = (0, 0, 0)  # the peer's port was reused by a new connection
        for i in range(3):
            sums[i] += counts[i] - start[i]
    return sums[0], sums[1], sums[2]


def run_queue_wait_s(pid: int) -> float:
    """How long a process's threads have waited, runnable, for a core so far (seconds; the
    second field of /proc/<pid>/task/<tid>/schedstat): what being queued behind other work on
    its core cost it."""
    waited = 0
    for task in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            waited += int(task.read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return waited / 1e9


def tree_waits(pid: int) -> int:
    """How many times a process's and its descendants' threads have slept so far (their
    voluntary context switches): for an event loop, each time it found nothing to do and
    waited in epoll, to be woken by the next packet, whose sender pays the wake-up."""
    waits = 0
    for p in _tree(pid):
        for task in Path(f"/proc/{p}/task").glob("*/status"):
            waits += _kb(str(task), "voluntary_ctxt_switches:")
    return waits


class PeakRss:
    """Samples a process tree's RSS every 100 ms in a thread (and with `pss`, the largest
    process's RSS and the tree's PSS every second); the peaks after `stop()`."""

    def __init__(self, pid: int, pss: bool = False) -> None:
        self.pid = pid
        self.pss = pss
        self.peak_mb = 0.0
        self.worker_peak_mb = 0.0
        self.peak_pss_mb = 0.0
        self.timeline: list[tuple[float, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        ticks = 0
        started = time.monotonic()
        while not self._stop.wait(0.1):
            rss_mb = tree_rss_mb(self.pid)
            self.peak_mb = max(self.peak_mb, rss_mb)
            ticks += 1
            if self.pss and ticks % 10 == 0:
                self.worker_peak_mb = max(self.worker_peak_mb, worker_rss_mb(self.pid))
                self.peak_pss_mb = max(self.peak_pss_mb, tree_pss_mb(self.pid))
                # (seconds since the start, the tree's RSS, its CPU so far) once a second
                self.timeline.append((time.monotonic() - started, rss_mb, tree_cpu_s(self.pid)))

    def __enter__(self) -> PeakRss:
        self.peak_mb = tree_rss_mb(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def long_streams(spec: dict[str, object]) -> dict[str, Any]:
    """loadtests/bench/long_streams.py on the client core (its spec: see there)."""
    command = ["taskset", "-c", CLIENT_CORE, sys.executable, "-m", "loadtests.bench.long_streams",
               orjson.dumps(spec).decode()]  # fmt: skip
    bound = float(spec.get("until_s", 0)) + float(spec["timeout_s"]) + 60  # type: ignore[arg-type]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(command, capture_output=True, text=True, timeout=bound, check=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result: dict[str, Any] = orjson.loads(out.strip().splitlines()[-1])
    # The client's own CPU (the only child waited for meanwhile): whether it had its core.
    result["client_cpu_s"] = round(
        after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 2
    )
    return result


def callgrind_total(arguments: Sequence[str], options: Sequence[str] = ()) -> int:
    """valgrind's instruction total (callgrind, `options` added) for `python -m *arguments`, run
    from the repository's root with address-space randomisation off, a fixed hash seed and no
    .pyc written (a first run that compiled would count more than the second)."""
    with tempfile.TemporaryDirectory() as scratch:
        command = [
            "setarch", "-R", "valgrind", "--tool=callgrind", *options,
            f"--callgrind-out-file={scratch}/out", sys.executable, "-m", *arguments,
        ]  # fmt: skip
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            check=True,
            env=os.environ | {"PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"},
            cwd=Path(__file__).resolve().parents[2],
        )
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise SystemExit(f"no count from valgrind:\n{done.stderr[-2000:]}")
    return int(found.group(1))
