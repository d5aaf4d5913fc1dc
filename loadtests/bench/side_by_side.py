"""`make bench`: the gateway side by side with the upstream, nginx and two pass-throughs.

    .venv/bin/python -m loadtests.bench.side_by_side [--seconds 3] [--reps 4] [--write-docs]
    .venv/bin/python -m loadtests.bench.side_by_side --measures lat,lines --seconds 3   # a look

Every contender runs pinned to core 0 (one worker each), started afresh for each round (the
fake upstream and the nginx proxy stay for the run; `--method whole`: every process started
up front, as before issue 19zzzzr); the fake upstream
(nginx: fixed bodies, chunked streams with the echo module), wrk and the stream client run on
core 1; redis-server runs on core 0 with the contenders, as the embedded store's SQLite work
does (`--redis-core 1`: on the load generator's core, as before issue 19zzzze, whose per-line
rounds that full core decided), at real-time priority (`--redis-priority normal`: as before
issue 19zd, queued behind the others for its turn on the core; its wait per request is reported
either way). For the
gateways the CPU per request is also given with redis-server's own added (`*_all_cpu`). The two
pass-throughs share the stack (Granian + uvloop + one aiohttp session): the Starlette floor
(floor_app.py) and the bare ASGI callable (bare_app.py); `--contenders ...,bare-rsgi` adds
the bare relay over Granian's RSGI interface (bare_rsgi_app.py, informational). Each measure
runs for every contender in turn, `--reps` rounds; each round measures every contender once
(the order reversed every other round), so noise from the shared machine hits them alike, and
the ratios are medians of per-round ratios. A process settles into a speed of its own for its
life (A/A twins differed by up to 1.5x in every round of a run), so new processes each round
make the rounds sample that offset too (`lifetimes`; decision 0012, 19zzzzo and 19zzzzr).
Every run is bounded (wrk -d, subprocess timeouts)
and every process is stopped at the end.
Each round's line also says what it did to the listen queues (measure.ListenWatch: listen drops
and SYNs resent, machine-wide; the peak accept queues; the connections the upstream accepted).
`--write-docs` replaces the side-by-side section of docs/benchmarks.md (other sections are kept).
`--gc-log`: each gateway's processes log their cycle collections (gc_site/sitecustomize.py);
each burst round then prints the worker's per generation: count, total and longest pause.
The paced measures (PACED) read streams/s as connections ÷ the mean stream time, not wrk's
whole streams in the window (quantized: `--paced-rate window` gives that, as before 19zzzzb).
A speed probe (speed_probe.py) runs on each core at idle priority for the whole run: each round
prints its µs for a fixed loop per core, and the report names the rounds in which a compared
pair's two contenders ran at different machine speeds (decision 0012, 19zzzzb).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson

from loadtests.bench import contenders as c
from loadtests.bench import report
from loadtests.bench.measure import (
    ClockWatch,
    ListenWatch,
    OthersWatch,
    PeakRss,
    SpeedProbe,
    StealWatch,
    long_streams,
    run_queue_wait_s,
    segments_between,
    server_segments,
    tree_cpu_s,
    tree_syscalls,
    tree_waits,
    wrk,
    wrk_script,
)

NAMES = ["upstream", "nginx", "floor", "bare", "gateway-sqlite", "gateway-redis"]
# Informational, chosen with --contenders (not in `make bench`'s default set, not a target): the
# bare pass-through's relay over Granian's RSGI interface (bare_rsgi_app.py), what ASGI costs.
BARE_RSGI = "bare-rsgi"
# Named only too, for an A/A run (decision 0012, 19zzzzo): a second bare and a second embedded
# gateway, each started as its original is; a twin ÷ its original can only differ by the
# method's own noise, which is what a ratio of the report can resolve (the pairs: report.TWINS).
CHOICES = [*NAMES[:4], "bare-twin", BARE_RSGI, "gateway-sqlite", "gateway-sqlite-twin", *NAMES[5:]]
# A quick look only (never written to the docs): the gateway of another checkout, `--before DIR`
# (DIR holds that version's `gateway` package with its built `_core`), on the embedded store or,
# with `--before-store redis`, on the same redis-server as gateway-redis (its own database).
BEFORE = "gateway-before"
# measure -> (upstream location, connections); "lat" is the json one at one connection.
WRK_MEASURES = {
    "rps": ("json", 64),
    "lat": ("json", 1),
    "sse": ("sse", 64),
    "event": ("event", 64),
    "lines": ("lines", 64),
    "lines20": ("lines20", 256),
    "anth": ("anth", 64),
    "anth20": ("anth20", 256),
    "gemini": ("gemini", 64),
    "anth-agent": ("anth", 64),
    "gemini-agent": ("gemini", 64),
    "messages-anth": ("anth", 64),
    "messages-lines": ("lines", 64),
    "responses-anth": ("anth", 64),
    "responses-lines": ("lines", 64),
    "anth-tools": ("anthtools", 64),
    "messages-tools": ("anthtools", 64),
    "responses-tools": ("anthtools", 64),
}
MEASURES = [*WRK_MEASURES, "burst"]
# The paced measures: their upstream sleeps between events, so a stream lasts ~1.3 s and wrk's
# own rate (whole streams completed in the window ÷ the window) can only read connections x k /
# seconds: at 256 connections in 4 s, 192 or 128 streams/s, flipping on a 2 % change of the
# stream's length, for every contender alike (decision 0012, 19zzzzb). Their streams/s are
# connections ÷ the mean stream time instead (`--paced-rate stream-time`, the default since
# 19zzzzb); wrk's window count stays in the `_window` rows (`--paced-rate window`: as before).
PACED = {m for m, (scenario, _) in WRK_MEASURES.items() if c.STREAMS.get(scenario, ("", 0, 0))[2]}
# Named only (`--measures ...,anth-agent,gemini-agent`), not in make bench's set: a coding agent's
# request (agent_request.json: 52.6 KB, tools, tool calls and results, an image, breakpoints)
# answered by the `anth` or the `gemini` stream; the pass-throughs relay the body, the gateway
# translates it.
# Named only too: the gateway's other streaming routes (ROUTES), the Anthropic Messages API
# (`messages-anth`: the Anthropic stream passed through; `messages-lines`: the OpenAI one
# translated) and the Responses API (both translated), against its own before (the
# pass-throughs relay the upstream's stream unchanged: not a target ratio).
ROUTES = {
    "messages-anth": "messages",
    "messages-lines": "messages",
    "responses-anth": "responses",
    "responses-lines": "responses",
    "messages-tools": "messages",
    "responses-tools": "responses",
}
# Named only too: a coding agent's tool call, its arguments in ~300 `input_json_delta` events
# (contenders.anthropic_tool_events) reframed to OpenAI chunks (`anth-tools`), passed through
# on /v1/messages, translated to Responses events.
OPT_IN = {"anth-agent", "gemini-agent", "anth-tools", *ROUTES}
AGENT = Path(__file__).with_name("agent_request.json")
# A round whose wall clock moved this much more (or less) than the monotonic one is reported.
CLOCK_STEP_S = 0.5
# A round in which programs outside the bench took this much CPU (cores) is reported.
OTHERS_CORES = 0.05
# A round in which the hypervisor took this share of a core's time (its steal) is reported.
STEAL_SHARE = 0.02
BURST_STREAMS = 1000
MESSAGES = [{"role": "user", "content": "Say hello to the benchmark."}]


@dataclass
class Contender:
    name: str
    base_url: str
    pid: int
    gateway: bool
    headers: dict[str, str] = field(default_factory=dict)
    store_pid: int | None = None  # redis-server: its CPU is the request's too

    def path(self, scenario: str, route: str = "chat") -> str:
        if self.gateway:
            return {"messages": "/v1/messages", "responses": "/v1/responses"}.get(
                route, "/v1/chat/completions"
            )
        return c.upstream_path(scenario)

    def body(self, scenario: str, agent: bool = False, route: str = "chat") -> bytes:
        payload: dict[str, object] = {
            "model": c.gateway_model(scenario), "messages": MESSAGES, "max_tokens": 64,
        }  # fmt: skip
        if route == "responses" and self.gateway:
            payload = {"model": c.gateway_model(scenario), "input": MESSAGES[0]["content"]}
        if agent:
            payload = orjson.loads(AGENT.read_bytes()) | {"model": c.gateway_model(scenario)}
        if scenario != "json":
            payload["stream"] = True
        return orjson.dumps(payload)


@contextlib.contextmanager
def rig(
    directory: Path, names: list[str], upstream_timers: str | None = c.UPSTREAM_TIMER_RESOLUTION
) -> Iterator[dict[str, Contender]]:
    """The run's fixed processes: the fake upstream and, if named, the nginx proxy (the same
    programs every round, whatever the method: the upstream serves every contender alike, so
    its own state falls on both sides of a ratio). Stopped on the way out. `upstream_timers`:
    the upstream nginx's timer_resolution (None: its default, as before 19zzzzf)."""
    processes: list[subprocess.Popen[bytes]] = []
    try:
        up_port, proxy_port = c.free_port(), c.free_port()
        upstream_url = f"http://127.0.0.1:{up_port}"
        conf = c.upstream_conf(directory, up_port, upstream_timers)
        processes.append(c.nginx(conf, directory, "upstream", c.CLIENT_CORE))
        found = {"upstream": Contender("upstream", upstream_url, processes[-1].pid, False)}
        if "nginx" in names:
            processes.append(c.nginx(c.proxy_conf(directory, proxy_port, up_port), directory,
                                     "proxy", c.SERVER_CORE))  # fmt: skip
            found["nginx"] = Contender(
                "nginx", f"http://127.0.0.1:{proxy_port}", processes[-1].pid, False
            )
        for contender in found.values():
            c.wait_for(_answers(contender), contender.name)
        yield found
    finally:
        for process in reversed(processes):
            c.stop(process)


