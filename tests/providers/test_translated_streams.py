"""The Messages and Responses routes' translated streams (gateway/api/translated.py) relayed
as the chat route's: the provider's OpenAI chunks read while the relay waits are translated in
the connection's read and sent from there (`deliver_to`). Whatever the upstream's chunk
boundaries, the client gets every event once, whole, in order: the same bytes as when the
whole stream arrives in one read (nothing then is sent from a read).

No timing thresholds: the server writes each read a few loop turns apart, and every test is
bounded by `asyncio.timeout`, on both asyncio's event loop and uvloop (conftest.py)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Any

import msgspec
import orjson
import pytest

from gateway import _core
from gateway.api import messages
from gateway.api.messages import AnthropicEvents, anthropic_events
from gateway.api.streaming import Stepped, send_event_stream
from gateway.api.translated import TranslatedStream, stepped
from gateway.errors import BadGateway, GatewayError
from gateway.providers.base import ReframedStream, RouteEvents
from gateway.responses.events import ReframedEvents, ResponseEvents, response_events, route_events
from gateway.schemas.openai import ChatRequest, StreamOptions
from tests.live_bound import running_timeout
from tests.providers.test_http_client import (
    BOUND_S,
    EVENT_STREAM_HEAD,
    Conn,
    _chunk,
    openai_provider,
    serving,
)
from tests.unit.translation_helpers import chat_call

TURNS = 8  # loop turns between two reads: the read, the relay's step, its send, to spare


def _event(delta: dict[str, Any], finish: str | None = None) -> bytes:
    chunk = {
        "id": "x",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "u",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


# Text with multi-byte characters (reads split inside them), a tool call's argument fragments,
# the finish reason, the usage chunk and the terminator.
TOOL = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}
BODY = b"".join(
    [
        _event({"role": "assistant", "content": ""}),
        *(_event({"content": text}) for text in ("Hel", "lo, ", "wörld ", "— ", "ça ", "va? 🙂")),
        _event({"tool_calls": [TOOL]}),
        *(
            _event({"tool_calls": [{"index": 0, "function": {"arguments": part}}]})
            for part in ('{"ci', 'ty": "Pa', 'ris"}')
        ),
        _event({}, "tool_calls"),
        b'data: {"id":"x","object":"chat.completion.chunk","created":1,"model":"u","choices":[],'
        b'"usage":{"prompt_tokens":3,"completion_tokens":9,"total_tokens":12}}\n\n',
        b"data: [DONE]\n\n",
    ]
)


def awkward_reads(body: bytes, sizes: tuple[int, ...] = (1, 5, 17, 2, 40, 9, 3, 64)) -> list[bytes]:
    """`body` cut at every kind of place: inside `data:`, between the two line ends, inside
    the JSON and its multi-byte characters, several events in one read."""
    reads, start, i = [], 0, 0
    while start < len(body):
        reads.append(body[start : start + sizes[i % len(sizes)]])
        start += sizes[i % len(sizes)]
        i += 1
    return reads


class _Relayed(Stepped):
    """A stepped stream as `send_event_stream` steps it (`ReframedRelay`, billing aside),
    counting the pieces sent from the connection's read; `decline(n)`: whether the relay's
    `deliver` is made to decline the n-th piece offered to it (as while a keepalive is sent)."""

    def __init__(
        self, stream: ReframedStream | TranslatedStream, decline: Callable[[int], bool]
    ) -> None:
        self.step = stream.step
        self.arrival = stream.arrival
        self.edit = None
        self.stream = stream
        self.decline = decline
        self.offered = self.delivered = 0
        self.failure: Exception | None = None

    def failed(self, exc: Exception) -> bytes:
        self.failure = exc
        return FAILED

    async def close(self, whole: bool, drained: bool) -> None:
        pass

    def deliver_to(self, deliver: Callable[[bytes, asyncio.Future[None]], bool] | None) -> None:
        if deliver is None:
            self.stream.deliver_to(None)
            return

        def counted(piece: bytes, waiter: asyncio.Future[None]) -> bool:
            self.offered += 1
            if self.decline(self.offered):
                return False
            took = deliver(piece, waiter)
            self.delivered += took
            return took

        self.stream.deliver_to(counted)


Translate = Callable[[ReframedStream], TranslatedStream]
FAILED = b"event: error\ndata: {}\n\n"  # (the harness's last event after a failure)


async def relay(
    translate: Translate,
    reads: list[bytes],
    decline: Callable[[int], bool] = lambda n: False,
    events: RouteEvents | None = None,
    **call_fields: Any,
) -> tuple[list[dict[str, Any]], _Relayed, Any]:
    """The upstream's `reads` (each an HTTP chunk, written a few loop turns apart once the
    relay's first piece is out) through the provider's stream, translated and relayed: the
    messages sent to the client, the relay, the translated stream. `events`: the provider's
    reframer is asked for them (chained). `call_fields`: the ChatCall's, as the route makes it
    (by default the Responses route's id and created)."""
    first_out = asyncio.Event()

    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(EVENT_STREAM_HEAD)
        await first_out.wait()
        for read in reads:
            await conn.send(_chunk(read))
            for _ in range(TURNS):
                await asyncio.sleep(0)
        await conn.send(b"0\r\n\r\n")
        await conn.wait_closed_by_peer()

    async def receive() -> dict[str, Any]:
        await asyncio.Future()  # the client never leaves
        raise AssertionError

    messages: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)
        if message["type"] == "http.response.body":
            first_out.set()

    async with running_timeout(BOUND_S), serving(handler) as server:
        provider = openai_provider(server.url(""))
        try:
            call = chat_call("openai", "m", stream=True)
            if events is not None:  # (as the route asks: the response's id and created)
                fields = {"response_id": "resp_1", "created": 1700000000} | call_fields
                call = msgspec.structs.replace(call, events=events, **fields)
            elif call_fields:
                call = msgspec.structs.replace(call, **call_fields)
            stream = await provider.stream(call)
            assert isinstance(stream, ReframedStream)
            translated = translate(stream)
            assert isinstance(translated, ReframedEvents) or stepped(translated) is translated
            relayed = _Relayed(translated, decline)
            await send_event_stream(receive, send, [], relayed, 30, last=translated.finished)
        finally:
            await provider.close()
    return messages, relayed, translated


