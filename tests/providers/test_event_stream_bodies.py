"""An event stream's body of a Content-Length, or to EOF, as the providers' HTTP client reads it.

Such a body (the bench's static one, nginx's file) is read by httptools and fed to the stream's
reframer by its step; a chunked one is reframed as it is read (`HttpResponse.reframe_into`).
These tests pin what the relay of such a body does, whichever way it is read (issue 19zzs read
it past httptools too, and dropped it: docs/decisions/0011): the same bytes relayed, split
anywhere; the connection kept alive once the body is whole, and only then; bytes after the
body, a reset, a reframer's failure, the client gone; compressed bodies; readers that do not
reframe. Raw loopback servers as in test_http_client.py; no timing thresholds."""

from __future__ import annotations

import asyncio
import gzip
from typing import Any, cast

import pytest

from gateway import _core
from gateway.errors import BadGateway
from gateway.providers.base import ReframedStream
from gateway.providers.http_client import ResponseBroken
from loadtests.bench.contenders import openai_events
from tests.live_bound import running_timeout
from tests.providers.test_http_client import (
    BOUND_S,
    OPENAI_EVENT,
    Conn,
    answer,
    client,
    get,
    openai_provider,
    relayed_before,
    serving,
)
from tests.unit.translation_helpers import chat_call

# The client's own timers (connect, read, headers) are the event loop's, on the wall clock: a
# case that fails in a run this process was stopped in is asked again (tests/asked_again.py).
pytestmark = pytest.mark.asked_again_if_stopped

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
BODY = b"".join(openai_events())  # the bench's stream: 50 events, ~8.3 KB


def framed(body: bytes, framing: str) -> bytes:
    if framing == "length":
        return HEAD + b"Content-Length: %d\r\n\r\n" % len(body) + body
    return HEAD + b"Connection: close\r\n\r\n" + body  # to EOF


def reframed(body: bytes) -> bytes:
    """What the provider's reframer makes of `body` fed whole."""
    reference = _core.Reframer("openai", "p/m", "chatcmpl-test1", 1700000000, True)
    return reference.feed(body) + reference.finish()


def pieces_at(wire: bytes, cuts: list[int]) -> list[bytes]:
    ends = [*cuts, len(wire)]
    return [wire[start:end] for start, end in zip([0, *cuts], ends, strict=True)]


async def relay(origin: str) -> tuple[bytes, list[tuple[int, int]]]:
    """The stream the provider relays, and its pools' (connections, idle ones) after it."""
    provider = openai_provider(origin)
    try:
        call = chat_call("openai", "m", stream=True, stream_options={"include_usage": True})
        stream = await provider.stream(call)
        assert isinstance(stream, ReframedStream)
        relayed = b"".join([piece async for piece in stream])
        pools = [(pool.count, len(pool.idle)) for pool in provider._client._pools.values()]
        return relayed, pools
    finally:
        await provider.close()


HEAD_LENGTH = len(framed(BODY, "length")) - len(BODY)
EOF_HEAD_LENGTH = len(framed(BODY, "EOF")) - len(BODY)


