"""The gateway process's own share of tracing: a whole non-streamed chat request with traces off
and with traces on at sample ratio 1.0, in process, counted in instructions (repeatable whatever
the machine's load) and in CPU time.

    .venv/bin/python -m loadtests.bench.trace_share [--requests 2000] [--reps 3]
    .venv/bin/python -m loadtests.bench.trace_share --request-path [--requests 1024]
        [--before DIR] [--profile DIR] [--off-only]

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

`--request-path` counts the request path only, repeatably: callgrind starts with collection off
(`--collect-atstart=no`) and toggles it on entering and leaving `operator.call`'s C function
(`--toggle-collect=_operator_call`), through which, after the warm-up, every step of each request's
ASGI coroutine is run (`Steps`: the middleware's `__call__` down to the handler, from one
suspension to the next). So start-up, the warm-up, the event loop between steps (timers: the
ledger's batches, the span pipe's ticks; I/O callbacks), the other threads (the log writer, the
SQLite thread) and valgrind's slowness (which changes how many ticks fall per request) are not
counted, and the count divided by `--requests` is one request's (the span pipe's frame, written
from the request path every 256 requests of two spans, is amortised: keep `--requests` a multiple
of 256; the span pipe's timed flush is put off for the run, since under valgrind its 5 s would come
before a batch fills and move the framing to the pipe's thread). Three runs: traces off, traced,
and traced with only the tracing seams run through `operator.call` (what the seams themselves cost,
the rest of the request uncounted); with `--before DIR` the same three for another checkout's
`gateway` package (with its built `_core`). `--profile DIR` keeps callgrind's function-level files
(`callgrind_annotate --inclusive=yes`). `--off-only`: the traces-off run alone (per tree), what
a change to the untraced request path is measured by.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import operator
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine, Generator
from pathlib import Path
from typing import Any

import orjson
import uvloop

if "--tree" in sys.argv:  # another checkout's gateway package (with its built _core)
    sys.path.insert(0, str(Path(sys.argv[sys.argv.index("--tree") + 1]).resolve()))

from loadtests.bench import contenders as c

HERE = Path(__file__).resolve().parents[2]
CONCURRENCY = 16
# --request-path: callgrind collects only inside this C function (valgrind --toggle-collect),
# which nothing else in the process calls: `operator.call`, through which each step of the
# request's coroutine (and, with --seams, each tracing seam) is run
TOGGLE = "_operator_call"
VALGRIND = ["valgrind", "--tool=callgrind"]


class Steps:
    """The app's coroutine for one request, each of its steps (from one suspension to the next)
    run through `operator.call`: under `--toggle-collect=_operator_call` callgrind counts the
    request's own code (middleware, handler, the upstream call's sending and reading, the log
    line's and the spans' bookkeeping) and nothing the event loop runs between steps (timers,
    other tasks, I/O callbacks) or other threads run."""

    __slots__ = ("coro",)

    def __init__(self, coro: Coroutine[Any, Any, None]) -> None:
        self.coro = coro

    def __await__(self) -> Generator[Any, Any, None]:
        coro = self.coro
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                if error is None:
                    yielded = operator.call(coro.send, value)
                else:
                    yielded = operator.call(coro.throw, error)
            except StopIteration:
                return
            try:
                value, error = (yield yielded), None
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # handed to the app's coroutine, as `await` does
                value, error = None, exc


class Counted:
    """The ASGI app with each request's steps counted (see Steps)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, scope: Any, receive: Any, send: Any) -> Steps:
        return Steps(self.app(scope, receive, send))


def count_seams(app: Any) -> None:
    """--seams: every tracing seam of the request path run through `operator.call`, so callgrind
    counts only them (the server span's start and end in the middleware, the client span's
    start and end in the retry loop, the `traceparent` upstream, the finish reasons)."""
    import gateway.providers.base as base
    import gateway.routing.retry as retry

    tracing = app.tracing
    for name in ("start_request", "end_request", "start_attempt", "end_attempt"):
        setattr(tracing, name, functools.partial(operator.call, getattr(tracing, name)))
    # the traceparent's seam: traced_headers (with_traceparent in trees before issue 18d)
    for name in ("traced_headers", "with_traceparent", "note_finish_reasons"):
        if hasattr(base, name):
            setattr(base, name, functools.partial(operator.call, getattr(base, name)))
    del retry  # the retry loop reaches the seams through the Tracing object


async def serve(config: Path, requests: int, rounds: int, counted: str = "") -> list[float]:
    """CPU µs per request of `rounds` rounds of `requests` requests, after a warm-up.
    `counted` ("steps" or "seams"): what runs through `operator.call` after the warm-up."""
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
    await asyncio.sleep(0.05)
    if counted == "steps":
        harness.app = Counted(harness.app)
    elif counted == "seams":
        count_seams(harness.app)
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


