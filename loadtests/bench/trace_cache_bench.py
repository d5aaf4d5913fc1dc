"""`make bench`, issue 18: what traces cost per request, and how fast a cache hit is served.

    .venv/bin/python -m loadtests.bench.trace_cache_bench [--seconds 5] [--reps 3] [--write-docs]

Contenders, each one Granian worker pinned to core 0 and started up front, over the same fake
upstream (nginx's fixed chat.completion, core 1, as side_by_side.py):
- floor: the stack's pass-through (Granian + uvloop + one aiohttp session, no gateway logic);
- gateway: the gateway on SQLite, traces off (the default);
- traced: the same with `[telemetry]` on at sample_ratio 1.0, every span exported over
  OTLP/HTTP to a sink (nginx answering 200 on /v1/traces, core 1) by the worker's exporter child
  (gateway/tracing/pipe.py), which inherits the worker's core: all the tracing CPU on one core;
- traced-split: the same, its exporter child moved to core 1 once started (as on a host where
  workers are not pinned): what the gateway's own process pays per request;
- cached: the same as gateway with `[cache] enabled`, every request `x-klawd-cache: on` and
  temperature 0: after the first, every request is a hit that never reaches the upstream.
Each round measures every contender once (wrk, 64 connections, non-streamed; each round in an
order turned by one), so the shared machine's noise hits them alike; ratios are medians of
per-round ratios. Latency at one connection (p50) for gateway and traced. `--write-docs`
replaces this bench's section of docs/benchmarks.md (other sections are kept).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson

from loadtests.bench import contenders as c
from loadtests.bench import report
from loadtests.bench.measure import wrk, wrk_script

NAMES = ["floor", "gateway", "traced", "traced-split", "cached"]
START, END = "<!-- trace-cache:start -->", "<!-- trace-cache:end -->"
MESSAGES = [{"role": "user", "content": "Say hello to the benchmark."}]


@dataclass
class Contender:
    name: str
    url: str
    body: bytes
    headers: dict[str, str]
    pid: int = 0  # the gateway's `klawd serve` (0: the floor, not measured for CPU)


def sink_conf(directory: Path, port: int) -> str:
    """An OTLP/HTTP sink: 200 to every export, the body read and dropped."""
    return f"""
worker_processes 1;
daemon off;
pid {directory}/sink.pid;
error_log {directory}/sink-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {directory}/sink-body;
    client_max_body_size 64m;
    server {{
        listen 127.0.0.1:{port};
        location = /v1/traces {{ return 200; }}
    }}
}}
"""


def gateway(
    name: str, extra: str, upstream: str, directory: Path, keep: list[subprocess.Popen[bytes]]
) -> str:
    port = c.free_port()
    config = directory / f"{name}.toml"
    store = f"sqlite:///{directory / (name + '.db')}"
    config.write_text(c.gateway_conf(port, upstream, store) + extra)
    keep.append(
        c.pinned(
            c.SERVER_CORE,
            [str(c.BIN / "klawd"), "serve", "--config", str(config)],
            directory / f"{name}.log",
            {"KLAWD_ADMIN_TOKEN": c.ADMIN_TOKEN, "BENCH_UPSTREAM_KEY": "sk-bench-upstream"},
        )
    )
    base = f"http://127.0.0.1:{port}"
    c.wait_for(lambda: httpx.get(f"{base}/readyz").status_code == 200, name)
    return base


@contextlib.contextmanager
def started(directory: Path) -> Iterator[dict[str, Contender]]:
    processes: list[subprocess.Popen[bytes]] = []
    try:
        up_port, sink_port, floor_port = c.free_port(), c.free_port(), c.free_port()
        upstream = f"http://127.0.0.1:{up_port}"
        processes.append(c.nginx(c.upstream_conf(directory, up_port), directory, "upstream",
                                 c.CLIENT_CORE))  # fmt: skip
        processes.append(c.nginx(sink_conf(directory, sink_port), directory, "sink", c.CLIENT_CORE))
        processes.append(c.floor(floor_port, upstream, directory))
        plain = {"model": c.gateway_model("json"), "messages": MESSAGES, "max_tokens": 64}
        cacheable = orjson.dumps(plain | {"temperature": 0})
        telemetry = f'\n[telemetry]\notlp_endpoint = "http://127.0.0.1:{sink_port}"\n'
        found = {
            "floor": Contender(
                "floor", f"http://127.0.0.1:{floor_port}/json/v1/chat/completions",
                orjson.dumps(plain), {},
            ),
        }  # fmt: skip
        for name, extra, body, asked in (
            ("gateway", "", orjson.dumps(plain), {}),
            ("traced", telemetry + "sample_ratio = 1.0\n", orjson.dumps(plain), {}),
            ("traced-split", telemetry + "sample_ratio = 1.0\n", orjson.dumps(plain), {}),
            ("cached", "\n[cache]\nenabled = true\n", cacheable, {"x-klawd-cache": "on"}),
        ):
            base = gateway(name, extra, upstream, directory, processes)
            if name == "traced-split":
                children = exporter_children(processes[-1].pid)
                if not children:  # e.g. a build that exports from the worker's own threads
                    print("  traced-split: no exporter child to move", flush=True)
                for pid in children:
                    os.sched_setaffinity(pid, {int(c.CLIENT_CORE)})
            key = {"authorization": f"Bearer {c.gateway_key(base)}"}
            found[name] = Contender(
                name, f"{base}/v1/chat/completions", body, key | asked, processes[-1].pid
            )
        for contender in found.values():
            c.wait_for(lambda x=contender: _answers(x), contender.name)  # type: ignore[misc]
        yield found
    finally:
        for process in reversed(processes):
            c.stop(process)


@dataclass
class Proc:
    parent: int
    command: bytes
    cpu_s: float  # user + system


def processes_under(root: int) -> dict[int, Proc]:
    """Every process under `root` (root included), from /proc."""
    table: dict[int, Proc] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                table[int(entry.name)] = Proc(
                    int(fields[1]),
                    (entry / "cmdline").read_bytes(),
                    (int(fields[11]) + int(fields[12])) / tick,
                )
    found = {}
    for pid, proc in table.items():
        ancestor = pid
        for _ in range(8):  # bounded: klawd, the Granian worker, the exporter child
            if ancestor in (root, 0) or ancestor not in table:
                break
            ancestor = table[ancestor].parent
        if ancestor == root:
            found[pid] = proc
    return found


def is_exporter(proc: Proc) -> bool:
    return b"gateway.tracing.exporter_child" in proc.command


def cpu_s(root: int) -> tuple[float, float]:
    """CPU seconds so far of the gateway's own processes, and of its exporter children."""
    procs = processes_under(root).values()
    child = sum(p.cpu_s for p in procs if is_exporter(p))
    return sum(p.cpu_s for p in procs) - child, child


