"""`make bench-long`: 10,000 concurrent long streams through one gateway worker.

    .venv/bin/python -m loadtests.bench.long_run [--streams 10000] [--store sqlite|redis]
        [--contenders direct,bare,gateway] [--before DIR] [--write-docs]

One event a second for a minute (the fake upstream's `/long` location: 60 events, each line its
own chunk), the streams opened evenly over 10 s, so that all are open together for 50 s. The
gateway (one worker, pinned to core 0, `klawd serve` with its default server settings) must
complete every stream, relay no event more than 100 ms after the upstream wrote it, and stay
under 400 MB of RSS. Every stream needs two file descriptors in the worker (the client's socket
and the upstream's): when the hard limit of open files cannot hold `--streams`, the run says so
and uses as many streams as it can hold.

The same run measures, one after the other with the same client and upstream, the baselines
that say whose the lateness is: `direct` (the client straight to the upstream: what the client
and nginx on the shared core 1 add by themselves) and `bare` (the bare pass-through,
loadtests/bench/bare_app.py, in the gateway's place on core 0). `--before DIR` adds another
checkout's gateway (its `gateway` package with its built `_core`). Bounded: about 80 s per
contender plus start-up, every process stopped at the end.
"""

from __future__ import annotations

import argparse
import datetime
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson

from loadtests.bench import contenders as c
from loadtests.bench.measure import (
    PeakRss,
    long_streams,
    tree_cpu_s,
    tree_pss_mb,
    tree_rss_mb,
    worker_rss_mb,
)

DOCS = c.REPO / "docs" / "benchmarks.md"
START, END = "<!-- long-streams:start -->", "<!-- long-streams:end -->"
FDS_SPARE = 64  # what the worker holds besides the streams' sockets (measured: about 40)


CONTENDERS = ["direct", "bare", "gateway"]
BEFORE = "gateway-before"
ORDER_TEXT = {  # how the docs name each contender in the order they ran
    "direct": "the client straight to the upstream (what the client and the upstream add by "
    "themselves)",
    "bare": "the bare pass-through (loadtests/bench/bare_app.py)",
    "gateway": "the gateway",
    BEFORE: "the gateway of {before} (`--before`)",
}


def run(args: argparse.Namespace, directory: Path) -> dict[str, object]:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    streams = args.streams
    if hard != resource.RLIM_INFINITY and 2 * streams + FDS_SPARE > hard:
        streams = (hard - FDS_SPARE) // 2
        print(f"open files hard limit {hard}: {streams} streams at most", flush=True)
    results: dict[str, object] = {
        "requested": args.streams,
        "open_files_hard_limit": hard,
        "load": [os.getloadavg()[0]],
    }
    for name in args.contenders:
        outcome = one(name, args, streams, directory / name)
        print(name, orjson.dumps(outcome).decode(), flush=True)
        results[name] = outcome
        results["load"].append(os.getloadavg()[0])  # type: ignore[attr-defined]
    return results


