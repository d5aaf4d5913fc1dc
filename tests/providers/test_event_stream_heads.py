"""The head of an answer to a request that asked for an event stream (`HttpClient.request(...,
stream=True)`, as the providers' streams ask): fed to httptools alone when it is whole in the
answer's first read and the upstream's last stream came chunked, so that no exception has to
stop the parser before the Dechunker reads the body (docs/decisions/0011, issue 19zzzd); read
as any answer's otherwise. Whichever way, every answer is read right: these tests send the
shapes test_http_client.py sends to plain requests (heads ending in any read, interim heads,
malformed chunks, bytes after the end) and answers of other kinds to stream requests, in turn
on one connection. Raw loopback servers; no timing thresholds."""

from __future__ import annotations

import pytest

from gateway.providers.http_client import ResponseBroken
from tests.live_bound import running_timeout
from tests.providers.test_http_client import (
    BOUND_S,
    EVENT_HEAD,
    EVENTS,
    MALFORMED_CHUNKS,
    Conn,
    answer,
    broken_and_dropped,
    client,
    get,
    keep_serving,
    serving,
    whole_and_dropped_after_its_end,
)

# The client's own timers (connect, read, headers) are the event loop's, on the wall clock: a
# case that fails in a run this process was stopped in is asked again (tests/asked_again.py).
pytestmark = pytest.mark.asked_again_if_stopped

EVENTS_READ = b"data: 1\n\ndata: 2\n\n"
LENGTH_STREAM = answer(EVENTS_READ, "Content-Type: text/event-stream")
ERROR = answer(b'{"error":{"message":"slow down"}}', "Content-Type: application/json",
               status="429 Too Many Requests")  # fmt: skip
OTHER_CHUNKED = (  # (Bedrock's streams: chunked, not an event stream)
    b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.amazon.eventstream\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
)


@pytest.mark.parametrize("cut", [1, 2, 3, 4, 5, 20])
@pytest.mark.parametrize("line_end", [b"\r\n", b"\n"])
async def test_a_streamed_answer_s_head_may_end_in_any_read(cut: int, line_end: bytes) -> None:
    """A read that ends inside the head's blank line, just after it, or after the first chunk
    splits head and body right; the next stream (its head and body in one read) too."""
    head = EVENT_HEAD.replace(b"\r\n", line_end)
    wire = head + EVENTS
    at = len(head) - 3 + cut

    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(wire[:at], wire[at:])
        await conn.request()
        await conn.send(wire)
        await conn.wait_closed_by_peer()

    async with running_timeout(BOUND_S), serving(handler) as server, client() as http:
        for _ in range(2):
            response, body = await get(http, server.url(), stream=True)
            assert (response.status, body) == (200, EVENTS_READ)
            assert response.headers["content-type"] == "text/event-stream"
        assert server.accepted == 1  # kept alive


@pytest.mark.parametrize("split", [False, True])
async def test_interim_answers_before_a_streamed_answer_are_skipped(split: bool) -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
    wire = interim + EVENT_HEAD + EVENTS

    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(*((wire[:40], wire[40:90], wire[90:]) if split else (wire,)))
        await conn.wait_closed_by_peer()

    async with running_timeout(BOUND_S), serving(handler) as server, client() as http:
        response, body = await get(http, server.url(), stream=True)
        assert (response.status, body) == (200, EVENTS_READ)


@MALFORMED_CHUNKS
async def test_malformed_chunks_of_a_streamed_answer_are_broken(body: bytes) -> None:
    await broken_and_dropped(body, stream=True)


async def test_bytes_after_a_streamed_answer_s_end_drop_its_connection() -> None:
    await whole_and_dropped_after_its_end(stream=True)


async def test_a_malformed_head_of_a_streamed_answer_is_broken() -> None:
    handler = keep_serving(b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n" + EVENTS)
    async with running_timeout(BOUND_S), serving(handler) as server, client() as http:
        with pytest.raises(ResponseBroken):
            await http.request("GET", server.url(), {}, None, stream=True)


async def test_answers_of_every_kind_to_stream_requests_are_read_in_turn() -> None:
    """Chunked event streams (the head fed alone), an event stream of a Content-Length, an
    error, a chunked answer that is no event stream (the parser reads those whole, and the
    pool's next stream is read as any answer), then chunked event streams again: one
    connection, every answer whole and right."""
    wires = [
        (EVENT_HEAD + EVENTS, EVENTS_READ),
        (LENGTH_STREAM, EVENTS_READ),
        (EVENT_HEAD + EVENTS, EVENTS_READ),
        (EVENT_HEAD + EVENTS, EVENTS_READ),
        (ERROR, b'{"error":{"message":"slow down"}}'),
        (OTHER_CHUNKED, b"abc"),
        (LENGTH_STREAM, EVENTS_READ),
        (EVENT_HEAD + EVENTS, EVENTS_READ),
        (EVENT_HEAD + EVENTS, EVENTS_READ),
    ]
    async with (
        running_timeout(BOUND_S),
        serving(keep_serving(*(wire for wire, _ in wires))) as server,
        client() as http,
    ):
        for _, read in wires:
            _, body = await get(http, server.url(), stream=True)
            assert body == read
        assert server.accepted == 1
