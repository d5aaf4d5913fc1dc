"""gateway._core.Reframer from Python: fixtures, split invariance, errors."""

import itertools
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import _core

FIXTURES = Path(__file__).resolve().parents[2] / "rust_core" / "tests" / "fixtures"
MODEL = "prov/model"
RESPONSE_ID = "chatcmpl-klawd1"
CREATED = 1700000000

CASES = {
    "openai_text_usage": "openai",
    "openai_tool_calls": "openai",
    "anthropic_text_tool_use": "anthropic",
    "anthropic_error": "anthropic",
    "gemini_text_function_call": "gemini",
    "gemini_safety": "gemini",
}


def reframer(kind: str, include_usage: bool = True, **kw: int) -> _core.Reframer:
    return _core.Reframer(kind, MODEL, RESPONSE_ID, CREATED, include_usage, **kw)


def run(kind: str, chunks: list[bytes], include_usage: bool = True) -> bytes:
    r = reframer(kind, include_usage)
    out = b"".join(r.feed(c) for c in chunks)
    return out + r.finish()


def fixture(name: str) -> bytes:
    return (FIXTURES / f"{name}.sse").read_bytes()


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def events(out: bytes) -> list[bytes]:
    assert out.endswith(b"\n\n") or out == b""
    return [e for e in out.split(b"\n\n") if e]


@pytest.mark.parametrize("name", CASES)
def test_fixture_output_matches_golden_file(name: str) -> None:
    expected = (FIXTURES / f"{name}.expected").read_bytes()
    assert run(CASES[name], [fixture(name)]) == expected


@pytest.mark.parametrize("name", CASES)
def test_every_event_is_one_line_of_json_or_done(name: str) -> None:
    for ev in events(run(CASES[name], [fixture(name)])):
        assert ev.startswith(b"data: ")
        assert b"\n" not in ev and b"\r" not in ev
        if ev != b"data: [DONE]":
            chunk = orjson.loads(ev[6:])
            assert chunk["object"] == "chat.completion.chunk"
            assert chunk["model"] == MODEL


@pytest.mark.parametrize("name", CASES)
@settings(max_examples=60, deadline=None, database=None)
@given(cuts=st.lists(st.integers(min_value=0), max_size=12))
def test_any_split_of_a_fixture_gives_the_same_output(name: str, cuts: list[int]) -> None:
    data = fixture(name)
    assert run(CASES[name], split(data, cuts)) == run(CASES[name], [data])


@pytest.mark.parametrize("name", CASES)
def test_byte_by_byte_feed_gives_the_same_output(name: str) -> None:
    data = fixture(name)
    assert run(CASES[name], [data[i : i + 1] for i in range(len(data))]) == run(CASES[name], [data])


@pytest.mark.parametrize("name", CASES)
def test_without_include_usage_only_the_usage_chunk_is_missing(name: str) -> None:
    with_usage = events(run(CASES[name], [fixture(name)], include_usage=True))
    without = events(run(CASES[name], [fixture(name)], include_usage=False))
    usage_only = [
        e for e in with_usage if e != b"data: [DONE]" and orjson.loads(e[6:])["choices"] == []
    ]
    assert len(usage_only) <= 1
    assert without == [e for e in with_usage if e not in usage_only]


def usage_tuple(r: _core.Reframer) -> tuple[int, int, int, int] | None:
    u = r.usage
    if u is None:
        return None
    return (u.prompt_tokens, u.completion_tokens, u.total_tokens, u.cached_tokens)


@pytest.mark.parametrize(
    ("name", "usage", "finish_reason", "upstream_error", "content_chars", "done"),
    [
        ("openai_text_usage", (14, 12, 26, 0), "stop", None, 62, True),
        ("openai_tool_calls", None, "tool_calls", None, 39, True),
        ("anthropic_text_tool_use", (2620, 89, 2709, 2048), "tool_calls", None, 107, True),
        ("anthropic_error", (12, 1, 13, 0), None, ("overloaded_error", "Overloaded"), 5, False),
        ("gemini_text_function_call", (57, 71, 128, 32), "tool_calls", None, 100, True),
        ("gemini_safety", (9, 3, 12, 0), "content_filter", None, 11, True),
    ],
)
def test_state_is_extracted_even_without_include_usage(
    name: str,
    usage: tuple[int, int, int, int] | None,
    finish_reason: str | None,
    upstream_error: tuple[str, str] | None,
    content_chars: int,
    done: bool,
) -> None:
    r = reframer(CASES[name], include_usage=False)
    r.feed(fixture(name))
    r.finish()
    assert usage_tuple(r) == usage
    assert r.finish_reason == finish_reason
    assert r.upstream_error == upstream_error
    assert r.content_chars == content_chars
    assert r.done is done


def test_input_after_the_terminator_is_ignored() -> None:
    r = reframer("openai")
    data = fixture("openai_text_usage")
    assert r.feed(data + b'data: {"choices":[]}\n\n').endswith(b"data: [DONE]\n\n")
    assert r.feed(data) == b""
    assert r.finish() == b""


