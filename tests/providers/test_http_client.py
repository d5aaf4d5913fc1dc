"""The providers' HTTP/1.1 client against raw loopback servers that control every byte.

No timing thresholds: the servers and the tests move in step through events; every test is
bounded by `running_timeout`, runs on both asyncio's event loop and uvloop (conftest.py), and is
asked again when it fails in a run the process was stopped in (tests/asked_again.py)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import io
import shutil
import socket
import ssl
import struct
import subprocess
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from gateway import _core
from gateway.api.streaming import KEEPALIVE, Stepped, send_event_stream
from gateway.errors import BadGateway, GatewayTimeout, RateLimited
from gateway.metrics import Metrics
from gateway.observer import RequestObserver
from gateway.providers import http_client
from gateway.providers.base import HttpProvider, ReframedStream, UpstreamUnreachable
from gateway.providers.http_client import (
    HIGH_WATER,
    ConnectFailed,
    FixedHeaders,
    HttpClient,
    HttpResponse,
    ResponseBroken,
)
from gateway.providers.openai import OpenAIProvider
from gateway.requestlog import RequestLog
from gateway.settings import ProviderSettings
from loadtests.bench.contenders import openai_events
from tests.fakes.server import PNG_1X1 as PNG
from tests.kept_context import context_kept_after
from tests.live_bound import running_timeout, within
from tests.scrape import parse, total
from tests.unit.translation_helpers import chat_call

Handler = Callable[["Conn"], Awaitable[None]]
BOUND_S = 10  # no test legitimately comes near this
# The client's own timers (connect, read, headers) are the event loop's, on the wall clock: a
# case that fails in a run this process was stopped in is asked again (tests/asked_again.py).
pytestmark = pytest.mark.asked_again_if_stopped


class Conn:
    """One accepted connection as the server sees it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def request(self) -> tuple[bytes, bytes] | None:
        """(head, body) of the next request; None at EOF."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await self.reader.readexactly(length) if length else b""
        return head, body

    async def send(self, *pieces: bytes) -> None:
        """Each piece in its own write, flushed before the next."""
        for piece in pieces:
            self.writer.write(piece)
            await self.writer.drain()
            await asyncio.sleep(0)

    def reset(self) -> None:
        """Close with a TCP RST (SO_LINGER 0)."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    async def wait_closed_by_peer(self) -> None:
        """Until the client closed its end (EOF or reset)."""
        try:
            while await self.reader.read(65536):
                pass
        except ConnectionError:
            pass


class Server:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.accepted = 0
        self.requests: list[bytes] = []
        self.port = 0
        self.tasks: set[asyncio.Task[None]] = set()

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            await self.handler(Conn(reader, writer))
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # cancelled: the test is over
        finally:
            writer.close()
            self.tasks.discard(task)

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[Server]:
    server = Server(handler)
    listener = await asyncio.start_server(server._on_client, "127.0.0.1", 0)
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listener.close()
        for task in list(server.tasks):
            task.cancel()
        await asyncio.gather(*server.tasks, return_exceptions=True)


@asynccontextmanager
async def client(**kwargs: float) -> AsyncIterator[HttpClient]:
    http = HttpClient(
        pool_size=int(kwargs.pop("pool_size", 10)),
        connect_timeout_s=kwargs.pop("connect_timeout_s", 5),
        read_timeout_s=kwargs.pop("read_timeout_s", 5),
        **kwargs,
    )
    try:
        yield http
    finally:
        await http.close()


def answer(body: bytes, *headers: str, status: str = "200 OK") -> bytes:
    head = "".join(f"{h}\r\n" for h in headers)
    return f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{head}\r\n".encode() + body


def keep_serving(*responses: bytes) -> Handler:
    """Answers the requests of one connection in turn, then waits for the client to leave."""

    async def handler(conn: Conn) -> None:
        for response in responses:
            if await conn.request() is None:
                return
            await conn.send(response)
        await conn.wait_closed_by_peer()

    return handler


# The chunked-body tests run for a plain answer (httptools decodes the chunks) and an event
# stream (the Dechunker does): the same bytes, pieces, ends, reuse and failures.
CHUNKED_KINDS = pytest.mark.parametrize(
    "kind", [b"", b"Content-Type: text/event-stream\r\n"], ids=["plain", "event-stream"]
)


async def get(
    http: HttpClient, url: str, method: str = "GET", stream: bool = False
) -> tuple[HttpResponse, bytes]:
    """`stream`: asked as the providers' streams ask (test_event_stream_heads.py)."""
    response = await http.request(method, url, {}, None, stream=stream)
    return response, await response.read()


# -- bodies -------------------------------------------------------------------------------------
async def test_content_length_body_and_the_request_as_sent() -> None:
    seen: list[bytes] = []

    async def handler(conn: Conn) -> None:
        request = await conn.request()
        assert request is not None
        seen.append(request[0] + request[1])
        await conn.send(answer(b'{"ok":true}', "Content-Type: application/json", "X-Two: a"))
        await conn.wait_closed_by_peer()

    async with running_timeout(BOUND_S), serving(handler) as server, client() as http:
        response = await http.request(
            "POST", server.url("/v1/chat?x=1"), {"authorization": "Bearer k"}, b"hello"
        )
        assert response.status == 200
        assert response.headers["content-type"] == "application/json"
        assert response.headers.get("x-two") == "a"
        assert await response.read() == b'{"ok":true}'
    assert seen == [
        b"POST /v1/chat?x=1 HTTP/1.1\r\n"
        + f"Host: 127.0.0.1:{server.port}\r\n".encode()
        + b"Content-Length: 5\r\nauthorization: Bearer k\r\n\r\nhello"
    ], "no Accept-Encoding, no User-Agent: only what the caller gave"


@CHUNKED_KINDS
async def test_chunked_body_split_at_every_byte(kind: bytes) -> None:
    wire = (
        b"HTTP/1.1 200 OK\r\n" + kind + b"Transfer-Encoding: chunked\r\nX-A: 1\r\n\r\n"
        b"10\r\n0123456789abcdef\r\n"  # the size line "10" is split by the 1-byte writes
        b"3;ext=1\r\nxyz\r\n"
        b"0\r\nTrailer: t\r\n\r\n"
    )

    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(*(wire[i : i + 1] for i in range(len(wire))))
        await conn.wait_closed_by_peer()

    async with running_timeout(BOUND_S), serving(handler) as server, client() as http:
        response, body = await get(http, server.url())
        assert body == b"0123456789abcdefxyz"
        assert response.headers["x-a"] == "1"
        # An event stream's trailer fields are read past (nothing reads a stream's headers)
        assert response.headers.get("trailer") == (None if kind else "t")


@CHUNKED_KINDS
async def test_chunked_body_split_inside_the_size_line_and_crlf(kind: bytes) -> None:
    pieces = [
        b"HTTP/1.1 200 OK\r\n" + kind + b"Transfer-Encoding: chunked\r\n\r",
        b"\n1",
        b"a\r",
        b"\nABCDEFGHIJKLMNOPQRSTUVWXYZ\r",
        b"\n0\r\n",
        b"\r\n",
    ]

    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(*pieces)
        await conn.wait_closed_by_peer()

    async with running_timeout(BOUND_S), serving(handler) as server, client() as http:
        _, body = await get(http, server.url())
        assert body == b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"


async def test_eof_delimited_body() -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\npart one, ", b"two")
        conn.writer.close()

    async with running_timeout(BOUND_S), serving(handler) as server, client() as http:
        _, body = await get(http, server.url())
        assert body == b"part one, two"


async def test_a_body_cut_short_of_its_content_length_is_broken() -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")
        conn.writer.close()

    async with running_timeout(BOUND_S), serving(handler) as server, client() as http:
        response = await http.request("GET", server.url(), {}, None)
        with pytest.raises(ResponseBroken):
            await response.read()


@CHUNKED_KINDS
async def test_reset_mid_body_is_broken(kind: bytes) -> None:
    sent = asyncio.Event()

    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(
            b"HTTP/1.1 200 OK\r\n" + kind + b"Transfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n"
        )
        await sent.wait()
        conn.reset()

    async with running_timeout(BOUND_S), serving(handler) as server, client() as http:
        response = await http.request("GET", server.url(), {}, None)
        chunks = response.chunks()
        assert await anext(chunks) == b"first"
        sent.set()
        with pytest.raises(ResponseBroken) as caught:
            await anext(chunks)
        assert "broke" in str(caught.value) or "closed" in str(caught.value)


async def test_malformed_answer_is_broken() -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n")
        await conn.wait_closed_by_peer()

    async with running_timeout(BOUND_S), serving(handler) as server, client() as http:
        with pytest.raises(ResponseBroken):
            await http.request("GET", server.url(), {}, None)


@CHUNKED_KINDS
async def test_sloppy_answers_aiohttp_accepted_are_accepted(kind: bytes) -> None:
    """Bare LF line ends and spaces after a chunk size, as aiohttp's lenient parser allowed."""
    media = b"text/event-stream" if kind else b"text/plain"
    handler = keep_serving(
        b"HTTP/1.1 200 OK\nContent-Type: " + media + b"\nTransfer-Encoding: chunked\n\n"
        b"3 \r\nabc\n2;x\nde\r\n0\r\nX: y\n\n"
    )
    async with running_timeout(BOUND_S), serving(handler) as server, client() as http:
        response, body = await get(http, server.url())
        assert (response.headers["content-type"].encode(), body) == (media, b"abcde")


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),  # zlib-wrapped, as the RFC says
        ("deflate", lambda data: zlib.compress(data)[2:-4]),  # raw, as some servers send
    ],
)
@CHUNKED_KINDS
async def test_compressed_bodies_are_decoded(
    encoding: str, compress: Callable[[bytes], bytes], kind: bytes
) -> None:
    plain = b'{"choices":[{"text":"' + b"lorem ipsum " * 500 + b'"}]}'
    wire = compress(plain)

    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(
            f"HTTP/1.1 200 OK\r\nContent-Encoding: {encoding}\r\n".encode()
            + kind
            + b"Transfer-Encoding: chunked\r\n\r\n",
            b"".join(
                f"{len(wire[i : i + 7]):x}\r\n".encode() + wire[i : i + 7] + b"\r\n"
                for i in range(0, len(wire), 7)
            )
            + b"0\r\n\r\n",
        )
        await conn.wait_closed_by_peer()

    async with running_timeout(BOUND_S), serving(handler) as server, client() as http:
        _, body = await get(http, server.url())
        assert body == plain


