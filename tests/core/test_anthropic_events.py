"""gateway._core reframers that emit Anthropic Messages events, from Python:
`openai_to_anthropic` and `anthropic_passthrough` against the pure-Python reference
(loadtests/bench/pyref.py), split invariance, the Gemini → OpenAI → Anthropic chain, and
random bytes (only the two typed errors may come out)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import _core
from tests.core.test_differential import EOL, SETTINGS, TEXT, chunked, named_events, pyref, sse
from tests.core.test_reframer import fixture, split

ARGS = ("prov/m", "msg_x", 0, True)


def run(kind: str, chunks: list[bytes]) -> tuple[bytes, Any]:
    r = _core.Reframer(kind, *ARGS)
    out = b"".join(r.feed(c) for c in chunks) + r.finish()
    return out, r


def compare(kind: str, chunks: list[bytes]) -> list[tuple[str, Any]]:
    out, rust = run(kind, chunks)
    ref = pyref.reframer(kind, *ARGS)
    expected = b"".join(ref.feed(c) for c in chunks) + ref.finish()
    assert named_events(out) == named_events(expected)
    assert rust.content_chars == ref.content_chars
    assert rust.finish_reason == ref.finish_reason
    assert rust.done == ref.done
    u = rust.usage
    got = None if u is None else (u.prompt_tokens, u.completion_tokens, u.total_tokens)
    want = None if ref.usage is None else tuple(ref.usage[k] for k in list(ref.usage)[:3])
    assert got == want
    return named_events(out)


def check_sequence(evs: list[tuple[str, Any]]) -> tuple[str, list[str]]:
    """The Messages stream grammar; returns the text and each tool_use's input JSON text."""
    assert evs[0][0] == "message_start"
    assert [n for n, _ in evs[-2:]] == ["message_delta", "message_stop"]
    open_block, blocks, text, tools = None, 0, "", []
    for name, data in evs[1:-2]:
        assert data["type"] == name
        if name == "content_block_start":
            assert open_block is None and data["index"] == blocks
            open_block, blocks = blocks, blocks + 1
            if data["content_block"]["type"] == "tool_use":
                tools.append("")
        elif name == "content_block_delta":
            assert data["index"] == open_block
            delta = data["delta"]
            if delta["type"] == "text_delta":
                text += delta["text"]
            else:
                tools[-1] += delta["partial_json"]
        else:
            assert name == "content_block_stop" and data["index"] == open_block
            open_block = None
    assert open_block is None
    return text, tools


TOOL_CALLS = st.lists(st.tuples(st.text(max_size=6), st.lists(TEXT, max_size=4)), max_size=3)


@SETTINGS
@given(
    texts=st.lists(TEXT, max_size=6),
    calls=TOOL_CALLS,
    finish=st.sampled_from(["stop", "length", "tool_calls", "content_filter", "other"]),
    usage=st.tuples(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**3)),
    eol=EOL,
    cuts=st.lists(st.integers(0), max_size=8),
)
def test_openai_to_anthropic_matches_reference_and_adds_up(
    texts: list[str],
    calls: list[tuple[str, list[str]]],
    finish: str,
    usage: tuple[int, int, int],
    eol: str,
    cuts: list[int],
) -> None:
    base = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1, "model": "m"}

    def chunk(delta: dict[str, Any], reason: str | None = None) -> tuple[None, Any]:
        return (None, base | {"choices": [{"index": 0, "delta": delta, "finish_reason": reason}]})

    evs = [chunk({"role": "assistant", "content": ""})]
    evs += [chunk({"content": t}) for t in texts]
    for i, (name, fragments) in enumerate(calls):
        start = {"index": i, "id": f"call_{i}", "type": "function"}
        evs.append(chunk({"tool_calls": [start | {"function": {"name": name, "arguments": ""}}]}))
        evs += [
            chunk({"tool_calls": [{"index": i, "function": {"arguments": f}}]}) for f in fragments
        ]
    evs.append(chunk({}, finish))
    p, c, cached = usage
    details = {"cached_tokens": min(cached, p)}
    u = {"prompt_tokens": p, "completion_tokens": c, "prompt_tokens_details": details}
    evs.append((None, base | {"choices": [], "usage": u}))
    data = sse(evs, eol) + f"data: [DONE]{eol}{eol}".encode()
    out = compare("openai_to_anthropic", chunked(data, cuts))
    text, tools = check_sequence(out)
    assert text == "".join(texts)
    assert tools == ["".join(f) for _, f in calls]
    final = out[-2][1]
    assert final["usage"]["output_tokens"] == c
    assert final["usage"]["input_tokens"] + final["usage"].get("cache_read_input_tokens", 0) == p


