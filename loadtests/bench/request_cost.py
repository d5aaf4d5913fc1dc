"""What one non-streamed chat request costs the gateway's own Python path, in process.

    .venv/bin/python -m loadtests.bench.request_cost [--requests 3000] [--reps 3] [--tree DIR]
        [--store sqlite|redis] [--top N] [--phases [--detail N]]
        [--route chat|messages|responses]

The app is driven directly (no server: Granian's share is the same for every version), with the
bench's OpenAI-shaped model in front of nginx on loopback (the real HTTP client and provider),
embedded store, every feature on as in `make bench`. It prints:

- each piece of the request path timed alone in a loop (best and median of 5 runs of 2000 calls,
  process CPU, the SQLite thread's ledger batches included in `settle`): stable enough on a
  shared machine to compare two versions piece by piece;
- the whole request, 16 at once: CPU µs per request (every thread of the process) and the
  Python function calls per request under cProfile (deterministic, so load-independent).

`--store redis`: the Redis store instead, on a redis-server of its own pinned to the upstream's
core at real-time priority where allowed (as `make bench` runs it; `--redis-priority normal`: as
before issue 19zd); its CPU per request (from /proc) is printed beside the worker's.

`--route messages|responses`: the whole request is a short request of that route's shape
(stream_cost's, not streamed) to the same model, translated, instead of the chat body; the
pieces timed alone are the chat route's and are skipped.

`--tree DIR` runs another checkout's `gateway` package (with its built `_core`) instead: run the
command twice for a before/after comparison (docs/benchmarks.md, "Single answers, second pass").
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

if "--tree" in sys.argv:
    sys.path.insert(0, str(Path(sys.argv[sys.argv.index("--tree") + 1]).resolve()))

import orjson
import uvloop

from gateway.app import create_app
from gateway.settings import load_settings
from loadtests.bench import contenders as c
from loadtests.bench.measure import tree_cpu_s
from loadtests.bench.metering_bench import ADMIN, Harness
from loadtests.bench.phases import ORDER, PhaseCounter
from loadtests.bench.stream_cost import ROUTES


class ConfiguredHarness(Harness):
    """metering_bench's harness on a whole config file (the bench's providers and models)."""

    def __init__(self, config: Path) -> None:
        environ = {"KLAWD_ADMIN_TOKEN": ADMIN, "BENCH_UPSTREAM_KEY": "sk-bench-upstream"}
        self.app = create_app(load_settings(config), environ)
        self.lifespan_state: dict[str, Any] = {}
        self._lifespan_queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._sent: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None


def listening(port: int) -> Callable[[], bool]:
    def check() -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    return check


BODY = orjson.dumps(
    {
        "model": c.gateway_model("json"),
        "messages": [{"role": "user", "content": "Say hello to the benchmark."}],
        "max_tokens": 64,
    }
)


async def best_of(call: Callable[[], Awaitable[Any]], runs: int = 5, calls: int = 2000) -> str:
    """CPU µs per call: best and median of `runs` runs (the loop yields now and then, so the
    recorder's and the request log's timers run as they do under load)."""
    per_call = []
    for _ in range(runs):
        started = time.process_time()
        for index in range(calls):
            await call()
            if index % 64 == 0:
                await asyncio.sleep(0)
        await asyncio.sleep(0.05)  # the ledger batch of the last calls
        per_call.append((time.process_time() - started) * 1e6 / calls)
    return f"best {min(per_call):6.2f}  median {statistics.median(per_call):6.2f} µs"


async def pieces(harness: Harness, key: str) -> None:
    from gateway import metering
    from gateway.api import chat
    from gateway.billing import TokenUsage
    from gateway.requestlog import RequestRecord, current_request

    state = harness.lifespan_state["klawd"]
    auth = await state.keys.authenticate(f"Bearer {key}", time.time())
    request = chat.decode_chat_request(BODY)
    targets = chat.resolve_chat(state.catalog, request, BODY)
    record = RequestRecord("req_bench", "POST")
    record.route, record.status = "/v1/chat/completions", 200
    current_request.set(record)

    async def admit() -> Any:
        reserve = metering.reserve_for_chat
        return await state.meter.admit(
            auth, "req_bench", request.model, targets, lambda allowed: reserve(request, allowed)
        )

    ticket = await admit()
    usage = TokenUsage(12, 7)

    async def authenticate() -> None:
        await state.keys.authenticate(f"Bearer {key}", time.time())

    async def route() -> None:
        chat.resolve_chat(state.catalog, chat.decode_chat_request(BODY), BODY)

    async def settle() -> None:
        state.meter.settle(ticket, targets[0], usage, 0, 200, False)
        await state.meter.charge_tokens(ticket, usage)

    async def log_and_metrics() -> None:
        state.meter.observer.http_finished(record, 1.0, 1.001)

    for name, call in (
        ("auth (cached key)", authenticate),
        ("decode + route + bounds", route),
        ("admit", admit),
        ("settle (ledger included)", settle),
        ("metrics + log line", log_and_metrics),
    ):
        print(f"{name:26s} {await best_of(call)}", flush=True)


async def whole(
    harness: Harness,
    key: str,
    requests: int,
    reps: int,
    top: int = 0,
    store_pid: int | None = None,
    phases: bool = False,
    detail: int = 0,
    route: str = "chat",
) -> None:
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    concurrency = 16
    path, short = ROUTES[route]
    body = BODY if route == "chat" else orjson.dumps(short | {"model": c.gateway_model("json")})

    async def client(count: int) -> None:
        for _ in range(count):
            status, answer = await harness.request("POST", path, body, headers)
            if status != 200:
                raise RuntimeError(f"{status}: {answer[:200]!r}")

    each = requests // concurrency
    await asyncio.gather(*(client(20) for _ in range(concurrency)))  # warm-up
    for _ in range(reps):
        started = time.process_time()
        store_started = tree_cpu_s(store_pid) if store_pid else 0.0
        await asyncio.gather(*(client(each) for _ in range(concurrency)))
        await asyncio.sleep(0.05)  # the last ledger batch
        cpu = (time.process_time() - started) * 1e6 / (each * concurrency)
        line = f"whole request, 16 at once: {cpu:6.1f} µs CPU per request"
        if store_pid:
            store_cpu = (tree_cpu_s(store_pid) - store_started) * 1e6 / (each * concurrency)
            line += f" (+ redis-server {store_cpu:5.1f} µs)"
        print(line, flush=True)
    profile = cProfile.Profile()
    profile.enable()
    await asyncio.gather(*(client(each) for _ in range(concurrency)))
    profile.disable()
    stats = pstats.Stats(profile)
    count = each * concurrency
    print(f"whole request: {stats.total_calls / count:.1f} function calls per request")  # type: ignore[attr-defined]
    rows = sorted(stats.stats.items(), key=lambda item: -item[1][2])[:top]  # type: ignore[attr-defined]
    for (file, line, name), (_, calls, own, _, _) in rows:
        print(f"  {own * 1e6 / count:7.2f} us own  {calls / count:6.2f} calls  "
              f"{Path(file).name}:{line} {name}")  # fmt: skip
    if phases:
        counter = PhaseCounter()
        with counter.counting():
            await asyncio.gather(*(client(each) for _ in range(concurrency)))
        print("\n".join(counter.table(count, "calls per single answer")))
        for phase in ORDER if detail else ():
            if counter.calls[phase]:
                print(f"{phase}:\n" + "\n".join(counter.detail(count, phase, detail)))


async def main(args: argparse.Namespace) -> None:
    directory = Path(tempfile.mkdtemp(prefix="klawd-request-cost-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)  # as `klawd serve` runs it
    port = c.free_port()
    upstream = c.nginx(c.upstream_conf(directory, port), directory, "upstream", c.CLIENT_CORE)
    redis = None
    try:
        config = directory / "klawd.toml"
        store = f"sqlite:///{directory / 'bench.db'}"
        if args.store == "redis":
            redis_port = c.free_port()
            realtime = args.redis_priority == "realtime"
            redis = c.redis_server(redis_port, directory, realtime=realtime)
            c.wait_for(listening(redis_port), "redis-server")
            store = f"redis://127.0.0.1:{redis_port}/0"
        text = c.gateway_conf(8080, f"http://127.0.0.1:{port}", store)
        if args.tree is not None:  # an older version may not know the newer [server] fields
            text = "\n".join(line for line in text.splitlines() if not line.startswith("max_in"))
        config.write_text(text)
        c.wait_for(listening(port), "upstream")
        harness = ConfiguredHarness(config)
        await harness.start()
        admin = {"authorization": f"Bearer {ADMIN}", "content-type": "application/json"}
        account = {"name": "bench", "plan": "bench"}
        _, body = await harness.request("POST", "/admin/accounts", orjson.dumps(account), admin)
        path = f"/admin/accounts/{orjson.loads(body)['id']}/keys"
        _, body = await harness.request("POST", path, b"{}", admin)
        key: str = orjson.loads(body)["key"]
        if args.route == "chat":
            await pieces(harness, key)
        await whole(
            harness,
            key,
            args.requests,
            args.reps,
            args.top,
            redis.pid if redis else None,
            args.phases,
            args.detail,
            args.route,
        )
        await harness.stop()
    finally:
        if redis is not None:
            c.stop(redis)
        c.stop(upstream)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--tree", type=Path, help="another checkout's gateway package")
    parser.add_argument("--top", type=int, default=0, help="the top functions by own time")
    parser.add_argument("--store", choices=("sqlite", "redis"), default="sqlite")
    parser.add_argument("--route", choices=tuple(ROUTES), default="chat")
    c.add_redis_priority(parser)
    parser.add_argument(
        "--phases",
        action="store_true",
        help="calls per request by phase (loadtests/bench/phases.py)",
    )
    parser.add_argument(
        "--detail", type=int, default=0, help="with --phases: each phase's top N functions"
    )
    uvloop.run(main(parser.parse_args()))
