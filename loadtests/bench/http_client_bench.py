"""The providers' HTTP client (gateway/providers/http_client.py) against aiohttp, same run.

    .venv/bin/python loadtests/bench/http_client_bench.py [--requests 3000] [--reps 5]

A loopback upstream in its own process (asyncio + uvloop, pinned to core 1) answers every
request with a fixed ~600-byte JSON body, Content-Length, keep-alive. The client process (pinned
to core 0, uvloop, as the gateway) sends POSTs shaped like the OpenAI provider's through
(a) aiohttp.ClientSession configured as gateway/providers/base.py had it, and (b) HttpClient,
each wrapped the way base.py wraps it (first-byte `asyncio.timeout`, read, release). Per
repetition and contender: `--requests` sequential requests, then `--requests` at concurrency
`--concurrency`; contenders alternate within each repetition. Printed: medians over the
repetitions of wall µs/request and client-process CPU µs/request, and the ratios.
Bounded: a fixed count of requests, and a 300 s cap on the whole run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from importlib.metadata import version
from pathlib import Path
from typing import cast

import aiohttp
import orjson
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gateway.providers.http_client import HttpClient

BODY = orjson.dumps(
    {
        "id": "chatcmpl-bench-0123456789",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Hello from the bench upstream. " * 10,
                    "refusal": None,
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 70, "total_tokens": 82},
        "system_fingerprint": "fp_0123456789",
    }
)
ANSWER = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-request-id: req_0123456789abcdef\r\n"
    b"openai-processing-ms: 42\r\ncontent-length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY
)
REQUEST_BODY = orjson.dumps(
    {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Say hello to the benchmark, briefly."}],
        "max_tokens": 4096,
    }
)
HEADERS = {
    "content-type": "application/json",
    "authorization": "Bearer sk-bench-0123456789abcdefghijklmnopqrstuvwxyz",
}
RUN_CAP_S = 300


# -- the upstream ---------------------------------------------------------------------------------
class Upstream(asyncio.Protocol):
    """Answers each request (head + Content-Length body) with ANSWER; keeps the connection."""

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no asyncio.Transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            at = head.find(b"content-length:")
            length = int(head[at + 15 : head.find(b"\r\n", at)]) if at >= 0 else 0
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            assert self.transport is not None
            self.transport.write(ANSWER)


async def serve() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Upstream, "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes our stdin
    server.close()


# -- the contenders -------------------------------------------------------------------------------
Call = Callable[[], Awaitable[bytes]]


def aiohttp_call(session: aiohttp.ClientSession, url: str) -> Call:
    async def call() -> bytes:
        async with asyncio.timeout(60):  # base.py's first-byte timeout
            response = await session.request("POST", url, data=REQUEST_BODY, headers=HEADERS)
        try:
            return await response.read()
        finally:
            response.release()

    return call


def http_client_call(client: HttpClient, url: str) -> Call:
    async def call() -> bytes:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 600
        async with asyncio.timeout(60):  # base.py's first-byte timeout
            response = await client.request("POST", url, HEADERS, REQUEST_BODY)
        response.expire_at(deadline)  # base.py's whole-request deadline
        try:
            return await response.read()
        finally:
            response.release()

    return call


async def sequential(call: Call, n: int) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        body = await call()
    assert body == BODY
    return time.perf_counter() - wall, time.process_time() - cpu


async def concurrent(call: Call, n: int, concurrency: int) -> tuple[float, float]:
    async def worker(count: int) -> None:
        for _ in range(count):
            assert await call() == BODY

    share, extra = divmod(n, concurrency)
    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker(share + (i < extra)) for i in range(concurrency)))
    return time.perf_counter() - wall, time.process_time() - cpu


async def measure(port: int, requests: int, reps: int, concurrency: int) -> None:
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=100, ttl_dns_cache=300),
        timeout=aiohttp.ClientTimeout(total=600, sock_connect=5, sock_read=60),
        auto_decompress=True,
        raise_for_status=False,
    )
    client = HttpClient(pool_size=100, connect_timeout_s=5, read_timeout_s=60)
    contenders = {
        "aiohttp": aiohttp_call(session, url),
        "HttpClient": http_client_call(client, url),
    }
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    try:
        for call in contenders.values():  # warm up: connections opened, code paths hot
            await concurrent(call, 4 * concurrency, concurrency)
            await sequential(call, 200)
        for rep in range(reps):
            for name, call in contenders.items():
                seq = await sequential(call, requests)
                par = await concurrent(call, requests, concurrency)
                results.setdefault((name, "sequential"), []).append(seq)
                results.setdefault((name, f"concurrency {concurrency}"), []).append(par)
            print(f"  repetition {rep + 1}/{reps} done", file=sys.stderr)
    finally:
        await session.close()
        await client.close()

    print(f"\n{requests} requests per run, {reps} repetitions, medians; µs per request")
    print(f"{'mode':<16} {'client':<11} {'wall µs':>9} {'CPU µs':>9}")
    for mode in ("sequential", f"concurrency {concurrency}"):
        medians = {}
        for name in contenders:
            runs = results[(name, mode)]
            wall = statistics.median(w for w, _ in runs) / requests * 1e6
            cpu = statistics.median(c for _, c in runs) / requests * 1e6
            medians[name] = (wall, cpu)
            print(f"{mode:<16} {name:<11} {wall:>9.1f} {cpu:>9.1f}")
        (aw, ac), (hw, hc) = medians["aiohttp"], medians["HttpClient"]
        print(f"{mode:<16} {'ratio':<11} {aw / hw:>8.2f}x {ac / hc:>8.2f}x  (aiohttp / HttpClient)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    cores = os.sched_getaffinity(0)
    if args.serve:
        if len(cores) > 1:
            os.sched_setaffinity(0, {max(cores)})
        uvloop.run(serve())
        return
    upstream = subprocess.Popen(
        [sys.executable, __file__, "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert upstream.stdout is not None
        port = int(upstream.stdout.readline())
        if len(cores) > 1:
            os.sched_setaffinity(0, {min(cores)})
        print(
            f"Python {platform.python_version()}, aiohttp {aiohttp.__version__}, "
            f"uvloop {version('uvloop')}, {os.cpu_count()} cores; upstream on 127.0.0.1:{port}, "
            f"answer {len(ANSWER)} bytes (body {len(BODY)})"
        )

        async def bounded() -> None:
            async with asyncio.timeout(RUN_CAP_S):
                await measure(port, args.requests, args.reps, args.concurrency)

        uvloop.run(bounded())
    finally:
        if upstream.stdin is not None:
            upstream.stdin.close()
        try:
            upstream.wait(timeout=10)
        except subprocess.TimeoutExpired:
            upstream.kill()
            upstream.wait()


if __name__ == "__main__":
    main()
