"""`make bench-long`: 10,000 concurrent long streams through one gateway worker.

    .venv/bin/python -m loadtests.bench.long_run [--streams 10000] [--store sqlite|redis]
        [--write-docs]

One event a second for a minute (the fake upstream's `/long` location: 60 events, each line its
own chunk), the streams opened evenly over 10 s, so that all are open together for 50 s. The
gateway (one worker, pinned to core 0, `klawd serve` with its default server settings) must
complete every stream, relay no event more than 100 ms after the upstream wrote it, and stay
under 400 MB of RSS. Every stream needs two file descriptors in the worker (the client's socket
and the upstream's): when the hard limit of open files cannot hold `--streams`, the run says so
and uses as many streams as it can hold. Bounded: about 75 s plus start-up, every process
stopped at the end.
"""

from __future__ import annotations

import argparse
import datetime
import os
import resource
import tempfile
from pathlib import Path

import httpx
import orjson

from loadtests.bench import contenders as c
from loadtests.bench.measure import PeakRss, long_streams, tree_rss_mb

DOCS = c.REPO / "docs" / "benchmarks.md"
START, END = "<!-- long-streams:start -->", "<!-- long-streams:end -->"
FDS_SPARE = 64  # what the worker holds besides the streams' sockets (measured: about 40)


def run(args: argparse.Namespace, directory: Path) -> dict[str, object]:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    streams = args.streams
    if hard != resource.RLIM_INFINITY and 2 * streams + FDS_SPARE > hard:
        streams = (hard - FDS_SPARE) // 2
        print(f"open files hard limit {hard}: {streams} streams at most", flush=True)
    processes = []
    try:
        up_port, gw_port, redis_port = c.free_port(), c.free_port(), c.free_port()
        upstream = f"http://127.0.0.1:{up_port}"
        processes.append(c.nginx(c.upstream_conf(directory, up_port), directory, "upstream",
                                 c.CLIENT_CORE))  # fmt: skip
        store = f"sqlite:///{directory / 'bench.db'}"
        if args.store == "redis":
            processes.append(c.redis_server(redis_port, directory))
            store = f"redis://127.0.0.1:{redis_port}/0"
        base = f"http://127.0.0.1:{gw_port}"
        if args.bare:  # the bare pass-through instead, for comparison
            gateway = c.bare(gw_port, upstream, directory)
            processes.append(gateway)
            c.wait_for(lambda: httpx.post(base + "/json/v1/chat/completions").status_code == 200,
                       "bare")  # fmt: skip
            headers: dict[str, str] = {}
            path = f"/{args.scenario}/v1/chat/completions"
        else:
            gateway = c.gateway("gateway", gw_port, upstream, store, directory, streams)
            processes.append(gateway)
            c.wait_for(lambda: httpx.get(f"{base}/readyz").status_code == 200, "gateway")
            headers = {"authorization": f"Bearer {c.gateway_key(base)}"}
            path = "/v1/chat/completions"
        message = {"role": "user", "content": "Say hello to the benchmark."}
        body = {"model": c.gateway_model(args.scenario), "stream": True, "max_tokens": 64,
                "messages": [message]}  # fmt: skip
        idle_mb = tree_rss_mb(gateway.pid)
        spec = {
            "url": base + path,
            "body": orjson.dumps(body).decode(),
            "headers": headers,
            "count": streams,
            "ramp_s": args.ramp,
            "timeout_s": c.LONG_EVENTS + args.ramp + 30,
        }
        load_before = os.getloadavg()[0]
        with PeakRss(gateway.pid) as rss:
            outcome = long_streams(spec)
        return {
            **outcome,
            "requested": args.streams,
            "open_files_hard_limit": hard,
            "idle_rss_mb": round(idle_mb, 1),
            "peak_rss_mb": round(rss.peak_mb, 1),
            "load_before": load_before,
            "load_after": os.getloadavg()[0],
        }
    finally:
        for process in reversed(processes):
            c.stop(process)


def section(result: dict[str, object], args: argparse.Namespace) -> str:
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    streams = int(result["streams"])  # type: ignore[call-overload]
    complete = result["completed"] == streams
    on_time = result["late_over_100ms"] == 0
    small = float(result["peak_rss_mb"]) <= 400  # type: ignore[arg-type]
    capped = (
        f" (asked for {result['requested']}; the open-files hard limit here, "
        f"{result['open_files_hard_limit']}, holds no more: two per stream)"
        if streams != result["requested"]
        else ""
    )
    return "\n".join(
        [
            START,
            "## Long streams: one worker, one event a second for a minute",
            "",
            f"Measured {when} with `make bench-long` (= `.venv/bin/python -m "
            f"loadtests.bench.long_run --streams {result['requested']} --store {args.store} "
            f"--write-docs`), load average {result['load_before']:.2f} before, "
            f"{result['load_after']:.2f} after. {streams} streams{capped}, opened evenly over "
            f"{args.ramp:g} s, each 60 events one second apart (each line its own chunk), "
            "through one gateway worker on core 0 (embedded store unless said otherwise, "
            "default `[server]` settings); the upstream and the client share core 1.",
            "",
            "| measure | value | target |",
            "| --- | ---: | --- |",
            f"| streams complete | {result['completed']} of {streams} | every one: "
            f"{'met' if complete else 'MISSED'} |",
            f"| events relayed more than 100 ms late (streams) | {result['late_over_100ms']} | "
            f"none: {'met' if on_time else 'MISSED'} |",
            f"| latest event (ms after the upstream wrote it) | {result['late_max_ms']:.1f} | |",
            f"| p99 over streams of each stream's latest event (ms) | {result['late_p99_ms']:.1f} "
            "| |",
            f"| TTFB p50 / p99 (ms) | {result['ttfb_p50_ms']:.1f} / {result['ttfb_p99_ms']:.1f} "
            "| |",
            f"| worker RSS idle → peak (MB) | {result['idle_rss_mb']} → {result['peak_rss_mb']} | "
            f"≤ 400: {'met' if small else 'MISSED'} |",
            "",
            END,
        ]
    )


def write_docs(text: str) -> None:
    current = DOCS.read_text()
    if START in current and END in current:
        head, rest = current.split(START, 1)
        _, tail = rest.split(END, 1)
        DOCS.write_text(head + text + tail)
    else:
        DOCS.write_text(current.rstrip("\n") + "\n\n" + text + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--ramp", type=float, default=10.0)
    parser.add_argument("--store", choices=["sqlite", "redis"], default="sqlite")
    parser.add_argument(
        "--scenario", choices=["long", "slow"], default="long",
        help="slow: 50 events 100 ms apart, for a quick look at memory (no --write-docs)",
    )  # fmt: skip
    parser.add_argument("--bare", action="store_true", help="the bare pass-through instead")
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    if args.write_docs and (args.scenario != "long" or args.bare):
        parser.error("--write-docs measures the long scenario")
    if not (1 <= args.streams <= 20_000 and 0 <= args.ramp <= 30):
        parser.error("bounds: --streams 1..20000, --ramp 0..30")
    with tempfile.TemporaryDirectory(prefix="klawd-long-") as tmp:
        result = run(args, Path(tmp))
    print(orjson.dumps(result).decode())
    text = section(result, args)
    print(text)
    if args.write_docs:
        write_docs(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
