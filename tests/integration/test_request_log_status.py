"""The request log's `status` is the ledger's, however an admitted request ends; the line says
what the status line said when that differs (a stream's 200), and names a failed upstream body.
The app in process as Granian drives it (tests/integration/test_streams_freed.py's `App`), the
log lines taken as the observer writes them and the ledger entries as the meter records them,
matched by request id; the deadline made due by the test (`DrivenWheel`), never timed."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
import redis
import uvloop

from gateway.requestlog import RequestLine
from gateway.store import resp
from gateway.store.base import UsageEntry
from tests.conftest import free_port, gateway_config
from tests.fakes.openai_upstream import FakeOpenAI
from tests.integration.test_cancelled_admission import chat_body, until, warmed
from tests.integration.test_deadline_client_gone import PATIENT
from tests.integration.test_streams_freed import App, started
from tests.live_bound import within
from tests.redis_server import RedisServer
from tests.scrape import parse
from tests.unit.test_retry_deadline import DrivenWheel

NUMBERS = itertools.count()
PAUSE_MS = 60_000  # a pause the test lifts itself: only a hang's guard


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory, fake_openai: FakeOpenAI) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("log-status") / "klawd.toml"
    gateway_config(path, free_port(), fake_openai.base_url)
    text = path.read_text().replace("[retry]\n", "[retry]\ndeadline_s = 30\n", 1)
    path.write_text(text + PATIENT.format(url=fake_openai.base_url))
    yield path


class Seen:
    """The log lines and the ledger statuses of the app's requests, by request id."""

    def __init__(self, app: App) -> None:
        state = app.state["klawd"]
        observer = state.meter.observer
        assert observer is not None
        self.lines: dict[str, dict[str, Any]] = {}
        self.ledger: dict[str, int] = {}
        self.streamed: dict[str, bool] = {}  # the ledger entry's `stream`, by request id
        add, record = observer.request_log.add, state.meter._recorder.record

        def added(line: RequestLine) -> None:
            self.lines[line.request_id] = orjson.loads(msgspec.json.encode(line))
            add(line)

        def recorded(entry: UsageEntry) -> None:
            self.ledger[entry.request_id] = entry.status
            self.streamed[entry.request_id] = entry.stream
            record(entry)

        observer.request_log.add = added  # type: ignore[method-assign]
        state.meter._recorder.record = recorded  # type: ignore[method-assign]
        self.metrics = observer.metrics

    def billed(self) -> dict[str, float]:
        """klawd_requests_total by status class, as /metrics says now (the buffer flushed)."""
        samples = parse(self.metrics.exposition().decode())
        return {
            labels["status_class"]: value
            for (name, pairs), value in samples.items()
            if name == "klawd_requests_total" and (labels := dict(pairs)) and value
        }


async def ended(app: App, model: str, stream: bool, end: str) -> str:
    """One chat request ended as `end` says: "" (as the upstream answers), "leave" / "drain"
    (a stream's client leaves, or the drain ends it, after its first event), "deadline" (the
    deadline passes while the try waits for its headers), "gone" (the client leaves then: the
    server cancels the request's task). Its request id."""
    request_id = f"req_log_status_{next(NUMBERS)}"
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    loop = asyncio.get_running_loop()
    wheel = None
    if end in ("deadline", "gone"):
        wheel = app.state["klawd"].retrier._cuts = DrivenWheel(loop)
    call = asyncio.ensure_future(
        app.request(
            "/v1/chat/completions",
            orjson.dumps(body),
            app.key,
            end if end in ("leave", "drain") else "",
            request_id,
        )
    )
    if wheel is not None:
        while not wheel.slots:  # the try was sent: it waits for its headers, its cut armed
            await asyncio.sleep(0.01)
        if end == "deadline":
            wheel.run()
        else:
            app.requests[-1].cancel()
    try:
        await call
    except asyncio.CancelledError:
        assert end == "gone"
    for _ in range(10):  # a stream's settlement, after its end
        await asyncio.sleep(0.01)
    return request_id


