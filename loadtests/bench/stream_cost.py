"""What a stream costs the gateway's own process: CPU per stream and memory per open stream.

    .venv/bin/python -m loadtests.bench.stream_cost [--streams 3000] [--open 1000] [--tree DIR]
        [--ramp 8000 [--gc-threshold 700,10,10]] [--store sqlite|redis]

In-process, as the metering bench: the ASGI app driven directly (embedded store, everything
on), its upstream the `make bench` nginx (loadtests/bench/contenders.py) on loopback, pinned to
the other core. The driver's `receive()` answers with a future, as Granian's does, so what the
gateway does to watch for the disconnect is what it does under Granian. CPU is this process's
user + system time (the upstream's is nginx's, not counted) over the streams, 64 at a time;
the driver's own share is in it, alike for every tree. Also the OpenAI reframer alone over the
static body (what its per-event JSON pass costs a stream). Memory: `--open` streams of the
minute-long upstream (an event a second) held open together, measured once all have their
first event (then their clients leave): Python's allocations (tracemalloc, with the top sites)
and the process's RSS growth per stream (the C heap's free pages released before its base
reading), in two passes (tracemalloc off for the RSS one); and a third pass counts the cycle
collector's tracked objects they add, by type (what every middle and full collection walks per
open stream), with the collector off while they open (`gc.get_count`: the net tracked
allocations per stream; and what a collection then finds in cycles).

`--ramp N`: N long streams opened at once, as the long run's ramp does: the time until every
one has its first event, the cycle collector's runs meanwhile (a full collection pauses every
stream), the tracked objects per open stream, and what their clients' leaving left in reference
cycles (`--gc-threshold` sets the collector's thresholds after start-up, to compare settings).

`--store redis`: the Redis store instead of the embedded one, on a redis-server of its own pinned
to the upstream's core at real-time priority where allowed (as request_cost's `--store redis`,
`--redis-priority`); with `--phases`, what a stream does
on Redis against what it does on the embedded store, call by call.

`--body FILE`: every stream sends this chat body (its `model` and `stream` set per scenario)
instead of one short user message, e.g. `--body loadtests/bench/agent_request.json --scenarios
anth --phases anth`: a coding agent's request to the Anthropic upstream.

`--route messages|responses`: the streams ask `/v1/messages` or `/v1/responses` (a short
request of that route's shape) instead of `/v1/chat/completions`; e.g. `--route messages
--scenarios anth,lines`: the Anthropic upstream passed through, an OpenAI one translated.

`--tree DIR`: a checkout's `gateway` package (with its built `_core`) measured instead, for a
before/after comparison (run the command once per tree, back to back).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if "--tree" in sys.argv:
    sys.path.insert(0, str(Path(sys.argv[sys.argv.index("--tree") + 1]).resolve()))

import orjson  # noqa: E402

from gateway.app import create_app  # noqa: E402
from gateway.settings import load_settings  # noqa: E402
from loadtests.bench.asgi_scope import http_scope  # noqa: E402
from loadtests.bench.contenders import (  # noqa: E402
    CLIENT_CORE,
    add_redis_priority,
    gateway_conf,
    gateway_model,
    nginx,
    openai_events,
    redis_server,
    stop,
    upstream_conf,
    wait_for,
)
from loadtests.bench.metering_bench import ADMIN, Harness  # noqa: E402
from loadtests.bench.phases import ORDER, PhaseCounter  # noqa: E402
from tests.conftest import free_port  # noqa: E402

CONCURRENCY = 64
# Rounds of CONCURRENCY streams before a count: one left the upstream pool short of what a
# round needs at times (its streams end while others start), so the counted round opened
# connections, ~40 Python calls per stream more in one run than in the next (issue 19zt).
WARM_ROUNDS = 3
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE


def release_free_heap() -> None:
    """The C heap's free pages handed back to the system (glibc's `malloc_trim`), so that an RSS
    reading taken next counts every page the measured streams touch. Without it, what start-up
    freed absorbs the first streams' allocations: compiling the gateway's modules (a stale or
    absent bytecode cache, as under PYTHONDONTWRITEBYTECODE) leaves about 0.7 MB free, which read
    as 0.7 KB less per stream at `--open 1000` (the same tree, 18.7 against 19.6 KB; issue 19zn)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError):  # not glibc: nothing to release this way
        pass


