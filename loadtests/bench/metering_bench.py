"""What auth + limits + billing cost per request, embedded and on Redis, next to the same app
with them bypassed. In-process: the ASGI app is driven directly (no sockets, no server), so the
figure is the Python and store work of the hot path alone.

    .venv/bin/python loadtests/bench/metering_bench.py [--requests 3000] [--repeat 5] 2>/dev/null

(the per-request JSON log goes to stderr; it is written in every variant alike)

Bypassed = the same app with `KeyCache.authenticate`, `Meter.admit`, `Meter.settle` and
`Meter.charge_tokens` replaced by constant functions (done here, never in the gateway).
The model is `klawd/echo` (local, no upstream), non-streamed.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gateway.app import create_app
from gateway.auth import AuthContext
from gateway.settings import load_settings
from tests.conftest import free_port
from tests.redis_server import RedisServer

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
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]
            + [(b"content-length", str(len(body)).encode())],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8080),
            "state": dict(self.lifespan_state),
        }
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


async def new_key(harness: Harness) -> str:
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
    status, body = await harness.request("POST", f"/admin/accounts/{account_id}/keys", b"{}", admin)
    assert status == 201, body
    key: str = orjson.loads(body)["key"]
    return key


def bypass(harness: Harness, auth: AuthContext, ticket: Any) -> None:
    """Auth, admission and settlement become constants (in this process only)."""
    state = harness.lifespan_state["klawd"]

    async def authenticate(*_args: Any) -> AuthContext:
        return auth

    async def admit(_auth: AuthContext, _request_id: str, _reserve: int) -> Any:
        return ticket

    async def charge_tokens(*_args: Any) -> None:
        return None

    state.keys.authenticate = authenticate
    state.meter.admit = admit
    state.meter.settle = lambda *args, **kwargs: 0
    state.meter.charge_tokens = charge_tokens


async def measure(harness: Harness, key: str, requests: int) -> float:
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    for _ in range(50):  # warm caches
        status, body = await harness.request("POST", "/v1/chat/completions", BODY, headers)
        assert status == 200, body
    started = time.perf_counter()
    for _ in range(requests):
        await harness.request("POST", "/v1/chat/completions", BODY, headers)
    return (time.perf_counter() - started) / requests * 1e6


async def run_variant(name: str, store_url: str, requests: int, repeat: int) -> list[float]:
    harness = Harness(store_url)
    await harness.start()
    try:
        key = await new_key(harness)
        if name == "bypassed":
            state = harness.lifespan_state["klawd"]
            auth = await state.keys.authenticate(f"Bearer {key}", time.time())
            bypass(harness, auth, await state.meter.admit(auth, "req_bench", 0))
        return [await measure(harness, key, requests) for _ in range(repeat)]
    finally:
        await harness.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="klawd-bench-"))
    redis = RedisServer(free_port(), tmp)
    redis.start()
    results: dict[str, float] = {}
    try:
        import uvloop

        for name, url in (
            ("embedded (SQLite + Rust limiter)", f"sqlite:///{tmp}/bench.db"),
            ("redis", redis.url),
            ("bypassed", f"sqlite:///{tmp}/bypass.db"),
        ):
            samples = uvloop.run(run_variant(name, url, args.requests, args.repeat))
            results[name] = statistics.median(samples)
    finally:
        redis.stop()
    floor = results["bypassed"]
    print(f"{'variant':36} {'us/request':>11} {'added us':>9} {'ratio':>6}")
    for name, value in results.items():
        print(f"{name:36} {value:11.1f} {value - floor:9.1f} {value / floor:6.2f}")
    print(f"(median of {args.repeat} runs of {args.requests} requests, pid {os.getpid()})")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
