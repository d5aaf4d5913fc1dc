"""`_core.Dechunker` (an event stream's chunked body in the HTTP client) against httptools, the
parser it stands in for, with the client's leniencies: the same body, end and refusals for the
same wire however it is split."""

from __future__ import annotations

import itertools

import httptools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import _core

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
SETTINGS = settings(max_examples=300, deadline=None, database=None)


class _Sink:
    def __init__(self) -> None:
        self.body: list[bytes] = []
        self.on_body = self.body.append
        self.complete = False

    def on_message_complete(self) -> None:
        self.complete = True


def by_httptools(reads: list[bytes]) -> tuple[bytes, bool] | None:
    """(body, ended) as the client's httptools parser reads the head then `reads`; None if it
    refuses the wire."""
    sink = _Sink()
    parser = httptools.HttpResponseParser(sink)
    parser.set_dangerous_leniencies(
        lenient_headers=True,
        lenient_optional_cr_before_lf=True,
        lenient_spaces_after_chunk_size=True,
    )
    parser.feed_data(HEAD)
    try:
        for data in reads:
            parser.feed_data(data)
    except httptools.HttpParserError:
        # bytes after a whole answer: the client keeps the answer and drops the connection
        return (b"".join(sink.body), True) if sink.complete else None
    return b"".join(sink.body), sink.complete


def by_dechunker(reads: list[bytes]) -> tuple[bytes, bool] | None:
    dechunker = _core.Dechunker()
    body = []
    try:
        for data in reads:
            body.append(dechunker.feed(data))
    except ValueError:
        return None
    return b"".join(body), dechunker.done


def split(wire: bytes, cuts: list[int]) -> list[bytes]:
    at = sorted({0, len(wire), *(c % (len(wire) + 1) for c in cuts)})
    return [wire[a:b] for a, b in itertools.pairwise(at)]


EOL = st.sampled_from([b"\r\n", b"\n"])
SPACES = st.sampled_from([b"", b" ", b"\t", b"  \t"])
TOKEN = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=6).map(str.encode)
EXTENSION = st.one_of(
    st.just(b""),
    st.builds(lambda name, value: b";" + name + b"=" + value, TOKEN, TOKEN),
    st.builds(lambda name: b";" + name, TOKEN),
    st.builds(lambda name: b";" + name + b'="a \\" b";q=', TOKEN),
)
TRAILER = st.builds(lambda name, value: name + b": " + value, TOKEN, TOKEN)


SSE_LINES = st.sampled_from([b"event: x\n", b'data: {"a":1}\n', b"data: tok 1\n", b"\n"])


def _chunks(draw: st.DrawFn, data: st.SearchStrategy[bytes], extension: st.SearchStrategy[bytes],
            count: st.SearchStrategy[int]) -> bytes:  # fmt: skip
    wire = b""
    for _ in range(draw(count)):
        piece = draw(data)
        size = draw(st.sampled_from(["{:x}", "{:X}", "0{:x}"])).format(len(piece)).encode()
        wire += size + draw(SPACES) + _size_line_end(draw(extension), draw(EOL)) + piece + draw(EOL)
    return wire


@st.composite
def chunked_wires(draw: st.DrawFn) -> bytes:
    """A chunked body as an upstream may write it: SSE lines (or any bytes) as chunks, sizes
    in either case with leading zeros, spaces after a size, bare LF line ends, extensions,
    trailer fields."""
    data = st.binary(min_size=1, max_size=40) | SSE_LINES
    wire = _chunks(draw, data, EXTENSION, st.integers(0, 8))
    wire += b"0" + draw(SPACES) + _size_line_end(draw(EXTENSION), draw(EOL))
    for trailer in draw(st.lists(TRAILER, max_size=2)):
        wire += trailer + draw(EOL)
    return wire + draw(EOL)


@st.composite
def damaged_wires(draw: st.DrawFn) -> bytes:
    """A chunked body of SSE lines without extensions or trailers, one byte of its chunks
    (framing or data, not the last chunk's line) removed or replaced."""
    chunks = _chunks(draw, SSE_LINES, st.just(b""), st.integers(1, 8))
    at = draw(st.integers(0, len(chunks) - 1))
    damage = draw(st.sampled_from(
        [b"", b"x", b"\r", b"\n", b"\r\r", b"g", b"-", b" ", b"0", b"F", b"=", b'"', b":"]
    ))  # fmt: skip
    return chunks[:at] + damage + chunks[at + 1 :] + b"0\r\n" + draw(EOL)


def _size_line_end(extension: bytes, eol: bytes) -> bytes:
    """A bare LF right after a size stands for its CR (llhttp's leniency): LF LF."""
    return extension + eol if extension or eol == b"\r\n" else b"\n\n"


@SETTINGS
@given(chunked_wires(), st.lists(st.integers(0, 10_000), max_size=6))
def test_any_split_of_a_chunked_body_reads_as_httptools_reads_it(
    wire: bytes, cuts: list[int]
) -> None:
    reads = split(wire, cuts)
    assert by_dechunker(reads) == by_httptools(reads)
    assert by_dechunker(reads) is not None


@SETTINGS
@given(damaged_wires(), st.lists(st.integers(0, 10_000), max_size=3))
def test_a_damaged_chunked_body_reads_as_httptools_reads_it(wire: bytes, cuts: list[int]) -> None:
    """What httptools refuses, the Dechunker refuses; what httptools reads, the Dechunker reads
    alike, or refuses where httptools is left waiting for more (a bare LF right after a size:
    llhttp fails on the byte after it, the Dechunker on it). Extensions and trailer fields are
    the case tests' (below): the Dechunker checks the grammar llhttp checks there, not every
    leniency llhttp shows on damaged bytes (it takes `0;;x` and `X: \\r\\r\\n`, not `0;a;`
    nor `X: y\\r\\r\\n`)."""
    reads = split(wire, cuts)
    ours, theirs = by_dechunker(reads), by_httptools(reads)
    if theirs is None or ours is not None:
        assert ours == theirs
    else:
        assert not theirs[1], "refused a body httptools read whole"


