"""The store's hot-path Redis client (gateway/store/resp.py) against redis-py, same run.

    .venv/bin/python loadtests/bench/resp_bench.py [--calls 3000] [--reps 5] [--concurrency 64]

A redis-server of its own (pinned to core 1, no persistence) with the gateway's function library
loaded; this process (pinned to core 0, uvloop, as a gateway worker) calls the admission function
`klawd_admit_v1` through (a) redis-py's asyncio client configured as RedisStore configures it
(BlockingConnectionPool, socket timeouts) and (b) RespClient. Per repetition and client:
`--calls` calls one after the other, then `--calls` at `--concurrency` callers at once; clients
alternate within each repetition. Printed: medians over the repetitions of the client process's
CPU µs per call and wall µs per call, and the ratios. Bounded: a fixed count of calls, the
server stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gateway.store.redis import LIBRARY
from gateway.store.resp import RespClient
from loadtests.bench.contenders import SERVER_CORE, free_port, redis_server, stop

KEYS = ["klawd:acct:{b}:rpm", "klawd:acct:{b}:rpd", "klawd:acct:{b}:tpm", "klawd:acct:{b}:credits"]
ARGS = [1_000_000_000, 1_000_000_000, 0, 0, 1]  # huge limits, no reservation: always admitted

Call = Callable[[], Awaitable[Any]]


async def timed(call: Call, calls: int, concurrency: int) -> tuple[float, float]:
    """(CPU µs per call, wall µs per call)."""
    cpu, wall = time.process_time(), time.perf_counter()
    if concurrency == 1:
        for _ in range(calls):
            await call()
    else:

        async def worker(count: int) -> None:
            for _ in range(count):
                await call()

        share = calls // concurrency
        await asyncio.gather(*(worker(share) for _ in range(concurrency)))
        calls = share * concurrency
    return (
        (time.process_time() - cpu) / calls * 1e6,
        (time.perf_counter() - wall) / calls * 1e6,
    )


async def run(url: str, calls: int, reps: int, concurrency: int) -> dict[str, list[float]]:
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=256, timeout=2.0, socket_connect_timeout=1.0, socket_timeout=2.0
    )
    redis_py = aioredis.Redis.from_pool(pool)
    await redis_py.execute_command("FUNCTION", "LOAD", "REPLACE", LIBRARY)  # type: ignore[no-untyped-call]
    lean = RespClient.from_url(url)
    clients: dict[str, Call] = {
        "redis-py": lambda: redis_py.execute_command(
            "FCALL", "klawd_admit_v1", len(KEYS), *KEYS, *ARGS
        ),
        "RespClient": lambda: lean.execute("FCALL", "klawd_admit_v1", len(KEYS), *KEYS, *ARGS),
    }
    for call in clients.values():  # warm-up: connections open, the function cached
        await timed(call, 200, 1)
    samples: dict[str, list[float]] = {}
    for _ in range(reps):
        for name, call in clients.items():
            for mode, parallel in (("sequential", 1), (f"{concurrency} at once", concurrency)):
                cpu, wall = await timed(call, calls, parallel)
                samples.setdefault(f"{name}|{mode}|cpu", []).append(cpu)
                samples.setdefault(f"{name}|{mode}|wall", []).append(wall)
    await redis_py.aclose()
    await lean.close()
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    if not (100 <= args.calls <= 100_000 and 1 <= args.reps <= 20):
        parser.error("bounds: --calls 100..100000, --reps 1..20")
    os.sched_setaffinity(0, {int(SERVER_CORE)})
    with tempfile.TemporaryDirectory(prefix="klawd-resp-bench-") as tmp:
        port = free_port()
        server: subprocess.Popen[bytes] = redis_server(port, Path(tmp))
        try:
            url = f"redis://127.0.0.1:{port}/0"
            for _ in range(100):  # until it accepts connections
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    time.sleep(0.05)
            samples = uvloop.run(run(url, args.calls, args.reps, args.concurrency))
        finally:
            stop(server)
    print(f"klawd_admit_v1 FCALL, median of {args.reps} repetitions of {args.calls} calls")
    print(f"{'mode':<14} {'client':<11} {'CPU µs/call':>12} {'wall µs/call':>13}")
    for mode in ("sequential", f"{args.concurrency} at once"):
        medians = {}
        for name in ("redis-py", "RespClient"):
            cpu = statistics.median(samples[f"{name}|{mode}|cpu"])
            wall = statistics.median(samples[f"{name}|{mode}|wall"])
            medians[name] = cpu
            print(f"{mode:<14} {name:<11} {cpu:>12.1f} {wall:>13.1f}")
        print(f"{mode:<14} {'ratio':<11} {medians['redis-py'] / medians['RespClient']:>11.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