def test_input_after_an_upstream_error_is_ignored() -> None:
    r = reframer("openai")
    err = b'data: {"error":{"message":"boom","type":"server_error","code":null}}\n\n'
    assert r.feed(err) == b""
    assert r.upstream_error == ("server_error", "boom")
    assert r.feed(fixture("openai_text_usage")) == b""
    assert r.finish() == b""
    assert not r.done


@pytest.mark.parametrize("name", CASES)
def test_cut_stream_raises_upstream_stream_error(name: str) -> None:
    data = fixture(name)
    r = reframer(CASES[name])
    r.feed(data[: len(data) // 2])
    with pytest.raises(_core.UpstreamStreamError):
        r.finish()


def test_oversized_event_raises_sse_error_and_stays_failed() -> None:
    r = reframer("openai", max_event_bytes=64)
    with pytest.raises(_core.SseError):
        r.feed(b"data: " + b"x" * 100)
    with pytest.raises(ValueError, match="max_event_bytes"):
        r.feed(b"\n\n")


def test_malformed_json_raises_sse_error() -> None:
    r = reframer("anthropic")
    with pytest.raises(_core.SseError):
        r.feed(b"event: message_start\ndata: {not json\n\n")


def test_unknown_kind_raises_value_error() -> None:
    with pytest.raises(ValueError, match="unknown reframer kind"):
        reframer("replicate")


def test_sse_error_is_a_value_error_and_stream_error_is_not() -> None:
    assert issubclass(_core.SseError, ValueError)
    assert not issubclass(_core.UpstreamStreamError, ValueError)
    assert isinstance(_core.__version__, str)


def test_large_input_released_from_the_interpreter_gives_the_same_output() -> None:
    # Inputs above 64 KiB are processed with the interpreter detached: same bytes out.
    body = b"".join(
        b'data: {"id":"x","model":"m","choices":[{"index":0,"delta":{"content":"%d"}}]}\n\n' % i
        for i in range(3000)
    )
    data = body + b"data: [DONE]\n\n"
    assert len(data) > 64 * 1024
    whole = run("openai", [data])
    assert whole == run("openai", [data[i : i + 4096] for i in range(0, len(data), 4096)])
    assert whole.count(b"\n\n") == 3001


# -- the bench's streams, recorded ---------------------------------------------------------------
# loadtests/bench/contenders.py's bodies (openai_events, anthropic_events, anthropic_tool_events)
# and what the reframers wrote for them at 08501f1, before the reframers' per-event shortcuts of
# pass 19zza: a shortcut must write the same bytes, however the body is split.
BENCH = {
    "bench_openai": ("openai", 272, (12, 47, 59, 0), "stop"),
    "bench_anthropic": ("anthropic", 260, (12, 45, 57, 0), "stop"),
    "bench_anthropic_tools": ("anthropic", 4137, (12, 298, 310, 0), "tool_calls"),
}


@pytest.mark.parametrize("name", BENCH)
def test_the_bench_s_streams_give_their_recorded_bytes_at_every_split(name: str) -> None:
    kind, content_chars, usage, finish_reason = BENCH[name]
    data = fixture(name)
    expected = (FIXTURES / f"{name}.expected").read_bytes()
    framings = [[data], [data[i : i + 1] for i in range(len(data))]]
    # every split of the two 50-event bodies; of the tool call's 43 KB, every split of its
    # first 4 KB (its first events and tool-call fragments whole) and every 17th after
    cuts = itertools.chain(range(1, min(len(data), 4096)), range(4096, len(data), 17))
    framings += ([data[:i], data[i:]] for i in cuts)
    for chunks in framings:
        r = reframer(kind)
        out = b"".join(r.feed(c) for c in chunks) + r.finish()
        assert out == expected, [len(c) for c in chunks][:2]
        assert r.content_chars == content_chars
        assert usage_tuple(r) == usage
        assert r.finish_reason == finish_reason


HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: 8310\r\n\r\n"


def test_a_read_fed_from_its_start_gives_the_bytes_of_its_stream_at_every_split() -> None:
    """`feed(data, start)`: `data`'s bytes before `start` (the HTTP head that came in the same
    read as the body) are not the stream's; the rest is, as if `data[start:]` were fed."""
    data = fixture("bench_openai")
    expected = (FIXTURES / "bench_openai.expected").read_bytes()
    for cut in range(len(data) + 1):
        r = reframer("openai")
        out = r.feed(HEAD + data[:cut], len(HEAD)) + r.feed(data[cut:]) + r.finish()
        assert out == expected, cut
    r = reframer("openai")
    assert r.feed(data, len(data)) + r.feed(data, 0) + r.finish() == expected


@pytest.mark.parametrize("start", [1, 100])
def test_a_start_past_the_data_s_end_is_a_value_error_and_feeds_nothing(start: int) -> None:
    data = fixture("bench_openai")
    r = reframer("openai")
    with pytest.raises(ValueError, match="start"):
        r.feed(b"", start)
    assert r.feed(data) + r.finish() == (FIXTURES / "bench_openai.expected").read_bytes()
