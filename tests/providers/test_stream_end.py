"""A reframed stream that its upstream ends at the body's end (Gemini's: no terminator event),
read by `step()` as the chat route's relay reads it: when the end arrives with the last events,
the closing events go out in the same piece; otherwise, and when the end is a failure, as
before (the events first, then the end or the error)."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from gateway.errors import BadGateway, GatewayError, ServiceUnavailable
from gateway.providers.gemini import GeminiProvider
from gateway.settings import ProviderSettings
from tests.live_bound import running_timeout
from tests.providers.test_http_client import BOUND_S, Conn, serving
from tests.unit.translation_helpers import chat_call

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
END = b"0\r\n\r\n"


def chunk(event: dict[str, object]) -> bytes:
    data = b"data: " + orjson.dumps(event) + b"\r\n\r\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


def text(words: str, finish: str | None = None) -> bytes:
    candidate: dict[str, object] = {"content": {"parts": [{"text": words}], "role": "model"}}
    if finish is not None:
        candidate["finishReason"] = finish
    usage = {"promptTokenCount": 3, "candidatesTokenCount": 2, "totalTokenCount": 5}
    return chunk({"candidates": [candidate], "usageMetadata": usage, "responseId": "r"})


async def read(*sends: bytes, out: list[bytes]) -> None:
    """Each piece `step()` gives into `out`, until the end, of a stream whose upstream sends
    `sends`, the next one only once the reader has had a piece of the one before."""
    had_piece = asyncio.Event()

    async def handler(conn: Conn) -> None:
        await conn.request()
        for i, send in enumerate(sends):
            if i > 0:
                await had_piece.wait()
            await conn.send(send)
        await conn.wait_closed_by_peer()

    async with running_timeout(BOUND_S), serving(handler) as server:
        provider = GeminiProvider(
            "p", ProviderSettings(kind="gemini", base_url=server.url("")), None
        )
        try:
            stream = await provider.stream(chat_call("gemini", "m", stream=True))
            while (piece := stream.step()) != b"":
                if piece is None:
                    await stream.arrival()
                else:
                    out.append(piece)
                    had_piece.set()
        finally:
            await provider.close()


async def test_the_end_that_came_with_the_last_event_goes_out_with_it() -> None:
    sent: list[bytes] = []
    await read(HEAD + text("Hello") + text(" there", "STOP") + END, out=sent)
    assert len(sent) == 1
    assert sent[0].count(b"data: ") == 5  # the role, two texts, the finish, [DONE]
    assert sent[0].endswith(b'"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n')


async def test_an_end_that_comes_later_is_its_own_piece() -> None:
    sent: list[bytes] = []
    await read(HEAD + text("Hello", "STOP"), END, out=sent)
    assert len(sent) == 2
    assert sent[0].endswith(b'"finish_reason":"stop"}]}\n\n')
    assert sent[1] == b"data: [DONE]\n\n"


@pytest.mark.parametrize(
    ("last", "error"),
    [
        (b"", BadGateway),  # the end before a finish reason: cut short
        (chunk({"error": {"code": 503, "message": "busy", "status": "UNAVAILABLE"}}),
         ServiceUnavailable),  # an error event
    ],
)  # fmt: skip
async def test_a_failing_end_that_came_with_the_events_is_raised_after_them(
    last: bytes, error: type[GatewayError]
) -> None:
    sent: list[bytes] = []
    with pytest.raises(error):
        await read(HEAD + text("Hello") + last + END, out=sent)
    assert len(sent) == 1
    assert b'"content":"Hello"' in sent[0]


@pytest.mark.parametrize("later", [False, True])
async def test_an_error_event_the_end_dispatches_is_raised(later: bool) -> None:
    # The body ends right after the error event's data line, without its blank line: the
    # event is dispatched by finish() (at the body's end), which keeps it as upstream_error
    # without raising. It was lost: the stream ended as if whole, without [DONE] or an error.
    error = orjson.dumps({"error": {"code": 503, "message": "busy", "status": "UNAVAILABLE"}})
    data = b"data: " + error + b"\r\n"
    last = b"%x\r\n%s\r\n" % (len(data), data) + END
    sent: list[bytes] = []
    with pytest.raises(ServiceUnavailable):
        if later:
            await read(HEAD + text("Hello"), last, out=sent)
        else:
            await read(HEAD + text("Hello") + last, out=sent)
    assert len(sent) == 1
    assert b'"content":"Hello"' in sent[0]
    assert b"[DONE]" not in sent[0]