# The streaming routes a driver can ask (`--route`): their path and the body of a short request
# (its model and `stream` set per scenario).
ROUTES: dict[str, tuple[str, dict[str, Any]]] = {
    "chat": ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
    "messages": (
        "/v1/messages",
        {"max_tokens": 256, "messages": [{"role": "user", "content": "hi"}]},
    ),
    "responses": ("/v1/responses", {"input": "hi"}),
}


class Driver:
    """Streams through the app in-process; `receive()` after the body is a future (Granian's
    is one) resolved with `http.disconnect` when the answer has ended. `route`: a key of
    ROUTES (the chat route's, unless told)."""

    def __init__(
        self,
        harness: Harness,
        key: str,
        template: dict[str, Any] | None = None,
        route: str = "chat",
    ) -> None:
        self.harness = harness
        self.path, short = ROUTES[route]
        # The request's body (its model and `stream` set per scenario): `--body`'s, else the
        # route's short request.
        self.template = template or short
        self.bodies: dict[str, bytes] = {}
        self.headers = [
            (b"authorization", f"Bearer {key}".encode()),
            (b"content-type", b"application/json"),
        ]
        self.open: set[asyncio.Future[dict[str, Any]]] = set()
        self.sends = 0  # the app's send() calls, every stream together

    def leave_all(self) -> None:
        """Every open stream's client disconnects."""
        for ended in self.open:
            if not ended.done():
                ended.set_result({"type": "http.disconnect"})

    async def stream(self, model: str, first: asyncio.Event | None = None) -> int:
        body = self.bodies.get(model)
        if body is None:
            body = orjson.dumps(self.template | {"model": model, "stream": True})
            self.bodies[model] = body
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[dict[str, Any]] = loop.create_future()
        body_sent = False
        size = 0

        def receive() -> asyncio.Future[dict[str, Any]]:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                message: asyncio.Future[dict[str, Any]] = loop.create_future()
                message.set_result({"type": "http.request", "body": body, "more_body": False})
                return message
            return ended

        async def send(message: dict[str, Any]) -> None:
            nonlocal size
            self.sends += 1
            if message["type"] == "http.response.start":
                if message["status"] != 200:
                    raise RuntimeError(f"status {message['status']}")
            elif message["type"] == "http.response.body":
                size += len(message.get("body", b""))
                if first is not None and not first.is_set():
                    first.set()
                if not message.get("more_body") and not ended.done():
                    ended.set_result({"type": "http.disconnect"})

        scope = http_scope("POST", self.path, self.headers, body, self.harness.lifespan_state)
        self.open.add(ended)
        try:
            await self.harness.app(scope, receive, send)  # type: ignore[arg-type]
        finally:
            self.open.discard(ended)
        return size


async def new_key(harness: Harness) -> str:
    admin = {"authorization": f"Bearer {ADMIN}", "content-type": "application/json"}
    status, body = await harness.request(
        "POST", "/admin/accounts", orjson.dumps({"name": "bench", "plan": "bench"}), admin
    )
    assert status == 201, body
    account_id = orjson.loads(body)["id"]
    status, body = await harness.request("POST", f"/admin/accounts/{account_id}/keys", b"{}", admin)
    assert status == 201, body
    key: str = orjson.loads(body)["key"]
    return key


async def warm_up(driver: Driver, model: str) -> None:
    """Connections in the upstream pool, caches: WARM_ROUNDS rounds of streams."""
    for _ in range(WARM_ROUNDS):
        await asyncio.gather(*(driver.stream(model) for _ in range(CONCURRENCY)))


