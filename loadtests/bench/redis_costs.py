"""What one request costs the Redis store, counted per request: not a ratio, an inventory.

    .venv/bin/python -m loadtests.bench.redis_costs [--measures rps,event,lines,lines20]
        [--seconds 3] [--reps 3] [--redis-core 0] [--before DIR] [--this DIR] [--tpm N]

One gateway worker on Redis (pinned to core 0, as `make bench` runs it), the fake upstream (nginx)
and wrk on core 1, redis-server on `--redis-core` (0 as in `make bench` since issue 19zzzze:
the worker's core, as the embedded store's SQLite work; 1: the load generator's, as before).
For each measure and round, from the counters before and after one wrk run: Redis commands
per request (`INFO commandstats`: the FCALLs and the commands they run inside, plus anything
else a request sends), Redis's own time per request
(`usec` of those commands), the server's reads and writes per request (`INFO stats`: how
many commands arrive together), redis-server's CPU per request from /proc (user + system: what the
commands, the event loop and the replies cost its core), the gateway worker's CPU per request,
how busy the worker was (CPU seconds ÷ wall seconds: below 1 it waited), how busy each core
was (/proc/stat), the latency p50 and the RSS of the gateway's process tree after the run, and
the admission's mean time from sending to its reply as the worker measured it (its `admit`
store-duration histogram, read from /metrics: what a request waits for Redis under that load),
with the share of admissions answered within 0.5 ms and 1 ms (its buckets), and redis-server's
wait for its core per request (schedstat: runnable, queued behind other work on its core).
`--redis-priority realtime` (the default as root) runs redis-server at SCHED_FIFO on its core,
as on a core of its own; `normal` queues it behind wrk and the upstream (before issue 19zd).
Figures are medians over rounds. `--before DIR` (DIR holds another version's `gateway` package
with its built `_core`): that version too, with its own redis-server, the two taking turns round
by round, for a before/after in one run. `--tpm N`: the bench account's plan has a token limit
of N a minute (make it large: 10**12), so every answer's tokens are charged to it as well
(`klawd_charge_tokens_v*`, one more FCALL a request): the token charge's cost beside the
others, against a run without it. Every run is bounded (wrk -d, timeouts).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson

from loadtests.bench import contenders as c
from loadtests.bench.measure import (
    CLOCK_TICKS,
    run_queue_wait_s,
    tree_cpu_s,
    tree_rss_mb,
    wrk,
    wrk_script,
)

SCENARIOS = {
    "rps": ("json", 64),
    "lat": ("json", 1),  # one connection: what a request waits for, round trips included
    "sse": ("sse", 64),
    "event": ("event", 64),
    "lines": ("lines", 64),  # each line its own chunk, as make bench's per-line measure
    "lines20": ("lines20", 256),
}
MESSAGES = [{"role": "user", "content": "Say hello to the benchmark."}]


def redis_cli(port: int, *args: str) -> str:
    done = subprocess.run(
        ["redis-cli", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    return done.stdout


def commandstats(port: int) -> dict[str, tuple[int, int]]:
    """command -> (calls, usec) since the last reset."""
    out: dict[str, tuple[int, int]] = {}
    for line in redis_cli(port, "INFO", "commandstats").splitlines():
        if not line.startswith("cmdstat_"):
            continue
        name, _, rest = line.partition(":")
        fields = dict(part.split("=", 1) for part in rest.split(","))
        out[name.removeprefix("cmdstat_")] = (int(fields["calls"]), int(fields["usec"]))
    return out


def process_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def core_busy() -> dict[str, tuple[int, int]]:
    """cpuN -> (busy ticks, all ticks) from /proc/stat."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name != "cpu":
            ticks = [int(v) for v in values]
            idle = ticks[3] + ticks[4]  # idle + iowait
            out[name] = (sum(ticks) - idle, sum(ticks))
    return out


@dataclass
class Variant:
    name: str
    base_url: str
    pid: int
    redis_port: int
    headers: dict[str, str]
    redis_pid: int = 0