@pytest.mark.parametrize(
    ("model", "stream", "end", "status", "sent", "body_error"),
    [
        pytest.param("openai/gpt-fake", False, "", 200, None, None, id="answered"),
        pytest.param("openai/gpt-fake", True, "", 200, None, None, id="answered-stream"),
        pytest.param("openai/fail-400", False, "", 400, None, None, id="upstream-error"),
        pytest.param("openai/fail-500", True, "", 503, None, None, id="upstream-error-stream"),
        pytest.param("openai/cut-fake", True, "", 502, 200, "bad_gateway", id="broken-stream"),
        pytest.param("patient/hang-headers", False, "deadline", 504, None, None, id="deadline"),
        pytest.param("patient/hang-headers", False, "gone", 499, None, None, id="client-gone"),
        pytest.param("openai/hold-fake", True, "leave", 499, 200, None, id="client-gone-stream"),
        pytest.param("openai/hold-fake", True, "drain", 503, 200, None, id="shutdown-cut"),
    ],
)
def test_the_log_line_s_status_is_the_ledger_s_however_the_request_ends(
    config: Path,
    model: str,
    stream: bool,
    end: str,
    status: int,
    sent: int | None,
    body_error: str | None,
) -> None:
    """`status` is the ledger's (a 499 for a client gone before any answer, where no status
    line was sent; a stream's end, where its status line said 200); `http_status` is the
    status line's, only when it said otherwise; `upstream_body_error` the type of an upstream
    answer that failed after its headers."""

    async def main() -> tuple[dict[str, Any], int, bool, dict[str, float]]:
        async with started(config) as app:
            seen = Seen(app)
            request_id = await ended(app, model, stream, end)
            ledger = seen.ledger[request_id]
            return seen.lines[request_id], ledger, seen.streamed[request_id], seen.billed()

    line, ledger, streamed, billed = uvloop.run(within(main(), 30))
    assert (line["status"], ledger) == (status, status)
    # A request that failed before its first byte is settled as what it asked for (a stream's
    # failure too: gateway/api/chat.py settles a decided admission's failure itself).
    assert streamed == stream
    # Counted once, with the ledger's status, however it ended (a failure's, a cancellation's
    # settlement too: counted with the request's end since 19zzzzi).
    assert billed == {f"{status // 100}xx": 1}
    assert line.get("http_status") == sent
    assert line.get("upstream_body_error") == body_error


@pytest.fixture(scope="module")
def redis_config(
    tmp_path_factory: pytest.TempPathFactory, fake_openai: FakeOpenAI, redis_server: RedisServer
) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("log-status-redis") / "klawd.toml"
    # The store's command timeout (2 s by default) out of the way of the replies the tests hold
    # back: a reply held past it fails the connection, which is the second test's case, not the
    # first's (seen on a loaded machine: the first test's line said 0, never settled).
    store_url = f"{redis_server.url}?socket_timeout=60"
    gateway_config(path, free_port(), fake_openai.base_url, store_url=store_url)
    yield path


