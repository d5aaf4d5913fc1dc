"""The gateway process's own share of tracing: a whole non-streamed chat request with traces off
and with traces on at sample ratio 1.0, in process, counted in instructions (repeatable whatever
the machine's load) and in CPU time.

    .venv/bin/python -m loadtests.bench.trace_share [--requests 2000] [--reps 3]

The app is driven directly as request_cost drives it (no server: Granian's share is the same
with and without traces, so leaving it out makes the share read here larger, never smaller),
with the bench's OpenAI-shaped model in front of nginx on loopback, embedded store, every
feature on. Traced, the spans go to the exporter child process (gateway/tracing/pipe.py) and on
to an OTLP/HTTP sink (nginx answering 200); the child's own CPU is not counted here
(loadtests/bench/span_cost.py and trace_cache_bench.py measure it): this is what tracing costs
the worker that serves requests, the question the 10 % target asks of a host whose exporter
child runs on a spare core.

Instructions: valgrind's callgrind counts each run of the worker's process (the exporter child
is exec'd, so valgrind does not follow it) with `--requests` and with twice as many requests;
the difference divided by `--requests` is one request's, start-up excluded. Work done on a
timer rather than per request (the ledger's 20 ms batches, the request log's 50 ms flushes, the
span pipe's schedule) is counted per run's length, and valgrind makes a run ~50 times longer, so
the slower configuration (traced) is charged more timer ticks per request than it would be at
full speed: the instruction figure overstates tracing's share by that much. CPU: the same
process without valgrind, `--reps` rounds of `--requests` requests, traced and untraced
alternating, median of the rounds (`time.process_time`: every thread of the process).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import uvloop

from loadtests.bench import contenders as c

HERE = Path(__file__).resolve().parents[2]
CONCURRENCY = 16


async def serve(config: Path, requests: int, rounds: int) -> list[float]:
    """CPU µs per request of `rounds` rounds of `requests` requests, after a warm-up."""
    from loadtests.bench.metering_bench import ADMIN
    from loadtests.bench.request_cost import BODY, ConfiguredHarness

    harness = ConfiguredHarness(config)
    await harness.start()
    admin = {"authorization": f"Bearer {ADMIN}", "content-type": "application/json"}
    account = b'{"name":"bench","plan":"bench"}'
    _, body = await harness.request("POST", "/admin/accounts", account, admin)
    path = f"/admin/accounts/{orjson.loads(body)['id']}/keys"
    _, body = await harness.request("POST", path, b"{}", admin)
    headers = {"authorization": f"Bearer {orjson.loads(body)['key']}"}
    headers["content-type"] = "application/json"

    async def client(count: int) -> None:
        for _ in range(count):
            status, answer = await harness.request("POST", "/v1/chat/completions", BODY, headers)
            if status != 200:
                raise RuntimeError(f"{status}: {answer[:200]!r}")

    await asyncio.gather(*(client(256 // CONCURRENCY) for _ in range(CONCURRENCY)))  # warm-up
    per_request = []
    for _ in range(rounds):
        started = time.process_time()
        await asyncio.gather(*(client(requests // CONCURRENCY) for _ in range(CONCURRENCY)))
        await asyncio.sleep(0.05)  # the ledger's and the span pipe's batches of the last ones
        per_request.append((time.process_time() - started) * 1e6 / requests)
    await harness.stop()
    return per_request


def configs(directory: Path, upstream_port: int, sink_port: int) -> dict[str, Path]:
    text = c.gateway_conf(8080, f"http://127.0.0.1:{upstream_port}", "")
    found = {}
    for name, extra in (
        ("off", ""),
        ("traced", f'\n[telemetry]\notlp_endpoint = "http://127.0.0.1:{sink_port}"\n'
                   "sample_ratio = 1.0\n"),
    ):  # fmt: skip
        path = directory / f"{name}.toml"
        store = f'url = "sqlite:///{directory / name}.db"'
        path.write_text(text.replace('url = ""', store) + extra)
        found[name] = path
    return found


def run(config: Path, requests: int, rounds: int, valgrind: bool) -> tuple[list[float], int]:
    """One process serving `rounds` rounds of `requests`: its CPU per request (and, under
    valgrind, its instruction count)."""
    command = [sys.executable, "-m", "loadtests.bench.trace_share", "--inner", str(config),
               "--requests", str(requests), "--reps", str(rounds)]  # fmt: skip
    if valgrind:
        command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *command]
    env = os.environ | {"PYTHONHASHSEED": "0", "PROMETHEUS_MULTIPROC_DIR": str(config.parent)}
    result = subprocess.run(
        command, capture_output=True, text=True, check=True, timeout=1800, cwd=HERE, env=env
    )
    counted = re.search(r"Collected : (\d+)", result.stderr) if valgrind else None
    if valgrind and counted is None:
        raise RuntimeError(f"no instruction count from callgrind: {result.stderr[-500:]}")
    return orjson.loads(result.stdout.strip().splitlines()[-1]), int(counted[1]) if counted else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--inner", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not (CONCURRENCY * 16 <= args.requests <= 50_000 and 1 <= args.reps <= 20):
        parser.error(f"bounds: --requests {CONCURRENCY * 16}..50000, --reps 1..20")
    if args.inner is not None:  # one worker-like process
        print(orjson.dumps(uvloop.run(serve(args.inner, args.requests, args.reps))).decode())
        return 0
    from loadtests.bench.trace_cache_bench import sink_conf

    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="klawd-trace-share-") as tmp:
        directory = Path(tmp)
        up_port, sink_port = c.free_port(), c.free_port()
        servers = [
            c.nginx(c.upstream_conf(directory, up_port), directory, "upstream", c.CLIENT_CORE),
            c.nginx(sink_conf(directory, sink_port), directory, "sink", c.CLIENT_CORE),
        ]
        try:
            found = configs(directory, up_port, sink_port)
            counts = {
                name: [run(path, n, 1, valgrind=True)[1] for n in (args.requests,
                                                                   2 * args.requests)]
                for name, path in found.items()
            }  # fmt: skip
            cpu: dict[str, list[float]] = {name: [] for name in found}
            for rnd in range(args.reps):
                for name, path in list(found.items())[:: 1 if rnd % 2 == 0 else -1]:
                    cpu[name] += run(path, args.requests, 1, valgrind=False)[0]
        finally:
            for server in servers:
                c.stop(server)
    load.append(os.getloadavg()[0])
    per = {name: (two - one) / args.requests for name, (one, two) in counts.items()}
    mid = {name: statistics.median(values) for name, values in cpu.items()}
    print(f"load average (1 min) at the start and the end: {load[0]:.1f}, {load[1]:.1f}")
    print(f"one whole request, in process ({args.requests} requests, {CONCURRENCY} at once)")
    print("| traces | instructions | CPU µs (median of rounds) | rounds |")
    print("| --- | ---: | ---: | --- |")
    for name in found:
        rounds = ", ".join(f"{value:.0f}" for value in cpu[name])
        print(f"| {name} | {per[name]:,.0f} | {mid[name]:.0f} | {rounds} |")
    added, added_us = per["traced"] - per["off"], mid["traced"] - mid["off"]
    print(
        f"traced adds {added:,.0f} instructions per request ({100 * added / per['off']:+.1f} %), "
        f"{added_us:+.0f} µs CPU ({100 * added_us / mid['off']:+.1f} %)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