@contextlib.contextmanager
def started(
    directory: Path,
    redis_core: str,
    before: Path | None,
    this: Path | None = None,
    realtime: bool = False,
    tpm: int | None = None,
) -> Iterator[list[Variant]]:
    """One gateway on Redis, with its own redis-server (and with `before`, a second one running
    that checkout's `gateway` package; `this`: another checkout's instead of this one's);
    everything stopped on the way out."""
    processes: list[subprocess.Popen[bytes]] = []
    try:
        up_port = c.free_port()
        processes.append(c.nginx(c.upstream_conf(directory, up_port), directory, "upstream",
                                 c.CLIENT_CORE))  # fmt: skip
        upstream = f"http://127.0.0.1:{up_port}"
        variants = []
        for name, source in (("before", before), ("this tree", this)):
            if name == "before" and source is None:
                continue
            redis_port, port = c.free_port(), c.free_port()
            processes.append(c.redis_server(redis_port, directory, redis_core, realtime))
            store = f"redis://127.0.0.1:{redis_port}/0"
            tag = "gateway-redis" + ("-before" if name == "before" else "")
            gateway = c.gateway(tag, port, upstream, store, directory, source=source, tpm=tpm)
            processes.append(gateway)
            base = f"http://127.0.0.1:{port}"
            c.wait_for(_ready(base), name)
            headers = {"authorization": f"Bearer {c.gateway_key(base)}"}
            variant = Variant(name, base, gateway.pid, redis_port, headers)
            variant.redis_pid = redis_pid(redis_port)
            variants.append(variant)
        yield variants
    finally:
        for process in reversed(processes):
            c.stop(process)


def _ready(base_url: str) -> Callable[[], bool]:
    return lambda: httpx.get(f"{base_url}/readyz").status_code == 200


def redis_pid(port: int) -> int:
    return int(redis_cli(port, "INFO", "server").split("process_id:")[1].split()[0])


ADMIT = 'operation="admit"'


def admit_seconds(base_url: str) -> tuple[float, float, float, float]:
    """(sum, count, count within 0.5 ms, count within 1 ms) of the worker's `admit`
    store-duration histogram so far."""
    total = count = half = one = 0.0
    for line in httpx.get(f"{base_url}/metrics", timeout=10).text.splitlines():
        if line.startswith("klawd_store_operation_duration_seconds_") and ADMIT in line:
            value = float(line.rsplit(" ", 1)[1])
            if line.startswith("klawd_store_operation_duration_seconds_sum"):
                total += value
            elif line.startswith("klawd_store_operation_duration_seconds_count"):
                count += value
            elif 'le="0.0005"' in line:
                half += value
            elif 'le="0.001"' in line:
                one += value
    return total, count, half, one


def one_round(variant: Variant, url: str, script: Path, connections: int, seconds: float
              ) -> dict[str, float]:  # fmt: skip
    port = variant.redis_port
    time.sleep(1.1)  # the last settle batch of the previous run; metrics flushed (within 1 s)
    admit0 = admit_seconds(variant.base_url)
    redis_cli(port, "CONFIG", "RESETSTAT")
    worker0, server0 = tree_cpu_s(variant.pid), process_cpu_s(variant.redis_pid)
    waited0 = run_queue_wait_s(variant.redis_pid)
    cores0 = core_busy()
    wall0 = time.monotonic()
    result = wrk(url, script, connections, seconds)
    wall = time.monotonic() - wall0
    time.sleep(0.1)  # the requests' settle batch
    worker = tree_cpu_s(variant.pid) - worker0
    server = process_cpu_s(variant.redis_pid) - server0
    waited = run_queue_wait_s(variant.redis_pid) - waited0
    cores = core_busy()
    time.sleep(1.1)  # the worker's metrics flushed (within a second)
    admit = [after - before for after, before in zip(admit_seconds(variant.base_url), admit0,
                                                       strict=True)]  # fmt: skip
    done = max(1.0, result.requests_per_s * max(1, round(seconds)))
    sample = {
        "requests_per_s": result.requests_per_s,
        "latency_p50_ms": result.p50_ms,
        "worker_cpu_us": worker * 1e6 / done,
        "redis_cpu_us": server * 1e6 / done,
        "worker_busy": worker / wall,
        "admission_ms (send to reply, mean)": admit[0] * 1e3 / max(1.0, admit[1]),
        "admissions answered within 0.5 ms": admit[2] / max(1.0, admit[1]),
        "admissions answered within 1 ms": admit[3] / max(1.0, admit[1]),
        "redis-server's wait for its core, us": waited * 1e6 / done,
        # the gateway's process tree (supervisor and worker) after the run
        "tree_rss_mb": tree_rss_mb(variant.pid),
    }
    for core, (busy, total) in cores.items():
        busy0, total0 = cores0[core]
        sample[f"{core}_busy"] = (busy - busy0) / max(1, total - total0)
    stats = redis_cli(port, "INFO", "stats")
    for counter in ("total_reads_processed", "total_writes_processed"):
        value = int(stats.split(f"{counter}:")[1].split()[0])
        sample[f"redis {counter.split('_')[1]} per request"] = value / done
    for command, (calls, usec) in commandstats(port).items():
        if command in ("config|resetstat", "info", "ping", "hello"):
            continue
        sample[f"calls {command}"] = calls / done
        sample[f"usec {command}"] = usec / done
    print(f"  {variant.name}: {result}; worker {sample['worker_cpu_us']:.0f} us/request, "
          f"busy {sample['worker_busy']:.2f}", flush=True)  # fmt: skip
    return sample


