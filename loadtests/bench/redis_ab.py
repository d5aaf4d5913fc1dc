"""One request on the Redis store, this checkout against another, in process: what noise does
not skew.

    .venv/bin/python -m loadtests.bench.redis_ab --before /work/wt/before [--requests 2000]
        [--reps 5] [--stream]

Both gateways are driven directly as request_cost drives them (no server), each in a process of
its own pinned to core 0, the bench's OpenAI-shaped model in front of nginx on loopback and one
redis-server, both on core 1 (as `make bench` places them, redis-server at real-time priority
where allowed: `--redis-priority`); each tree uses a database of its own. Per tree it prints:

- instructions per request (callgrind, the worker process only: the run with 2N requests less
  the run with N, divided by N; 16 requests at once): repeatable whatever the machine's load;
- at one request at a time: the median wall time of a request (the added latency's in-process
  part: the gateway's own path, the round trip to redis-server and the upstream's);
- 16 requests at once: CPU µs per request of the worker (every thread) and of redis-server
  (/proc), and Redis's commands and reads per request (`INFO`).

Rounds alternate the trees (ABBA...), so what the machine does to one it does to the other;
medians of the rounds. `--stream`: streamed requests (one chunk per event, 50 events) instead
of single answers.
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
from typing import Any

if "--tree" in sys.argv:  # the inner process of another checkout: its `gateway` first
    sys.path.insert(0, str(Path(sys.argv[sys.argv.index("--tree") + 1]).resolve()))

import orjson

from loadtests.bench import contenders as c
from loadtests.bench.measure import tree_cpu_s

HERE = Path(__file__).resolve().parents[2]
CONCURRENCY = 16


def _body(stream: bool) -> bytes:
    payload: dict[str, Any] = {
        "model": c.gateway_model("event" if stream else "json"),
        "messages": [{"role": "user", "content": "Say hello to the benchmark."}],
        "max_tokens": 64,
    }
    if stream:
        payload["stream"] = True
    return orjson.dumps(payload)


async def serve(config: Path, mode: str, requests: int, rounds: int, stream: bool) -> list[float]:
    """One tree's figures for `mode` ("cpu": CPU µs per request at 16 at once; "lat": median
    wall µs of a request at one at a time; "count": `requests` requests at 16 at once)."""
    import uvloop  # noqa: F401 (the loop the caller runs this on)

    from loadtests.bench.metering_bench import ADMIN
    from loadtests.bench.request_cost import ConfiguredHarness

    body = _body(stream)
    harness = ConfiguredHarness(config)
    await harness.start()
    admin = {"authorization": f"Bearer {ADMIN}", "content-type": "application/json"}
    account = b'{"name":"bench","plan":"bench"}'
    _, created = await harness.request("POST", "/admin/accounts", account, admin)
    path = f"/admin/accounts/{orjson.loads(created)['id']}/keys"
    _, created = await harness.request("POST", path, b"{}", admin)
    headers = {"authorization": f"Bearer {orjson.loads(created)['key']}"}
    headers["content-type"] = "application/json"
    stats = _redis_stats(config)

    async def one() -> None:
        status, answer = await harness.request("POST", "/v1/chat/completions", body, headers)
        if status != 200:
            raise RuntimeError(f"{status}: {answer[:200]!r}")

    async def client(count: int) -> None:
        for _ in range(count):
            await one()

    await asyncio.gather(*(client(256 // CONCURRENCY) for _ in range(CONCURRENCY)))  # warm-up
    out: list[float] = []
    for _ in range(rounds):
        if mode == "lat":
            walls = []
            for _ in range(requests):
                started = time.perf_counter()
                await one()
                walls.append((time.perf_counter() - started) * 1e6)
            out.append(statistics.median(walls))
            continue
        redis_before, info_before = tree_cpu_s(stats[0]), await stats[1]()
        started = time.process_time()
        await asyncio.gather(*(client(requests // CONCURRENCY) for _ in range(CONCURRENCY)))
        await asyncio.sleep(0.05)  # the ledger's batch of the last ones
        cpu = (time.process_time() - started) * 1e6 / requests
        redis_cpu = (tree_cpu_s(stats[0]) - redis_before) * 1e6 / requests
        info = await stats[1]()
        commands, reads = (
            (after - before) / requests for after, before in zip(info, info_before, strict=True)
        )
        out += [cpu, redis_cpu, commands, reads]
    await harness.stop()
    return out


def _redis_stats(config: Path) -> tuple[int, Any]:
    """redis-server's pid and a coroutine function answering (commands, reads) so far (the
    INFO calls themselves are not counted by the differences: one each side)."""
    from gateway.store.resp import RespClient

    url = re.search(r'url = "(redis://[^"]+)"', config.read_text())
    assert url is not None
    client = RespClient.from_url(url[1])
    pid = int((config.parent / "redis.pid").read_text())

    async def info() -> tuple[int, int]:
        text = (await client.execute("INFO", "stats")).decode()
        commands = int(re.search(r"total_commands_processed:(\d+)", text)[1])  # type: ignore[index]
        reads = int(re.search(r"total_reads_processed:(\d+)", text)[1])  # type: ignore[index]
        return commands, reads

    return pid, info


def run(tree: Path | None, config: Path, mode: str, requests: int, stream: bool,
        valgrind: bool = False) -> tuple[list[float], int]:  # fmt: skip
    command = [sys.executable, "-m", "loadtests.bench.redis_ab", "--inner", str(config),
               "--mode", mode, "--requests", str(requests)]  # fmt: skip
    if stream:
        command.append("--stream")
    if tree is not None:
        command += ["--tree", str(tree)]
    command = ["taskset", "-c", c.SERVER_CORE, *command]
    if valgrind:
        command[3:3] = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    env = os.environ | {"PYTHONHASHSEED": "0", "PROMETHEUS_MULTIPROC_DIR": str(config.parent)}
    result = subprocess.run(
        command, capture_output=True, text=True, check=False, timeout=1800, cwd=HERE, env=env
    )
    if result.returncode != 0:
        raise RuntimeError(f"inner run failed: {result.stderr[-2000:]}")
    counted = re.search(r"Collected : (\d+)", result.stderr) if valgrind else None
    if valgrind and counted is None:
        raise RuntimeError(f"no instruction count from callgrind: {result.stderr[-500:]}")
    return orjson.loads(result.stdout.strip().splitlines()[-1]), int(counted[1]) if counted else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="the other checkout (required)")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--stream", action="store_true")
    c.add_redis_priority(parser)
    parser.add_argument("--this", type=Path, help="a checkout (or a copy of its `gateway`) "
                        "instead of this one")  # fmt: skip
    parser.add_argument("--no-count", action="store_true", help="skip the callgrind counts")
    parser.add_argument("--count-only", action="store_true", help="only the callgrind counts")
    parser.add_argument("--inner", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("cpu", "lat", "count"), help=argparse.SUPPRESS)
    parser.add_argument("--tree", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    bounded = CONCURRENCY * 8 <= args.requests <= 20_000 and 1 <= args.reps <= 20
    if args.inner is None and not bounded:
        parser.error(f"bounds: --requests {CONCURRENCY * 8}..20000, --reps 1..20")
    if args.inner is not None:
        import uvloop

        rounds = 1
        out = uvloop.run(serve(args.inner, args.mode, args.requests, rounds, args.stream))
        print(orjson.dumps(out).decode())
        return 0
    if args.before is None:
        parser.error("--before DIR: the checkout to compare with")
    this = args.this.resolve() if args.this is not None else None
    trees: dict[str, Path | None] = {"this": this, "before": args.before.resolve()}
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="klawd-redis-ab-") as tmp:
        directory = Path(tmp)
        up_port, redis_port = c.free_port(), c.free_port()
        servers = [
            c.nginx(c.upstream_conf(directory, up_port), directory, "upstream", c.CLIENT_CORE),
            c.redis_server(redis_port, directory, realtime=args.redis_priority == "realtime"),
        ]
        try:
            configs = {}
            for db, name in enumerate(trees):
                folder = directory / name
                folder.mkdir()
                (folder / "redis.pid").write_text(str(servers[1].pid))
                url = f"redis://127.0.0.1:{redis_port}/{db}"
                configs[name] = folder / "klawd.toml"
                configs[name].write_text(c.gateway_conf(8080, f"http://127.0.0.1:{up_port}", url))
            time.sleep(0.5)
            counts: dict[str, float] = {}
            if not args.no_count:
                for name, tree in trees.items():
                    one, two = (
                        run(tree, configs[name], "count", n, args.stream, valgrind=True)[1]
                        for n in (args.requests // 4, args.requests // 2)
                    )
                    counts[name] = (two - one) / (args.requests // 4)
            lat: dict[str, list[float]] = {name: [] for name in trees}
            cpu: dict[str, list[list[float]]] = {name: [] for name in trees}
            for rnd in range(0 if args.count_only else args.reps):
                order = list(trees.items())[:: 1 if rnd % 2 == 0 else -1]
                for name, tree in order:
                    lat[name] += run(tree, configs[name], "lat", args.requests // 4,
                                     args.stream)[0]  # fmt: skip
                for name, tree in order[::-1]:
                    cpu[name].append(run(tree, configs[name], "cpu", args.requests, args.stream)[0])
        finally:
            for server in servers:
                c.stop(server)
    load.append(os.getloadavg()[0])
    kind = "streamed (one chunk per event)" if args.stream else "single answers"
    print(f"load average (1 min) at the start and the end: {load[0]:.1f}, {load[1]:.1f}")
    print(f"Redis store, {kind}, in process; medians of {args.reps} rounds (each round's in [])")
    print("| tree | instructions per request | wall µs per request, 1 at a time | "
          "worker CPU µs per request, 16 at once | redis-server CPU µs per request | "
          "Redis commands per request | Redis reads per request |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in trees:
        if args.count_only:
            print(f"| {name} | {counts[name]:,.0f} | | | | | |")
            continue
        columns = list(zip(*cpu[name], strict=True))
        figures = [
            f"{statistics.median(values):.2f} [{', '.join(f'{v:.2f}' for v in values)}]"
            if index >= 2
            else f"{statistics.median(values):.0f} [{', '.join(f'{v:.0f}' for v in values)}]"
            for index, values in enumerate(columns)
        ]
        count = f"{counts[name]:,.0f}" if name in counts else "—"
        walls = f"{statistics.median(lat[name]):.0f} [{', '.join(f'{v:.0f}' for v in lat[name])}]"
        print(f"| {name} | {count} | {walls} | " + " | ".join(figures) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