@pytest.mark.parametrize("framing", ["length", "EOF"])
@pytest.mark.parametrize(
    "cuts",
    [
        [],
        [HEAD_LENGTH - 2],
        [HEAD_LENGTH],
        [HEAD_LENGTH + 1],
        [HEAD_LENGTH + 37, HEAD_LENGTH + 38],
        [HEAD_LENGTH + 4000],
        [len(BODY) + HEAD_LENGTH - 1],
        list(range(1, len(BODY) + HEAD_LENGTH, 613)),
    ],
    ids=lambda cuts: ",".join(map(str, cuts))[:40] or "one read",
)
async def test_an_unchunked_stream_split_anywhere_is_relayed_byte_for_byte(
    framing: str, cuts: list[int]
) -> None:
    """Split in the head's read and any number of reads after it, at any byte: the same bytes
    as the reframer fed the whole body; a body of a Content-Length keeps its connection alive,
    one to EOF ends with its connection."""
    wire = framed(BODY, framing)
    if framing == "EOF":
        shift = EOF_HEAD_LENGTH - HEAD_LENGTH  # (cuts within the head's first line stay)
        cuts = [cut + shift if cut > HEAD_LENGTH // 2 else cut for cut in cuts]

    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(*pieces_at(wire, cuts))
        if framing == "EOF":
            conn.writer.close()
        await conn.wait_closed_by_peer()

    async with running_timeout(BOUND_S), serving(handler) as server:
        relayed, pools = await relay(server.url(""))
        assert relayed == reframed(BODY)
        if framing == "length":
            assert pools == [(1, 1)], "kept alive"


@pytest.mark.parametrize("framing", ["length", "EOF"])
async def test_an_unchunked_stream_written_byte_by_byte_is_relayed_whole(framing: str) -> None:
    body = OPENAI_EVENT + b"\n" + OPENAI_EVENT + b"\ndata: [DONE]\n\n"
    wire = framed(body, framing)

    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(*(wire[i : i + 1] for i in range(len(wire))))
        conn.writer.close()

    async with running_timeout(BOUND_S), serving(handler) as server:
        relayed, _ = await relay(server.url(""))
        assert relayed == reframed(body)


async def test_a_stream_s_connection_is_reused_once_its_content_length_is_read() -> None:
    """The stream ends at [DONE]; the body's last bytes (a comment) come after: the connection
    goes back to the pool when they arrive, not before, and the next request goes on it."""
    body = BODY + b": end\n\n"
    wire = framed(body, "length")
    rest = asyncio.Event()

    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(wire[:-3])
        await rest.wait()
        await conn.send(wire[-3:])
        if await conn.request() is not None:
            await conn.send(answer(b"next"))
        await conn.wait_closed_by_peer()

    async with running_timeout(BOUND_S), serving(handler) as server, client() as http:
        response = await http.request("GET", server.url(), {}, None)
        reframer = _core.Reframer("openai", "p/m", "chatcmpl-test1", 1700000000, True)
        sunk = response.reframe_into(reframer)  # (if it reads the body into the reframer)
        out = b""
        while not out.endswith(b"data: [DONE]\n\n"):
            piece = response.next_piece()
            if piece is None:
                await response.arrival()
            else:
                out += piece if sunk else reframer.feed(piece)
        response.release_when_whole(BOUND_S)
        pools = list(http._pools.values())
        assert [(pool.count, len(pool.idle)) for pool in pools] == [(1, 0)], "not whole yet"
        rest.set()
        while not pools[0].idle:
            await asyncio.sleep(0.01)
        assert (await get(http, server.url()))[1] == b"next"
        assert server.accepted == 1
        assert out + reframer.finish() == reframed(BODY)


@pytest.mark.parametrize("where", ["same read", "next read"])
async def test_bytes_after_a_stream_s_content_length_drop_its_connection(where: str) -> None:
    """As for any answer: the stream is relayed whole, the connection not reused."""
    wire = framed(BODY, "length") + b"HTTP/1.1 200"
    cuts = [] if where == "same read" else [len(wire) - len(b"HTTP/1.1 200")]

    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(*pieces_at(wire, cuts) if server.accepted == 1 else [answer(b"next")])
        await conn.wait_closed_by_peer()

    async with running_timeout(BOUND_S), serving(handler) as server, client() as http:
        assert (await get(http, server.url()))[1] == BODY
        while any(pool.count for pool in http._pools.values()):  # (until the bytes after)
            await asyncio.sleep(0.01)
        assert (await get(http, server.url()))[1] == b"next"
        assert server.accepted == 2


@pytest.mark.parametrize("framing", ["length", "EOF"])
async def test_an_unchunked_stream_cut_by_a_reset_is_broken(framing: str) -> None:
    wire = framed(BODY, framing)
    sent = asyncio.Event()

    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(wire[: HEAD_LENGTH + 3000])
        await sent.wait()
        conn.reset()

    async with running_timeout(BOUND_S), serving(handler) as server:
        provider = openai_provider(server.url(""))
        try:
            assert await relayed_before(provider, BadGateway, "broke off the stream", each=sent)
        finally:
            await provider.close()


async def test_a_body_cut_short_of_its_content_length_by_eof_is_broken() -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(framed(BODY, "length")[:-10])
        conn.writer.close()

    async with running_timeout(BOUND_S), serving(handler) as server, client() as http:
        response = await http.request("GET", server.url(), {}, None)
        with pytest.raises(ResponseBroken):
            await response.read()


async def test_a_malformed_event_mid_body_comes_after_the_events_before_it() -> None:
    body = OPENAI_EVENT + b"\n" + OPENAI_EVENT + b"\ndata: hello\n\n"
    wire = framed(body, "length")
    go_on = asyncio.Event()

    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(wire[: HEAD_LENGTH + len(OPENAI_EVENT) + 1])
        await go_on.wait()
        await conn.send(wire[HEAD_LENGTH + len(OPENAI_EVENT) + 1 :])
        await conn.wait_closed_by_peer()

    async with running_timeout(BOUND_S), serving(handler) as server:
        provider = openai_provider(server.url(""))
        try:
            pieces = await relayed_before(provider, BadGateway, "malformed stream", each=go_on)
            assert b"".join(pieces).count(b'"content":"hi"') == 2
        finally:
            await provider.close()


async def test_an_unchunked_stream_closed_mid_body_drops_its_connection() -> None:
    """The client gone mid-stream: the stream closed, the upstream's connection dropped."""
    peer_closed = asyncio.Event()

    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(framed(BODY, "length")[: HEAD_LENGTH + 3000])
        await conn.wait_closed_by_peer()
        peer_closed.set()

    async with running_timeout(BOUND_S), serving(handler) as server:
        provider = openai_provider(server.url(""))
        try:
            stream = await provider.stream(chat_call("openai", "m", stream=True))
            assert (await anext(stream)).count(b"data: ") >= 1
            await stream.aclose()
            await peer_closed.wait()
            assert all(pool.count == 0 for pool in provider._client._pools.values())
        finally:
            await provider.close()


@pytest.mark.parametrize("framing", ["length", "EOF"])
async def test_a_compressed_event_stream_is_decoded_by_its_reader(framing: str) -> None:
    """gzip: not reframed as it is read (`reframe_into` declines), the body decoded as taken."""
    squeezed = gzip.compress(BODY)
    wire = framed(squeezed, framing).replace(HEAD, HEAD + b"Content-Encoding: gzip\r\n")

    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(wire)
        conn.writer.close()

    async with running_timeout(BOUND_S), serving(handler) as server:
        async with client() as http:
            response = await http.request("GET", server.url(), {}, None)
            assert not response.reframe_into(_core.Reframer("openai", "gw/m", "c", 7, False))
            assert await response.read() == BODY
        relayed, _ = await relay(server.url(""))
        assert relayed == reframed(BODY)


@pytest.mark.parametrize("framing", ["length", "EOF"])
@pytest.mark.parametrize("cut", [0, 1, 500])
async def test_an_unchunked_event_stream_is_read_whole_by_a_reader_that_does_not_reframe(
    framing: str, cut: int
) -> None:
    """`read()`, `whole()` and `chunks()` of such a body (an error answer's, a test's): its
    bytes, those that came with the head first."""
    wire = framed(BODY, framing)
    cuts = [len(wire) - len(BODY) + cut] if cut else []

    async def handler(conn: Conn) -> None:
        while await conn.request() is not None:
            await conn.send(*pieces_at(wire, cuts))
            if framing == "EOF":
                conn.writer.close()
                return

    async with running_timeout(BOUND_S), serving(handler) as server, client() as http:
        assert (await get(http, server.url()))[1] == BODY
        response = await http.request("GET", server.url(), {}, None)
        assert b"".join([chunk async for chunk in response.chunks()]) == BODY
        response = await http.request("GET", server.url(), {}, None)
        while (body := response.whole()) is None:
            await response.arrival()
        assert body == BODY
        assert server.accepted == (3 if framing == "EOF" else 1)


class FeedsSeen:
    """A reframer that notes what each `feed` is given, the real one doing the work."""

    def __init__(self, inner: _core.Reframer) -> None:
        self.inner = inner
        self.feeds: list[tuple[int, int]] = []  # (the bytes' length, where the stream starts)

    def feed(self, data: bytes, start: int = 0) -> bytes:
        self.feeds.append((len(data), start))
        return self.inner.feed(data, start)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.parametrize(
    "cuts", [[], [HEAD_LENGTH + 1], [HEAD_LENGTH + 4000]], ids=["one read", "1", "4000"]
)
async def test_the_body_that_came_with_the_head_is_fed_from_the_head_s_read(
    cuts: list[int],
) -> None:
    """The head's read is fed to the reframer past its head (`feed(read, start)`), its body not
    sliced off into a copy; joined with the reads after it if they came before the reader
    stepped. The same bytes as the reframer fed the whole body."""
    wire = framed(BODY, "length")
    go_on = asyncio.Event()

    async def handler(conn: Conn) -> None:
        await conn.request()
        first, *rest = pieces_at(wire, cuts)
        await conn.send(first)
        await go_on.wait()
        if rest:
            await conn.send(*rest)
        await conn.wait_closed_by_peer()

    async with running_timeout(BOUND_S), serving(handler) as server, client() as http:
        response = await http.request("GET", server.url(), {}, None)
        go_on.set()
        while not response._complete:  # every read in before the reader's first step
            await asyncio.sleep(0.01)
        spy = FeedsSeen(_core.Reframer("openai", "p/m", "chatcmpl-test1", 1700000000, True))
        stream = ReframedStream(openai_provider(server.url("")), response, cast(Any, spy))
        relayed = b"".join([piece async for piece in stream])
        assert relayed == reframed(BODY)
        assert spy.feeds == [(len(wire), HEAD_LENGTH)]