def test_a_client_gone_while_its_admission_travels_is_logged_with_the_ledger_s_status(
    redis_config: Path, redis_server: RedisServer
) -> None:
    """The Redis store: the request cancelled (its client gone) while its admission's reply is
    held back (`CLIENT PAUSE WRITE`: the `FCALL` waits unrun until the test lifts the pause),
    its response ended long before the reply comes. The line waits for the reply: the ledger
    settles the admitted request 499 then, and the line says 499 (before: 0, written before the
    reply). The pause is lifted by the test, not timed: a 2 s `PAUSE ALL` ran out, or outlived
    the store's command timeout, on a loaded machine."""
    paused = redis.Redis(port=redis_server.port)

    async def main() -> tuple[dict[str, Any], int]:
        async with started(redis_config) as app:
            seen = Seen(app)
            store, _, _, key = await warmed(app)
            client = store._resp
            assert client is not None

            async def owed() -> bool:  # the admission's reply owed to the request
                return any(c.pending or c.corked for c in client._connections)

            await asyncio.sleep(0.001 + 2 * resp.QUIET_S)  # quiet: the admission sent at once
            paused.client_pause(PAUSE_MS, all=False)  # writes wait until lifted below
            request_id = f"req_log_status_{next(NUMBERS)}"
            request = asyncio.ensure_future(
                app.request("/v1/chat/completions", chat_body(False), key, "", request_id)
            )
            await until(owed, "the admission sent")
            app.requests[-1].cancel()  # the client went away (a server that cancels)
            with contextlib.suppress(asyncio.CancelledError):
                await request
            for _ in range(20):  # the response ended, its line due
                await asyncio.sleep(0.005)
            early = seen.lines.get(request_id)  # written before the ledger's status came
            assert await owed(), "the admission's reply still held when the line was looked for"
            paused.client_unpause()

            async def logged() -> bool:
                return request_id in seen.lines

            await until(logged, "the line written")
            await until(lambda: asyncio.sleep(0, request_id in seen.ledger), "settled")
            assert early is None, early
            return seen.lines[request_id], seen.ledger[request_id], seen.billed()

    try:
        line, ledger, billed = uvloop.run(within(main(), 30))
    finally:
        paused.client_unpause()
        paused.close()
    assert (line["status"], ledger) == (499, 499)
    # Settled after its response's end: counted then (the end had nothing to count with it).
    assert billed.get("4xx") == 1
    assert "http_status" not in line


def test_a_held_line_is_written_when_the_admission_s_connection_is_lost(
    redis_config: Path, redis_server: RedisServer
) -> None:
    """The Redis store: the request cancelled (its client gone) while its admission's reply is
    held back (`CLIENT PAUSE WRITE`: the `FCALL` waits unrun), then the connection lost before
    any reply (`CLIENT KILL` of the store's connections). No reply will come, so nothing is
    known to have been admitted: the held line is written then, with no ledger status (0), and
    no ledger entry. Before the lean client handed a lost connection to the cancelled caller's
    undo, the line was never written."""
    admin = redis.Redis(port=redis_server.port)

    async def main() -> tuple[dict[str, Any] | None, dict[str, Any], bool]:
        async with started(redis_config) as app:
            seen = Seen(app)
            store, _, _, key = await warmed(app)
            client = store._resp
            assert client is not None

            async def owed() -> bool:  # the admission's reply owed to the request
                return any(c.pending or c.corked for c in client._connections)

            await asyncio.sleep(0.001 + 2 * resp.QUIET_S)  # quiet: the admission sent at once
            admin.client_pause(5000, all=False)  # writes wait; CLIENT KILL does not
            request_id = f"req_log_status_{next(NUMBERS)}"
            request = asyncio.ensure_future(
                app.request("/v1/chat/completions", chat_body(False), key, "", request_id)
            )
            await until(owed, "the admission sent")
            app.requests[-1].cancel()  # the client went away (a server that cancels)
            with contextlib.suppress(asyncio.CancelledError):
                await request
            for _ in range(20):  # the response ended, its line due
                await asyncio.sleep(0.005)
            early = seen.lines.get(request_id)  # written before the connection was lost
            for connection in client._connections:  # as Redis names them: ip:port
                transport = connection._transport
                assert transport is not None
                host, port = transport.get_extra_info("sockname")[:2]
                admin.client_kill(f"{host}:{port}")

            async def logged() -> bool:
                return request_id in seen.lines

            await until(logged, "the line written")
            admin.client_unpause()
            return early, seen.lines[request_id], request_id in seen.ledger

    try:
        early, line, settled = uvloop.run(within(main(), 30))
    finally:
        admin.client_unpause()
        admin.close()
    assert early is None, early
    assert line["status"] == 0
    assert not settled