@SETTINGS
@given(
    calls=st.lists(st.lists(TEXT, max_size=4), min_size=1, max_size=4),
    schedule=st.lists(st.integers(0, 3), max_size=20),
    text=st.text(max_size=8),
    eol=EOL,
    cuts=st.lists(st.integers(0), max_size=8),
)
def test_interleaved_parallel_tool_calls_are_reassembled_exactly(
    calls: list[list[str]], schedule: list[int], text: str, eol: str, cuts: list[int]
) -> None:
    """Fragments of several calls alternate by `index` (as some OpenAI-shaped servers send
    them): every call comes out as one whole tool_use block, in order of first appearance."""
    base = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1, "model": "m"}

    def chunk(delta: dict[str, Any], reason: str | None = None) -> tuple[None, Any]:
        return (None, base | {"choices": [{"index": 0, "delta": delta, "finish_reason": reason}]})

    evs = [chunk({"role": "assistant", "content": ""})]
    sent = [-1] * len(calls)  # -1: not started; else fragments sent
    order = [w % len(calls) for w in schedule] + [
        i for i, c in enumerate(calls) for _ in range(len(c) + 1)
    ]
    first_seen: list[int] = []
    for i in order:
        if sent[i] < 0:
            first_seen.append(i)
            function = {"name": f"f{i}", "arguments": ""}
            evs.append(
                chunk({"tool_calls": [{"index": i, "id": f"call_{i}", "function": function}]})
            )
            if len(first_seen) == 1 and text:
                evs.append(chunk({"content": text}))
            sent[i] = 0
        elif sent[i] < len(calls[i]):
            fragment = calls[i][sent[i]]
            evs.append(chunk({"tool_calls": [{"index": i, "function": {"arguments": fragment}}]}))
            sent[i] += 1
    evs.append(chunk({}, "tool_calls"))
    data = sse(evs, eol) + f"data: [DONE]{eol}{eol}".encode()
    out = compare("openai_to_anthropic", chunked(data, cuts))
    got_text, tools = check_sequence(out)
    assert got_text == text
    assert tools == ["".join(calls[i]) for i in first_seen]
    starts = [d["content_block"] for n, d in out if n == "content_block_start"]
    ids = [b["id"] for b in starts if b["type"] == "tool_use"]
    assert ids == [f"call_{i}" for i in first_seen]


def test_stop_string_reported_by_the_upstream_becomes_stop_sequence() -> None:
    data = (
        b'data: {"choices":[{"index":0,"delta":{"content":"1, 2"},"finish_reason":null}]}\n\n'
        b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop","stop_reason":", 3"}]}'
        b"\n\n"
        b'data: {"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":4,'
        b'"prompt_tokens_details":{"cached_tokens":0},"cache_creation_input_tokens":5}}\n\n'
        b"data: [DONE]\n\n"
    )
    out = compare("openai_to_anthropic", [data])
    final = out[-2][1]
    assert final["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": ", 3"}
    assert final["usage"] == {
        "input_tokens": 4,
        "cache_creation_input_tokens": 5,
        "output_tokens": 4,
    }


@pytest.mark.parametrize("name", ["anthropic_text_tool_use", "anthropic_error"])
@SETTINGS
@given(cuts=st.lists(st.integers(0), max_size=12))
def test_passthrough_matches_reference_at_any_split(name: str, cuts: list[int]) -> None:
    data = fixture(name)
    compare("anthropic_passthrough", split(data, cuts))
    assert (
        run("anthropic_passthrough", split(data, cuts))[0]
        == run("anthropic_passthrough", [data])[0]
    )


@pytest.mark.parametrize("name", ["gemini_text_function_call", "openai_tool_calls"])
@SETTINGS
@given(cuts=st.lists(st.integers(0), max_size=12))
def test_provider_chunks_chain_into_a_valid_messages_stream(name: str, cuts: list[int]) -> None:
    """What the route does for Gemini and OpenAI: provider reframer, then openai_to_anthropic."""
    provider = _core.Reframer(name.split("_")[0], "prov/m", "chatcmpl-x", 1, True)
    to_anthropic = _core.Reframer("openai_to_anthropic", *ARGS)
    out = b""
    for piece in split(fixture(name), cuts):
        out += to_anthropic.feed(provider.feed(piece))
    out += to_anthropic.feed(provider.finish()) + to_anthropic.finish()
    evs = named_events(out)
    _text, tools = check_sequence(evs)
    assert tools and all(isinstance(orjson.loads(t), dict) for t in tools)
    assert evs[-2][1]["delta"]["stop_reason"] == "tool_use"
    # Usage survives the chain whole, cached prompt tokens included.
    assert to_anthropic.usage == provider.usage


@pytest.mark.parametrize("kind", ["openai_to_anthropic", "anthropic_passthrough"])
@settings(max_examples=200, deadline=None, database=None)
@given(data=st.binary(max_size=512), cuts=st.lists(st.integers(0), max_size=6))
def test_random_bytes_raise_only_typed_errors_and_emit_whole_events(
    kind: str, data: bytes, cuts: list[int]
) -> None:
    r = _core.Reframer(kind, *ARGS, max_event_bytes=256)
    try:
        for piece in split(data, cuts):
            out = r.feed(piece)
            assert out == b"" or (out.startswith(b"event: ") and out.endswith(b"\n\n"))
        r.finish()
    except (_core.SseError, _core.UpstreamStreamError):
        pass


def test_unknown_kind_names_the_new_kinds() -> None:
    with pytest.raises(
        ValueError, match="openai_to_anthropic, anthropic_passthrough or openai_to_responses"
    ):
        _core.Reframer("anthropic_to_openai", *ARGS)