Figures = dict[str, dict[str, dict[str, float]]]  # measure -> variant -> figure -> median


def measure(args: argparse.Namespace, directory: Path) -> Figures:
    results: dict[str, dict[str, dict[str, list[float]]]] = {}
    realtime = args.redis_priority == "realtime"
    with started(
        directory, args.redis_core, args.before, args.this, realtime, args.tpm
    ) as variants:
        for name in args.measures:
            scenario, connections = SCENARIOS[name]
            payload: dict[str, object] = {
                "model": c.gateway_model(scenario), "messages": MESSAGES, "max_tokens": 64,
            }  # fmt: skip
            if scenario != "json":
                payload["stream"] = True
            per: dict[str, dict[str, list[float]]] = {v.name: {} for v in variants}
            scripts = {}
            for variant in variants:
                scripts[variant.name] = wrk_script(
                    directory / f"{scenario}-{len(scripts)}.lua",
                    orjson.dumps(payload),
                    variant.headers | {"Content-Type": "application/json"},
                )
                wrk(
                    f"{variant.base_url}/v1/chat/completions", scripts[variant.name], connections, 1
                )  # fmt: skip  (warm-up)
            for rep in range(args.reps):  # the variants take turns, ABBA: neither always first
                for variant in variants if rep % 2 == 0 else variants[::-1]:
                    url = f"{variant.base_url}/v1/chat/completions"
                    sample = one_round(variant, url, scripts[variant.name], connections,
                                       args.seconds)  # fmt: skip
                    for key, value in sample.items():
                        per[variant.name].setdefault(key, []).append(value)
            results[name] = per
    return {
        m: {v: {k: statistics.median(x) for k, x in figures.items()} for v, figures in per.items()}
        for m, per in results.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--redis-core", choices=("0", "1"), default=c.SERVER_CORE)
    c.add_redis_priority(parser)
    parser.add_argument(
        "--before", type=Path, help="also a gateway running this checkout's `gateway` package"
    )
    parser.add_argument(
        "--this", type=Path, help="run this checkout's `gateway` package as 'this tree'"
    )
    parser.add_argument(
        "--measures", type=lambda text: text.split(","), default=["rps", "event", "lines20"]
    )
    parser.add_argument("--tpm", type=int, help="the bench plan's tokens_per_minute")
    args = parser.parse_args()
    if not set(args.measures) <= set(SCENARIOS):
        parser.error(f"--measures: choose among {','.join(SCENARIOS)}")
    if not (1 <= args.seconds <= 60 and 1 <= args.reps <= 10):
        parser.error("bounds: --seconds 1..60, --reps 1..10")
    with tempfile.TemporaryDirectory(prefix="klawd-redis-costs-") as tmp:
        results = measure(args, Path(tmp))
    for name, per in results.items():
        names = list(per)
        print(f"\n{name} (redis-server on core {args.redis_core}, {args.redis_priority} priority; "
              f"medians of {args.reps} rounds)")  # fmt: skip
        print(f"  {'':40s}" + "".join(f"{v:>14s}" for v in names))
        keys = sorted({k for figures in per.values() for k in figures},
                      key=lambda k: (k.startswith(("calls", "usec")), k))  # fmt: skip
        for key in keys:
            print(f"  {key:40s}" + "".join(f"{per[v].get(key, 0.0):14.3f}" for v in names))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