async def test_corrupt_gzip_is_broken() -> None:
    async with (
        running_timeout(BOUND_S),
        serving(keep_serving(answer(b"not gzip at all", "Content-Encoding: gzip"))) as server,
        client() as http,
    ):
        response = await http.request("GET", server.url(), {}, None)
        with pytest.raises(ResponseBroken):
            await response.read()


async def test_head_204_and_304_have_no_body_and_keep_the_connection() -> None:
    handler = keep_serving(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n",  # HEAD: the length, no body
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n",
        answer(b"after"),
    )
    async with running_timeout(BOUND_S), serving(handler) as server, client() as http:
        response, body = await get(http, server.url(), "HEAD")
        assert (response.status, body, response.headers["content-length"]) == (200, b"", "1234")
        response, body = await get(http, server.url(), "DELETE")
        assert (response.status, body) == (204, b"")
        response, body = await get(http, server.url())
        assert (response.status, body) == (304, b"")
        response, body = await get(http, server.url())
        assert body == b"after"
        assert server.accepted == 1


async def test_interim_answers_are_skipped() -> None:
    handler = keep_serving(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
        + answer(b"final", "X-Final: yes")
    )
    async with running_timeout(BOUND_S), serving(handler) as server, client() as http:
        response, body = await get(http, server.url())
        assert (response.status, body) == (200, b"final")
        assert response.headers == {"content-length": "5", "x-final": "yes"}


async def test_repeated_headers_are_joined() -> None:
    handler = keep_serving(answer(b"", "Vary: a", "vary: b", "Retry-After: 3"))
    async with running_timeout(BOUND_S), serving(handler) as server, client() as http:
        response, _ = await get(http, server.url())
        assert response.headers["vary"] == "a, b"
        assert response.headers.get("retry-after") == "3"


async def test_framing_headers_are_read_whatever_their_case_and_repetition() -> None:
    """The framing headers are read from the raw headers (the dictionary is made only when
    asked for): upper case, and a repeated Transfer-Encoding, frame the body as before."""
    body = gzip.compress(b"squeezed")
    handler = keep_serving(
        b"HTTP/1.1 200 OK\r\nTRANSFER-ENCODING: chunked\r\nX-A: 1\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nCONTENT-ENCODING: GZIP\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\ntransfer-encoding: chunked\r\n"
        b"Content-Encoding: gzip\r\n\r\n"
        + f"{len(body):x}".encode()
        + b"\r\n"
        + body
        + b"\r\n0\r\n\r\n",
    )
    async with running_timeout(BOUND_S), serving(handler) as server, client() as http:
        response, body_read = await get(http, server.url())
        assert (body_read, response.headers) == (
            b"abc",
            {"transfer-encoding": "chunked", "x-a": "1"},
        )
        response, body_read = await get(http, server.url())
        assert body_read == b"squeezed"
        response, body_read = await get(http, server.url())
        assert body_read == b"squeezed"
        assert response.headers["transfer-encoding"] == "gzip, chunked"
        assert server.accepted == 1


# -- an event stream's chunked body (the Dechunker's, from the byte after the head) --------------
EVENT_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
)
EVENTS = b"9\r\ndata: 1\n\n\r\n9\r\ndata: 2\n\n\r\n0\r\n\r\n"