def anthropic(stream: ReframedStream) -> TranslatedStream:
    return AnthropicEvents(stream, stream_target(), "msg_1")


def responses(stream: ReframedStream) -> TranslatedStream:
    return ResponseEvents(stream, stream_target(), "resp_1", 1700000000, {"store": True})


FIELDS = {"store": True}


def one_pass(stream: ReframedStream) -> Any:
    """The Responses events the provider's chained reframer wrote (`chained=True`)."""
    events = response_events(stream, stream_target(), "resp_1", 1700000000, FIELDS)
    assert isinstance(events, ReframedEvents)
    return events


def stream_target() -> Any:
    return chat_call("openai", "m").target


def whole_events(pieces: list[bytes]) -> list[bytes]:
    """Each piece's events, checked whole: `event: <name>` then one line of JSON data."""
    events = []
    for piece in pieces:
        assert piece.endswith(b"\n\n"), piece
        for event in piece[:-2].split(b"\n\n"):
            name, data = event.split(b"\n")
            assert name.startswith(b"event: ") and data.startswith(b"data: "), event
            orjson.loads(data[len(b"data: ") :])
            events.append(event)
    return events


@pytest.mark.parametrize("translate", [anthropic, responses], ids=["messages", "responses"])
async def test_events_translated_from_awkward_reads_go_out_whole_in_order_from_the_read(
    translate: Translate,
) -> None:
    """Reads cut anywhere: the pieces sent from the reads (most of them) and by the relay's
    step are whole events, and all together are the bytes of the same stream read at once;
    the last piece (the stream's end) ends the body."""
    reference, _, _ = await relay(translate, [BODY])
    messages, relayed, _ = await relay(translate, awkward_reads(BODY))
    pieces = [m["body"] for m in messages[1:]]
    assert b"".join(pieces) == b"".join(m["body"] for m in reference[1:])
    assert len(whole_events(pieces)) > 10
    assert relayed.delivered >= 8, "pieces were sent from the reads"
    assert messages[-1]["more_body"] is False
    assert (b"message_stop" if translate is anthropic else b"response.completed") in pieces[-1]