def one(name: str, args: argparse.Namespace, streams: int, directory: Path) -> dict[str, object]:
    """One contender's run: a fresh upstream (and store), the server, the client, all stopped."""
    directory.mkdir()
    processes = []
    try:
        up_port, gw_port, redis_port = c.free_port(), c.free_port(), c.free_port()
        upstream = f"http://127.0.0.1:{up_port}"
        if args.upstream == "paced":
            fake = c.pinned(c.CLIENT_CORE, [sys.executable, "-m", "loadtests.bench.paced_upstream",
                                            str(up_port)], directory / "upstream.log")  # fmt: skip
        else:
            conf = c.upstream_conf(directory, up_port)
            fake = c.nginx(conf, directory, "upstream", c.CLIENT_CORE)
        processes.append(fake)
        c.wait_for(lambda: listening(up_port), "the upstream")
        path = f"/{args.scenario}/v1/chat/completions"
        headers: dict[str, str] = {}
        server: subprocess.Popen[bytes] | None = None
        if name == "direct":  # no server in between: the client and the upstream alone
            base = upstream
        elif name == "bare":
            base = f"http://127.0.0.1:{gw_port}"
            server = c.bare(gw_port, upstream, directory)
            processes.append(server)
            c.wait_for(lambda: listening(gw_port), "bare")
            time.sleep(1)  # its lifespan (the session) is quick; every answer here is a minute
        else:
            store = f"sqlite:///{directory / 'bench.db'}"
            if args.store == "redis":
                realtime = args.redis_priority == "realtime"
                processes.append(c.redis_server(redis_port, directory, realtime=realtime))
                store = f"redis://127.0.0.1:{redis_port}/0"
            base = f"http://127.0.0.1:{gw_port}"
            source = args.before if name == BEFORE else None
            server = c.gateway(name, gw_port, upstream, store, directory, streams, source)
            processes.append(server)
            c.wait_for(lambda: httpx.get(f"{base}/readyz").status_code == 200, name)
            headers = {"authorization": f"Bearer {c.gateway_key(base)}"}
            path = "/v1/chat/completions"
        message = {"role": "user", "content": "Say hello to the benchmark."}
        model = c.gateway_model(args.scenario) if name not in ("direct", "bare") else "m"
        body = {"model": model, "stream": True, "max_tokens": 64, "messages": [message]}
        spec = {
            "url": base + path,
            "body": orjson.dumps(body).decode(),
            "headers": headers,
            "count": streams,
            "ramp_s": args.ramp,
            "timeout_s": c.LONG_EVENTS + args.ramp + 30,
        }
        watched = server.pid if server is not None else fake.pid
        idle_mb, idle_pss_mb = tree_rss_mb(watched), tree_pss_mb(watched)
        worker_idle_mb = worker_rss_mb(watched)
        load_before = os.getloadavg()[0]
        cpu_before, upstream_cpu_before = tree_cpu_s(watched), tree_cpu_s(fake.pid)
        with PeakRss(watched, pss=True) as rss:
            outcome = long_streams(spec)
        outcome.pop("ttfb_ms", None)  # (every stream's: the percentiles are kept)
        return {
            **outcome,
            **phases(rss.timeline, args.ramp),
            "server_cpu_s": round(tree_cpu_s(watched) - cpu_before, 2) if server else None,
            "upstream_cpu_s": round(tree_cpu_s(fake.pid) - upstream_cpu_before, 2),
            "idle_rss_mb": round(idle_mb, 1) if server else None,
            "peak_rss_mb": round(rss.peak_mb, 1) if server else None,
            "worker_idle_rss_mb": round(worker_idle_mb, 1) if server else None,
            "worker_peak_rss_mb": round(rss.worker_peak_mb, 1) if server else None,
            "idle_pss_mb": round(idle_pss_mb, 1) if server else None,
            "peak_pss_mb": round(rss.peak_pss_mb, 1) if server else None,
            "load_before": load_before,
            "load_after": os.getloadavg()[0],
        }
    finally:
        for process in reversed(processes):
            c.stop(process)