@pytest.mark.parametrize("cut", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("line_end", [b"\r\n", b"\n"])
async def test_an_event_stream_s_head_may_end_in_any_read(cut: int, line_end: bytes) -> None:
    """The head is fed to httptools alone and the body to the Dechunker: a read that ends
    inside the head's blank line, or just after it, splits them right."""
    wire = EVENT_HEAD.replace(b"\r\n", line_end) + EVENTS
    at = len(EVENT_HEAD.replace(b"\r\n", line_end)) - 3 + cut

    async def two_writes(conn: Conn) -> None:
        await conn.request()
        await conn.send(wire[:at], wire[at:])
        if await conn.request() is not None:
            await conn.send(answer(b"next"))
        await conn.wait_closed_by_peer()

    async with running_timeout(BOUND_S), serving(two_writes) as server, client() as http:
        response, body = await get(http, server.url())
        assert (response.headers["content-type"], body) == (
            "text/event-stream",
            b"data: 1\n\ndata: 2\n\n",
        )
        assert (await get(http, server.url()))[1] == b"next"
        assert server.accepted == 1  # kept alive


async def test_interim_answers_before_an_event_stream_are_skipped() -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
    wire = interim + EVENT_HEAD + EVENTS

    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(wire[:40], wire[40:90], wire[90:])
        await conn.wait_closed_by_peer()

    async with running_timeout(BOUND_S), serving(handler) as server, client() as http:
        response, body = await get(http, server.url())
        assert (response.status, body) == (200, b"data: 1\n\ndata: 2\n\n")


MALFORMED_CHUNKS = pytest.mark.parametrize(
    "body", [b"zz\r\n", b"5\r\nhelloXX", b"1;a b\r\nx\r\n", b"0\r\n:y\r\n\r\n"]
)


async def broken_and_dropped(body: bytes, stream: bool) -> None:
    """An event stream whose chunks are `body`: its read is broken, its connection dropped."""
    async with (
        running_timeout(BOUND_S),
        serving(keep_serving(EVENT_HEAD + body)) as server,
        client() as http,
    ):
        response = await http.request("GET", server.url(), {}, None, stream=stream)
        with pytest.raises(ResponseBroken):
            await response.read()
        assert all(pool.count == 0 for pool in http._pools.values())  # dropped


async def whole_and_dropped_after_its_end(stream: bool) -> None:
    """An event stream followed by bytes of no answer: read whole, its connection dropped."""
    handler = keep_serving(EVENT_HEAD + EVENTS + b"HTTP/1.1 200", answer(b"next"))
    async with running_timeout(BOUND_S), serving(handler) as server, client() as http:
        assert (await get(http, server.url(), stream=stream))[1] == b"data: 1\n\ndata: 2\n\n"
        assert all(pool.count == 0 for pool in http._pools.values())


@MALFORMED_CHUNKS
async def test_malformed_chunks_of_an_event_stream_are_broken(body: bytes) -> None:
    await broken_and_dropped(body, stream=False)


async def test_bytes_after_an_event_stream_s_end_drop_its_connection() -> None:
    """As httptools does for any answer: the answer is whole, the connection not reused."""
    await whole_and_dropped_after_its_end(stream=False)


async def test_an_open_event_stream_holds_no_http_parser() -> None:
    """Once the Dechunker reads the body, httptools' parser is dropped (not held for the
    stream's life, issue 19zn): the stream reads on to its end, and its connection is reused."""
    go_on = asyncio.Event()

    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(EVENT_HEAD + EVENTS[:14])
        await go_on.wait()
        await conn.send(EVENTS[14:])
        if await conn.request() is not None:
            await conn.send(answer(b"next"))
        await conn.wait_closed_by_peer()

    async with running_timeout(BOUND_S), serving(handler) as server, client() as http:
        response = await http.request("GET", server.url(), {}, None)
        while (piece := response.next_piece()) is None:
            await response.arrival()
        assert piece == b"data: 1\n\n"
        assert response._parser is None
        go_on.set()
        assert await response.read() == b"data: 2\n\n"
        assert (await get(http, server.url()))[1] == b"next"
        assert server.accepted == 1


# -- the bench's stream, however it is framed ------------------------------------------------------
@pytest.mark.parametrize(
    "framing", ["content-length", "chunk per event", "chunk per line", "until EOF"]
)
async def test_the_bench_s_stream_is_relayed_byte_for_byte_however_it_is_framed(
    framing: str,
) -> None:
    """The bench's OpenAI stream through the provider: reframed as it is read (a chunked
    body) or fed by the stream's step (a body of a Content-Length, or to EOF), the same bytes
    as the reframer fed the whole body at once, and the same usage."""
    events = openai_events()
    body = b"".join(events)
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
    if framing == "content-length":
        wire = head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    elif framing == "until EOF":
        wire = head + b"Connection: close\r\n\r\n" + body
    else:
        pieces = (
            events
            if framing == "chunk per event"
            else [line for event in events for line in event.splitlines(keepends=True)]
        )
        wire = head + b"Transfer-Encoding: chunked\r\n\r\n"
        wire += b"".join(map(_chunk, pieces)) + b"0\r\n\r\n"

    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(*(wire[i : i + 1000] for i in range(0, len(wire), 1000)))
        if framing == "until EOF":
            conn.writer.close()
        await conn.wait_closed_by_peer()

    reference = _core.Reframer("openai", "p/m", "chatcmpl-test1", 1700000000, True)
    expected = reference.feed(body) + reference.finish()
    async with running_timeout(BOUND_S), serving(handler) as server:
        provider = openai_provider(server.url(""))
        try:
            call = chat_call("openai", "m", stream=True, stream_options={"include_usage": True})
            stream = await provider.stream(call)
            assert isinstance(stream, ReframedStream)
            assert stream._sunk == framing.startswith("chunk")
            relayed = b"".join([piece async for piece in stream])
            assert relayed == expected
            assert relayed.count(b"data: ") == len(events)
            assert stream.usage is not None and reference.usage is not None
            assert stream.usage.completion_tokens == reference.usage.completion_tokens
            assert stream.content_chars == reference.content_chars > 0
        finally:
            await provider.close()


# -- streaming ----------------------------------------------------------------------------------
@CHUNKED_KINDS
async def test_chunks_arrive_before_the_body_ends(kind: bytes) -> None:
    go_on = asyncio.Event()

    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(
            b"HTTP/1.1 200 OK\r\n" + kind + b"Transfer-Encoding: chunked\r\n\r\n6\r\ndata:1\r\n"
        )
        await go_on.wait()  # nothing more until the client has seen the first chunk
        await conn.send(b"6\r\ndata:2\r\n0\r\n\r\n")
        await conn.wait_closed_by_peer()

    async with running_timeout(BOUND_S), serving(handler) as server, client() as http:
        response = await http.request("GET", server.url(), {}, None)
        chunks = response.chunks()
        assert await anext(chunks) == b"data:1"
        go_on.set()
        assert [chunk async for chunk in chunks] == [b"data:2"]


@CHUNKED_KINDS
async def test_a_reader_that_waits_itself_gets_each_piece_then_the_end(kind: bytes) -> None:
    """`next_piece()` and `arrival()`, the read without a coroutine of the client's (the
    stream's reframing loop awaits the arrival itself): a piece, None while nothing is at hand,
    b"" at the end, and the connection back in the pool."""
    go_on = asyncio.Event()

    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(
            b"HTTP/1.1 200 OK\r\n" + kind + b"Transfer-Encoding: chunked\r\n\r\n6\r\ndata:1\r\n"
        )
        await go_on.wait()
        await conn.send(b"6\r\ndata:2\r\n0\r\n\r\n")
        await conn.wait_closed_by_peer()

    async with running_timeout(BOUND_S), serving(handler) as server, client() as http:
        response = await http.request("GET", server.url(), {}, None)
        while (piece := response.next_piece()) is None:
            await response.arrival()
        assert piece == b"data:1"
        assert response.next_piece() is None  # nothing more at hand: the reader waits
        arrived = response.arrival()
        go_on.set()
        await arrived
        assert response.next_piece() == b"data:2"
        while (piece := response.next_piece()) is None:
            await response.arrival()
        assert piece == b""
        assert [len(pool.idle) for pool in http._pools.values()] == [1]


@CHUNKED_KINDS
async def test_a_reader_that_waits_itself_is_timed_out_only_while_it_waits(kind: bytes) -> None:
    """As with `chunks()`: silence counts while the reader awaits `arrival()`, not while it is
    busy with a piece it has."""
    sent = asyncio.Event()

    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(
            b"HTTP/1.1 200 OK\r\n" + kind + b"Transfer-Encoding: chunked\r\n\r\n1\r\na\r\n"
        )
        sent.set()
        await conn.wait_closed_by_peer()

    async with running_timeout(BOUND_S), serving(handler) as server:
        async with client(read_timeout_s=0.2) as http:
            response = await http.request("GET", server.url(), {}, None)
            await sent.wait()
            while (piece := response.next_piece()) is None:
                await response.arrival()
            assert piece == b"a"
            await asyncio.sleep(0.5)  # busy with the piece: the upstream's silence is not ours
            assert response.next_piece() is None
            await response.arrival()  # now it waits, and the upstream stays silent
            with pytest.raises(TimeoutError):
                response.next_piece()
            assert all(pool.count == 0 for pool in http._pools.values())  # dropped


@CHUNKED_KINDS
async def test_chunks_that_arrived_together_are_read_as_one_piece(kind: bytes) -> None:
    body_sent = asyncio.Event()

    async def handler(conn: Conn) -> None:
        await conn.request()
        lines = (b"data: 1\n", b"\n", b"data: 2\n", b"\n")
        await conn.send(
            b"HTTP/1.1 200 OK\r\n"
            + kind
            + b"Transfer-Encoding: chunked\r\n\r\n"
            + b"".join(b"%x\r\n%s\r\n" % (len(line), line) for line in lines)
        )
        body_sent.set()
        await conn.send(b"0\r\n\r\n")
        await conn.wait_closed_by_peer()

    async with running_timeout(BOUND_S), serving(handler) as server, client() as http:
        response = await http.request("GET", server.url(), {}, None)
        await body_sent.wait()
        while response._buffered < len(b"data: 1\n\ndata: 2\n\n"):  # every chunk parsed
            await asyncio.sleep(0)
        pieces = [piece async for piece in response.chunks()]
        assert pieces == [b"data: 1\n\ndata: 2\n\n"]  # four HTTP chunks, one piece


async def test_a_slow_reader_pauses_the_socket_and_loses_nothing() -> None:
    payload = bytes(range(256)) * 8192  # 2 MiB: well past the high-water mark
    handler = keep_serving(answer(payload), answer(b"next"))
    async with running_timeout(BOUND_S), serving(handler) as server, client() as http:
        response = await http.request("GET", server.url(), {}, None)
        conn = response._conn
        assert conn is not None
        while not conn.paused:  # nobody reads: the socket is paused past the high-water mark
            await asyncio.sleep(0)
        assert HIGH_WATER < response._buffered < len(payload)
        received = b"".join([chunk async for chunk in response.chunks()])
        assert received == payload
        assert (await get(http, server.url()))[1] == b"next"
        assert server.accepted == 1


# -- keep-alive and the pool --------------------------------------------------------------------
async def test_keep_alive_reuses_one_connection() -> None:
    handler = keep_serving(answer(b"one"), answer(b"two"), answer(b"three"))
    async with running_timeout(BOUND_S), serving(handler) as server, client() as http:
        assert (await get(http, server.url()))[1] == b"one"
        assert (await get(http, server.url()))[1] == b"two"
        response = await http.request("POST", server.url(), {}, b"x")
        assert await response.read() == b"three"
        assert server.accepted == 1


async def test_a_pooled_connection_keeps_nothing_of_the_request_that_opened_it() -> None:
    # A connection made in a request's context would keep that request's context variables for
    # as long as the pool keeps the connection (tests/kept_context.py). (Under running_timeout
    # since 19zzzzzm: the opening connect's deadline no longer keeps them behind its timer.)
    handler = keep_serving(answer(b"one"), answer(b"two"))
    async with running_timeout(BOUND_S), serving(handler) as server, client() as http:

        async def opening_request() -> None:
            assert (await get(http, server.url()))[1] == b"one"

        assert not await context_kept_after(opening_request), "the connection keeps it"
        assert (await get(http, server.url()))[1] == b"two"
        assert server.accepted == 1


async def test_a_new_connection_s_connect_deadline_keeps_nothing_of_its_request() -> None:
    """The connect's deadline (`connect_timeout_s`, 5 s here), armed as the request opens a new
    connection and cancelled once connected, must not keep the request's context variables
    (its log record, its admission) after the request has ended: asyncio keeps a cancelled
    timer in its heap until it comes to the top, so behind any earlier timer (here the test's
    own ticking guard, as a served worker always has some) it stays the whole 5 s (before
    19zzzzzm: the connect's `asyncio.timeout_at`, armed in the request's context). uvloop drops
    a cancelled timer at once; the weak reference tells on both loops."""
    handler = keep_serving(answer(b"one"))
    async with running_timeout(BOUND_S), serving(handler) as server, client() as http:

        async def opening_request() -> None:
            assert (await get(http, server.url()))[1] == b"one"

        assert not await context_kept_after(opening_request), "the loop's timers keep it"
        assert server.accepted == 1


async def test_an_answer_whole_with_its_headers_is_taken_without_waiting() -> None:
    gzipped = gzip.compress(b"zipped")
    sent_half = asyncio.Event()

    async def handler(conn: Conn) -> None:
        for wire in (answer(b"one"), answer(gzipped, "Content-Encoding: gzip")):
            await conn.request()
            await conn.send(wire)
        await conn.request()
        await conn.send(answer(b"three")[:-2])
        sent_half.set()
        await asyncio.sleep(0.05)
        await conn.send(b"ee")
        await conn.wait_closed_by_peer()

    async with running_timeout(BOUND_S), serving(handler) as server, client() as http:
        response = await http.request("GET", server.url(), {}, None)
        assert response.whole() == b"one"  # released: the next request reuses the connection
        compressed = await http.request("GET", server.url(), {}, None)
        assert compressed.whole() is None, "a compressed body is read() (decoded)"
        assert await compressed.read() == b"zipped"
        partial = await http.request("GET", server.url(), {}, None)
        await sent_half.wait()
        assert partial.whole() is None, "not whole yet: read() waits for the rest"
        assert await partial.read() == b"three"
        assert server.accepted == 1


async def test_connection_close_answers_are_not_reused() -> None:
    handler = keep_serving(answer(b"bye", "Connection: close"))
    async with running_timeout(BOUND_S), serving(handler) as server, client() as http:
        assert (await get(http, server.url()))[1] == b"bye"
        assert (await get(http, server.url()))[1] == b"bye"
        assert server.accepted == 2


async def test_an_idle_connection_closed_by_the_server_is_not_reused() -> None:
    closed = asyncio.Event()

    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(answer(b"ok"))
        if not closed.is_set():  # the first connection: closed once its answer is out
            conn.writer.close()
            await conn.writer.wait_closed()
            closed.set()
            return
        await conn.wait_closed_by_peer()

    async with running_timeout(BOUND_S), serving(handler) as server, client() as http:
        await get(http, server.url())
        await closed.wait()
        pool = next(iter(http._pools.values()))
        while pool.idle:  # the client notices the close and forgets the connection
            await asyncio.sleep(0)
        assert pool.count == 0
        assert (await get(http, server.url()))[1] == b"ok"
        assert server.accepted == 2


async def test_a_reused_connection_closed_as_we_send_is_retried_once() -> None:
    """The keep-alive race: the server closes the idle connection while the request is on its
    way; no byte of an answer came, so the request goes again on a new connection."""
    received: list[int] = []
    connections: list[Conn] = []

    async def handler(conn: Conn) -> None:
        number = len(connections)
        connections.append(conn)
        await conn.request()
        received.append(number)
        await conn.send(answer(b"first"))
        if number == 0:
            await conn.request()  # the second request arrives on the kept-alive connection...
            received.append(number)
            conn.writer.close()  # ...and is never answered: as if closed just before it came
            return
        await conn.wait_closed_by_peer()

    async with running_timeout(BOUND_S), serving(handler) as server, client() as http:
        assert (await get(http, server.url()))[1] == b"first"
        assert (await get(http, server.url()))[1] == b"first"
        assert server.accepted == 2
        assert received == [0, 0, 1]


async def test_no_retry_once_answer_bytes_arrived() -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(answer(b"first"))
        await conn.request()
        await conn.send(b"HTTP/1.1 200 O")  # an answer had begun
        conn.writer.close()

    async with running_timeout(BOUND_S), serving(handler) as server, client() as http:
        await get(http, server.url())
        with pytest.raises(ResponseBroken):
            await http.request("GET", server.url(), {}, None)
        assert server.accepted == 1


async def test_no_retry_on_a_new_connection() -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        conn.writer.close()

    async with running_timeout(BOUND_S), serving(handler) as server, client() as http:
        with pytest.raises(ResponseBroken):
            await http.request("POST", server.url(), {}, b"{}")
        assert server.accepted == 1


async def test_at_the_pool_limit_callers_wait_their_turn() -> None:
    finish = asyncio.Event()
    order: list[str] = []

    async def handler(conn: Conn) -> None:
        while (request := await conn.request()) is not None:
            name = request[0].split(b" ")[1].decode()
            order.append(name)
            if name == "/a":
                await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n")
                await finish.wait()
                await conn.send(b"a")
            else:
                await conn.send(answer(name.encode()))

    async with running_timeout(BOUND_S), serving(handler) as server, client(pool_size=1) as http:
        first = await http.request("GET", server.url("/a"), {}, None)
        waiting = [asyncio.create_task(get(http, server.url(f"/{n}"))) for n in "bcd"]
        pool = next(iter(http._pools.values()))
        while len(pool.waiters) < 3:
            await asyncio.sleep(0)
        assert not any(task.done() for task in waiting)
        finish.set()
        assert await first.read() == b"a"
        bodies = [body for _, body in await asyncio.gather(*waiting)]
        assert bodies == [b"/b", b"/c", b"/d"]
        assert order == ["/a", "/b", "/c", "/d"], "first come, first served"
        assert server.accepted == 1


async def test_a_cancelled_waiter_passes_its_turn_on() -> None:
    finish = asyncio.Event()

    async def handler(conn: Conn) -> None:
        while (request := await conn.request()) is not None:
            if b"/hold" in request[0]:
                await finish.wait()
            await conn.send(answer(b"ok"))

    async with running_timeout(BOUND_S), serving(handler) as server, client(pool_size=1) as http:
        holder = asyncio.create_task(get(http, server.url("/hold")))
        pool = None
        while pool is None or pool.count < 1:
            await asyncio.sleep(0)
            pool = next(iter(http._pools.values()), None)
        quitter = asyncio.create_task(get(http, server.url("/q")))
        patient = asyncio.create_task(get(http, server.url("/p")))
        while len(pool.waiters) < 2:
            await asyncio.sleep(0)
        quitter.cancel()
        finish.set()
        assert (await holder)[1] == b"ok"
        assert (await patient)[1] == b"ok"
        with pytest.raises(asyncio.CancelledError):
            await quitter
        assert pool.count == 1 and len(pool.idle) == 1


@pytest.mark.parametrize("how", ["released", "closed"])
async def test_a_waiter_cancelled_right_after_its_turn_came_passes_it_on(how: str) -> None:
    """The first waiter is handed the connection (released) or a slot (closed), and cancelled
    before it runs: the next waiter gets it, and the pool's count stays right."""
    handler = keep_serving(*[answer(b"ok")] * 3)
    async with running_timeout(BOUND_S), serving(handler) as server, client(pool_size=1) as http:
        first = await http.request("GET", server.url(), {}, None)
        while not first._complete:
            await asyncio.sleep(0)
        quitter = asyncio.create_task(get(http, server.url()))
        patient = asyncio.create_task(get(http, server.url()))
        pool = next(iter(http._pools.values()))
        while len(pool.waiters) < 2:
            await asyncio.sleep(0)
        if how == "released":
            first.release()
        else:
            first.close()
        quitter.cancel()  # in the same step: the quitter was granted its turn but never ran
        with pytest.raises(asyncio.CancelledError):
            await quitter
        assert (await patient)[1] == b"ok"
        assert pool.count == 1 and len(pool.idle) == 1 and not pool.waiters
        assert server.accepted == (1 if how == "released" else 2)


# -- failures and timeouts ----------------------------------------------------------------------
async def test_refused_connection_is_connect_failed() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed at once: nothing listens there
    async with running_timeout(BOUND_S), client() as http:
        with pytest.raises(ConnectFailed):
            await http.request("GET", f"http://127.0.0.1:{port}/", {}, None)
        with pytest.raises(ConnectFailed):
            await http.request("GET", "http://host.invalid/", {}, None)
        assert all(pool.count == 0 for pool in http._pools.values())


async def test_tls_handshake_failure_is_connect_failed() -> None:
    async def handler(conn: Conn) -> None:
        await conn.reader.read(100)
        conn.writer.write(b"HTTP/1.1 400 this is no TLS\r\n\r\n")
        await conn.writer.drain()

    async with running_timeout(BOUND_S), serving(handler) as server, client() as http:
        with pytest.raises(ConnectFailed):
            await http.request("GET", f"https://127.0.0.1:{server.port}/", {}, None)


async def test_silence_before_the_headers_is_a_timeout() -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.wait_closed_by_peer()  # never answers

    async with running_timeout(BOUND_S), serving(handler) as server:
        async with client(read_timeout_s=0.2) as http:
            with pytest.raises(TimeoutError):
                await http.request("GET", server.url(), {}, None)


async def test_silence_before_the_headers_is_bounded_by_their_own_deadline() -> None:
    """A non-streamed answer's headers come with the whole answer: with a headers deadline,
    the silence before them is not the read timeout's (answer_timeout_s past
    stream_idle_timeout_s, decision 0005)."""

    async def handler(conn: Conn) -> None:
        await conn.request()
        await asyncio.sleep(0.6)  # three read timeouts of silence
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await conn.wait_closed_by_peer()

    async with running_timeout(BOUND_S), serving(handler) as server:
        async with client(read_timeout_s=0.2) as http:
            response = await http.request("GET", server.url(), {}, None, 5.0)
            assert await response.read() == b"ok"
        async with client(read_timeout_s=5) as http:  # and the deadline itself still cuts
            with pytest.raises(TimeoutError):
                await http.request("GET", server.url(), {}, None, 0.2)


@pytest.mark.parametrize("headers_by", [None, 60.0])
async def test_silence_mid_body_is_a_timeout(headers_by: float | None) -> None:
    """Once the headers came, the read timeout bounds the silence, however far the headers'
    own deadline (60 s: answer_timeout_s past stream_idle_timeout_s; the answer's one timer
    stayed at that deadline after c09f70f, so a body stalled after its headers waited until
    then)."""

    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await conn.wait_closed_by_peer()

    async with running_timeout(BOUND_S), serving(handler) as server:
        async with client(read_timeout_s=0.2) as http:
            response = await http.request("GET", server.url(), {}, None, headers_by)
            chunks = response.chunks()
            assert await anext(chunks) == b"abc"
            with pytest.raises(TimeoutError):
                await anext(chunks)


async def test_headers_timeout_bounds_a_trickling_answer() -> None:
    """Bytes keep coming (no read timeout), but the headers never end: the caller's
    `headers_timeout_s` is what stops it."""

    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\n")
        with contextlib.suppress(ConnectionError):
            while True:
                await conn.send(b"X-Slow: 1\r\n")
                await asyncio.sleep(0.02)

    async with running_timeout(BOUND_S), serving(handler) as server:
        async with client(read_timeout_s=5) as http:
            with pytest.raises(TimeoutError):
                await http.request("GET", server.url(), {}, None, headers_timeout_s=0.3)


async def test_headers_timeout_bounds_the_wait_for_a_pooled_connection() -> None:
    release = asyncio.Event()

    async def handler(conn: Conn) -> None:
        while await conn.request() is not None:
            await release.wait()
            await conn.send(answer(b"late"))

    async with running_timeout(BOUND_S), serving(handler) as server:
        async with client(pool_size=1, read_timeout_s=5) as http:
            busy = asyncio.create_task(get(http, server.url("/a")))
            pool = None
            while pool is None or pool.count < 1:
                await asyncio.sleep(0)
                pool = next(iter(http._pools.values()), None)
            with pytest.raises(TimeoutError):
                await http.request("GET", server.url("/b"), {}, None, headers_timeout_s=0.2)
            assert all(waiter.done() for waiter in pool.waiters), "no one waits any more"
            release.set()
            assert (await busy)[1] == b"late"


async def test_a_reader_that_pauses_is_not_timed_out_by_the_upstream_s_silence() -> None:
    """The read timeout counts silence while the caller waits for bytes, not while the caller
    is busy elsewhere with bytes it already has."""
    sent_all = asyncio.Event()

    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n")
        sent_all.set()
        await conn.wait_closed_by_peer()

    async with running_timeout(BOUND_S), serving(handler) as server:
        async with client(read_timeout_s=0.2) as http:
            response = await http.request("GET", server.url(), {}, None)
            await sent_all.wait()
            await asyncio.sleep(0.5)  # the caller is busy: the upstream's silence is not ours
            chunks = response.chunks()
            assert await anext(chunks) == b"a"
            with pytest.raises(TimeoutError):
                await anext(chunks)  # now the caller waits, and the upstream stays silent
            response.close()


async def test_expire_at_bounds_the_whole_body() -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n")
        await conn.wait_closed_by_peer()

    async with running_timeout(BOUND_S), serving(handler) as server, client() as http:
        response = await http.request("GET", server.url(), {}, None)
        response.expire_at(asyncio.get_running_loop().time() + 0.1)
        with pytest.raises(TimeoutError):
            await response.read()


async def test_whole_timeout_bounds_the_whole_body_from_the_request() -> None:
    """`whole_timeout_s`: the deadline of `expire_at`, counted from the request."""

    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n")
        await conn.wait_closed_by_peer()

    async with running_timeout(BOUND_S), serving(handler) as server, client() as http:
        response = await http.request("GET", server.url(), {}, None, 5.0, whole_timeout_s=0.1)
        with pytest.raises(TimeoutError):
            await response.read()
        assert all(pool.count == 0 for pool in http._pools.values())  # dropped, not kept


async def test_cancelling_mid_request_closes_the_connection() -> None:
    got_request = asyncio.Event()
    peer_closed = asyncio.Event()

    async def handler(conn: Conn) -> None:
        await conn.request()
        got_request.set()
        await conn.wait_closed_by_peer()
        peer_closed.set()

    async with running_timeout(BOUND_S), serving(handler) as server, client() as http:
        task = asyncio.create_task(http.request("POST", server.url(), {}, b"{}"))
        await got_request.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await peer_closed.wait()
        assert all(pool.count == 0 and not pool.idle for pool in http._pools.values())


async def test_cancelling_a_stream_reader_closes_the_connection() -> None:
    peer_closed = asyncio.Event()

    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n")
        await conn.wait_closed_by_peer()
        peer_closed.set()

    async with running_timeout(BOUND_S), serving(handler) as server, client() as http:
        response = await http.request("GET", server.url(), {}, None)

        async def consume() -> list[bytes]:
            return [chunk async for chunk in response.chunks()]

        task = asyncio.create_task(consume())
        while response._waiter is None:  # the consumer had the first chunk and waits for more
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await peer_closed.wait()


async def test_close_drops_a_stream_upstream() -> None:
    peer_closed = asyncio.Event()

    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n")
        await conn.wait_closed_by_peer()
        peer_closed.set()

    async with running_timeout(BOUND_S), serving(handler) as server, client() as http:
        response = await http.request("GET", server.url(), {}, None)
        response.close()
        response.close()
        response.release()
        await peer_closed.wait()
        with pytest.raises(ResponseBroken):
            await response.read()


@CHUNKED_KINDS
async def test_a_stream_released_before_its_end_goes_back_to_the_pool_when_the_end_comes(
    kind: bytes,
) -> None:
    """A stream's last event read before the chunk that ends the answer: released then, the
    connection is kept for the next request once the end arrives."""
    released = asyncio.Event()

    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(
            b"HTTP/1.1 200 OK\r\n" + kind + b"Transfer-Encoding: chunked\r\n\r\n6\r\ndata:1\r\n"
        )
        await released.wait()
        await conn.send(b"0\r\n\r\n")
        if await conn.request() is None:
            return
        await conn.send(answer(b"next"))
        await conn.wait_closed_by_peer()

    async with running_timeout(BOUND_S), serving(handler) as server, client() as http:
        response = await http.request("GET", server.url(), {}, None)
        assert await anext(response.chunks()) == b"data:1"
        response.release_when_whole(BOUND_S)
        released.set()
        while not any(pool.idle for pool in http._pools.values()):  # the end arrived
            await asyncio.sleep(0)
        assert (await get(http, server.url()))[1] == b"next"
        assert server.accepted == 1


@CHUNKED_KINDS
async def test_a_stream_released_before_its_end_is_closed_when_the_end_does_not_come(
    kind: bytes,
) -> None:
    peer_closed = asyncio.Event()

    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(
            b"HTTP/1.1 200 OK\r\n" + kind + b"Transfer-Encoding: chunked\r\n\r\n6\r\ndata:1\r\n"
        )
        await conn.wait_closed_by_peer()
        peer_closed.set()

    async with running_timeout(BOUND_S), serving(handler) as server, client() as http:
        response = await http.request("GET", server.url(), {}, None)
        assert await anext(response.chunks()) == b"data:1"
        response.release_when_whole(0.05)
        await peer_closed.wait()
        assert all(pool.count == 0 and not pool.idle for pool in http._pools.values())


async def test_client_close_closes_pooled_connections() -> None:
    peer_closed = asyncio.Event()

    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(answer(b"ok"))
        await conn.wait_closed_by_peer()
        peer_closed.set()

    async with running_timeout(BOUND_S), serving(handler) as server:
        http = HttpClient(pool_size=1, connect_timeout_s=5, read_timeout_s=5)
        await get(http, server.url())
        await http.close()
        await peer_closed.wait()
        with pytest.raises(RuntimeError):
            await http.request("GET", server.url(), {}, None)


# -- what is sent -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "headers",
    [
        {"x-a": "v\r\nInjected: 1"},
        {"x-a": "v\nInjected: 1"},
        {"x-a": "v\rInjected: 1"},
        {"x-a\r\nInjected": "1"},
    ],
)
async def test_header_injection_is_refused(headers: dict[str, str]) -> None:
    async with running_timeout(BOUND_S), serving(keep_serving()) as server, client() as http:
        with pytest.raises(ValueError, match="CR or LF") as caught:
            await http.request("POST", server.url(), headers, b"{}")
        assert "Injected" not in str(caught.value), "messages never quote header values"
        assert server.accepted == 0
    with pytest.raises(ValueError, match="CR or LF") as made:
        FixedHeaders(headers)  # a provider's fixed headers: checked once, when made
    assert "Injected" not in str(made.value)