def exporter_children(root: int) -> list[int]:
    """The span exporter children (gateway/tracing/exporter_child.py) under process `root`."""
    return [pid for pid, proc in processes_under(root).items() if is_exporter(proc)]


def _answers(contender: Contender) -> bool:
    response = httpx.post(
        contender.url,
        content=contender.body,
        headers=contender.headers | {"content-type": "application/json"},
        timeout=5,
    )
    return response.status_code == 200 and b"chat.completion" in response.content


Samples = dict[str, dict[str, list[float]]]


def run(args: argparse.Namespace, directory: Path) -> Samples:
    samples: Samples = {name: {} for name in NAMES}
    samples["machine"] = {"load": [os.getloadavg()[0]]}
    with started(directory) as found:
        scripts = {
            name: wrk_script(directory / f"{name}.lua", x.body,
                             x.headers | {"Content-Type": "application/json"})
            for name, x in found.items()
        }  # fmt: skip
        for name, x in found.items():  # warm-up (and the cached contender's first miss)
            wrk(x.url, scripts[name], 64, 1)
        for rnd in range(args.reps):
            # each round starts one contender further: no contender always follows the same one
            order = list(found.items())
            order = order[rnd % len(order) :] + order[: rnd % len(order)]
            for name, x in order:
                before = cpu_s(x.pid) if x.pid else (0.0, 0.0)
                result = wrk(x.url, scripts[name], 64, args.seconds)
                print(f"  rps round {rnd + 1} {name}: {result}", flush=True)
                if result.bad_responses:
                    raise RuntimeError(f"{name}: {result.bad_responses} bad responses")
                samples[name].setdefault("rps", []).append(result.requests_per_s)
                if x.pid:  # CPU per request, whatever share of the core the machine left us
                    after, served = cpu_s(x.pid), result.requests_per_s * args.seconds
                    for key, index in (("cpu_us", 0), ("child_us", 1)):
                        used = (after[index] - before[index]) / served * 1e6
                        samples[name].setdefault(key, []).append(used)
            for name in ("gateway", "traced"):
                x = found[name]
                result = wrk(x.url, scripts[name], 1, args.seconds)
                print(f"  lat round {rnd + 1} {name}: {result}", flush=True)
                samples[name].setdefault("p50_ms", []).append(result.p50_ms)
    samples["machine"]["load"].append(os.getloadavg()[0])
    return samples


def ratio(samples: Samples, name: str, ref: str) -> float:
    return statistics.median(
        a / b for a, b in zip(samples[name]["rps"], samples[ref]["rps"], strict=True)
    )


