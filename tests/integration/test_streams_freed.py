"""However a stream ends, reference counting frees it: nothing of it waits for the cycle collector.

A worker with thousands of streams open has a large heap, and a full collection of it is a pause
of every stream (hundreds of milliseconds at 8,000 open streams: docs/decisions/0012). A stream
that leaves a reference cycle behind when it ends (an error's traceback holding a frame that
holds the error, a callback holding itself) keeps its memory until such a collection, so the
collector has to run often. Here the app runs in-process against the fake upstream, with the
collector off while a stream runs and ends; then a collection that saves what it finds
(`gc.DEBUG_SAVEALL`) must find nothing of the gateway's. Each test's bound is on its running
time (tests/live_bound.py), not the wall clock: a machine stopped for a benchmark is not a hang.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import types
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
import uvloop

from gateway.app import GC_THRESHOLDS, create_app
from gateway.limits import KeyGate
from gateway.messages import Translation as MessagesTranslation
from gateway.metering import Ticket
from gateway.pending_admission import PendingAdmission
from gateway.responses.translate import Translation as ResponsesTranslation
from gateway.schemas.anthropic import MessagesRequest
from gateway.schemas.openai import ChatRequest
from gateway.schemas.responses import ResponsesRequest
from gateway.settings import load_settings
from loadtests.bench.asgi_scope import http_scope
from tests.conftest import ADMIN_TOKEN, UPSTREAM_KEY, free_port, gateway_config
from tests.fakes.openai_upstream import FakeOpenAI
from tests.live_bound import within

T = TypeVar("T")

GATEWAY = str(Path(__file__).resolve().parents[2] / "gateway")


class App:
    """The gateway app driven directly, as Granian drives it: after the body, `receive()` is a
    future that resolves with `http.disconnect` when the client leaves."""

    def __init__(self, config: Path) -> None:
        self.app = create_app(
            load_settings(config),
            {"KLAWD_ADMIN_TOKEN": ADMIN_TOKEN, "OPENAI_API_KEY": UPSTREAM_KEY},
        )
        self.state: dict[str, Any] = {}
        self.key = ""
        self.lifespan: asyncio.Future[None] | None = None
        self.clients: list[asyncio.Future[dict[str, Any]]] = []  # `gone`: set to disconnect
        self.requests: list[asyncio.Task[None]] = []  # each request's own task, as a server's
        self.first_events = 0  # streams that had their first event
        self.head: dict[bytes, bytes] = {}  # the last response's headers

    async def request(
        self, path: str, body: bytes, token: str, end: str = "", request_id: str = ""
    ) -> tuple[int, bytes]:
        """`end`: what happens once the first event arrived: "leave" (the client disconnects),
        "drain" (a shutdown's deadline ends the open streams), "" (nothing). `request_id`: the
        client's `x-request-id`, if any."""
        loop = asyncio.get_running_loop()
        gone: asyncio.Future[dict[str, Any]] = loop.create_future()
        self.clients.append(gone)
        body_sent = False
        status = 0
        chunks: list[bytes] = []

        def receive() -> asyncio.Future[dict[str, Any]]:
            nonlocal body_sent
            if body_sent:
                return gone
            body_sent = True
            message: asyncio.Future[dict[str, Any]] = loop.create_future()
            message.set_result({"type": "http.request", "body": body, "more_body": False})
            return message

        streamed = False

        async def send(message: dict[str, Any]) -> None:
            nonlocal status, streamed
            if message["type"] == "http.response.start":
                status = message["status"]
                self.head = dict(message.get("headers", ()))
                streamed = any(
                    name.lower() == b"content-type" and value.startswith(b"text/event-stream")
                    for name, value in message.get("headers", ())
                )
                return
            chunks.append(message.get("body", b""))
            if streamed and chunks[-1] and len(chunks) == 1:
                # (streams only: a plain answer's body, the admin requests' at the start-up
                # among them, counted here let a test's wait for N streams end early)
                self.first_events += 1
            if end == "drain" and chunks[-1] and len(chunks) == 1:
                loop.call_soon(self.state["klawd"].streams.end_all)
            ended = not message.get("more_body")
            if (ended or (end == "leave" and chunks[-1])) and not gone.done():
                gone.set_result({"type": "http.disconnect"})

        headers = [
            (b"authorization", f"Bearer {token}".encode()),
            (b"content-type", b"application/json"),
            *([(b"x-request-id", request_id.encode())] if request_id else []),
        ]
        scope = http_scope("POST", path, headers, body, self.state)
        # In a task of its own, as a server runs each request: the drain cancels that task,
        # never the caller's, so nothing here depends on the cancel being taken back.
        request = asyncio.ensure_future(self.app(scope, receive, send))  # type: ignore[arg-type]
        self.requests.append(request)
        await request
        return status, b"".join(chunks)

    async def chat(self, model: str, end: str = "", route: str = "/v1/chat/completions") -> bytes:
        """A stream of `route` (chat, or the Messages and Responses APIs in front of it)."""
        request: dict[str, Any] = {"model": model, "stream": True}
        if route == "/v1/responses":
            request["input"] = "hi"
        else:
            request["messages"] = [{"role": "user", "content": "hi"}]
        if route == "/v1/messages":
            request["max_tokens"] = 64
        status, answer = await self.request(route, orjson.dumps(request), self.key, end)
        assert status == 200, answer
        return answer


# Each way a stream ends, as (model, `App.request`'s `end`): whole, its client left, the drain
# ended it; the upstream cut it, sent its own error event, fell silent past the idle timeout.
STREAM_ENDS = [
    ("openai/gpt-fake", ""),
    ("openai/hold-fake", "leave"),
    ("openai/hold-fake", "drain"),
    ("openai/cut-fake", ""),
    ("openai/error-event", ""),
    ("slowai/stall-stream", ""),
]


async def settled() -> None:
    """Lets what a request's end scheduled run (its settlement, the ledger, callbacks)."""
    for _ in range(10):
        await asyncio.sleep(0.01)


async def lifespan(app: App, sent: asyncio.Queue[dict[str, Any]]) -> asyncio.Queue[Any]:
    incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": app.state}
    await incoming.put({"type": "lifespan.startup"})
    app.lifespan = asyncio.ensure_future(app.app(scope, incoming.get, sent.put))  # type: ignore[arg-type]
    assert (await sent.get())["type"] == "lifespan.startup.complete"
    status, account = await app.request(
        "/admin/accounts",
        orjson.dumps({"name": "gc", "plan": "enterprise", "credits_usd": 100}),
        ADMIN_TOKEN,
    )
    assert status == 201, account
    account_id = orjson.loads(account)["id"]
    status, key = await app.request(f"/admin/accounts/{account_id}/keys", b"{}", ADMIN_TOKEN)
    assert status == 201, key
    app.key = orjson.loads(key)["key"]
    return incoming


def gateway_garbage() -> collections.Counter[str]:
    """What a saving collection finds of the gateway's: its frames and its objects, by name."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
    finally:
        gc.set_debug(0)
    found: collections.Counter[str] = collections.Counter()
    for thing in gc.garbage:
        if isinstance(thing, types.FrameType):
            if thing.f_code.co_filename.startswith(GATEWAY):
                found[f"frame {thing.f_code.co_name}"] += 1
        elif type(thing).__module__.startswith("gateway"):
            found[type(thing).__qualname__] += 1
    gc.garbage.clear()
    return found


@contextlib.asynccontextmanager
async def started(config: Path) -> AsyncIterator[App]:
    """The app through its lifespan; what its start-up did to this process's collector (frozen
    heap, thresholds) undone at the end."""
    thresholds = gc.get_threshold()
    app = App(config)
    sent: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    incoming = await lifespan(app, sent)
    try:
        yield app
    finally:
        await incoming.put({"type": "lifespan.shutdown"})
        await sent.get()
        if app.lifespan is not None:
            await app.lifespan
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def freed_after(
    config: Path, model: str, end: str, route: str = "/v1/chat/completions"
) -> tuple[bytes, Any]:
    async def main() -> tuple[bytes, Any]:
        async with started(config) as app:
            await app.chat(model, end, route)  # warm: the upstream connection, caches
            gc.collect()
            gc.disable()
            try:
                answer = await app.chat(model, end, route)
                await settled()
                return answer, gateway_garbage()
            finally:
                gc.enable()

    return uvloop.run(within(main(), 30))


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory, fake_openai: FakeOpenAI) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("freed") / "klawd.toml"
    gateway_config(path, free_port(), fake_openai.base_url)
    yield path


@pytest.mark.parametrize(
    ("model", "end", "ends_with"),
    [
        pytest.param("openai/gpt-fake", "", b"data: [DONE]\n\n", id="whole"),
        pytest.param("openai/hold-fake", "leave", b"", id="client-left"),
        pytest.param("openai/hold-fake", "drain", b"restarting", id="drained"),
        pytest.param("openai/cut-fake", "", b'"bad_gateway"', id="upstream-cut"),
        pytest.param("openai/error-event", "", b'"service_unavailable"', id="upstream-error-event"),
        pytest.param("slowai/stall-stream", "", b'"gateway_timeout"', id="upstream-silent"),
    ],
)
def test_a_stream_is_freed_by_reference_counting_however_it_ends(
    config: Path, model: str, end: str, ends_with: bytes
) -> None:
    answer, garbage = freed_after(config, model, end)
    assert ends_with in answer[-200:], answer[-200:]
    assert garbage == {}, f"left in reference cycles: {dict(garbage)}"


@pytest.mark.parametrize("route", ["/v1/messages", "/v1/responses"])
@pytest.mark.parametrize(
    ("model", "end"),
    [
        pytest.param("openai/gpt-fake", "", id="whole"),
        pytest.param("openai/hold-fake", "leave", id="client-left"),
        pytest.param("openai/cut-fake", "", id="upstream-cut"),
        pytest.param("openai/error-event", "", id="upstream-error-event"),
        pytest.param("slowai/stall-stream", "", id="upstream-silent"),
    ],
)
def test_the_messages_and_responses_streams_are_freed_the_same_way(
    config: Path, route: str, model: str, end: str
) -> None:
    """The two other streaming routes relay the same upstream stream through their own
    events (gateway/api/messages.py, gateway/api/responses.py)."""
    _, garbage = freed_after(config, model, end, route)
    assert garbage == {}, f"left in reference cycles: {dict(garbage)}"


def test_a_started_worker_freezes_its_start_up_and_collects_cycles_rarely(config: Path) -> None:
    """Its start-up objects out of the collector's sight, and full collections (a pause of every
    open stream) rarer than CPython's default: what the test above makes safe."""

    async def main() -> tuple[tuple[int, ...], int]:
        async with started(config):
            return gc.get_threshold(), gc.get_freeze_count()

    thresholds, frozen = uvloop.run(within(main(), 30))
    assert thresholds == GC_THRESHOLDS
    assert frozen > 0


