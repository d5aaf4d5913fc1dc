"""Where redis-server runs, and what its place costs the Redis store: one run, redis moved between
rounds.

    taskset -c 1 .venv/bin/python -m loadtests.bench.redis_placement [--modes normal,realtime,core0]
        [--measures rps,lat,sse,event] [--reps 4] [--seconds 3]

`side_by_side`'s processes (the fake upstream, the gateway on the embedded store and on Redis);
between rounds redis-server's scheduling is changed in place (`taskset -p`, `chrt -p` on its
threads): `normal`, core 1 at normal priority (as `make bench` ran it before issue 19zd: queued
behind wrk and nginx for its turn on the core), `realtime`, core 1 at SCHED_FIFO (run as soon as a
command arrives: the latency of a core of its own), `core0`, the worker's core. Each round measures
the embedded gateway and the Redis one in every mode, back to back, the order reversed every other
round. Per round: throughput, the worker's CPU per request, redis-server's CPU and its wait for its
core per request and per time slice (/proc schedstat), and the admission's time from sending to
its reply as the worker saw it (its `admit` histogram: the share within 0.5 and 1 ms). Medians,
and Redis ÷ embedded per round. Needs root (chrt). Every run is bounded (wrk -d, timeouts).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from loadtests.bench import side_by_side as s
from loadtests.bench.measure import run_queue_wait_s, tree_cpu_s, wrk, wrk_script

MODES = ("normal", "realtime", "core0")


def place(pid: int, mode: str) -> None:
    """redis-server's threads to `mode`'s core and scheduling policy."""
    core = "0" if mode == "core0" else "1"
    policy = ["-f", "-p", "1"] if mode == "realtime" else ["-o", "-p", "0"]
    for command in (["taskset", "-a", "-p", "-c", core], ["chrt", "-a", *policy]):
        subprocess.run([*command, str(pid)], check=True, capture_output=True, timeout=10)


def slices(pid: int) -> int:
    return sum(
        int(task.read_text().split()[2]) for task in Path(f"/proc/{pid}/task").glob("*/schedstat")
    )


def admit_buckets(base_url: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in httpx.get(f"{base_url}/metrics", timeout=10).text.splitlines():
        if line.startswith("klawd_store_operation_duration_seconds_bucket") and (
            'operation="admit"' in line
        ):
            le = line.split('le="')[1].split('"')[0]
            out[le] = out.get(le, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def one(contender: s.Contender, scenario: str, script: Path, connections: int, seconds: float,
        redis_pid: int | None) -> dict[str, float]:  # fmt: skip
    buckets0 = admit_buckets(contender.base_url) if redis_pid else {}
    cpu0, wait0 = tree_cpu_s(contender.pid), run_queue_wait_s(redis_pid) if redis_pid else 0.0
    redis0 = (tree_cpu_s(redis_pid), slices(redis_pid)) if redis_pid else (0.0, 0)
    result = wrk(contender.base_url + contender.path(scenario), script, connections, seconds)
    done = max(1.0, result.requests_per_s * max(1, round(seconds)))
    row = {"requests_per_s": result.requests_per_s, "latency_p50_ms": result.p50_ms,
           "worker_cpu_us": (tree_cpu_s(contender.pid) - cpu0) * 1e6 / done}  # fmt: skip
    if redis_pid:
        waited = run_queue_wait_s(redis_pid) - wait0
        sliced = slices(redis_pid) - redis0[1]
        row["redis_cpu_us"] = (tree_cpu_s(redis_pid) - redis0[0]) * 1e6 / done
        row["redis_wait_us per request"] = waited * 1e6 / done
        row["redis_wait_us per slice"] = waited * 1e6 / max(1, sliced)
        time.sleep(1.1)  # the worker's metrics flushed
        buckets = admit_buckets(contender.base_url)
        sent = max(1.0, buckets.get("+Inf", 0.0) - buckets0.get("+Inf", 0.0))
        for le, label in (("0.0005", "0.5"), ("0.001", "1")):
            within = buckets.get(le, 0.0) - buckets0.get(le, 0.0)
            row[f"admissions within {label} ms"] = within / sent
    return row


Figures = dict[tuple[str, str], dict[str, list[float]]]  # (measure, mode) -> figure -> rounds


def run(args: argparse.Namespace, directory: Path) -> Figures:
    figures: Figures = {}
    names = ["upstream", "gateway-sqlite", "gateway-redis"]
    with s.started(directory, names, redis_realtime=False) as found:
        redis_pid = found["gateway-redis"].store_pid
        assert redis_pid is not None
        try:
            for measure in args.measures:
                scenario, connections = s.WRK_MEASURES[measure]
                scripts = {}
                for name in names[1:]:
                    contender = found[name]
                    headers = contender.headers | {"Content-Type": "application/json"}
                    path = directory / f"{name}-{scenario}.lua"
                    scripts[name] = wrk_script(path, contender.body(scenario), headers)
                    url = contender.base_url + contender.path(scenario)
                    wrk(url, scripts[name], connections, 1)  # warm-up
                for rep in range(args.reps):
                    order = ["embedded", *args.modes]
                    for mode in order if rep % 2 == 0 else order[::-1]:
                        name = "gateway-sqlite" if mode == "embedded" else "gateway-redis"
                        if mode != "embedded":
                            place(redis_pid, mode)
                        time.sleep(0.3)
                        store = redis_pid if mode != "embedded" else None
                        row = one(found[name], scenario, scripts[name], connections,
                                  args.seconds, store)  # fmt: skip
                        shown = ", ".join(f"{k} {v:.3f}" for k, v in row.items())
                        print(f"  {measure} round {rep + 1} {mode}: {shown}", flush=True)
                        per = figures.setdefault((measure, mode), {})
                        for key, value in row.items():
                            per.setdefault(key, []).append(value)
        finally:
            place(redis_pid, "normal")
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", type=lambda t: t.split(","), default=list(MODES))
    parser.add_argument("--measures", type=lambda t: t.split(","), default=["rps", "event"])
    parser.add_argument("--reps", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    if not set(args.modes) <= set(MODES) or not set(args.measures) <= set(s.WRK_MEASURES):
        parser.error(f"--modes among {','.join(MODES)}; --measures among side_by_side's")
    if not (1 <= args.seconds <= 30 and 1 <= args.reps <= 10):
        parser.error("bounds: --seconds 1..30, --reps 1..10")
    with tempfile.TemporaryDirectory(prefix="klawd-placement-") as tmp:
        figures = run(args, Path(tmp))
    for measure in args.measures:
        modes = ["embedded", *args.modes]
        print(f"\n{measure} (medians of {args.reps} rounds)")
        print(f"  {'':32s}" + "".join(f"{m:>12s}" for m in modes))
        for key in dict.fromkeys(k for m in modes for k in figures[(measure, m)]):
            cells = [figures[(measure, m)].get(key) for m in modes]
            shown = [f"{statistics.median(c):12.3f}" if c else f"{'—':>12s}" for c in cells]
            print(f"  {key:32s}" + "".join(shown))
        base = figures[(measure, "embedded")]["requests_per_s"]
        for mode in args.modes:
            mine = figures[(measure, mode)]["requests_per_s"]
            ratios = [a / b for a, b in zip(mine, base, strict=True)]
            each = ", ".join(f"{r:.2f}" for r in ratios)
            median = statistics.median(ratios)
            print(f"  Redis ({mode}) ÷ embedded, throughput per round: {each}; median {median:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