def section(samples: Samples, args: argparse.Namespace) -> str:
    rps = {name: statistics.median(samples[name]["rps"]) for name in NAMES}
    traced = ratio(samples, "traced", "gateway")
    split = ratio(samples, "traced-split", "gateway")
    split_us = (1 / rps["traced-split"] - 1 / rps["gateway"]) * 1e6
    # one worker saturated on one core: the time per request is the inverse of throughput
    cost_us = (1 / rps["traced"] - 1 / rps["gateway"]) * 1e6
    p50 = {n: statistics.median(samples[n]["p50_ms"]) for n in ("gateway", "traced")}
    cpu = {n: statistics.median(samples[n]["cpu_us"]) for n in NAMES if n != "floor"}
    child = {n: statistics.median(samples[n]["child_us"]) for n in NAMES if n != "floor"}
    hit = ratio(samples, "cached", "floor")
    rows = "\n".join(f"| {n} | {rps[n]:,.0f} | {ratio(samples, n, 'floor'):.2f}x |" for n in NAMES)
    verdict = "met" if traced >= 0.9 else "NOT met"
    split_verdict = "met" if split >= 0.9 else "NOT met"
    load = ", ".join(f"{x:.1f}" for x in samples["machine"]["load"])
    return f"""{START}
## Traces and the response cache (issue 18)

`make bench` (loadtests/bench/trace_cache_bench.py), {args.reps} rounds of {args.seconds:g} s,
non-streamed chat at 64 connections, one Granian worker pinned to one core, the fake upstream,
wrk and the OTLP sink on the other core; {report.cpu_model()}; load average at the start and the
end of the run: {load} (2 cores, shared with other work: absolute figures are low and noisy, the
per-round ratios are what to read).

| contender | requests/s (median) | vs the floor |
| --- | --- | --- |
{rows}

- **Traces on at sample ratio 1.0** (a server span and a client span per request, each exported
  over OTLP/HTTP by the worker's exporter child on the same core): {traced:.2f}x the throughput
  of traces off, i.e. **{cost_us:+.0f} µs of CPU per request** ({(1 - traced) * 100:.1f} % of
  the request's cost; the 10 % target is {verdict}). Latency at one connection, p50:
  {p50["gateway"]:.2f} ms off, {p50["traced"]:.2f} ms on.
- **The same with the exporter child on the other core** (traced-split: the gateway's own
  process pays the SDK's span bookkeeping and the rows down the pipe; the encoding and the
  posts are the child's): {split:.2f}x, i.e. **{split_us:+.0f} µs per request** in the
  gateway's process (the 10 % target is {split_verdict}).
- **CPU per request** (the gateway's processes' user + system time over the requests served,
  per round, median; it does not depend on the share of the core the machine leaves):
  {cpu["gateway"]:.0f} µs traces off; traces on {cpu["traced"]:.0f} µs in the gateway's process
  and {child["traced"]:.0f} µs in the exporter child (traced), {cpu["traced-split"]:.0f} µs and
  {child["traced-split"]:.0f} µs (traced-split): the gateway's process pays
  **{cpu["traced-split"] - cpu["gateway"]:+.0f} µs** per request for its spans
  ({cpu["traced-split"] / cpu["gateway"] - 1:+.0%} of its CPU per request), the child
  {child["traced-split"]:.0f} µs more.
- **Cache hits** (`x-klawd-cache: on`, every request a hit: auth, admission, the entry from
  the process's 5 s memory of it (one store read before), a ledger entry at no cost, the stored
  answer): **{hit:.2f}x the floor's throughput** (the floor proxies to the upstream; a hit never
  reaches it).
- Where a traced request's CPU goes: `.venv/bin/python -m loadtests.bench.span_cost` (the SDK's
  span work on the request path, the rows for the exporter child, and the official exporter's
  protobuf encoding the child does, per request of two spans).
- Traces off cost nothing measurable by construction: the SDK is never imported and each seam
  is one `is None` test (docs/decisions/0019-cache-and-traces.md).
{END}"""


def write_docs(text: str) -> None:
    current = report.DOCS.read_text()
    if START in current and END in current:
        head, rest = current.split(START, 1)
        _, tail = rest.split(END, 1)
        report.DOCS.write_text(head + text + tail)
    else:
        report.DOCS.write_text(current.rstrip("\n") + "\n\n" + text + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    if not (1 <= args.seconds <= 60 and 1 <= args.reps <= 10):
        parser.error("bounds: --seconds 1..60, --reps 1..10")
    with tempfile.TemporaryDirectory(prefix="klawd-bench-tc-") as tmp:
        samples = run(args, Path(tmp))
    text = section(samples, args)
    print(text)
    if args.write_docs:
        write_docs(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