@pytest.mark.parametrize(
    "wire",
    [
        b"zz\r\n",
        b"\r\n",
        b"5\r\nhelloXX",
        b"5\r\nhello\r\r",
        b"5 x\r\nhello\r\n",
        b"11111111111111111\r\n",
        b"1; a\r\nX\r\n",
        b"1;a \r\nX\r\n",
        b"1;a;\r\nX\r\n",
        b'1;a="b"c\r\nX\r\n',
        b'1;a="\x01"\r\nX\r\n',
        b"0\r\nX : y\r\n\r\n",
        b"0\r\n:y\r\n\r\n",
    ],
)
def test_malformed_framing_is_refused_by_both(wire: bytes) -> None:
    assert by_httptools([wire]) is None
    assert by_dechunker([wire]) is None


def test_bytes_after_the_end_are_left_over() -> None:
    dechunker = _core.Dechunker()
    assert dechunker.feed(b"5\r\nhello\r\n0\r\n\r\nHTTP") == b"hello"
    assert (dechunker.done, dechunker.leftover) == (True, 4)
    assert dechunker.feed(b"more") == b""
    assert dechunker.leftover == 4


ANTHROPIC_EVENTS = [
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","type":'
    b'"message","role":"assistant","model":"claude","content":[],"stop_reason":null,'
    b'"usage":{"input_tokens":3,"output_tokens":1}}}\n\n',
    b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
    b'"content_block":{"type":"text","text":""}}\n\n',
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":"hi"}}\n\n',
    b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
    b'"usage":{"output_tokens":2}}\n\n',
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n',
]


def _reframer() -> _core.Reframer:
    return _core.Reframer("anthropic", "gw/m", "chatcmpl-1", 7, True)


def test_feed_chunked_is_the_dechunker_then_the_reframer_at_every_split() -> None:
    """`Reframer.feed_chunked(dechunker, data)` (the HTTP client's read of a reframed event
    stream) answers what `Dechunker.feed` then `Reframer.feed` answer, wherever the wire is
    split (each line its own HTTP chunk), and leaves the Dechunker in the same state; what
    it answers with them is 2 when the Dechunker is `done` after that read, else 1 when the
    reframer is (its terminator read), else 0."""
    lines = [line for event in ANTHROPIC_EVENTS for line in event.splitlines(keepends=True)]
    wire = b"".join(b"%x\r\n%s\r\n" % (len(line), line) for line in lines) + b"0\r\n\r\n"
    whole = _reframer()
    expected = whole.feed(b"".join(lines)) + whole.finish()
    assert expected.endswith(b"data: [DONE]\n\n")
    for cut in range(len(wire) + 1):
        for reads in ([wire[:cut], wire[cut:]], [wire[:cut], wire[cut:], b"extra"]):
            reframer, dechunker = _reframer(), _core.Dechunker()
            two, two_dechunker = _reframer(), _core.Dechunker()
            out = b""
            theirs = b""
            for data in reads:
                piece, after = reframer.feed_chunked(dechunker, data)
                out += piece
                theirs += two.feed(two_dechunker.feed(data))
                assert after == (2 if two_dechunker.done else 1 if two.done else 0)
            assert out == theirs
            assert (dechunker.done, dechunker.leftover) == (
                two_dechunker.done,
                two_dechunker.leftover,
            )
            assert out + reframer.finish() == expected


def test_feed_chunked_answers_an_upstream_error_as_the_reframer_closed() -> None:
    """An upstream `error` event closes the reframer before its body ends: 1, so that the
    HTTP client leaves the error to the relay (never sent from the read)."""
    reframer, dechunker = _reframer(), _core.Dechunker()
    error = (
        b"event: error\ndata: "
        b'{"type":"error","error":{"type":"overloaded_error","message":"busy"}}\n\n'
    )
    for event, expected in ((ANTHROPIC_EVENTS[0], 0), (error, 1)):
        assert reframer.feed_chunked(dechunker, b"%x\r\n%s\r\n" % (len(event), event))[1] == (
            expected
        )
    assert reframer.upstream_error == ("overloaded_error", "busy")
    assert reframer.feed_chunked(dechunker, b"0\r\n\r\n") == (b"", 2)


def test_feed_chunked_refuses_malformed_framing_without_feeding_the_reframer() -> None:
    reframer, dechunker = _reframer(), _core.Dechunker()
    event = ANTHROPIC_EVENTS[0]
    assert reframer.feed_chunked(dechunker, b"%x\r\n%s\r\n" % (len(event), event))[0]
    with pytest.raises(ValueError) as refused:
        reframer.feed_chunked(dechunker, b"zz\r\n" + ANTHROPIC_EVENTS[2])
    assert not isinstance(refused.value, _core.SseError)
    other = _reframer()
    other.feed(event)
    assert reframer.feed(ANTHROPIC_EVENTS[2]) == other.feed(ANTHROPIC_EVENTS[2])  # not fed


def test_feed_chunked_raises_the_reframer_s_errors() -> None:
    reframer, dechunker = _core.Reframer("openai", "gw/m", "c", 7, False, 64), _core.Dechunker()
    data = b"data: " + b"x" * 100
    with pytest.raises(_core.SseError):
        reframer.feed_chunked(dechunker, b"%x\r\n%s\r\n" % (len(data), data))