async def cpu_per_stream(driver: Driver, scenario: str, streams: int) -> float:
    model = gateway_model(scenario)
    await warm_up(driver, model)
    rounds = max(1, streams // CONCURRENCY)
    started = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
    for _ in range(rounds):
        await asyncio.gather(*(driver.stream(model) for _ in range(CONCURRENCY)))
    return (
        (sum(resource.getrusage(resource.RUSAGE_SELF)[:2]) - started) * 1e6 / (rounds * CONCURRENCY)
    )


async def calls_per_stream(
    driver: Driver, scenario: str, streams: int, top: int
) -> tuple[float, float, list[str]]:
    """Python function calls and `send` calls per stream under cProfile (deterministic, so
    independent of the load), and the `top` functions by own time with their calls per stream."""
    import cProfile
    import pstats

    model = gateway_model(scenario)
    await warm_up(driver, model)
    rounds = max(1, streams // CONCURRENCY)
    sends = driver.sends
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(rounds):
        await asyncio.gather(*(driver.stream(model) for _ in range(CONCURRENCY)))
    profile.disable()
    count = rounds * CONCURRENCY
    stats = pstats.Stats(profile)
    rows = sorted(stats.stats.items(), key=lambda item: -item[1][2])[:top]  # type: ignore[attr-defined]
    lines = [
        f"  {own * 1e6 / count:7.1f} us own  {calls / count:6.2f} calls  "
        f"{Path(file).name}:{line} {name}"
        for (file, line, name), (_, calls, own, _, _) in rows
    ]
    return (
        stats.total_calls / count,  # type: ignore[attr-defined]
        (driver.sends - sends) / count,
        lines,
    )


def reframer_per_stream(repetitions: int = 5000) -> float:
    """The OpenAI reframer alone (SSE parsing, the JSON pass per event, the model rewrite) over
    the static body of `make bench` (50 events in one piece), µs per stream, best of 5."""
    from gateway import _core

    body = b"".join(openai_events())
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(repetitions):
            reframer = _core.Reframer("openai", "benchsse/m", "chatcmpl-bench", 1, False)
            reframer.feed(body)
            reframer.finish()
        best = min(best, (time.perf_counter() - started) / repetitions)
    return best * 1e6


class Collections:
    """The cycle collector's runs while installed in `gc.callbacks`: per generation, the
    duration of each (a full collection is a pause of every stream)."""

    def __init__(self) -> None:
        self.runs: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.runs[info["generation"]].append(time.perf_counter() - self._started)

    def report(self) -> str:
        full = self.runs[2]
        young = ", ".join(
            f"gen{g} {len(self.runs[g])} ({sum(self.runs[g]) * 1e3:.0f} ms)" for g in (0, 1)
        )
        return (
            f"full collections {len(full)} ({sum(full) * 1e3:.0f} ms in all; each: "
            f"{', '.join(f'{d * 1e3:.0f}' for d in full) or '-'} ms); {young}"
        )


async def ramp(driver: Driver, count: int, hold_s: float = 0.0) -> str:
    """`count` streams of the minute-long upstream opened at once (the long run's ramp, in
    process): how long until every one has its first event, and what the collector did
    meanwhile; then their clients leave, and what leaving left to the collector."""
    model = gateway_model("long")
    gc.collect()
    collections = Collections()
    gc.callbacks.append(collections)
    try:
        started = time.perf_counter()
        firsts = [asyncio.Event() for _ in range(count)]
        tasks = [asyncio.ensure_future(driver.stream(model, first)) for first in firsts]
        await asyncio.wait_for(asyncio.gather(*(first.wait() for first in firsts)), 120)
        opened = time.perf_counter() - started
    finally:
        gc.callbacks.remove(collections)
    tracked = len(gc.get_objects())
    held = Collections()
    if hold_s:  # the streams' events go on: what the collector does in the steady state
        gc.callbacks.append(held)
        try:
            await asyncio.sleep(hold_s)
        finally:
            gc.callbacks.remove(held)
    driver.leave_all()
    await asyncio.wait_for(asyncio.gather(*tasks), 60)
    del tasks, firsts
    await asyncio.sleep(0.5)
    left = gc.collect()
    return (
        f"ramp {count}: all open in {opened:.2f} s; {collections.report()}; "
        f"tracked objects with all open {tracked} ({tracked / count:.0f} per stream); "
        f"unreachable once their clients left {left} ({left / count:.1f} per stream); "
        f"thresholds {gc.get_threshold()}"
        + (f"; then, all open, {hold_s:.0f} s of their events: {held.report()}" if hold_s else "")
    )


class TrackedObjects:
    """The cycle collector's tracked objects that open streams add, by type: what a collection
    walks for each open stream (a middle or full collection walks every one of them)."""

    def __init__(self) -> None:
        gc.collect()
        self.base = Counter(_type_name(o) for o in gc.get_objects())

    def opened(self, count: int, base_count: int) -> dict[str, Any]:
        """With `count` streams open: the net tracked allocations since the base (gc.get_count
        with the collector off meanwhile), the garbage a collection finds, and the live tracked
        objects per stream by type."""
        allocated = gc.get_count()[0] - base_count
        garbage = gc.collect()
        now = Counter(_type_name(o) for o in gc.get_objects())
        now.subtract(self.base)
        return {
            "allocated": allocated / count,
            "garbage": garbage / count,
            "tracked": sum(now.values()) / count,
            "by_type": [(name, n / count) for name, n in now.most_common() if n >= count / 10],
        }


def _type_name(obj: object) -> str:
    kind = type(obj)
    return f"{kind.__module__}.{kind.__qualname__}"


async def open_together(
    driver: Driver, count: int, traced: bool, objects: bool = False
) -> dict[str, Any]:
    """`count` streams of the upstream's minute-long stream (an event a second) open at once;
    what they hold once all have their first event; then their clients leave. `objects`: the
    tracked objects they add, counted with the collector off while they open (no RSS reading
    then: the counts' own lists are in it)."""
    model = gateway_model("long")
    warm = [asyncio.ensure_future(driver.stream(model)) for _ in range(32)]
    await asyncio.sleep(1)
    driver.leave_all()
    await asyncio.gather(*warm)
    gc.collect()
    counted = TrackedObjects() if objects else None
    if objects:
        gc.disable()
    release_free_heap()
    if traced:
        tracemalloc.start(1)
    base_traced = tracemalloc.get_traced_memory()[0] if traced else 0
    base_snapshot = tracemalloc.take_snapshot() if traced else None
    base_rss = rss_bytes()
    base_count = gc.get_count()[0]
    firsts = [asyncio.Event() for _ in range(count)]
    tasks = [asyncio.ensure_future(driver.stream(model, first)) for first in firsts]
    await asyncio.wait_for(asyncio.gather(*(first.wait() for first in firsts)), 60)
    result: dict[str, Any] = {"rss_per_stream_kb": (rss_bytes() - base_rss) / count / 1024}
    if counted is not None:
        result["objects"] = counted.opened(count, base_count)
    if traced and base_snapshot is not None:
        result["python_per_stream_kb"] = (
            (tracemalloc.get_traced_memory()[0] - base_traced) / count / 1024
        )
        top = tracemalloc.take_snapshot().compare_to(base_snapshot, "lineno")[:30]
        result["top"] = [
            (f"{stat.traceback[0].filename.split('site-packages/')[-1].replace(str(REPO), '')}"
             f":{stat.traceback[0].lineno}", stat.size_diff / count)
            for stat in top
        ]  # fmt: skip
        tracemalloc.stop()
    if objects:
        gc.enable()
    driver.leave_all()
    await asyncio.wait_for(asyncio.gather(*tasks), 60)
    return result


async def run(args: argparse.Namespace, upstream: str, store: str) -> None:
    directory = Path(tempfile.mkdtemp(prefix="klawd-stream-cost-"))
    conf = gateway_conf(0, upstream, "")
    extra = conf[conf.index("[plans.bench]") :]
    extra = extra.replace("pool_size = 4096", f"pool_size = {max(4096, args.open, args.ramp)}")
    store = store or f"sqlite:///{directory / 'bench.db'}"
    harness = Harness(store, extra)
    config = directory / "klawd.toml"
    config.write_text(f'[store]\nurl = "{store}"\n{extra}')
    harness.app = create_app(  # the upstream's key named by the config, as `make bench` sets it
        load_settings(config), {"KLAWD_ADMIN_TOKEN": ADMIN, "BENCH_UPSTREAM_KEY": "bench"}
    )
    await harness.start()
    try:
        driver = Driver(harness, await new_key(harness), args.template, args.route)
        print(f"reframer alone, static body: {reframer_per_stream():.1f} us per stream")
        for scenario in filter(None, args.scenarios.split(",")):
            samples = [await cpu_per_stream(driver, scenario, args.streams) for _ in range(3)]
            print(
                f"cpu {scenario}: {statistics.median(samples):.0f} us per stream "
                f"(runs: {', '.join(f'{s:.0f}' for s in samples)})",
                flush=True,
            )
        for scenario in filter(None, args.calls.split(",")):
            calls, sends, lines = await calls_per_stream(
                driver, scenario, args.streams // 4, args.top
            )
            print(f"calls {scenario}: {calls:.1f} function calls, {sends:.2f} sends per stream")
            for line in lines:
                print(line)
        for scenario in filter(None, args.phases.split(",")):
            model = gateway_model(scenario)
            await warm_up(driver, model)
            rounds = max(1, args.streams // 4 // CONCURRENCY)
            counter = PhaseCounter()
            with counter.counting():
                for _ in range(rounds):
                    await asyncio.gather(*(driver.stream(model) for _ in range(CONCURRENCY)))
            print("\n".join(counter.table(rounds * CONCURRENCY, f"calls per stream ({scenario})")))
            for phase in ORDER if args.detail else ():
                if counter.calls[phase]:
                    lines = counter.detail(rounds * CONCURRENCY, phase, args.detail)
                    print(f"{phase}:\n" + "\n".join(lines))
        if args.ramp:
            if args.gc_threshold:
                gc.set_threshold(*map(int, args.gc_threshold.split(",")))
            warm = [asyncio.ensure_future(driver.stream(gateway_model("long"))) for _ in range(32)]
            await asyncio.sleep(1)
            driver.leave_all()
            await asyncio.gather(*warm)
            print(await ramp(driver, args.ramp, args.hold), flush=True)
        if args.open:
            plain = await open_together(driver, args.open, traced=False)
            print(f"open {args.open}: RSS +{plain['rss_per_stream_kb']:.1f} KB per stream")
            traced = await open_together(driver, args.open, traced=True)
            print(f"open {args.open}: Python +{traced['python_per_stream_kb']:.2f} KB per stream")
            for site, size in traced["top"]:
                print(f"  {size:8.0f} B  {site}")
            objects = (await open_together(driver, args.open, traced=False, objects=True))[
                "objects"
            ]
            print(
                f"open {args.open}: tracked objects +{objects['tracked']:.1f} per stream "
                f"(net tracked allocations {objects['allocated']:.1f}, in cycles "
                f"{objects['garbage']:.1f}; the driver's own included)"
            )
            for name, per in objects["by_type"]:
                print(f"  {per:6.2f}  {name}")
    finally:
        await harness.stop()
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=3000, help="per CPU run (3 runs)")
    parser.add_argument("--scenarios", default="sse,event,lines")
    parser.add_argument(
        "--calls", default="", help="scenarios to count function calls and sends per stream in"
    )
    parser.add_argument("--top", type=int, default=0, help="with --calls: the top functions")
    parser.add_argument(
        "--phases", default="", help="scenarios to count calls per stream by phase in"
    )
    parser.add_argument(
        "--detail", type=int, default=0, help="with --phases: each phase's top N functions"
    )
    parser.add_argument("--open", type=int, default=1000, help="streams held open (0: skip)")
    parser.add_argument(
        "--ramp", type=int, default=0, help="streams opened at once: the collector meanwhile"
    )
    parser.add_argument(
        "--hold", type=float, default=0.0, help="with --ramp: seconds of events, all open"
    )
    parser.add_argument(
        "--gc-threshold", default="", help="with --ramp: gc.set_threshold(a, b, c) after start-up"
    )
    parser.add_argument("--tree", help="another checkout's gateway package, measured instead")
    parser.add_argument(
        "--body",
        help="a JSON chat body every stream sends (its model and stream set per scenario), "
        "e.g. loadtests/bench/agent_request.json",
    )
    parser.add_argument("--store", choices=("sqlite", "redis"), default="sqlite")
    parser.add_argument(
        "--route",
        choices=tuple(ROUTES),
        default="chat",
        help="the streaming route every stream asks",
    )
    add_redis_priority(parser)
    args = parser.parse_args()
    args.template = orjson.loads(Path(args.body).read_bytes()) if args.body else None
    import gateway

    print(f"gateway from {Path(gateway.__file__).parent}", flush=True)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    directory = Path(tempfile.mkdtemp(prefix="klawd-stream-cost-up-"))
    port = free_port()
    upstream = nginx(upstream_conf(directory, port), directory, "upstream", CLIENT_CORE)
    redis = None
    store = ""
    try:
        wait_for(lambda: _listening(port), "the upstream")
        if args.store == "redis":
            redis_port = free_port()
            realtime = args.redis_priority == "realtime"
            redis = redis_server(redis_port, directory, realtime=realtime)
            wait_for(lambda: _listening(redis_port), "redis-server")
            store = f"redis://127.0.0.1:{redis_port}/0"
        try:
            import uvloop

            uvloop.run(run(args, f"http://127.0.0.1:{port}", store))
        except ImportError:
            asyncio.run(run(args, f"http://127.0.0.1:{port}", store))
    finally:
        if redis is not None:
            stop(redis)
        stop(upstream)
        shutil.rmtree(directory, ignore_errors=True)


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


if __name__ == "__main__":
    main()