def run(
    config: Path,
    requests: int,
    rounds: int,
    valgrind: bool,
    counted: str = "",
    tree: Path | None = None,
    profile: Path | None = None,
) -> tuple[list[float], int]:
    """One process serving `rounds` rounds of `requests`: its CPU per request (and, under
    valgrind, its instruction count: all of it, or with `counted` only what runs through
    `operator.call`). `tree`: another checkout's `gateway` package; `profile`: callgrind's
    function-level output kept there (`--dump-instr=no`, for callgrind_annotate)."""
    command = [sys.executable, "-m", "loadtests.bench.trace_share", "--inner", str(config),
               "--requests", str(requests), "--reps", str(rounds)]  # fmt: skip
    if counted:
        command += ["--counted", counted]
    if tree is not None:
        command += ["--tree", str(tree)]
    if valgrind:
        out = "/dev/null" if profile is None else str(profile)
        options = [f"--callgrind-out-file={out}", "--dump-instr=no"]
        if counted:
            options += ["--collect-atstart=no", f"--toggle-collect={TOGGLE}"]
        command = [*VALGRIND, *options, *command]
    env = os.environ | {"PYTHONHASHSEED": "0", "PROMETHEUS_MULTIPROC_DIR": str(config.parent)}
    if counted:
        # No timed flush of the span pipe: under valgrind a run lasts minutes, so its 5 s timer
        # would frame the rows on the pipe's own thread (not counted) before a batch fills; at
        # full speed a batch fills first and is framed on the request path, so count that.
        env["OTEL_BSP_SCHEDULE_DELAY"] = "3600000"
    result = subprocess.run(
        command, capture_output=True, text=True, check=True, timeout=1800, cwd=HERE, env=env
    )
    found = re.search(r"Collected : (\d+)", result.stderr) if valgrind else None
    if valgrind and found is None:
        raise RuntimeError(f"no instruction count from callgrind: {result.stderr[-500:]}")
    return orjson.loads(result.stdout.strip().splitlines()[-1]), int(found[1]) if found else 0


def request_path(
    found: dict[str, Path],
    requests: int,
    before: Path | None,
    profile: Path | None,
    off_only: bool = False,
) -> dict[str, float]:
    """--request-path: instructions per request counted inside the request's own steps (traces
    off, traced) and inside the tracing seams alone (traced), for this tree and `before`;
    `off_only`: traces off alone."""
    trees: dict[str, Path | None] = {"": None}
    if before is not None:
        trees["-before"] = before
    runs = (("off", "steps"),)
    if not off_only:
        runs += (("traced", "steps"), ("traced", "seams"))
    per = {}
    for suffix, tree in trees.items():
        for name, counted in runs:
            label = f"{name}{suffix}" if counted == "steps" else f"seams{suffix}"
            out = None if profile is None else profile / f"callgrind.{label}"
            counts = run(found[name], requests, 1, True, counted, tree, out)[1]
            per[label] = counts / requests
    return per


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--request-path",
        action="store_true",
        help="count only the request's own steps and the tracing seams (no CPU rounds)",
    )
    parser.add_argument("--before", type=Path, help="with --request-path: another checkout too")
    parser.add_argument("--profile", type=Path, help="with --request-path: keep callgrind's files")
    parser.add_argument(
        "--off-only", action="store_true", help="with --request-path: traces off only"
    )
    parser.add_argument("--inner", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--counted", default="", help=argparse.SUPPRESS)
    parser.add_argument("--tree", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not (CONCURRENCY * 16 <= args.requests <= 50_000 and 1 <= args.reps <= 20):
        parser.error(f"bounds: --requests {CONCURRENCY * 16}..50000, --reps 1..20")
    if args.inner is not None:  # one worker-like process
        measured = uvloop.run(serve(args.inner, args.requests, args.reps, args.counted))
        print(orjson.dumps(measured).decode())
        return 0
    from loadtests.bench.trace_cache_bench import sink_conf

    load = [os.getloadavg()[0]]
    started = time.strftime("%H:%M", time.gmtime())
    with tempfile.TemporaryDirectory(prefix="klawd-trace-share-") as tmp:
        directory = Path(tmp)
        up_port, sink_port = c.free_port(), c.free_port()
        servers = [
            c.nginx(c.upstream_conf(directory, up_port), directory, "upstream", c.CLIENT_CORE),
            c.nginx(sink_conf(directory, sink_port), directory, "sink", c.CLIENT_CORE),
        ]
        try:
            found = configs(directory, up_port, sink_port)
            if args.request_path:
                if args.profile is not None:
                    args.profile.mkdir(parents=True, exist_ok=True)
                before = None if args.before is None else args.before.resolve()
                path = request_path(found, args.requests, before, args.profile, args.off_only)
            else:
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
    ended = time.strftime("%H:%M", time.gmtime())
    print(
        f"{started}-{ended} UTC, load average (1 min) at the start and the end: "
        f"{load[0]:.1f}, {load[1]:.1f}"
    )
    if args.request_path:
        print_request_path(path, args.requests)
        return 0
    per = {name: (two - one) / args.requests for name, (one, two) in counts.items()}
    mid = {name: statistics.median(values) for name, values in cpu.items()}
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


def print_request_path(per: dict[str, float], requests: int) -> None:
    print(
        f"instructions per request on the request path only (callgrind, the request's own steps; "
        f"{requests} requests, {CONCURRENCY} at once)"
    )
    suffixes = [s for s in ("", "-before") if f"off{s}" in per]
    if "traced" not in per:  # --off-only
        print("| tree | traces off |")
        print("| --- | ---: |")
        for suffix in suffixes:
            print(f"| {'this tree' if not suffix else 'before'} | {per[f'off{suffix}']:,.0f} |")
        if len(suffixes) == 2:
            change = per["off"] / per["off-before"] - 1
            print(f"this tree against before: {100 * change:+.1f} %")
        return
    print("| tree | traces off | traced | added | added, % of off | the seams alone |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for suffix in suffixes:
        off, traced, seams = per[f"off{suffix}"], per[f"traced{suffix}"], per[f"seams{suffix}"]
        print(
            f"| {'this tree' if not suffix else 'before'} | {off:,.0f} | {traced:,.0f} | "
            f"{traced - off:+,.0f} | {100 * (traced - off) / off:+.1f} % | {seams:,.0f} |"
        )


if __name__ == "__main__":
    sys.exit(main())
