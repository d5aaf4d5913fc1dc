"""What auth + limits + billing cost per request, embedded and on Redis, next to the same app
with them bypassed. In-process: the ASGI app is driven directly (no sockets, no server), so the
figure is the Python and store work of the hot path alone.

    .venv/bin/python loadtests/bench/metering_bench.py [--requests 3000] [--repeat 5]
        [--variants embedded,redis,redis-key,bypassed] [--tree PATH] 2>/dev/null

(the per-request JSON log goes to stderr; it is written in every variant alike)

Bypassed = the same app with `KeyCache.authenticate`, `Meter.admit`, `Meter.settle` and
`Meter.charge_tokens` replaced by constant functions (done here, never in the gateway).
The model is `klawd/echo` (local, no upstream), non-streamed. `redis-key`: Redis with a key that
has a daily budget, its own limits, an allowlist and tags (docs/decisions/0018). On Redis the
bench also counts the hot-path client's round trips per request (RespClient.execute: one each;
execute_many, the pipelined settle batch: one per batch).

`--tree PATH` runs the bench against another checkout's `gateway` package (with the extension
module copied in): loadtests/bench/key_admission_compare.py uses it to measure the commit before
keys for teams beside this one in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[2]
if "--tree" in sys.argv:
    sys.path.insert(0, str(Path(sys.argv[sys.argv.index("--tree") + 1]).resolve()))
sys.path.insert(1 if "--tree" in sys.argv else 0, str(REPO))

import inspect  # noqa: E402

from gateway.app import create_app  # noqa: E402
from gateway.auth import AuthContext  # noqa: E402
from gateway.metering import Meter  # noqa: E402
from gateway.settings import load_settings  # noqa: E402
from gateway.store.resp import RespClient  # noqa: E402
from loadtests.bench.asgi_scope import http_scope  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

# The admission's signature since keys for teams: (auth, request id, model, targets, reserve_for).
KEYED_ADMIT = "targets" in inspect.signature(Meter.admit).parameters
KEY_ATTRIBUTES = {
    "budget": {"usd_per_day": 1000},
    "limits": {"requests_per_minute": 10**8, "requests_per_day": 10**8},
    "models": ["klawd/*", "openai/*"],
    "tags": {"team": "bench"},
}

BODY = orjson.dumps({"model": "klawd/echo", "messages": [{"role": "user", "content": "hi there"}]})
ADMIN = "bench-admin-token"

Receive = Callable[[], Awaitable[dict[str, Any]]]


class Harness:
    def __init__(self, store_url: str, extra_config: str = "") -> None:
        directory = Path(tempfile.mkdtemp(prefix="klawd-bench-"))
        config = directory / "klawd.toml"
        config.write_text(f'[store]\nurl = "{store_url}"\n{extra_config}')
        self.app = create_app(load_settings(config), {"KLAWD_ADMIN_TOKEN": ADMIN})
        self.lifespan_state: dict[str, Any] = {}
        self._lifespan_queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._sent: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": self.lifespan_state}
        await self._lifespan_queue.put({"type": "lifespan.startup"})
        self._task = asyncio.create_task(
            self.app(scope, self._lifespan_queue.get, self._sent.put)  # type: ignore[arg-type]
        )
        message = await self._sent.get()
        assert message["type"] == "lifespan.startup.complete", message

    async def stop(self) -> None:
        await self._lifespan_queue.put({"type": "lifespan.shutdown"})
        await self._sent.get()
        if self._task is not None:
            await self._task

    async def request(
        self, method: str, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, bytes]:
        pairs = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        scope = http_scope(method, path, pairs, body, self.lifespan_state)
        sent_body = False
        status = 0
        chunks: list[bytes] = []
        done = asyncio.Event()

        async def receive() -> dict[str, Any]:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": body, "more_body": False}
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    done.set()

        await self.app(scope, receive, send)  # type: ignore[arg-type]
        return status, b"".join(chunks)


async def new_key(harness: Harness, attributes: dict[str, Any] | None = None) -> str:
    admin = {"authorization": f"Bearer {ADMIN}", "content-type": "application/json"}
    status, body = await harness.request(
        "POST", "/admin/accounts", orjson.dumps({"name": "bench", "plan": "enterprise"}), admin
    )
    assert status == 201, body
    account_id = orjson.loads(body)["id"]
    await harness.request(
        "PATCH",
        f"/admin/accounts/{account_id}",
        orjson.dumps({"limits": {"requests_per_minute": 10**9, "requests_per_day": 10**9}}),
        admin,
    )
    status, body = await harness.request(
        "POST", f"/admin/accounts/{account_id}/keys", orjson.dumps(attributes or {}), admin
    )
    assert status == 201, body
    key: str = orjson.loads(body)["key"]
    return key


def bypass(harness: Harness, auth: AuthContext, ticket: Any) -> None:
    """Auth, admission and settlement become constants (in this process only)."""
    state = harness.lifespan_state["klawd"]

    async def authenticate(*_args: Any) -> AuthContext:
        return auth

    async def admit(*_args: Any) -> Any:
        return ticket

    async def charge_tokens(*_args: Any) -> None:
        return None

    state.keys.authenticate = authenticate
    state.meter.admit = admit
    state.meter.settle = lambda *args, **kwargs: 0
    state.meter.charge_tokens = charge_tokens


class RoundTrips:
    """Counts the hot-path Redis client's round trips (in this process only)."""

    def __init__(self) -> None:
        self.count = 0
        execute, execute_many = RespClient.execute, RespClient.execute_many

        async def counted(client: RespClient, *args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return await execute(client, *args, **kwargs)

        async def counted_many(client: RespClient, *args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return await execute_many(client, *args, **kwargs)

        RespClient.execute = counted  # type: ignore[method-assign]
        RespClient.execute_many = counted_many  # type: ignore[method-assign]


async def measure(harness: Harness, key: str, requests: int) -> float:
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    for _ in range(50):  # warm caches
        status, body = await harness.request("POST", "/v1/chat/completions", BODY, headers)
        assert status == 200, body
    started = time.perf_counter()
    for _ in range(requests):
        await harness.request("POST", "/v1/chat/completions", BODY, headers)
    return (time.perf_counter() - started) / requests * 1e6


async def run_variant(
    name: str, store_url: str, requests: int, repeat: int, trips: RoundTrips
) -> tuple[list[float], float]:
    """Timings, and the hot-path round trips per request (settle batches flushed)."""
    harness = Harness(store_url)
    await harness.start()
    try:
        key = await new_key(harness, KEY_ATTRIBUTES if name == "redis-key" else None)
        state = harness.lifespan_state["klawd"]
        if name == "bypassed":
            auth = await state.keys.authenticate(f"Bearer {key}", time.time())
            if KEYED_ADMIT:
                echo = [state.catalog.get("klawd/echo")]
                ticket = await state.meter.admit(auth, "req_bench", "klawd/echo", echo, lambda _: 0)
            else:
                ticket = await state.meter.admit(auth, "req_bench", 0)
            bypass(harness, auth, ticket)
        samples = [await measure(harness, key, requests) for _ in range(repeat - 1)]
        await state.recorder.flush()
        before = trips.count
        samples.append(await measure(harness, key, requests))
        await state.recorder.flush()
        return samples, (trips.count - before) / (requests + 50)
    finally:
        await harness.stop()


VARIANTS = {
    "embedded": "embedded (SQLite + Rust limiter)",
    "redis": "redis",
    "redis-key": "redis, key with budget + limits + allowlist + tags",
    "bypassed": "bypassed",
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--variants", default="embedded,redis,redis-key,bypassed")
    parser.add_argument("--tree", help="another checkout whose gateway package is measured")
    parser.add_argument("--json", action="store_true", help="one JSON line instead of a table")
    args = parser.parse_args()
    names = args.variants.split(",")
    if "redis-key" in names and not KEYED_ADMIT:
        names.remove("redis-key")  # that tree has no key attributes
    tmp = Path(tempfile.mkdtemp(prefix="klawd-bench-"))
    redis = RedisServer(free_port(), tmp)
    redis.start()
    trips = RoundTrips()
    results: dict[str, tuple[float, float]] = {}
    try:
        import uvloop

        for name in names:
            url = redis.url if name.startswith("redis") else f"sqlite:///{tmp}/{name}.db"
            samples, per_request = uvloop.run(
                run_variant(name, url, args.requests, args.repeat, trips)
            )
            results[name] = (statistics.median(samples), per_request)
    finally:
        redis.stop()
    if args.json:
        print(
            orjson.dumps(
                {n: {"us": v[0], "round_trips": v[1]} for n, v in results.items()}
            ).decode()
        )
        return
    floor = results["bypassed"][0] if "bypassed" in results else float("nan")
    header = f"{'variant':52} {'us/request':>11} {'added us':>9} {'ratio':>6} {'trips/req':>9}"
    print(header)
    for name, (value, per_request) in results.items():
        trips_text = f"{per_request:9.3f}" if name.startswith("redis") else f"{'-':>9}"
        print(
            f"{VARIANTS[name]:52} {value:11.1f} {value - floor:9.1f} {value / floor:6.2f}"
            f" {trips_text}"
        )
    print(f"(median of {args.repeat} runs of {args.requests} requests, pid {os.getpid()})")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
