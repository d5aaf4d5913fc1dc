"""The app's shutdown waits for the stored-response writes still running (`AppState.writes`),
but not for ever: a store that never answers is given `drain.writes_wait_s(drain_grace_s)`,
then the writes left are cancelled and counted in one log line."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import uvloop

from gateway.settings import load_settings
from gateway.store import open_store
from gateway.store.base import StoredResponse
from tests.conftest import free_port, gateway_config
from tests.fakes.openai_upstream import FakeOpenAI
from tests.integration.test_responses_kept import HeldStore, leave
from tests.integration.test_streams_freed import App, lifespan
from tests.live_bound import within


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory, fake_openai: FakeOpenAI) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("shutdown-writes") / "klawd.toml"
    gateway_config(path, free_port(), fake_openai.base_url)
    yield path


def shut_down_during_a_write(config: Path, let_through: bool) -> tuple[Any, HeldStore]:
    """A stored `klawd/echo` stream whose client leaves as its store write begins; the write
    then waits on a gate (opened as the shutdown begins if `let_through`, else never) while
    the app shuts down. The write's task (a weak reference) and the store, after it."""

    async def main() -> tuple[Any, HeldStore]:
        thresholds = gc.get_threshold()
        app = App(config)
        sent: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        incoming = await lifespan(app, sent)
        try:
            held = HeldStore(app, lambda: leave(app, app.requests[-1]))
            app.state["klawd"].store = held
            body = {"model": "klawd/echo", "input": "one two three", "stream": True}
            await app.request("/v1/responses", orjson.dumps(body), app.key)
            assert held.write is not None and held.gate is not None, "no store write began"
            write = held.write
            assert app.state["klawd"].writes, "the write is not pending at the shutdown"
            await incoming.put({"type": "lifespan.shutdown"})
            if let_through:
                gate = held.gate()
                assert gate is not None
                asyncio.get_running_loop().call_soon(gate.set_result, None)
            assert (await sent.get())["type"] == "lifespan.shutdown.complete"
            assert app.lifespan is not None
            await app.lifespan
            return write, held
        finally:
            gc.unfreeze()
            gc.set_threshold(*thresholds)

    return uvloop.run(within(main(), 30))


def test_a_store_write_that_never_ends_does_not_hold_the_shutdown(
    config: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Before, `AppState.close` waited for every pending write with no bound: a store that
    never answered held the worker's shutdown until Granian killed it (here: for ever)."""
    caplog.set_level(logging.ERROR, logger="klawd")
    write, held = shut_down_during_a_write(config, let_through=False)
    assert not held.written
    task = write()
    assert task is None or task.cancelled(), "the write is still running after the shutdown"
    lines = [r.getMessage() for r in caplog.records if "abandoned" in r.getMessage()]
    assert lines == [
        "shutdown: 1 stored response write(s) unfinished after 0.50 s: abandoned, "
        "those responses are not kept"
    ]


def test_a_store_write_that_ends_within_the_bound_is_kept(
    config: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="klawd")
    _, held = shut_down_during_a_write(config, let_through=True)
    assert [r for r in caplog.records if "abandoned" in r.getMessage()] == []
    assert len(held.written) == 1
    kept = held.written[0]

    async def stored() -> StoredResponse | None:
        settings = load_settings(config)
        store = open_store(settings.store.url, settings.store.reservation_hold_s)
        try:
            return await store.get_response(kept.account_id, kept.id, int(time.time()))
        finally:
            await store.close()

    found = uvloop.run(stored())
    assert found is not None
    assert found.response["status"] == "completed"


@pytest.fixture(scope="module")
def config_without_grace(
    tmp_path_factory: pytest.TempPathFactory, fake_openai: FakeOpenAI
) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("shutdown-writes-no-grace") / "klawd.toml"
    gateway_config(path, free_port(), fake_openai.base_url)
    path.write_text(
        path.read_text().replace("keepalive_s = 1\n", "keepalive_s = 1\ndrain_grace_s = 0\n")
    )
    assert load_settings(path).server.streams.drain_grace_s == 0
    yield path


def test_without_grace_a_write_already_issued_is_still_kept(
    config_without_grace: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`drain_grace_s = 0` asks not to wait for open streams, not to drop what was already
    written: the writes still get `drain.writes_wait_s(0)` (0.2 s). Before, the wait was 0 and
    every write still pending at the shutdown was abandoned."""
    caplog.set_level(logging.ERROR, logger="klawd")
    _, held = shut_down_during_a_write(config_without_grace, let_through=True)
    assert [r.getMessage() for r in caplog.records if "abandoned" in r.getMessage()] == []
    assert len(held.written) == 1
