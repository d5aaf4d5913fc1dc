"""The HTTP client's plain heads (`_core.read_head`: the whole head in the first read, a
Content-Length or an event stream's chunked body): read without httptools, and read as
httptools reads them; a head split over reads, or any other head, goes to httptools as
before."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import httptools
import pytest

from gateway.providers import http_client
from gateway.providers.http_client import ResponseBroken
from tests.live_bound import running_timeout
from tests.providers.test_http_client import (
    BOUND_S,
    Conn,
    answer,
    client,
    get,
    keep_serving,
    serving,
)

# The client's own timers (connect, read, headers) are the event loop's, on the wall clock: a
# case that fails in a run this process was stopped in is asked again (tests/asked_again.py).
pytestmark = pytest.mark.asked_again_if_stopped


class Parsers:
    """The httptools parsers the client makes: how many, and an event set at the first."""

    def __init__(self) -> None:
        self.made = 0
        self.first = asyncio.Event()


@pytest.fixture
def parsers(monkeypatch: pytest.MonkeyPatch) -> Parsers:
    seen = Parsers()
    real = httptools.HttpResponseParser

    def counted(protocol: Any) -> httptools.HttpResponseParser:
        seen.made += 1
        seen.first.set()
        return real(protocol)

    monkeypatch.setattr(http_client.httptools, "HttpResponseParser", counted)
    return seen


def pieces(wire: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *cuts, len(wire)]
    return [wire[a:b] for a, b in itertools.pairwise(bounds)]


def serve_in_pieces(*answers: list[bytes]) -> Any:
    """Answers each request of one connection with its pieces, each its own write."""

    async def handler(conn: Conn) -> None:
        for parts in answers:
            if await conn.request() is None:
                return
            await conn.send(*parts)
        await conn.wait_closed_by_peer()

    return handler


ODD = answer(
    b'{"ok":true}',
    "X-ODD-case:  a b ",
    "Vary: a",
    "vary: b",
    "Set-Cookie: c=1",
    status="201 Created",
)


async def test_a_plain_head_is_read_without_a_parser(parsers: Parsers) -> None:
    """Odd casing, repeated headers and trailing spaces read as httptools reads them (the
    dictionary of `headers`), and the connection kept alive, with no parser made."""
    handler = keep_serving(ODD, ODD)
    async with running_timeout(BOUND_S), serving(handler) as server, client() as http:
        for _ in range(2):
            response, body = await get(http, server.url())
            assert (response.status, body) == (201, b'{"ok":true}')
            assert response.headers == {
                "content-length": "11",
                "x-odd-case": "a b ",
                "vary": "a, b",
                "set-cookie": "c=1",
            }
        assert server.accepted == 1
    assert parsers.made == 0


@pytest.mark.parametrize("cut", range(1, len(ODD) - 11))
async def test_a_head_split_over_reads_reads_the_same(cut: int, parsers: Parsers) -> None:
    """A head not whole in the first read goes to httptools (the rest is sent once it made
    its parser: the read ends at `cut`): the same status, headers and body wherever the read
    ends, and the next answer's plain head read without one."""

    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(ODD[:cut])
        await parsers.first.wait()
        await conn.send(ODD[cut:])
        await keep_serving(ODD)(conn)

    async with running_timeout(BOUND_S), serving(handler) as server, client() as http:
        response, body = await get(http, server.url())
        assert (response.status, body, response.headers["vary"]) == (201, b'{"ok":true}', "a, b")
        response, body = await get(http, server.url())
        assert (response.status, body, response.headers["x-odd-case"]) == (
            201,
            b'{"ok":true}',
            "a b ",
        )
        assert server.accepted == 1
    assert parsers.made == 1


async def test_a_length_body_over_many_reads_is_read_whole() -> None:
    body = bytes(range(256)) * 40
    wire = answer(body, "Content-Type: application/octet-stream")
    head = len(wire) - len(body)
    cuts = [head, head + 1, head + 1000, head + 5000, len(wire) - 1]
    handler = serve_in_pieces(pieces(wire, cuts), pieces(wire, [head + 7]))
    async with running_timeout(BOUND_S), serving(handler) as server, client() as http:
        for _ in range(2):
            response = await http.request("GET", server.url(), {}, None)
            got = b""
            async for piece in response.chunks():
                got += piece
            assert got == body
        assert server.accepted == 1


async def test_a_byte_past_the_length_breaks_the_connection_not_the_answer() -> None:
    """The answer stands; the connection is not reused (the next request opens another)."""
    handler = keep_serving(answer(b"abc") + b"X")
    async with running_timeout(BOUND_S), serving(handler) as server, client() as http:
        for _ in range(2):
            _, body = await get(http, server.url())
            assert body == b"abc"
        assert server.accepted == 2


async def test_connection_close_is_not_reused_and_empty_bodies_end_at_once() -> None:
    handler = keep_serving(answer(b"", "Connection: close"))
    second = keep_serving(answer(b""))
    handlers = iter([handler, second])

    async def either(conn: Conn) -> None:
        await next(handlers)(conn)

    async with running_timeout(BOUND_S), serving(either) as server, client() as http:
        response, body = await get(http, server.url())
        assert (response.status, body) == (200, b"")
        response, body = await get(http, server.url())
        assert (response.status, body) == (200, b"")
        assert server.accepted == 2


async def test_a_plain_head_then_a_cut_body_is_broken() -> None:
    async def handler(conn: Conn) -> None:
        await conn.request()
        await conn.send(answer(b"0123456789")[:-4])

    async with running_timeout(BOUND_S), serving(handler) as server, client() as http:
        response = await http.request("GET", server.url(), {}, None)
        with pytest.raises(ResponseBroken, match="closed the connection mid-answer"):
            await response.read()
