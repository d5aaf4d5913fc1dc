"""A worker loads only what its configuration uses: the optional features' libraries stay out
of a worker that does not use them (each is megabytes of every worker's memory)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[2]

# The app built and started (its lifespan run) with the built-in defaults on the embedded
# store; then the modules it holds are listed.
STARTED_WORKER = """
import asyncio, sys
from pathlib import Path
import orjson
from gateway.app import create_app
from gateway.settings import load_settings

async def main() -> None:
    app = create_app(load_settings(None, {}), {"KLAWD_ADMIN_TOKEN": "t"})
    started = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    messages = iter([{"type": "lifespan.startup"}])

    async def receive():
        try:
            return next(messages)
        except StopIteration:
            await stop.wait()
            return {"type": "lifespan.shutdown"}

    async def send(message):
        if message["type"] == "lifespan.startup.complete":
            started.set_result(None)

    task = asyncio.ensure_future(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
                                     receive, send))
    await started
    sys.stdout.write(orjson.dumps(sorted({m.split(".")[0] for m in sys.modules})).decode())
    stop.set()
    await task

asyncio.run(main())
"""


def started_worker_modules(tmp_path: Path) -> set[str]:
    (tmp_path / "data").mkdir()
    done = subprocess.run(
        [sys.executable, "-P", "-c", STARTED_WORKER],
        cwd=tmp_path,  # the default store, ./data/klawd.db, goes there
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        timeout=60,
        check=True,
    )
    return set(orjson.loads(done.stdout))


def test_a_worker_on_the_embedded_store_without_optional_features_loads_none_of_their_libraries(
    tmp_path: Path,
) -> None:
    loaded = started_worker_modules(tmp_path)
    assert "gateway" in loaded and "starlette" in loaded  # it did start
    # redis-py (the Redis store), OpenTelemetry (traces, and redis-py's own instrumentation),
    # cryptography (Vertex service accounts), aiohttp (webhook deliveries), Jinja (Mission
    # Control's pages) are each loaded when their feature is used, not before.
    unused = {"redis", "opentelemetry", "cryptography", "aiohttp", "jinja2", "boto3", "google"}
    assert loaded & unused == set()