@contextlib.contextmanager
def servers(
    directory: Path,
    names: list[str],
    upstream_url: str,
    before: Path | None = None,
    redis_core: str = c.SERVER_CORE,
    before_store: str = "sqlite",
    redis_realtime: bool | None = None,
    gc_logs: bool = False,
) -> Iterator[dict[str, Contender]]:
    """The named contenders that are Python servers (the pass-throughs and the gateways, with
    redis-server for a Redis store, empty), started against the upstream at `upstream_url`,
    each answering before it is yielded; all stopped on the way out, whatever happens. Their
    logs, configs and stores are written in `directory`. `redis_realtime`: None is real-time
    where allowed (`--redis-priority`'s default). `gc_logs`: each gateway logs its cycle
    collections to `directory/NAME.gc`."""
    if redis_realtime is None:
        redis_realtime = c.realtime_allowed()
    processes: list[subprocess.Popen[bytes]] = []

    def keep(process: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        processes.append(process)
        return process

    try:
        floor_port, bare_port, redis_port = (c.free_port() for _ in range(3))
        found: dict[str, Contender] = {}
        if "floor" in names:
            floor = keep(c.floor(floor_port, upstream_url, directory))
            found["floor"] = Contender("floor", f"http://127.0.0.1:{floor_port}", floor.pid, False)
        if "bare" in names:
            bare = keep(c.bare(bare_port, upstream_url, directory))
            found["bare"] = Contender("bare", f"http://127.0.0.1:{bare_port}", bare.pid, False)
        if "bare-twin" in names:
            port = c.free_port()
            twin = keep(c.pass_through("bare-twin", "loadtests.bench.bare_app:app", port,
                                       upstream_url, directory))  # fmt: skip
            found["bare-twin"] = Contender("bare-twin", f"http://127.0.0.1:{port}", twin.pid, False)
        if BARE_RSGI in names:
            port = c.free_port()
            rsgi = keep(c.bare_rsgi(port, upstream_url, directory))
            found[BARE_RSGI] = Contender(BARE_RSGI, f"http://127.0.0.1:{port}", rsgi.pid, False)
        for contender in found.values():
            c.wait_for(_answers(contender), contender.name)
        redis_pid = None
        if "gateway-redis" in names or (BEFORE in names and before_store == "redis"):
            redis_pid = keep(c.redis_server(redis_port, directory, redis_core, redis_realtime)).pid
        for name, store in (
            ("gateway-sqlite", f"sqlite:///{directory / 'bench.db'}"),
            ("gateway-sqlite-twin", f"sqlite:///{directory / 'twin.db'}"),
            ("gateway-redis", f"redis://127.0.0.1:{redis_port}/0"),
            (
                BEFORE,
                f"redis://127.0.0.1:{redis_port}/1"
                if before_store == "redis"
                else f"sqlite:///{directory / 'before.db'}",
            ),
        ):
            if name not in names:
                continue
            port = c.free_port()
            source = before if name == BEFORE else None
            gc_log = directory / f"{name}.gc" if gc_logs else None
            process = keep(
                c.gateway(name, port, upstream_url, store, directory, source=source, gc_log=gc_log)
            )
            base = f"http://127.0.0.1:{port}"
            c.wait_for(_ready(base), name)
            headers = {"authorization": f"Bearer {c.gateway_key(base)}"}
            store_pid = redis_pid if "redis" in store else None
            found[name] = Contender(name, base, process.pid, True, headers, store_pid)
            c.wait_for(_answers(found[name]), name)
        yield found
    finally:
        for process in reversed(processes):
            c.stop(process)


@contextlib.contextmanager
def started(
    directory: Path,
    names: list[str],
    before: Path | None = None,
    redis_core: str = c.SERVER_CORE,
    before_store: str = "sqlite",
    redis_realtime: bool | None = None,
    gc_logs: bool = False,
    upstream_timers: str | None = c.UPSTREAM_TIMER_RESOLUTION,
) -> Iterator[dict[str, Contender]]:
    """Every named process up front (`rig`, then `servers`), in the order of `names`; all
    stopped on the way out, whatever happens."""
    with (
        rig(directory, names, upstream_timers) as fixed,
        servers(
            directory,
            names,
            fixed["upstream"].base_url,
            before,
            redis_core,
            before_store,
            redis_realtime,
            gc_logs,
        ) as own,
    ):
        found = fixed | own
        yield {name: found[name] for name in names}


def _children_cpu_s() -> float:
    """CPU seconds (user + system) of this process's children reaped so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _ready(base_url: str) -> Callable[[], bool]:
    return lambda: httpx.get(f"{base_url}/readyz").status_code == 200


def _answers(contender: Contender) -> Callable[[], bool]:
    def check() -> bool:
        response = httpx.post(
            contender.base_url + contender.path("json"),
            content=contender.body("json"),
            headers=contender.headers | {"content-type": "application/json"},
            timeout=5,
        )
        return response.status_code == 200 and b"chat.completion" in response.content

    return check


# -- the run --------------------------------------------------------------------------------------
Samples = dict[str, dict[str, list[float]]]  # contender -> measure -> one value per round


def run(args: argparse.Namespace, directory: Path) -> tuple[Samples, dict[str, object]]:
    samples: Samples = {name: {} for name in args.contenders}
    notes: dict[str, object] = {
        "bad_responses": {}, "listen": {}, "clock_steps": {}, "others": {}, "steal": {},
        "load": [os.getloadavg()[0]],
    }  # fmt: skip

    def record(name: str, measure: str, value: float) -> None:
        samples[name].setdefault(measure, []).append(value)

    # A round's figures per turn (a contender's several slices, `--method sliced`), each
    # contender's then folded into one a round (`fold`).
    turns: Samples = {}

    def record_turn(name: str, measure: str, value: float) -> None:
        turns.setdefault(name, {}).setdefault(measure, []).append(value)

    def warmed(found: dict[str, Contender], measure: str, place: Path) -> dict[str, Path]:
        """`measure`'s wrk script for each contender, after a 1 s warm-up each (not counted)."""
        scenario, connections = WRK_MEASURES[measure]
        route = ROUTES.get(measure, "chat")
        scripts = {
            name: wrk_script(place / f"{name}-{measure}.lua",
                             contender.body(scenario, measure.endswith("-agent"), route),
                             contender.headers | {"Content-Type": "application/json"})
            for name, contender in found.items()
        }  # fmt: skip
        for name, contender in found.items():
            url = contender.base_url + contender.path(scenario, route)
            if measure in PACED:
                whole_streams(url, contender, scenario, route, connections)
            else:
                wrk(url, scripts[name], connections, 1)
        return scripts

    def play(
        found: dict[str, Contender],
        measure: str,
        rnd: int,
        scripts: dict[str, Path],
        speed: SpeedProbe,
    ) -> None:
        """Round `rnd` of a wrk measure: every contender's turn (or slices), recorded."""
        scenario, connections = WRK_MEASURES[measure]
        route = ROUTES.get(measure, "chat")
        slices, seconds = turn_plan(measure, args.method, args.seconds)
        turns.clear()
        for turn, name in enumerate(schedule(list(found), rnd, slices)):
            contender = found[name]
            where = f" slice {turn // len(found) + 1}" if slices > 1 else ""
            cpu_before, wall_before = tree_cpu_s(contender.pid), time.monotonic()
            reads_before, _ = tree_syscalls(contender.pid)
            waits_before = tree_waits(contender.pid)
            upstream_waits_before = tree_waits(found["upstream"].pid)
            _, sent_before = tree_syscalls(found["upstream"].pid)
            upstream_before = tree_cpu_s(found["upstream"].pid)
            segments_before = server_segments(_port(found["upstream"]))
            client_before = _children_cpu_s()
            store_before = tree_cpu_s(contender.store_pid) if contender.store_pid else 0
            wait_before = run_queue_wait_s(contender.store_pid) if contender.store_pid else 0
            watch = ListenWatch(
                {"upstream": _port(found["upstream"]), name: _port(contender)},
                found["upstream"].base_url,
            )
            with (
                watch,
                ClockWatch() as clock,
                OthersWatch() as others,
                StealWatch() as steal,
            ):
                started_at = time.monotonic()
                result = wrk(contender.base_url + contender.path(scenario, route),
                             scripts[name], connections, seconds)  # fmt: skip
            # Each core's speed over the round (the probe's µs for its fixed loop).
            speeds = speed.between(started_at, time.monotonic())
            for core, probe_us in speeds.items():
                record_turn(name, f"{measure}_probe{core}", probe_us)
            rate = result.requests_per_s
            if measure in PACED:
                record_turn(name, f"{measure}_window", result.requests_per_s)
                record_turn(name, f"{measure}_stream_ms", result.mean_ms)
                record_turn(name, f"{measure}_whole", result.completed / connections)
                if args.paced_rate == "stream-time":
                    rate = result.closed_loop_rate(connections)
            done = rate * max(1, round(seconds))
            pieces = ""
            if measure != "lat" and done:
                # How the run read its streams: a saturated stream settles for a whole
                # run into few big reads or a read per chunk or two (decision 0012,
                # 19zzr), and streams/s follow; the upstream's writes say what it sent.
                reads = (tree_syscalls(contender.pid)[0] - reads_before) / done
                upstream_writes = (tree_syscalls(found["upstream"].pid)[1] - sent_before) / done
                record_turn(name, f"{measure}_reads", reads)
                record_turn(name, f"{measure}_upstream_writes", upstream_writes)
                # The load generator's core's two programs (decision 0012, 19zzy): the
                # upstream nginx and wrk (this process's only child reaped meanwhile).
                upstream_cpu = (tree_cpu_s(found["upstream"].pid) - upstream_before) * 1e6 / done
                client_cpu = (_children_cpu_s() - client_before) * 1e6 / done
                record_turn(name, f"{measure}_upstream_cpu", upstream_cpu)
                record_turn(name, f"{measure}_client_cpu", client_cpu)
                # The TCP segments the upstream sent and took for those writes (its
                # socket counters): fewer when data waits for the reader's ACKs.
                sent, took, _ = segments_between(
                    segments_before, server_segments(_port(found["upstream"]))
                )
                record_turn(name, f"{measure}_upstream_segments", sent / done)
                record_turn(name, f"{measure}_upstream_segments_in", took / done)
                pieces = (
                    f"; {reads:.1f} reads, upstream {upstream_writes:.1f} writes a request"
                    f" in {sent / done:.1f} segments, {took / done:.1f} taken"
                    f"; CPU us a request: upstream {upstream_cpu:.0f}, wrk {client_cpu:.0f}"
                )
                cpu_us = (tree_cpu_s(contender.pid) - cpu_before) * 1e6 / done
                record_turn(name, f"{measure}_cpu", cpu_us)
                # below 1: the worker waited (on the store, the upstream, the client)
                busy = (tree_cpu_s(contender.pid) - cpu_before) / (time.monotonic() - wall_before)
                record_turn(name, f"{measure}_busy", busy)
                # Its sleeps: each one's wake-up is paid by the sender of what woke it
                # (the upstream, on the load generator's core).
                waits = (tree_waits(contender.pid) - waits_before) / done
                upstream_waits = (tree_waits(found["upstream"].pid) - upstream_waits_before) / done
                record_turn(name, f"{measure}_waits", waits)
                pieces += (
                    f", worker {cpu_us:.0f} ({busy:.2f} of its core, {waits:.1f} sleeps;"
                    f" upstream {upstream_waits:.1f} sleeps)"
                )
                if contender.gateway:  # + redis-server's (the embedded store: inside)
                    store_s = (
                        tree_cpu_s(contender.store_pid) - store_before
                        if contender.store_pid
                        else 0.0
                    )
                    record_turn(name, f"{measure}_all_cpu", cpu_us + store_s * 1e6 / done)
                    if contender.store_pid:
                        pieces += f", redis-server {store_s * 1e6 / done:.1f}"
                # The load generator's core's share taken by the programs on it (the
                # upstream, wrk and, with --redis-core 1, redis-server): near 1, that
                # core and not the contender's set the round's rate (decision 0010,
                # 19zzzze).
                on_client_core = upstream_cpu + client_cpu
                if contender.store_pid and args.redis_core == c.CLIENT_CORE:
                    on_client_core += store_s * 1e6 / done
                client_core = on_client_core * done / 1e6 / (time.monotonic() - wall_before)
                record_turn(name, f"{measure}_client_core_us", on_client_core)
                record_turn(name, f"{measure}_client_core", client_core)
                pieces += f"; load generator's core {client_core:.2f} busy"
                if contender.store_pid:  # redis-server's wait for its core
                    waited = run_queue_wait_s(contender.store_pid) - wait_before
                    record_turn(name, f"{measure}_store_wait", waited * 1e6 / done)
            if measure in PACED:
                pieces += (
                    f"; {rate:.1f} streams/s; wrk completed {result.completed} streams"
                    f" = {result.completed / connections:.2f} per connection"
                )
            probes = ", ".join(f"core {core} {us:.0f}" for core, us in speeds.items())
            print(f"  {measure} round {rnd + 1}{where} {name}: {result}; {watch}; "
                  f"other programs {others.cores:.2f} cores; steal {steal}; "
                  f"probe us {probes}{pieces}", flush=True)  # fmt: skip
            if others.cores >= OTHERS_CORES:
                shared = notes["others"]
                shared[f"{name} {measure} round {rnd + 1}{where}"] = round(others.cores, 2)  # type: ignore[index]
            if max(steal.by_core.values(), default=0.0) >= STEAL_SHARE:
                stolen = notes["steal"]
                stolen[f"{name} {measure} round {rnd + 1}{where}"] = {  # type: ignore[index]
                    core: round(share, 2) for core, share in steal.by_core.items()
                }
            if abs(clock.step_s) > CLOCK_STEP_S:
                print(
                    f"  the wall clock stepped {clock.step_s:+.1f} s in this round "
                    "(the machine paused?): wrk's figures for it are wrong",
                    flush=True,
                )
                steps = notes["clock_steps"]
                steps[f"{name} {measure} round {rnd + 1}{where}"] = round(clock.step_s, 1)  # type: ignore[index]
            listen = notes["listen"]
            listen.setdefault(f"{name} {measure}", []).append(watch.counters)  # type: ignore[attr-defined]
            if result.bad_responses:
                bad = notes["bad_responses"]
                bad[f"{name} {measure}"] = result.bad_responses  # type: ignore[index]
            if measure == "lat":
                record_turn(name, "p50_ms", result.p50_ms)
                record_turn(name, "p99_ms", result.p99_ms)
            else:
                record_turn(name, measure, rate)
        if slices > 1:  # each slice's own figures, for --samples-out
            kept = notes.setdefault("slices", {})
            kept.setdefault(measure, []).append(  # type: ignore[attr-defined]
                {name: dict(figures) for name, figures in turns.items()}
            )
        for name, figures in fold(turns).items():
            for key, value in figures.items():
                record(name, key, value)

    def burst_round(found: dict[str, Contender], rnd: int, place: Path) -> None:
        """Round `rnd` of the burst: every contender in turn, recorded."""
        for name, contender in in_turn(found, rnd):
            since = time.monotonic()
            outcome, peak_mb = burst(contender, args.burst_seconds)
            shown = {key: value for key, value in outcome.items() if key != "ttfb_ms"}
            print(f"  burst round {rnd + 1} {name}: {shown}, {peak_mb:.0f} MB", flush=True)
            if args.gc_log and contender.gateway:
                found_gc = c.collections(place / f"{name}.gc", since, time.monotonic())
                print(f"  burst round {rnd + 1} {name}: {found_gc}", flush=True)
            record(name, "ttfb_p50_ms", float(outcome["ttfb_p50_ms"] or 0))
            record(name, "ttfb_p99_ms", float(outcome["ttfb_p99_ms"] or 0))
            record(name, "rss_mb", peak_mb)
            record(name, "burst_failed", float(outcome["streams"] - outcome["completed"]))  # type: ignore[operator]
            record(name, "burst_streams", float(outcome["streams"] or 0))
            # every stream's TTFB, for the p99 pooled over rounds (report.pooled_lines)
            ttfbs = notes.setdefault("ttfb", {})
            ttfbs.setdefault(name, []).append(outcome["ttfb_ms"])  # type: ignore[attr-defined]

    realtime = args.redis_priority == "realtime"
    notes["redis_priority"] = args.redis_priority
    lives = lifetimes(args.method, [m for m in MEASURES if m in args.measures], args.reps)
    with (
        rig(
            directory,
            args.contenders,
            None if args.upstream_timers == "loop" else c.UPSTREAM_TIMER_RESOLUTION,
        ) as fixed,
        SpeedProbe(directory) as speed,
    ):
        for life, plan in enumerate(lives):
            # a life's own logs, configs and stores (`--method fresh`: each round's new ones)
            place = directory if len(lives) == 1 else directory / f"round{life + 1}"
            place.mkdir(exist_ok=True)
            began = time.monotonic()
            with servers(
                place,
                args.contenders,
                fixed["upstream"].base_url,
                args.before,
                args.redis_core,
                args.before_store,
                realtime,
                args.gc_log,
            ) as own:
                found = {name: (fixed | own)[name] for name in args.contenders}
                print(f"  life {life + 1} of {len(lives)}: {len(own)} contenders started in "
                      f"{time.monotonic() - began:.1f} s", flush=True)  # fmt: skip
                scripts: dict[str, dict[str, Path]] = {}
                for step, (measure, rnd) in enumerate(plan):
                    if measure == "burst":
                        burst_round(found, rnd, place)
                    else:
                        if measure not in scripts:  # once a measure in each life
                            scripts[measure] = warmed(found, measure, place)
                        play(found, measure, rnd, scripts[measure], speed)
                    following = plan[step + 1][0] if step + 1 < len(plan) else None
                    if len(lives) == 1 and following != measure:  # after each measure
                        notes["load"].append(os.getloadavg()[0])  # type: ignore[attr-defined]
                if len(lives) > 1:  # after each round
                    notes["load"].append(os.getloadavg()[0])  # type: ignore[attr-defined]
                if args.profile and life == len(lives) - 1 and "gateway-sqlite" in found:
                    notes["profile"] = profile(found["gateway-sqlite"], place, args.seconds,
                                               args.profile_scenarios)  # fmt: skip
    return samples, notes


def _port(contender: Contender) -> int:
    return int(contender.base_url.rsplit(":", 1)[1])


# The measures `--method sliced` slices: the saturated ones, whose rate holds from a second's
# run. Not the paced ones (a stream lasts ~1 s: a 1 s slice completes about none) nor the
# latency at one connection (a p99 of one slice is not one of the turn).
SLICED = {m for m in WRK_MEASURES if m not in PACED and m != "lat"}
SLICE_S = 1


# How a run's rounds are made (`--method`): `whole`, one turn each, back to back, every process
# started up front; `sliced`, as `whole` but the saturated measures' turns in 1 s slices
# interleaved (19zzzzo); `fresh`, as `whole` but every round with new processes (19zzzzr).
METHODS = ("whole", "sliced", "fresh")


def lifetimes(method: str, measures: list[str], reps: int) -> list[list[tuple[str, int]]]:
    """The contenders' lives in a run, each the (measure, round) it serves, in order. One life
    with every measure's rounds in a row (`whole`, `sliced`: every process started up front),
    or a life a round with every measure once (`fresh`): each round then starts every
    contender afresh (the rig, the upstream and the nginx proxy, stays), so that the rounds
    sample each process's own offset, which lasts its life (decision 0012, 19zzzzo) and which
    rounds of the same processes all share."""
    if method == "fresh":
        return [[(measure, rnd) for measure in measures] for rnd in range(reps)]
    return [[(measure, rnd) for measure in measures for rnd in range(reps)]]


def turn_plan(measure: str, method: str, seconds: float) -> tuple[int, float]:
    """How a round gives each contender its `seconds` on `measure`: (slices, seconds a slice).
    `whole`: one turn of `seconds` (as before 19zzzzo); `sliced`: `seconds` slices of
    SLICE_S, interleaved with the other contenders' (`schedule`), where the measure allows it."""
    if method == "sliced" and measure in SLICED:
        return max(1, round(seconds / SLICE_S)), SLICE_S
    return 1, seconds


def schedule(names: list[str], rnd: int, slices: int) -> list[str]:
    """The turns of round `rnd`: every contender once a slice, the order reversed every other
    slice (A B C C B A A B C ...: a pair's slices stand as often before as after each other,
    so a drift of the machine's speed within the round falls on both alike) and, as `in_turn`,
    every other round."""
    order = names[::-1] if rnd % 2 else names
    found: list[str] = []
    for k in range(slices):
        found += order[::-1] if k % 2 else order
    return found


def fold(turns: Samples) -> dict[str, dict[str, float]]:
    """Each contender's figures of a round from those of its slices: their mean (the slices
    last alike, so the mean rate is the requests of all ÷ their time; a per-request figure is
    the mean of the slices' own). A figure of a one-turn round is kept as it is."""
    return {
        name: {key: statistics.fmean(values) for key, values in figures.items() if values}
        for name, figures in turns.items()
    }


def whole_streams(url: str, contender: Contender, scenario: str, route: str, count: int) -> None:
    """A paced measure's warm-up: `count` streams opened at once, each read to its end. Not
    wrk's 1 s window: a paced stream lasts ~1 s, so the window's end would cut every one, and
    the gateway cancels a cut stream by closing its upstream connection (the contract: the
    provider stops generating) where the pass-throughs read on and keep theirs, so the gateway
    alone would open `count` new upstream connections in the measured turn's first wave
    (decision 0012, 19zzzzx: per line at 20 ms 0.98x with them, 1.00x without)."""
    long_streams({
        "url": url,
        "body": contender.body(scenario, False, route).decode(),
        "headers": contender.headers,
        "count": count,
        "ramp_s": 0.0,
        "until_s": 0.0,
        "timeout_s": 30.0,
    })  # fmt: skip


def in_turn(found: dict[str, Contender], rnd: int) -> list[tuple[str, Contender]]:
    """The contenders of round `rnd`: in their order in even rounds, reversed in odd ones, so
    that none always runs just after the same other (whose leftovers, e.g. a ledger batch
    still being written or sockets closing, would load its rounds alone)."""
    return [(name, found[name]) for name in schedule(list(found), rnd, 1)]


def burst(contender: Contender, seconds: float) -> tuple[dict[str, float | int | None], float]:
    """BURST_STREAMS streams opened within one second over the 100 ms-paced upstream, each
    reopened as it ends, for `seconds`: TTFB and the peak RSS of the contender's process tree."""
    spec = {
        "url": contender.base_url + contender.path("slow"),
        "body": contender.body("slow").decode(),
        "headers": contender.headers,
        "count": BURST_STREAMS,
        "ramp_s": 1.0,
        "until_s": seconds,
        "timeout_s": 30.0,
    }
    with PeakRss(contender.pid) as rss:
        outcome = long_streams(spec)
    return outcome, rss.peak_mb


def profile(
    contender: Contender, directory: Path, seconds: float, scenarios: list[str]
) -> dict[str, list[str]]:
    """py-spy on the gateway under each scenario's load (64 connections)."""
    out = {}
    for scenario in scenarios:
        script = wrk_script(directory / f"profile-{scenario}.lua", contender.body(scenario),
                            contender.headers | {"Content-Type": "application/json"})  # fmt: skip
        out[scenario] = report.py_spy(
            contender.pid,
            directory / f"profile-{scenario}.txt",
            seconds,
            lambda: wrk(contender.base_url + contender.path(scenario), script, 64, seconds),  # noqa: B023
        )
    return out


def medians(samples: Samples) -> dict[str, dict[str, float]]:
    return {n: {m: statistics.median(v) for m, v in per.items()} for n, per in samples.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # make bench's BENCH_ARGS: a run by hand reads as the closing's (decision 0012, 19zzzzr)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--reps", type=int, default=4)
    parser.add_argument("--burst-seconds", type=float, default=8.0)
    parser.add_argument("--profile", action="store_true", help="py-spy on the gateway worker")
    parser.add_argument(
        "--profile-scenarios", type=lambda text: text.split(","), default=["json", "lines"]
    )
    parser.add_argument(
        "--measures",
        type=lambda text: set(text.split(",")),
        default=set(MEASURES) - OPT_IN,
        help=f"a comma-separated subset of {','.join(MEASURES)} for a quick look (no --write-docs;"
        f" {','.join(OPT_IN)} only run when named)",
    )
    parser.add_argument(
        "--contenders",
        type=lambda text: [n for n in CHOICES if n in text.split(",")],
        default=NAMES,
        help=f"a comma-separated subset of {','.join(CHOICES)} (no --write-docs; "
        f"{BARE_RSGI} is informational and only run when named)",
    )
    parser.add_argument("--before", type=Path, help=f"add {BEFORE}: this checkout's gateway")
    parser.add_argument(
        "--before-store",
        choices=("sqlite", "redis"),
        default="sqlite",
        help=f"{BEFORE}'s store: embedded, or the Redis of gateway-redis (a database of its own)",
    )
    parser.add_argument(
        "--redis-core",
        choices=(c.SERVER_CORE, c.CLIENT_CORE),
        default=c.SERVER_CORE,
        help="where redis-server runs: with the gateway worker, as the embedded store's work is "
        "(the default since issue 19zzzze, as `make bench`), or with the load generator and the "
        "upstream (1: before 19zzzze; on the per-line measure that core is full and its share "
        "of redis-server's work decides the Redis rounds)",
    )
    c.add_redis_priority(parser)
    parser.add_argument(
        "--gc-log",
        action="store_true",
        help="each gateway logs its cycle collections; each burst round prints them (no "
        "--write-docs)",
    )
    parser.add_argument(
        "--paced-rate",
        choices=("stream-time", "window"),
        default="stream-time",
        help=f"the paced measures' ({','.join(sorted(PACED))}) streams/s: connections ÷ the "
        "mean stream time (the default since issue 19zzzzb), or wrk's whole streams completed "
        "in the window ÷ the window (before 19zzzzb; quantized to connections x k / seconds)",
    )
    parser.add_argument(
        "--upstream-timers",
        choices=(c.UPSTREAM_TIMER_RESOLUTION, "loop"),
        default=c.UPSTREAM_TIMER_RESOLUTION,
        help="the upstream nginx's clock: read every millisecond (the default since issue "
        "19zzzzf: a paced stream's 20 ms sleeps last 20 ms), or after each wait for events "
        "(`loop`, before 19zzzzf: each sleep also lasts the loop iteration that set it, and "
        "the 20 ms paced streams last ~1.3 s, not ~1.0)",
    )
    parser.add_argument(
        "--method",
        choices=METHODS,
        default="fresh",
        help="how a run's rounds are made: `fresh` (`make bench`'s since issue 19zzzzr), each "
        "round starts every contender afresh (the upstream and the nginx proxy stay) and warms "
        "it up, then measures one turn each, back to back, so that the rounds sample each "
        "process's own offset; `whole`, every process started up front (before 19zzzzr: A/A "
        "run medians ~3x as far from 1, decision 0012); `sliced`, as "
        f"`whole` but the saturated measures ({','.join(sorted(SLICED))}) in slices of "
        f"{SLICE_S} s interleaved with the others' (A B C C B A ...), tried in issue 19zzzzo: "
        "its A/A spread was no tighter (decision 0012)",
    )
    parser.add_argument(
        "--samples-out",
        type=Path,
        help="also write the rounds' figures and the burst's every TTFB here (JSON), for a "
        "closer look at the statistics",
    )
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    if args.before is not None:
        if args.write_docs:
            parser.error("--before is for a quick look (no --write-docs)")
        args.contenders.append(BEFORE)
    if not args.measures <= set(MEASURES):
        parser.error(f"--measures: choose among {','.join(MEASURES)}")
    if args.write_docs and (
        args.measures != set(MEASURES) - OPT_IN
        or args.contenders != NAMES
        or args.redis_core != c.SERVER_CORE
        or args.gc_log
        or args.paced_rate != "stream-time"
        or args.upstream_timers != c.UPSTREAM_TIMER_RESOLUTION
        or args.method != "fresh"  # (the resolution the report states is fresh rounds')
    ):
        parser.error("--write-docs needs every measure and every contender")
    if not (1 <= args.seconds <= 60 and 1 <= args.reps <= 10 and 2 <= args.burst_seconds <= 60):
        parser.error("bounds: --seconds 1..60, --reps 1..10, --burst-seconds 2..60")
    if "upstream" not in args.contenders:
        args.contenders.insert(0, "upstream")  # the added latency is measured against it
    for tool in ("nginx", "wrk", "taskset", "redis-server"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            parser.error(f"{tool} is missing (make bench installs it from Debian)")
    with tempfile.TemporaryDirectory(prefix="klawd-bench-") as tmp:
        samples, notes = run(args, Path(tmp))
        if notes["bad_responses"]:  # the contenders' logs say why: kept past the run
            kept = Path(tempfile.mkdtemp(prefix="klawd-bench-bad-"))
            for log in Path(tmp).rglob("*.log"):  # (a fresh round's in its own directory)
                shutil.copy(log, kept / "-".join(log.relative_to(tmp).parts))
            print(f"bad responses: the contenders' logs are kept in {kept}", file=sys.stderr)
    if args.samples_out is not None:
        kept = {
            "samples": samples,
            "ttfb": notes.get("ttfb") or {},
            "slices": notes.get("slices") or {},
        }
        args.samples_out.write_bytes(orjson.dumps(kept))
    text = report.section(samples, notes, args)
    print(text)
    if args.write_docs:
        report.write_docs(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
