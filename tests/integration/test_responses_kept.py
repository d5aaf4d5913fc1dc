"""A streamed Responses answer on the generator path is kept whole, and what is kept is what
the client was sent: even if its client leaves, or a shutdown's deadline comes, as it ends."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import uvloop

from gateway.store import Store
from gateway.store.base import StoredResponse
from tests.conftest import free_port, gateway_config
from tests.fakes.openai_upstream import FakeOpenAI
from tests.integration.test_streams_freed import App, started
from tests.live_bound import within


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory, fake_openai: FakeOpenAI) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("kept") / "klawd.toml"
    gateway_config(path, free_port(), fake_openai.base_url)
    yield path


# What happens as the store write begins, given the app and the request's task; true: the
# write then waits until the request has ended.
AtWrite = Callable[[App, asyncio.Task[Any]], Awaitable[bool]]


class HeldStore:
    """The app's store; a response's write begins with `at_write` (the client leaves, the
    drain comes), then may wait for a gate that only the write holds (the test has a weak
    reference to it, and to the write's task), let through after the request's end."""

    def __init__(self, app: App, at_write: Callable[[], Awaitable[bool]]) -> None:
        self.store: Store = app.state["klawd"].store
        self.at_write = at_write
        self.gate: weakref.ref[asyncio.Future[None]] | None = None
        self.write: weakref.ref[asyncio.Task[Any]] | None = None
        self.written: list[StoredResponse] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def put_response(self, stored: StoredResponse) -> None:
        task = asyncio.current_task()
        assert task is not None
        gate = asyncio.get_running_loop().create_future()
        self.gate, self.write = weakref.ref(gate), weakref.ref(task)
        if await self.at_write():
            await gate
        await self.store.put_response(stored)
        self.written.append(stored)

    async def finish(self) -> StoredResponse | None:
        """After the request: the write let through (if it still exists) and waited for; what
        the store then holds."""
        gc.collect()  # a write held by nothing is gone now
        if not self.written:
            write = self.write() if self.write is not None else None
            assert write is not None, "the store write was collected: nothing held its task"
            gate = self.gate() if self.gate is not None else None
            if gate is not None and not gate.done():
                gate.set_result(None)
            if write is not asyncio.current_task():  # (a write in the request's task ends with it)
                await asyncio.gather(write, return_exceptions=True)
        if not self.written:
            return None
        kept = self.written[0]
        return await self.store.get_response(kept.account_id, kept.id, int(time.time()))


def echo(config: Path, at_write: AtWrite) -> tuple[StoredResponse | None, bytes]:
    """A stored `klawd/echo` stream (relayed by the generator, not stepped) whose store write
    begins with `at_write`."""

    async def main() -> tuple[StoredResponse | None, bytes]:
        async with started(config) as app:
            state = app.state["klawd"]
            held = HeldStore(app, lambda: at_write(app, app.requests[-1]))
            state.store = held
            try:
                body = {"model": "klawd/echo", "input": "one two three", "stream": True}
                status, answer = await app.request("/v1/responses", orjson.dumps(body), app.key)
                assert status == 200, answer
                return await held.finish(), answer
            finally:
                state.store = held.store

    return uvloop.run(within(main(), 30))


async def leave(app: App, request: asyncio.Task[Any]) -> bool:
    gone = app.clients[-1]
    if not gone.done():
        gone.set_result({"type": "http.disconnect"})
    return True


async def drain(app: App, request: asyncio.Task[Any]) -> bool:
    """The shutdown's deadline; the write goes on once the request has taken what the drain
    did to it (nothing, or the cancel: until it is handled the task counts it)."""
    app.state["klawd"].streams.end_all()
    while request.cancelling():
        await asyncio.sleep(0)
    return False


def test_a_client_that_leaves_during_the_store_write_of_a_generator_stream_keeps_it(
    config: Path,
) -> None:
    """The built-in echo model's stream is relayed by the generator (not stepped): its
    answer is written to the store while the client is still watched. A client that leaves
    as the write begins (it read the answer, or is about to) no longer cuts it: the answer
    is kept (a later GET finds it). Before 8d7586e, the disconnect cancelled the write: nothing
    kept. And the write, a task of its own, is held by the app while it runs: the request's
    end does not leave it to the cycle collector (before, only the future it waited on held
    it)."""
    kept, answer = echo(config, leave)
    assert kept is not None, f"nothing kept: {answer[-300:]!r}"
    assert kept.response["status"] == "completed"
    assert kept.response["id"].encode() in answer


def test_a_drain_during_the_store_write_of_a_generator_stream_sends_what_is_kept(
    config: Path,
) -> None:
    """A shutdown's deadline that comes while the finished answer is being kept does not end
    the stream: the client gets the `response.completed` that is stored. Before, it got the
    drain's `response.failed` while the shielded write went on: a stored completed response
    the client was told had failed."""
    kept, answer = echo(config, drain)
    assert kept is not None, f"nothing kept: {answer[-300:]!r}"
    assert kept.response["status"] == "completed"
    assert b"event: response.failed" not in answer, answer[-300:]
    assert answer.rstrip().endswith(b"}"), answer[-300:]
    assert b"event: response.completed" in answer, answer[-300:]