async def test_fixed_headers_are_sent_as_a_dict_of_them_is() -> None:
    seen: list[bytes] = []

    async def handler(conn: Conn) -> None:
        while (request := await conn.request()) is not None:
            seen.append(request[0])
            await conn.send(answer(b"{}"))

    given = {"content-type": "application/json", "authorization": "Bearer k"}
    fixed = FixedHeaders(given)
    assert dict(fixed) == given and {**fixed, "x": "1"} == {**given, "x": "1"}
    assert "Bearer" not in repr(fixed)
    async with running_timeout(BOUND_S), serving(handler) as server, client() as http:
        for headers in (given, fixed):
            response = await http.request("POST", server.url("/p"), headers, b"{}")
            assert await response.read() == b"{}"
    assert len(seen) == 2 and seen[0] == seen[1]


async def test_bodyless_requests_and_odd_paths() -> None:
    seen: list[bytes] = []

    async def handler(conn: Conn) -> None:
        while (request := await conn.request()) is not None:
            seen.append(request[0])
            await conn.send(answer(b""))

    async with running_timeout(BOUND_S), serving(handler) as server, client() as http:
        await get(http, f"http://127.0.0.1:{server.port}")
        await get(http, server.url("/a b/ü?q=1 2"))
        await (await http.request("POST", server.url("/p"), {}, None)).read()
    assert seen[0].startswith(b"GET / HTTP/1.1\r\n") and b"Content-Length" not in seen[0]
    assert seen[1].startswith(b"GET /a%20b/%C3%BC?q=1%202 HTTP/1.1\r\n")
    assert b"Content-Length: 0\r\n" in seen[2]