@pytest.mark.parametrize("translate", [anthropic, responses], ids=["messages", "responses"])
async def test_a_translated_piece_the_relay_declines_is_its_next_step_s_in_order(
    translate: Translate,
) -> None:
    """A piece `deliver` declines (a keepalive's send in flight) was already translated: the
    relay is woken and its next step returns it, before anything read after it."""
    reference, _, _ = await relay(translate, [BODY])
    messages, relayed, _ = await relay(translate, awkward_reads(BODY), lambda n: n % 2 == 1)
    pieces = [m["body"] for m in messages[1:]]
    assert b"".join(pieces) == b"".join(m["body"] for m in reference[1:])
    whole_events(pieces)
    assert relayed.offered >= 8 and relayed.delivered >= 4


async def test_responses_events_sent_from_the_read_are_numbered_and_the_answer_kept() -> None:
    """The Responses API's numbers count the events sent from the reads too (a failure's
    events would follow them), and the finished response is kept for the store."""
    messages, relayed, translated = await relay(responses, awkward_reads(BODY))
    events = whole_events([m["body"] for m in messages[1:]])
    numbers = [orjson.loads(e.split(b"\n")[1][len(b"data: ") :])["sequence_number"] for e in events]
    assert numbers == list(range(len(events)))
    assert relayed.delivered >= 8
    assert isinstance(translated, ResponseEvents)
    assert translated.final is not None and translated.final["status"] == "completed"
    failure = translated.error_event(BadGateway("cut off"))
    assert b'"sequence_number":%d' % len(events) in failure


class _FailsInTheRead:
    """The second reframer, but its first feed from the upstream read's callback after `after`
    feeds raises SseError, as a malformed event makes the real one raise."""

    def __init__(self, real: Any, after: int) -> None:
        self.real = real
        self.after = after
        self.feeds = 0
        self.failed = False

    def feed(self, data: bytes) -> bytes:
        self.feeds += 1
        caller = sys._getframe(1).f_code.co_name
        if not self.failed and self.feeds > self.after and caller == "_translate":
            self.failed = True
            raise _core.SseError("malformed")
        out: bytes = self.real.feed(data)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


@pytest.mark.parametrize("translate", [anthropic, responses], ids=["messages", "responses"])
async def test_a_translation_that_fails_in_the_read_ends_the_stream_after_the_events_before_it(
    translate: Translate,
) -> None:
    """A failure of the translation in the read's callback is kept for the relay's task: it
    is woken, its next step raises the route's BadGateway (cause: the reframer's error), and
    the stream ends with the failure's last event after every event sent before it, whole
    and in order."""
    reference, _, _ = await relay(translate, [BODY])
    failing: list[_FailsInTheRead] = []

    def translate_failing(stream: ReframedStream) -> TranslatedStream:
        translated = translate(stream)
        failing.append(_FailsInTheRead(translated._reframer, after=3))
        translated._reframer = failing[0]  # type: ignore[assignment]
        return translated

    messages, relayed, _ = await relay(translate_failing, awkward_reads(BODY))
    assert failing[0].failed, "the feed that failed was the read's"
    assert isinstance(relayed.failure, BadGateway)
    assert "could not be translated" in relayed.failure.message
    assert isinstance(relayed.failure.__cause__, _core.SseError)
    pieces = [m["body"] for m in messages[1:]]
    assert pieces[-2:] == [FAILED, b""] and messages[-1]["more_body"] is False
    before = b"".join(pieces[:-2])
    whole_events(pieces[:-2])
    assert before and b"".join(m["body"] for m in reference[1:]).startswith(before)


def test_a_failure_s_numbers_follow_the_last_event_sent_not_one_held() -> None:
    """The drain's `response.failed` (error_event) is numbered after the events the client got:
    a translated piece still held for the relay's next step (the opening events here, as one
    `deliver` declined would be) is not sent once the drain ends the stream."""
    events = ResponseEvents(_NOT_READ, stream_target(), "resp_1", 1700000000, {})
    assert b'"sequence_number":0' in events.error_event(BadGateway("drained"))
    opening = events.step()
    assert opening is not None and opening.count(b"\n\n") == 2
    assert b'"sequence_number":2' in events.error_event(BadGateway("drained"))


_NOT_READ: Any = object()  # (an upstream the test never reads)


# An upstream error event after some text, and a tool call continued after text began (which
# the Responses events cannot place: a translation failure).
ERROR_BODY = BODY[: BODY.index(b"data: ", 200)] + (
    b'data: {"error":{"type":"server_error","message":"overloaded"}}\n\n'
)
UNPLACEABLE = b"".join(
    [
        _event({"tool_calls": [TOOL]}),
        _event({"content": "Hel"}),
        _event({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}),
        b"data: [DONE]\n\n",
    ]
)


