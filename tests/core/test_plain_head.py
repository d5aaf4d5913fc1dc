"""`_core.read_head` and `_core.head_fields` (rust_core/src/head.rs): a plain answer head read
in one call reads as httptools reads it, with the client's leniencies; any other is left to
httptools (None)."""

from __future__ import annotations

import httptools
import pytest

from gateway import _core


class _Heard:
    """What httptools tells the client of a head: its fields, its status, and keep-alive as
    the client asks for it (at the message's end)."""

    def __init__(self) -> None:
        self.fields: list[bytes] = []
        self.keep_alive: bool | None = None
        self.parser: httptools.HttpResponseParser | None = None

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields += (name, value)

    def on_message_complete(self) -> None:
        assert self.parser is not None
        self.keep_alive = self.parser.should_keep_alive()


def httptools_reads(wire: bytes) -> tuple[int, list[bytes], bool | None]:
    heard = _Heard()
    parser = heard.parser = httptools.HttpResponseParser(heard)
    parser.set_dangerous_leniencies(
        lenient_headers=True,
        lenient_optional_cr_before_lf=True,
        lenient_spaces_after_chunk_size=True,
    )
    parser.feed_data(wire)
    return parser.get_status_code(), heard.fields, heard.keep_alive


PLAIN = [
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.1 200\r\ncontent-length: 0\r\n\r\n",
    b"HTTP/1.1 201 \r\nX-Odd-CASE:  a b \t\r\nEmpty:\r\nCONTENT-LENGTH: 00003\r\n\r\nabc",
    b"HTTP/1.1 429 Too Many\r\nRetry-After: 3\r\nVary: a\r\nvary: b\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 503 Busy\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx",
    b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive\r\nX-Bytes: \xff\xfe caf\xc3\xa9\r\n"
    b"Content-Length: 1\r\n\r\nx",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n"
    b"0\r\n\r\n",
]


@pytest.mark.parametrize("wire", PLAIN)
def test_a_plain_head_reads_as_httptools_reads_it(wire: bytes) -> None:
    head = _core.read_head(wire)
    assert head is not None
    status, end, length, keep_alive = head
    want_status, want_fields, want_keep_alive = httptools_reads(wire)
    assert status == want_status
    assert wire[end - 4 : end] == b"\r\n\r\n"
    assert _core.head_fields(wire[:end]) == want_fields
    assert keep_alive is want_keep_alive
    assert length == (-1 if b"chunked" in wire[:end] else len(wire) - end)


@pytest.mark.parametrize(
    "wire",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n",  # not whole yet
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r",
        b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",  # bare LF (httptools takes it)
        b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 3\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nA: b\x01c\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nA: b\r\n folded\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\ncontent-length: 1\r\n\r\nx",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 1\r\n\r\nx",
        b"HTTP/1.1 200 OK\r\nConnection: upgrade\r\nContent-Length: 0\r\n\r\n",
        # httptools (llhttp) reads Proxy-Connection as Connection: "close" ends the connection
        b"HTTP/1.1 200 OK\r\nProxy-Connection: close\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nproxy-connection: keep-alive\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",  # not an event stream
        b"HTTP/1.1 200 OK\r\n\r\nuntil EOF",
        b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
    ],
)
def test_any_other_head_is_left_to_httptools(wire: bytes) -> None:
    assert _core.read_head(wire) is None


def test_head_fields_refuses_a_head_it_would_not_read() -> None:
    with pytest.raises(ValueError, match="not a plain head"):
        _core.head_fields(b"HTTP/1.1 200 OK\r\nA : b\r\n\r\n")