async def test_ipv6_literal_hosts() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    seen: list[bytes] = []

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(answer(b"six"))
        await writer.drain()
        writer.close()

    try:
        server = await asyncio.start_server(on_client, "::1", 0)
    except OSError:
        pytest.skip("no IPv6 loopback")
    port = server.sockets[0].getsockname()[1]
    try:
        async with running_timeout(BOUND_S), client() as http:
            _, body = await get(http, f"http://[::1]:{port}/x")
            assert body == b"six"
    finally:
        server.close()
    assert f"Host: [::1]:{port}\r\n".encode() in seen[0]


async def test_unsupported_urls_are_value_errors() -> None:
    async with client() as http:
        for url in ("ftp://example.com/", "http:///nohost", "unix:/tmp/x"):
            with pytest.raises(ValueError):
                await http.request("GET", url, {}, None)


# -- through HttpProvider (gateway/providers/base.py) ------------------------------------------
def openai_provider(origin: str, **settings: Any) -> OpenAIProvider:
    return OpenAIProvider(
        "p", ProviderSettings(kind="openai", base_url=f"{origin}/v1", **settings), None
    )


def observed(provider: HttpProvider) -> Metrics:
    """The provider's upstream calls counted on a metrics registry of their own."""
    metrics = Metrics(["p/m"], [provider.name], ["free"], "sqlite")
    provider.observer = RequestObserver(metrics, RequestLog(io.StringIO()))
    return metrics


def upstream_counts(metrics: Metrics, **body_labels: str) -> dict[str, float]:
    """The provider's upstream calls as /metrics gives them: answered (their headers' latency
    observed), failed before their headers, and failed in their body (those of `body_labels`)."""
    samples = parse(metrics.exposition().decode())
    return {
        "answered": total(samples, "klawd_upstream_request_duration_seconds_count"),
        "errors": total(samples, "klawd_upstream_errors_total"),
        "body_errors": total(samples, "klawd_upstream_body_errors_total", **body_labels),
    }