def phases(timeline: list[tuple[float, float, float]], ramp_s: float) -> dict[str, object]:
    """From the server's (seconds, RSS, CPU) samples: its CPU during the ramp (every stream
    opening, on top of the events of those open) and over the 30 s after it (events only, all
    streams open), and its median RSS over those 30 s (the peak also holds whatever queued while
    it lagged)."""

    def cpu_at(second: float) -> float:
        return min(timeline, key=lambda sample: abs(sample[0] - second))[2]

    if not timeline or timeline[-1][0] < ramp_s + 32:
        return {}
    steady = sorted(rss for t, rss, _ in timeline if ramp_s + 2 <= t <= ramp_s + 32)
    return {
        "ramp_cpu_s": round(cpu_at(ramp_s) - cpu_at(0), 2),
        "steady_cpu_s_per_s": round((cpu_at(ramp_s + 32) - cpu_at(ramp_s + 2)) / 30, 3),
        "steady_rss_mb": round(steady[len(steady) // 2], 1),
    }


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


TITLES = {
    "direct": "client → upstream (no server)",
    "bare": "bare pass-through",
    "gateway": "gateway",
    BEFORE: "gateway before",
}


def _ms(value: object) -> str:
    return "—" if value is None else f"{float(value):.1f}"  # type: ignore[arg-type]


def section(result: dict[str, object], args: argparse.Namespace) -> str:
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    names = [n for n in args.contenders if n in result]
    runs: dict[str, dict[str, Any]] = {n: result[n] for n in names}  # type: ignore[misc]
    gateway = runs.get("gateway")
    streams = int(next(iter(runs.values()))["streams"])
    capped = (
        f" (asked for {result['requested']}; the open-files hard limit here, "
        f"{result['open_files_hard_limit']}, holds no more: two per stream)"
        if streams != result["requested"]
        else ""
    )
    loads = ", ".join(f"{value:.2f}" for value in result["load"])  # type: ignore[attr-defined]

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    def row(title: str, cell: Callable[[dict[str, Any]], str], target: str = "") -> str:
        return f"| {title} | " + " | ".join(cell(runs[n]) for n in names) + f" | {target} |"

    targets = {"complete": "", "late": "", "rss": ""}
    if gateway is not None:
        targets["complete"] = "every one: " + verdict(gateway["completed"] == gateway["streams"])
        targets["late"] = "none: " + verdict(gateway["late_over_100ms"] == 0)
        targets["rss"] = "≤ 400: " + verdict(float(gateway["peak_rss_mb"]) <= 400)
    per_stream = "server CPU per stream (ms; whole run ÷ streams)"
    lines = [
        START,
        "## Long streams: one worker, one event a second for a minute",
        "",
        f"Measured {when} with `make bench-long` (= `.venv/bin/python -m "
        f"loadtests.bench.long_run --streams {result['requested']} --store {args.store}"
        f"{f' --before {args.before}' if args.before else ''} --write-docs`), load average "
        f"(1 min) at the start and after each contender: {loads}. "
        f"{streams} streams{capped}, opened evenly over {args.ramp:g} s, each 60 events one "
        "second apart (each line its own chunk), through one worker on core 0 (the gateway: "
        + ("embedded store" if args.store == "sqlite"
           else f"Redis store, redis-server on core 1 at {args.redis_priority} priority")
        + ", default `[server]` settings); the upstream ("
        + ("nginx" if args.upstream == "nginx" else "loadtests/bench/paced_upstream.py: each "
           "stream on its own fixed schedule, each event stamped when written")
        + ") and the client share core 1. The contenders run one after the other with the "
        "same client and upstream: "
        + ", then ".join(ORDER_TEXT[n].format(before=args.before) for n in names)
        + ". RSS is the server's process tree (Granian's supervisor and its worker).",
        "",
        "| measure | " + " | ".join(TITLES[n] for n in names) + " | target (gateway) |",
        "| --- | " + " | ".join("---:" for _ in names) + " | --- |",
        row("streams complete", lambda r: f"{r['completed']} of {r['streams']}",
            targets["complete"]),
        row("streams with an event more than 100 ms late", lambda r: str(r["late_over_100ms"]),
            targets["late"]),
        row("latest event (ms after the upstream wrote it)", lambda r: _ms(r["late_max_ms"])),
        row("p99 over streams of each stream's latest event (ms)",
            lambda r: _ms(r["late_p99_ms"])),
        row("latest event once all are open (written after the ramp + 1 s; ms)",
            lambda r: _ms(r.get("late_after_ramp_max_ms"))),
        row("TTFB p50 / p99 (ms)",
            lambda r: f"{_ms(r['ttfb_p50_ms'])} / {_ms(r['ttfb_p99_ms'])}"),
        row("the client's own loop: worst lag (ms)", lambda r: _ms(r.get("client_lag_max_ms"))),
        row("CPU s over the run: client / upstream",
            lambda r: f"{r.get('client_cpu_s', 0):.1f} / {r.get('upstream_cpu_s', 0):.1f}"),
        row(per_stream, lambda r: "—" if r["server_cpu_s"] is None
            else f"{r['server_cpu_s'] * 1000 / r['streams']:.2f}"),
        row("server CPU during the ramp (s; opening every stream, and the events)",
            lambda r: "—" if r["server_cpu_s"] is None else f"{r.get('ramp_cpu_s', 0):.1f}"),
        row("server CPU once all are open (s per s; ~streams events a second)",
            lambda r: "—" if r["server_cpu_s"] is None
            else f"{r.get('steady_cpu_s_per_s', 0):.3f}"),
        row("RSS once all are open (MB, median over 30 s)",
            lambda r: "—" if r["server_cpu_s"] is None else f"{r.get('steady_rss_mb', 0)}"),
        row("RSS idle → peak (MB)", lambda r: "—" if r["idle_rss_mb"] is None
            else f"{r['idle_rss_mb']} → {r['peak_rss_mb']}", targets["rss"]),
        row("worker alone: RSS idle → peak (MB)", lambda r: "—" if r["idle_rss_mb"] is None
            else f"{r['worker_idle_rss_mb']} → {r['worker_peak_rss_mb']}"),
        row("PSS idle → peak (MB; shared pages counted once)",
            lambda r: "—" if r["idle_pss_mb"] is None
            else f"{r['idle_pss_mb']} → {r['peak_pss_mb']}"),
        "",
        END,
    ]  # fmt: skip
    return "\n".join(lines)


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
    c.add_redis_priority(parser)
    parser.add_argument(
        "--scenario", choices=["long", "slow"], default="long",
        help="slow: 50 events 100 ms apart, for a quick look at memory (no --write-docs)",
    )  # fmt: skip
    parser.add_argument(
        "--contenders",
        type=lambda text: [n for n in CONTENDERS if n in text.split(",")],
        default=CONTENDERS,
        help=f"a comma-separated subset of {','.join(CONTENDERS)}, run in this order",
    )
    parser.add_argument("--bare", action="store_true", help="the bare pass-through alone")
    parser.add_argument(
        "--upstream", choices=["paced", "nginx"], default="paced",
        help="paced: loadtests/bench/paced_upstream.py (events on a fixed schedule); nginx: the "
        "echo module's upstream of the other benches (its events drift into bursts)",
    )  # fmt: skip
    parser.add_argument("--before", type=Path, help=f"add {BEFORE}: this checkout's gateway")
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    if args.bare:
        args.contenders = ["bare"]
    if args.before is not None:
        args.contenders.append(BEFORE)
    if args.write_docs and (args.scenario != "long" or "gateway" not in args.contenders):
        parser.error("--write-docs measures the gateway on the long scenario")
    if args.upstream == "paced" and args.scenario != "long":
        parser.error("the paced upstream sends the long scenario only (--upstream nginx)")
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
