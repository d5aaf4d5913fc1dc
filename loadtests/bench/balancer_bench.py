"""What choosing among a model's deployments costs per request, beside a single-deployment model
in the same run. In-process, as metering_bench.py: the ASGI app driven directly (no sockets), the
models taking turns request by request, so both see the same machine (shared, noisy machines
move whole runs by 30 %: only side-by-side figures mean anything).

    .venv/bin/python loadtests/bench/balancer_bench.py [--requests 2000] [--repeat 5] 2>/dev/null
    make bench-balancer

Models (all on local echo providers, no upstream): `klawd/echo` (one deployment, as every model
was before issue 14) and `bench/echo3` (three deployments, weights 3:2:1, one of them in a second
priority tier), each with `[routing] balance` weighted, least-busy and least-latency; and on
Redis `bench/capped` (three deployments whose providers have requests_per_minute: one
klawd_capacity_take_v1 call per request), shown for what it costs, not held to the 3 %.
The target (issue 14): the multi-deployment model within 3 % of the single one.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gateway.routing.balance import Balancer
from gateway.routing.capacity import MemoryCapacity
from gateway.routing.catalog import Catalog, CatalogEntry
from gateway.routing.health import Health
from gateway.routing.retry import Retrier
from gateway.settings import load_settings
from loadtests.bench.metering_bench import Harness, new_key
from tests.conftest import free_port
from tests.redis_server import RedisServer

CONFIG = """
[routing]
balance = "{policy}"

[providers.echo-a]
kind = "echo"
[providers.echo-b]
kind = "echo"
[providers.echo-c]
kind = "echo"
[providers.capped-a]
kind = "echo"
requests_per_minute = 1000000000
[providers.capped-b]
kind = "echo"
requests_per_minute = 1000000000

[[models]]
id = "bench/echo3"
deployments = [
  {{ provider = "echo-a", upstream_model = "echo", weight = 3 }},
  {{ provider = "echo-b", upstream_model = "echo", weight = 2 }},
  {{ provider = "echo-c", upstream_model = "echo", priority = 1 }},
]

[[models]]
id = "bench/capped"
deployments = [
  {{ provider = "capped-a", upstream_model = "echo" }},
  {{ provider = "capped-b", upstream_model = "echo" }},
]
"""


def body(model: str) -> bytes:
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hi there"}]})


async def one(harness: Harness, headers: dict[str, str], payload: bytes) -> float:
    started = time.perf_counter()
    status, answer = await harness.request("POST", "/v1/chat/completions", payload, headers)
    elapsed = time.perf_counter() - started
    assert status == 200, answer
    return elapsed * 1e6


async def run(
    store_url: str, policy: str, models: list[str], requests: int, repeat: int
) -> dict[str, float]:
    """Per model, the median over `repeat` runs of the median request time; within a run the
    models take turns request by request, so a busy moment of the machine hits them alike."""
    harness = Harness(store_url, CONFIG.format(policy=policy))
    await harness.start()
    try:
        key = await new_key(harness)
        headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
        payloads = {m: body(m) for m in models}
        for _ in range(100):  # warm caches
            for payload in payloads.values():
                await one(harness, headers, payload)
        runs: dict[str, list[float]] = {m: [] for m in models}
        for _ in range(repeat):
            times: dict[str, list[float]] = {m: [] for m in models}
            for _ in range(requests):
                for model in models:
                    times[model].append(await one(harness, headers, payloads[model]))
            for model in models:
                runs[model].append(statistics.median(times[model]))
        return {m: statistics.median(r) for m, r in runs.items()}
    finally:
        await harness.stop()


async def _served(target: CatalogEntry) -> int:
    return 1


async def choice_alone(policy: str, calls: int, repeat: int) -> dict[str, float]:
    """The retrier's choice by itself (no app, no request): call_targets with an attempt that
    answers at once, then the release, per call; the minimum over `repeat` runs."""
    directory = Path(tempfile.mkdtemp(prefix="klawd-bench-"))
    config = directory / "klawd.toml"
    config.write_text(CONFIG.format(policy=policy))
    settings = load_settings(config)
    catalog = Catalog(settings, {})
    retrier = Retrier(
        lambda target: settings.provider_retry(target.model.provider),
        Health(),
        balancer=Balancer(settings.routing.balance),
        capacity=MemoryCapacity(),
    )
    best: dict[str, float] = {}
    for _ in range(repeat):
        for model in ("klawd/echo", "bench/echo3"):
            targets = [catalog.entries[model]]
            started = time.perf_counter()
            for _ in range(calls):
                _, served, _ = await retrier.call_targets(targets, _served, tokens=10)
                retrier.release(served, 10, 10)
            per_call = (time.perf_counter() - started) / calls * 1e6
            best[model] = min(best.get(model, per_call), per_call)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="klawd-bench-"))
    redis = RedisServer(free_port(), tmp)
    redis.start()
    rows: list[tuple[str, str, str, float, float]] = []
    try:
        import uvloop

        for store, url in (("sqlite", f"sqlite:///{tmp}/bench.db"), ("redis", redis.url)):
            for policy in ("weighted", "least-busy", "least-latency"):
                models = ["klawd/echo", "bench/echo3"]
                if store == "redis" and policy == "weighted":
                    models.append("bench/capped")
                redis.flush()
                result = uvloop.run(run(url, policy, models, args.requests, args.repeat))
                single = result["klawd/echo"]
                for model in models[1:]:
                    rows.append((store, policy, model, single, result[model]))
    finally:
        redis.stop()
    import uvloop

    print("the choice alone (call_targets + release), us per call, best of 7 runs of 20000:")
    for policy in ("weighted", "least-busy", "least-latency"):
        alone = uvloop.run(choice_alone(policy, 20_000, 7))
        single, three = alone["klawd/echo"], alone["bench/echo3"]
        print(
            f"  {policy:14} single {single:5.2f}  three deployments {three:5.2f}  "
            f"(+{three - single:.2f})"
        )
    print()
    print(f"{'store':7} {'balance':14} {'model':13} {'single us':>9} {'model us':>9} {'ratio':>6}")
    for store, policy, model, single, value in rows:
        print(f"{store:7} {policy:14} {model:13} {single:9.1f} {value:9.1f} {value / single:6.3f}")
    print(
        f"(median over {args.repeat} runs of each model's median request time; "
        f"{args.requests} requests per model and run, the models taking turns)"
    )


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