async def relayed_before(
    provider: OpenAIProvider,
    error: type[Exception],
    match: str | None = None,
    each: asyncio.Event | None = None,
) -> list[bytes]:
    """A chat stream through `provider`, read until it raises `error` (its message matching
    `match`), then closed: the pieces it relayed before. `each` is set after every piece (for
    an upstream that sends the rest once the client has read something)."""
    stream = await provider.stream(chat_call("openai", "m", stream=True))
    pieces = []
    with pytest.raises(error, match=match):
        async for piece in stream:
            pieces.append(piece)
            if each is not None:
                each.set()
    await stream.aclose()
    return pieces


async def test_image_downloads_follow_redirects() -> None:
    handler = keep_serving(
        answer(b"", "Location: /elsewhere/img.png", status="302 Found"),
        answer(PNG, "Content-Type: image/png"),
    )
    async with running_timeout(BOUND_S), serving(handler) as server:
        provider = openai_provider(server.url(""))
        try:
            encoded = await provider.download_b64(server.url("/img"))
        finally:
            await provider.close()
    assert base64.b64decode(encoded) == PNG
    assert server.accepted == 1, "the redirect and the image on one kept-alive connection"


async def test_a_stream_is_cut_by_the_whole_request_timeout() -> None:
    """Never silent for the idle timeout, but longer than timeout_s in all: GatewayTimeout after
    the events that came."""
    done = asyncio.Event()

    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n")
        event = b'data: {"id":"x","choices":[{"index":0,"delta":{"content":"a"}}]}\n\n'
        while not done.is_set():
            await conn.send(event)
            await asyncio.sleep(0.02)

    async with running_timeout(BOUND_S), serving(handler) as server:
        provider = openai_provider(
            server.url(""), stream_idle_timeout_s=5, first_byte_timeout_s=5, timeout_s=0.3
        )
        try:
            pieces = await relayed_before(provider, GatewayTimeout)
            assert pieces, "the events before the deadline were relayed"
        finally:
            done.set()
            await provider.close()


@pytest.mark.parametrize(
    ("wire", "error"),
    [
        (None, UpstreamUnreachable),  # nothing listens
        (b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{", BadGateway),  # cut short
        (b"NOT HTTP\r\n\r\n", BadGateway),
        (
            answer(b'{"error":{"message":"slow down"}}', "Retry-After: 7", status="429 Too Many"),
            RateLimited,
        ),
    ],
)
async def test_failures_map_to_the_gateway_errors(wire: bytes | None, error: type) -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        assert wire is not None
        await conn.send(wire)
        conn.writer.close()

    async with running_timeout(BOUND_S), serving(handler) as server:
        origin = server.url("")
        if wire is None:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                origin = f"http://127.0.0.1:{sock.getsockname()[1]}"
        provider = openai_provider(origin)
        try:
            with pytest.raises(error) as caught:
                await provider.complete(chat_call("openai", "m"))
        finally:
            await provider.close()
    if isinstance(caught.value, RateLimited):
        assert caught.value.retry_after_s == 7


# -- TLS ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost (openssl's command line)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl command")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_https_keep_alive_and_cancellation(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    hold = asyncio.Event()
    peer_closed = asyncio.Event()
    accepted = 0

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        conn = Conn(reader, writer)
        try:
            while (request := await conn.request()) is not None:
                if b"/hold" in request[0]:
                    await conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                    hold.set()
                    await conn.wait_closed_by_peer()
                    peer_closed.set()
                    return
                await conn.send(answer(b"secret"))
        except (ConnectionError, ssl.SSLError):
            peer_closed.set()
        finally:
            writer.close()

    listener = await asyncio.start_server(on_client, "127.0.0.1", 0, ssl=server_tls)
    port = listener.sockets[0].getsockname()[1]
    try:
        async with running_timeout(BOUND_S), client() as http:
            http._ssl = ssl.create_default_context(cafile=str(cert))  # trust the test's CA
            for host in ("127.0.0.1", "localhost"):
                url = f"https://{host}:{port}/"
                assert (await get(http, url))[1] == b"secret"
                assert (await get(http, url))[1] == b"secret"
            assert accepted == 2, "one kept-alive connection per (scheme, host, port)"
            response = await http.request("GET", f"https://127.0.0.1:{port}/hold", {}, None)
            reader = asyncio.create_task(response.read())
            await hold.wait()
            while response._waiter is None:  # the reader waits for the body
                await asyncio.sleep(0)
            reader.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reader
            await peer_closed.wait()
        async with running_timeout(BOUND_S), client() as http:  # the default trust store
            with pytest.raises(ConnectFailed):
                await http.request("GET", f"https://127.0.0.1:{port}/", {}, None)
    finally:
        listener.close()


# -- answers too large to hold ---------------------------------------------------------------
SMALL_LIMIT = 1024 * 1024  # the bound, lowered for these tests (256 MiB in the gateway)


def endless(head: bytes, piece: bytes) -> Handler:
    """An answer whose body does not end: `piece` written again and again (bounded: 64 MiB),
    until the client leaves."""

    async def handler(conn: Conn) -> None:
        await conn.request()
        conn.writer.write(head)
        for _ in range(64 * 1024 * 1024 // len(piece)):
            conn.writer.write(piece)
            await conn.writer.drain()

    return handler


@pytest.mark.parametrize(
    ("head", "piece"),
    [
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"10000\r\n" + b" " * 65536 + b"\r\n",
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10000000000\r\n\r\n", b" " * 65536),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", b" " * 65536),
    ],
    ids=["chunked", "content-length", "until-eof"],
)
async def test_an_answer_larger_than_the_bound_is_broken_not_held(
    monkeypatch: pytest.MonkeyPatch, head: bytes, piece: bytes
) -> None:
    """An upstream whose answer does not end (a server in a loop) or is absurdly large: `read()`
    fails once the bound is passed, and the connection is dropped. Before, every byte was
    held until the whole-request deadline, however many."""
    monkeypatch.setattr(http_client, "MAX_ANSWER_BYTES", SMALL_LIMIT)
    async with running_timeout(BOUND_S), serving(endless(head, piece)) as server, client() as http:
        response = await http.request("GET", server.url(), {}, None)
        with pytest.raises(ResponseBroken, match="larger than"):
            await response.read()


async def test_a_decompression_bomb_is_broken_not_inflated(monkeypatch: pytest.MonkeyPatch) -> None:
    """8 MiB of zeros gzipped to a few KB: decoded, more than the bound. Before, it was
    inflated whole (a 10 MB bomb is ~10 GB)."""
    monkeypatch.setattr(http_client, "MAX_ANSWER_BYTES", SMALL_LIMIT)
    bomb = gzip.compress(b"\0" * (8 * SMALL_LIMIT))
    async with (
        running_timeout(BOUND_S),
        serving(keep_serving(answer(bomb, "Content-Encoding: gzip"))) as server,
        client() as http,
    ):
        response = await http.request("GET", server.url(), {}, None)
        with pytest.raises(ResponseBroken, match="larger than"):
            await response.read()


async def test_an_answer_at_the_bound_is_read_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_client, "MAX_ANSWER_BYTES", SMALL_LIMIT)
    body = b"x" * SMALL_LIMIT
    plain = answer(body)
    zipped = answer(gzip.compress(body), "Content-Encoding: gzip")
    async with (
        running_timeout(BOUND_S),
        serving(keep_serving(plain, zipped)) as server,
        client() as http,
    ):
        for _ in range(2):
            _, read = await get(http, server.url())
            assert read == body


@pytest.mark.parametrize(
    ("head", "piece"),
    [
        (b"HTTP/1.1 200 OK\r\n", b"X-Pad: " + b"a" * 8000 + b"\r\n"),
        (b"", b"HTTP/1.1 100 Continue\r\nX-Pad: " + b"a" * 1000 + b"\r\n\r\n"),
    ],
    ids=["header-lines", "interim-answers"],
)
async def test_a_head_without_end_is_broken_not_held(head: bytes, piece: bytes) -> None:
    """Header lines without end, or interim answers without end: the answer fails once its
    head passes 64 KiB. Before, every header was kept (a probe grew a client to 2.5 GB)."""
    async with running_timeout(BOUND_S), serving(endless(head, piece)) as server, client() as http:
        with pytest.raises(ResponseBroken, match="head larger than 64 KiB"):
            response = await http.request("GET", server.url(), {}, None)
            await response.read()


async def test_a_large_head_within_the_bound_and_a_body_in_the_same_read_are_read() -> None:
    """A 60 KB head is taken; the bound counts the head only, not the body that arrives in
    the same reads (a 1 MiB body right behind it)."""
    pad = "X-Pad: " + "a" * 1000
    body = b"y" * (1024 * 1024)
    async with (
        running_timeout(BOUND_S),
        serving(keep_serving(answer(body, *[pad] * 60))) as server,
        client() as http,
    ):
        response, read = await get(http, server.url())
        assert read == body
        assert len(response.headers["x-pad"]) > 60_000


# -- an event stream reframed as it is read (HttpResponse.reframe_into) ---------------------------
def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


OPENAI_EVENT = (
    b'data: {"id":"x","object":"chat.completion.chunk","created":1,"model":"u",'
    b'"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}\n'
)
EVENT_STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
)