@pytest.mark.parametrize(
    "body", [BODY, ERROR_BODY, UNPLACEABLE], ids=["whole", "upstream-error", "untranslatable"]
)
@pytest.mark.parametrize("sizes", [(1, 5, 17, 2, 40, 9, 3, 64), (7,), (300, 1)])
async def test_responses_events_of_the_chained_reframer_are_the_translated_stream_s_bytes(
    body: bytes, sizes: tuple[int, ...]
) -> None:
    """The provider's chained reframer (one Rust call per read) and the provider's chunks
    translated here (`ResponseEvents`), over the same reads cut anywhere, with the relay
    declining every third piece offered: the client gets the same bytes, the same failure
    (type and message) and a failure numbered alike, and the same response is kept."""
    decline = lambda n: n % 3 == 0  # noqa: E731
    reads = awkward_reads(body, sizes)
    old, old_relayed, old_events = await relay(responses, reads, decline)
    new, new_relayed, new_events = await relay(
        one_pass, reads, decline, route_events(stream_target(), FIELDS)
    )
    assert [m["body"] for m in new[1:]] == [m["body"] for m in old[1:]]
    assert type(new_relayed.failure) is type(old_relayed.failure)
    if old_relayed.failure is not None:
        assert isinstance(old_relayed.failure, GatewayError)
        assert isinstance(new_relayed.failure, GatewayError)
        assert new_relayed.failure.message == old_relayed.failure.message
        failure = BadGateway("cut off")
        assert new_events.error_event(failure) == old_events.error_event(failure)
    assert new_events.final == old_events.final
    assert (new_events.final is None) == (body is not BODY)


def messages_one_pass(stream: ReframedStream) -> Any:
    """The Anthropic events the provider's chained reframer wrote: the stream relayed as it is."""
    events = anthropic_events(stream, stream_target(), "msg_1")
    assert events is stream
    return events


# A tool call's arguments after the finish that wrote its block: Anthropic events cannot
# follow (a translation failure).
AFTER_FINISH = b"".join(
    [
        _event({"tool_calls": [TOOL]}),
        _event({"content": "Hel"}),
        _event({}, "tool_calls"),
        _event({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}),
        b"data: [DONE]\n\n",
    ]
)


@pytest.mark.parametrize(
    "body",
    [BODY, ERROR_BODY, AFTER_FINISH, BODY[:-40]],
    ids=["whole", "upstream-error", "untranslatable", "cut-off"],
)
@pytest.mark.parametrize("sizes", [(1, 5, 17, 2, 40, 9, 3, 64), (7,), (300, 1)])
async def test_anthropic_events_of_the_chained_reframer_are_the_translated_stream_s_bytes(
    body: bytes, sizes: tuple[int, ...]
) -> None:
    """The Messages route's: the provider's chained reframer (asked with the route's
    `route_events`) and the provider's chunks translated by `AnthropicEvents`, over the same
    reads cut anywhere, the relay declining every third piece offered: the same bytes, the
    same failure (type and message), the same usage and relayed characters (they bill)."""
    decline = lambda n: n % 3 == 0  # noqa: E731
    reads = awkward_reads(body, sizes)
    # (the Messages route's call: its message id, usage asked for)
    call: dict[str, Any] = {
        "response_id": "msg_1",
        "request": _with_usage(chat_call("openai", "m").request),
    }
    old, old_relayed, old_events = await relay(anthropic, reads, decline, **call)
    new, new_relayed, new_events = await relay(
        messages_one_pass, reads, decline, messages.route_events(stream_target()), **call
    )
    assert [m["body"] for m in new[1:]] == [m["body"] for m in old[1:]]
    assert type(new_relayed.failure) is type(old_relayed.failure)
    assert (new_relayed.failure is None) == (body is BODY)
    if old_relayed.failure is not None:
        assert isinstance(old_relayed.failure, GatewayError)
        assert isinstance(new_relayed.failure, GatewayError)
        assert new_relayed.failure.message == old_relayed.failure.message
    assert new_events.usage == old_events.usage
    assert new_events.content_chars == old_events.content_chars
    assert new_events.finished() == old_events.finished() == (body is BODY)


def _with_usage(request: ChatRequest) -> ChatRequest:
    return msgspec.structs.replace(
        request, stream=True, stream_options=StreamOptions(include_usage=True)
    )