def timer_kinds(loop: asyncio.AbstractEventLoop) -> collections.Counter[str]:
    """The loop's armed timers by what they call (a method by its class, a function by name)."""
    kinds: collections.Counter[str] = collections.Counter()
    for timer in loop._scheduled:  # type: ignore[attr-defined]
        if not timer.cancelled():
            callback = timer._callback
            owner = getattr(callback, "__self__", None)
            name = getattr(callback, "__qualname__", repr(callback))
            kinds[f"{type(owner).__qualname__}.{name}" if owner is not None else name] += 1
    return kinds


def test_open_streams_hold_no_loop_timer_of_their_own(config: Path) -> None:
    """A stream waiting on its upstream has a keepalive check and a read deadline; both are
    entries in a timer wheel (gateway/timer_wheel.py), so opening more streams arms no more
    loop timers (under uvloop a timer and its handle were ~0.45 KB each, twice per stream:
    docs/decisions/0012, seventh pass). Counted on asyncio's loop, whose timers are visible,
    by kind: the app's periodic tasks (the store's watcher, cache refreshes, the ledger's batch
    timer) arm and fire theirs at any moment, a timer or two either way, so what is asserted is
    that no kind of timer grows with the streams (eight more streams: eight more of a kind)."""
    added = 8

    async def main() -> list[collections.Counter[str]]:
        loop = asyncio.get_running_loop()
        armed = []
        async with started(config) as app:
            assert app.first_events == 0  # (the start-up's admin answers are no streams)
            tasks: list[asyncio.Future[bytes]] = []
            for count in (1, 1 + added):
                while len(tasks) < count:
                    tasks.append(asyncio.ensure_future(app.chat("openai/hold-fake")))
                while app.first_events < count:
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.05)  # every stream has waited: its watch is armed
                armed.append(timer_kinds(loop))
            for gone in app.clients:
                if not gone.done():
                    gone.set_result({"type": "http.disconnect"})
            await asyncio.gather(*tasks)
        return armed

    one, more = asyncio.run(within(main(), 30))
    grown = {kind: more[kind] - one[kind] for kind in more if more[kind] - one[kind] >= added // 2}
    assert not grown, f"loop timers that grew with {added} more streams open: {grown}"


def held_for_the_collector() -> collections.Counter[str]:
    """Tickets and key gates the collector tracks, and admissions a route's coroutine holds."""
    found: collections.Counter[str] = collections.Counter()
    for thing in gc.get_objects():
        if isinstance(thing, Ticket | KeyGate):
            found[f"{type(thing).__qualname__} tracked"] += 1
        elif isinstance(thing, PendingAdmission):
            for holder in gc.get_referrers(thing):
                if isinstance(
                    holder, types.CoroutineType
                ) and holder.cr_code.co_filename.startswith(f"{GATEWAY}/api/"):
                    found[f"PendingAdmission held by {holder.cr_code.co_name}"] += 1
    return found


async def while_streams_open(
    config: Path, opened: int, look: Callable[[], T], route: str = "/v1/chat/completions"
) -> T:
    """`look()`'s answer, after a full collection, while `opened` streams of `route` wait
    between events (each past its first); the streams' clients leave after."""
    async with started(config) as app:
        assert app.first_events == 0  # (the start-up's admin answers are no streams)
        tasks = [
            asyncio.ensure_future(app.chat("openai/hold-fake", route=route)) for _ in range(opened)
        ]
        while app.first_events < opened:
            await asyncio.sleep(0.01)
        gc.collect()
        seen = look()
        for gone in app.clients:
            if not gone.done():
                gone.set_result({"type": "http.disconnect"})
        await asyncio.gather(*tasks)
    return seen


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/messages", "/v1/responses"])
def test_an_open_stream_keeps_no_admission_state_for_the_collector(
    config: Path, route: str
) -> None:
    """What a stream holds while it waits is walked by every middle and full collection. Once
    admitted, its route's coroutine keeps no PendingAdmission (the ticket has what the
    settlement needs), and the ticket and its key's share are not tracked by the collector
    (msgspec `gc=False`: they never hold a cycle). docs/decisions/0012, twenty-sixth pass."""
    opened = 4

    held = uvloop.run(within(while_streams_open(config, opened, held_for_the_collector, route), 30))
    assert held == {}, f"with {opened} streams open: {dict(held)}"


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/messages", "/v1/responses"])
def test_only_the_upstreams_failures_mid_stream_count_against_its_circuit(
    config: Path, route: str
) -> None:
    """However a stream ends, its settlement says whether the upstream broke it off (cut, its
    error event, silence): those count against the served deployment's circuit. A stream that
    is whole, one whose client left and one the drain ended (settled 503, as an upstream's
    error event is) do not."""

    async def main() -> dict[str, int]:
        counted: dict[str, int] = {}
        async with started(config) as app:
            meter = app.state["klawd"].meter
            count = meter.on_broke_off
            assert count is not None
            for model, end in STREAM_ENDS:
                calls: list[str] = []
                meter.on_broke_off = lambda served, calls=calls: calls.append(served.model.id)
                await app.chat(model, end, route)
                await settled()
                counted[f"{model} {end}".strip()] = len(calls)
            meter.on_broke_off = count
        return counted

    counted = uvloop.run(within(main(), 30))
    assert counted == {
        "openai/gpt-fake": 0,
        "openai/hold-fake leave": 0,
        "openai/hold-fake drain": 0,
        "openai/cut-fake": 1,
        "openai/error-event": 1,
        "slowai/stall-stream": 1,
    }


def test_an_open_chat_stream_holds_no_chat_request(config: Path) -> None:
    """After its head, a chat stream's relay needs of the request only its prompt's size (the
    settlement's estimate when the upstream gives no usage): neither the route's frame nor the
    relay keeps the decoded request (~0.6 KB of Python objects a stream, docs/decisions/0005,
    twenty-seventh pass) for the stream's life."""
    opened = 4

    def requests_held() -> int:
        return sum(isinstance(thing, ChatRequest) for thing in gc.get_objects())

    held = uvloop.run(within(while_streams_open(config, opened, requests_held), 30))
    assert held == 0, f"{held} ChatRequest objects held by {opened} open streams"


# What a route decodes of a request: the client's request, its translation, the chat request.
REQUEST_TYPES = (
    ChatRequest,
    MessagesRequest,
    MessagesTranslation,
    ResponsesRequest,
    ResponsesTranslation,
)
HOLDERS = (types.FrameType, types.CellType)


@pytest.mark.parametrize("route", ["/v1/messages", "/v1/responses"])
def test_an_open_messages_or_responses_stream_holds_no_request(config: Path, route: str) -> None:
    """As a chat stream (above): once its head is out, a Messages or Responses stream keeps
    neither the client's decoded request, nor its translation, nor the chat request made of it
    (the route's frame, its closures and the relay keep only what the stream still needs: the
    prompt's size, and for a stored response its input items and history)."""
    opened = 4

    def requests_held() -> dict[str, int]:
        """By type: the tracked ones, and those a frame, a closure's cell or a gateway object
        refers to (a struct of strings alone, such as a request whose input is a string, is
        not tracked by the collector)."""
        found = {
            id(thing): thing
            for tracked in gc.get_objects()
            for thing in (
                (tracked, *gc.get_referents(tracked))
                if isinstance(tracked, HOLDERS) or type(tracked).__module__.startswith("gateway")
                else (tracked,)
            )
            if isinstance(thing, REQUEST_TYPES)
        }
        held = collections.Counter(
            f"{type(thing).__module__}.{type(thing).__qualname__}" for thing in found.values()
        )
        return dict(held)

    held = uvloop.run(within(while_streams_open(config, opened, requests_held, route), 30))
    assert held == {}, f"held by {opened} open streams of {route}: {held}"