async def test_a_reframed_stream_s_reader_is_woken_only_by_reads_that_complete_an_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A read that completes no event (an SSE line's first half, then its second) is reframed
    in the connection's callback and wakes nobody; the read that ends the event does, and the
    piece is the reframer's output."""
    go_on = asyncio.Event()
    reads = 0
    received = http_client._Connection.data_received

    def counted(conn: Any, data: bytes) -> None:
        nonlocal reads
        reads += 1
        received(conn, data)

    monkeypatch.setattr(http_client._Connection, "data_received", counted)

    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(EVENT_STREAM_HEAD + _chunk(OPENAI_EVENT[:20]))
        await go_on.wait()
        await conn.send(_chunk(OPENAI_EVENT[20:]))
        go_on.clear()
        await go_on.wait()
        await conn.send(_chunk(b"\n") + _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        await conn.wait_closed_by_peer()

    async with running_timeout(BOUND_S), serving(handler) as server, client() as http:
        response = await http.request("GET", server.url(), {}, None)
        reframer = _core.Reframer("openai", "gw/m", "chatcmpl-1", 7, False)
        assert response.reframe_into(reframer)
        assert response.next_piece() is None
        arrived = response.arrival()
        read = reads
        go_on.set()
        while reads == read:  # until the second half was read
            await asyncio.sleep(0.01)
        await asyncio.sleep(0)
        assert not arrived.done(), "a read that completed no event woke the reader"
        go_on.set()
        await arrived
        piece = response.next_piece()
        assert piece is not None
        assert piece.startswith(b'data: {"id":"x"') and b'"model":"gw/m"' in piece
        assert piece.endswith(b"\n\ndata: [DONE]\n\n")


async def test_a_reframed_stream_s_failure_comes_after_the_events_before_it() -> None:
    """A malformed stream (an event past the reframer's bound) fails in the connection's
    callback; the events reframed before it are still there to take, the failure kept."""
    go_on = asyncio.Event()

    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(EVENT_STREAM_HEAD + _chunk(OPENAI_EVENT + b"\n"))
        await go_on.wait()
        await conn.send(_chunk(b"data: " + b"x" * 300))
        await conn.wait_closed_by_peer()

    async with running_timeout(BOUND_S), serving(handler) as server, client() as http:
        response = await http.request("GET", server.url(), {}, None)
        reframer = _core.Reframer("openai", "gw/m", "chatcmpl-1", 7, False, max_event_bytes=256)
        assert response.reframe_into(reframer)
        while not response._chunks:  # the event, reframed (with the head's read, or after it)
            await response.arrival()
        go_on.set()
        while response._sink_error is None:
            await asyncio.sleep(0.01)
        piece = response.next_piece()
        assert piece is not None and b'"model":"gw/m"' in piece
        assert isinstance(response._sink_error, _core.SseError)
        response.close()


async def test_a_reframed_stream_relays_its_events_then_a_malformed_stream_s_error() -> None:
    """Through the provider: the events before an event past the bound go out, then
    BadGateway (as when the reframer was fed by the reader)."""
    go_on = asyncio.Event()

    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(EVENT_STREAM_HEAD + _chunk(OPENAI_EVENT + b"\n"))
        await go_on.wait()
        await conn.send(_chunk(b"data: " + b"x" * (1 << 21)))
        await conn.wait_closed_by_peer()

    async with running_timeout(BOUND_S), serving(handler) as server:
        provider = openai_provider(server.url(""))
        try:
            pieces = await relayed_before(provider, BadGateway, "malformed stream", each=go_on)
            assert b"".join(pieces).count(b"data: ") == 1
        finally:
            await provider.close()


@pytest.mark.parametrize("how", ["chunked, after the head", "chunked, with the head", "whole"])
async def test_the_events_a_read_completes_before_a_malformed_one_go_out_before_its_error(
    how: str,
) -> None:
    """Whole events and a malformed one in the same read: the events go out, then BadGateway,
    as when the malformed event comes in a later read (they were lost, with the read's
    failure). Read as it arrives (after the head or with it), or fed by the stream's step
    (a body that is not chunked)."""
    body = OPENAI_EVENT + b"\n" + OPENAI_EVENT + b"\ndata: hello\n\n"
    go_on = asyncio.Event()

    async def handler(conn: Conn) -> None:
        await conn.request()
        if how == "whole":
            head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            await conn.send(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        elif how == "chunked, with the head":
            await conn.send(EVENT_STREAM_HEAD + _chunk(body))
        else:
            await conn.send(EVENT_STREAM_HEAD)
            await go_on.wait()
            await conn.send(_chunk(body))
        await conn.wait_closed_by_peer()

    async with running_timeout(BOUND_S), serving(handler) as server:
        provider = openai_provider(server.url(""))
        try:
            stream = await provider.stream(chat_call("openai", "m", stream=True))
            go_on.set()
            pieces = []
            with pytest.raises(BadGateway, match="malformed stream"):
                async for piece in stream:
                    pieces.append(piece)
            assert b"".join(pieces).count(b'"content":"hi"') == 2
            await stream.aclose()
        finally:
            await provider.close()


@pytest.mark.parametrize("kind", [b"", b"Content-Encoding: gzip\r\n"])
async def test_only_a_plain_chunked_event_stream_is_reframed_as_it_is_read(kind: bytes) -> None:
    """Not chunked, or compressed: `reframe_into` declines (the reader feeds the reframer)."""
    body = gzip.compress(OPENAI_EVENT) if kind else OPENAI_EVENT

    async def handler(conn: Conn) -> None:
        await conn.request()
        chunked = b"Transfer-Encoding: chunked\r\n" if kind else b""
        head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n" + kind + chunked
        await conn.send(head + b"\r\n" + (_chunk(body) + b"0\r\n\r\n" if kind else body))
        conn.writer.close()

    async with running_timeout(BOUND_S), serving(handler) as server, client() as http:
        response = await http.request("GET", server.url(), {}, None)
        assert not response.reframe_into(_core.Reframer("openai", "gw/m", "c", 7, False))
        response.close()


async def _next_piece(stream: ReframedStream) -> bytes:
    """The stream's next piece, waited for (b"" at its end)."""
    piece = stream.step()
    while piece is None:
        await stream.arrival()
        piece = stream.step()
    return piece


async def test_a_reframed_stream_is_finished_only_once_its_last_piece_is_taken() -> None:
    """The reframer reads ahead of the pieces taken (`reframe_into`): the upstream's end read
    while its events are still to be taken does not make the piece taken before them the
    stream's last (`finished()`, which `send_event_stream` asks after each piece)."""
    go_on = asyncio.Event()

    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(EVENT_STREAM_HEAD + _chunk(OPENAI_EVENT + b"\n"))
        await go_on.wait()
        await conn.send(_chunk(OPENAI_EVENT + b"\ndata: [DONE]\n\n") + b"0\r\n\r\n")
        await conn.wait_closed_by_peer()

    async with running_timeout(BOUND_S), serving(handler) as server:
        provider = openai_provider(server.url(""))
        try:
            stream = await provider.stream(chat_call("openai", "m", stream=True))
            assert isinstance(stream, ReframedStream)
            piece = await _next_piece(stream)
            assert piece.count(b"data: ") == 1
            go_on.set()
            while not stream._reframer.done:  # the end read and reframed, not taken yet
                await asyncio.sleep(0.01)
            assert not stream.finished(), "finished before its last events were taken"
            rest = stream.step()
            assert rest is not None and rest.endswith(b"data: [DONE]\n\n")
            assert stream.finished()
            assert stream.step() == b""
        finally:
            await provider.close()


class _Relayed(Stepped):
    """A reframed stream as `send_event_stream` steps it (the chat route's relay, billing
    aside), counting the pieces taken by its step and those sent from the connection's read
    (`deliver_to`)."""

    def __init__(self, stream: ReframedStream) -> None:
        self.taken = 0
        self.delivered = 0
        self.arrival = stream.arrival
        self.edit = None
        self.stream = stream

        def step() -> bytes | None:
            piece = stream.step()
            self.taken += bool(piece)
            return piece

        self.step = step

    def failed(self, exc: Exception) -> bytes:
        raise exc

    async def close(self, whole: bool, drained: bool) -> None:
        pass

    def deliver_to(self, deliver: Callable[[bytes, asyncio.Future[None]], bool] | None) -> None:
        if deliver is None:
            self.stream.deliver_to(None)
            return

        def counted(piece: bytes, waiter: asyncio.Future[None]) -> bool:
            took = deliver(piece, waiter)
            self.delivered += took
            return took

        self.stream.deliver_to(counted)


def _paced(reads: list[asyncio.Event], events: int) -> Callable[[Conn], Awaitable[None]]:
    """An upstream stream: its first event, then after each of `reads` is set one more event
    (`h0`, `h1`, … for the first `events`), then [DONE] and the body's end."""

    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(EVENT_STREAM_HEAD + _chunk(OPENAI_EVENT + b"\n"))
        for i, go_on in enumerate(reads):
            await go_on.wait()
            if i < events:
                await conn.send(_chunk(OPENAI_EVENT.replace(b"hi", b"h%d" % i) + b"\n"))
        await conn.send(_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        await conn.wait_closed_by_peer()

    return handler


async def test_pieces_read_while_the_relay_waits_are_sent_from_the_read() -> None:
    """Once the first piece is out, each read that completes events while the relay waits
    has them sent from the connection's callback (`deliver_to`): the relay's task is not
    woken for them. In order, whole; the last piece (the upstream's end) is still the
    relay's, and ends the body in its send."""
    reads = [asyncio.Event() for _ in range(4)]
    handler = _paced(reads, events=len(reads) - 1)

    async def receive() -> dict[str, Any]:
        await asyncio.Future()  # the client never leaves
        raise AssertionError

    async with running_timeout(BOUND_S), serving(handler) as server:
        provider = openai_provider(server.url(""))
        try:
            stream = await provider.stream(chat_call("openai", "m", stream=True))
            assert isinstance(stream, ReframedStream)
            relay = _Relayed(stream)
            messages: list[dict[str, Any]] = []

            async def send(message: dict[str, Any]) -> None:
                messages.append(message)
                if 2 <= len(messages) <= len(reads) + 1:  # each piece out: the next read
                    reads[len(messages) - 2].set()

            await send_event_stream(receive, send, [], relay, 30, last=stream.finished)
        finally:
            await provider.close()
    bodies = [m["body"] for m in messages[1:]]
    assert [b"h%d" % i in body for i, body in enumerate(bodies[1:4])] == [True] * 3, bodies
    assert bodies[-1] == b"data: [DONE]\n\n" and messages[-1]["more_body"] is False
    assert (relay.taken, relay.delivered) == (2, 3)


async def test_a_reframed_stream_s_end_read_during_a_keepalive_loses_none_of_its_events() -> None:
    """A piece taken while a keepalive's send is pending waits for that send; the upstream's
    end read meanwhile (reframed as it is read) must not end the body with that piece: the
    events after it, [DONE] among them, go out too."""
    second, end = asyncio.Event(), asyncio.Event()

    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(EVENT_STREAM_HEAD + _chunk(OPENAI_EVENT + b"\n"))
        await second.wait()
        await conn.send(_chunk(OPENAI_EVENT + b"\n"))
        await end.wait()
        await conn.send(_chunk(OPENAI_EVENT + b"\ndata: [DONE]\n\n") + b"0\r\n\r\n")
        await conn.wait_closed_by_peer()

    async def receive() -> dict[str, Any]:
        await asyncio.Future()  # the client never leaves
        raise AssertionError

    async with running_timeout(BOUND_S), serving(handler) as server:
        provider = openai_provider(server.url(""))
        try:
            stream = await provider.stream(chat_call("openai", "m", stream=True))
            assert isinstance(stream, ReframedStream)
            relay = _Relayed(stream)
            bodies: list[bytes] = []

            async def send(message: dict[str, Any]) -> None:
                if message.get("body") == KEEPALIVE and relay.taken == 1 and not second.is_set():
                    # a keepalive's send after the first piece is pending while the second
                    # event is taken...
                    second.set()
                    while relay.taken < 2:
                        await asyncio.sleep(0.005)
                    # ... and the upstream's end is read meanwhile
                    end.set()
                    while not stream._reframer.done:
                        await asyncio.sleep(0.005)
                if message["type"] == "http.response.body":
                    bodies.append(message["body"])

            await send_event_stream(
                receive, send, [], relay, keepalive_s=0.05, last=stream.finished
            )
        finally:
            await provider.close()
    body = b"".join(bodies)
    assert body.count(b'"content":"hi"') == 3, body
    assert body.endswith(b"data: [DONE]\n\n")


async def test_an_upstream_whose_piece_was_sent_from_its_read_is_held_then_read_again() -> None:
    """After a read whose events were sent from the read callback, the connection is not read
    until the loop's next turn (the chunks arriving meanwhile are read in one piece), then is
    read again: the stream's every event still arrives, in order."""
    reads = [asyncio.Event() for _ in range(3)]
    handler = _paced(reads, events=len(reads))

    async def receive() -> dict[str, Any]:
        await asyncio.Future()  # the client never leaves
        raise AssertionError

    holds: list[tuple[bool, bool]] = []  # (held, reading) seen after each piece's send
    async with running_timeout(BOUND_S), serving(handler) as server:
        provider = openai_provider(server.url(""))
        try:
            stream = await provider.stream(chat_call("openai", "m", stream=True))
            assert isinstance(stream, ReframedStream)
            conn = stream._response._conn
            assert conn is not None and conn.holds
            transport = conn.transport
            assert transport is not None
            relay = _Relayed(stream)
            messages: list[dict[str, Any]] = []

            async def send(message: dict[str, Any]) -> None:
                messages.append(message)
                # (seen once the read's callback that sent it, if one did, is done: this
                # callback is queued before the hold's end)
                asyncio.get_running_loop().call_soon(
                    lambda: holds.append((conn.held, transport.is_reading()))
                )
                if 2 <= len(messages) <= len(reads) + 1:
                    reads[len(messages) - 2].set()

            await send_event_stream(receive, send, [], relay, 30, last=stream.finished)
        finally:
            await provider.close()
    body = b"".join(m["body"] for m in messages[1:])
    places = [body.find(b'"h%d"' % i) for i in range(3)]
    assert -1 not in places and places == sorted(places), body
    assert body.endswith(b"data: [DONE]\n\n") and messages[-1]["more_body"] is False
    # A piece sent from a read began a hold, in which the upstream is not read; it ended.
    assert relay.delivered >= 1 and (True, False) in holds, holds
    assert (True, True) not in holds, holds
    assert not conn.held and (conn.transport is None or conn.transport.is_reading())


async def test_an_upstream_read_that_completes_no_event_is_held_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A read of a reframed stream that sends nothing (half an event: nothing for the relay
    yet) also holds the connection until the loop's next turn; the event's rest, read after,
    completes it whole."""
    holds: list[bool] = []  # after each read that held: whether it left a piece waiting
    read = http_client._Connection.data_received

    def counted(conn: Any, data: bytes) -> None:
        response = conn.response
        read(conn, data)
        if conn.held:  # (a held connection is not read: this read began the hold)
            holds.append(bool(response is not None and response._chunks))

    monkeypatch.setattr(http_client._Connection, "data_received", counted)
    half = len(OPENAI_EVENT) // 2
    taken, rest = asyncio.Event(), asyncio.Event()

    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(EVENT_STREAM_HEAD + _chunk(OPENAI_EVENT + b"\n"))
        await taken.wait()  # (its own read, once the stream reframes as it reads)
        await conn.send(_chunk(OPENAI_EVENT[:half]))
        await rest.wait()
        await conn.send(_chunk(OPENAI_EVENT[half:] + b"\n") + _chunk(b"data: [DONE]\n\n"))
        await conn.send(b"0\r\n\r\n")
        await conn.wait_closed_by_peer()

    async with running_timeout(BOUND_S), serving(handler) as server:
        provider = openai_provider(server.url(""))
        try:
            stream = await provider.stream(chat_call("openai", "m", stream=True))
            assert isinstance(stream, ReframedStream)
            first = await _next_piece(stream)
            assert b'"content":"hi"' in first
            taken.set()
            while not holds:  # the half event's read: nothing completed, yet held
                await asyncio.sleep(0.005)
            assert stream.step() is None
            rest.set()
            body = b""
            while not body.endswith(b"data: [DONE]\n\n"):
                body += await _next_piece(stream)
        finally:
            await provider.close()
    assert body.count(b'"content":"hi"') == 1, body
    assert holds and holds[0] is False, holds


class _FakeTransport:
    def __init__(self) -> None:
        self.reading = True
        self.closing = False

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:  # (uvloop's and asyncio's: nothing once closing)
        if not self.closing:
            self.reading = True

    def is_reading(self) -> bool:
        return self.reading and not self.closing

    def is_closing(self) -> bool:
        return self.closing


class _FakeHandle:
    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback: Callable[[], None] | None = callback

    def cancel(self) -> None:
        self.callback = None

    def __call__(self) -> None:  # the loop's turn: a cancelled handle does nothing
        if self.callback is not None:
            self.callback()


class _FakeLoop:
    def __init__(self) -> None:
        self.soon: list[_FakeHandle] = []

    def call_soon(self, callback: Callable[[], None]) -> _FakeHandle:
        handle = _FakeHandle(callback)
        self.soon.append(handle)
        return handle


def _held_connection() -> tuple[Any, _FakeTransport, _FakeLoop]:
    client = HttpClient(pool_size=1, connect_timeout_s=1, read_timeout_s=1)
    conn = http_client._Connection(http_client._Pool(client, None))  # type: ignore[arg-type]
    transport = _FakeTransport()
    conn.transport = transport  # type: ignore[assignment]
    return conn, transport, _FakeLoop()


def test_a_hold_ends_at_the_next_turn_and_leaves_a_pause_to_its_resume() -> None:
    """`hold`: not read until the loop's next turn (`call_soon`: under uvloop a `call_later`
    under 0.5 ms is one too); a flow-control `pause` during it is not ended by the hold's end
    (only by `resume`); a connection closed meanwhile is not read again."""
    conn, transport, loop = _held_connection()
    conn.hold(loop)
    assert (conn.held, transport.reading) == (True, False)
    assert len(loop.soon) == 1
    conn.hold(loop)  # held already: no second callback
    assert len(loop.soon) == 1
    loop.soon.pop()()
    assert (conn.held, transport.reading) == (False, True)

    conn.hold(loop)
    conn.pause()  # the body's buffer is full (flow control) during the hold
    loop.soon.pop()()
    assert (conn.held, conn.paused, transport.reading) == (False, True, False)
    conn.resume()
    assert transport.reading

    conn.hold(loop)
    transport.closing = True
    loop.soon.pop()()
    assert not transport.reading and not conn.held

    conn, transport, loop = _held_connection()
    conn.pause()
    conn.hold(loop)  # paused: no hold, no callback
    assert not conn.held and not loop.soon


async def test_a_hold_ending_on_a_closed_connection_reads_nothing() -> None:
    """What `hold`'s end relies on, on the loop's own transports: `resume_reading` of a
    transport closed during the hold neither reads nor fails."""
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    read: list[bytes] = []
    lost = loop.create_future()

    class Reader(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            read.append(data)

        def connection_lost(self, exc: Exception | None) -> None:
            lost.set_result(None)

    with theirs:
        transport, _ = await loop.create_connection(Reader, sock=ours)
        transport.pause_reading()
        transport.close()
        transport.resume_reading()
        assert not transport.is_reading()
        theirs.sendall(b"late")
        await within(lost, BOUND_S)
        transport.resume_reading()
    assert read == []
