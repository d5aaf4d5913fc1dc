"""Rust reframers vs the pure-Python reference (loadtests/bench/pyref.py), event by event.

Random provider streams (random text with quotes, controls and non-ASCII; tool calls; usage;
LF/CRLF/CR line endings; random chunking) go through both; the parsed events must be equal.
"""

import importlib.util
import itertools
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import _core

ROOT = Path(__file__).resolve().parents[2]


def _load_pyref() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pyref", ROOT / "loadtests/bench/pyref.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["pyref"] = module
    spec.loader.exec_module(module)
    return module


pyref = _load_pyref()

TEXT = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cs"]) | st.sampled_from('"\\\n\r\t\x00é€😀'),
    max_size=12,
)
EOL = st.sampled_from(["\n", "\r\n", "\r"])
SETTINGS = settings(max_examples=80, deadline=None, database=None)


def sse(events: list[tuple[str | None, Any]], eol: str) -> bytes:
    out = []
    for name, data in events:
        if name is not None:
            out.append(f"event: {name}{eol}")
        out.append("data: " + orjson.dumps(data).decode() + eol + eol)
    return "".join(out).encode()


def named_events(out: bytes) -> list[tuple[str, Any]]:
    """(name, data) of each `event: <name>\\ndata: <json>\\n\\n`; fails on anything else."""
    assert out == b"" or out.endswith(b"\n\n")
    parsed = []
    for raw in out.split(b"\n\n"):
        if raw:
            head, data = raw.split(b"\n")
            assert head.startswith(b"event: ") and data.startswith(b"data: ")
            parsed.append((head[7:].decode(), orjson.loads(data[6:])))
    return parsed


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def both(kind: str, chunks: list[bytes], include_usage: bool) -> None:
    args = (kind, "prov/m", "chatcmpl-x", 1700000000, include_usage)
    rust, ref = _core.Reframer(*args), pyref.reframer(*args)
    out_rust = b"".join(rust.feed(c) for c in chunks) + rust.finish()
    out_ref = b"".join(ref.feed(c) for c in chunks) + ref.finish()
    parse = [
        e if e == b"data: [DONE]" else orjson.loads(e[6:]) for e in out_rust.split(b"\n\n") if e
    ]
    expected = [
        e if e == b"data: [DONE]" else orjson.loads(e[6:]) for e in out_ref.split(b"\n\n") if e
    ]
    assert parse == expected
    assert rust.content_chars == ref.content_chars
    assert rust.finish_reason == ref.finish_reason
    assert rust.done == ref.done
    u = rust.usage
    got = None if u is None else (u.prompt_tokens, u.completion_tokens, u.total_tokens)
    want = None if ref.usage is None else tuple(ref.usage[k] for k in list(ref.usage)[:3])
    assert got == want


@SETTINGS
@given(
    texts=st.lists(TEXT, max_size=8),
    finish=st.sampled_from(["stop", "length", "tool_calls"]),
    usage=st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)),
    include_usage=st.booleans(),
    eol=EOL,
    cuts=st.lists(st.integers(0), max_size=8),
)
def test_openai_matches_reference(
    texts: list[str],
    finish: str,
    usage: tuple[int, int],
    include_usage: bool,
    eol: str,
    cuts: list[int],
) -> None:
    base = {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    evs: list[tuple[str | None, Any]] = [
        (None, {**base, "choices": [{"index": 0, "delta": {"content": t}, "finish_reason": None}]})
        for t in texts
    ]
    evs.append((None, {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}))
    p, c = usage
    u = {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
    evs.append((None, {**base, "choices": [], "usage": u}))
    data = sse(evs, eol) + f"data: [DONE]{eol}{eol}".encode()
    both("openai", chunked(data, cuts), include_usage)


BLOCK = st.one_of(
    st.tuples(st.just("text"), st.lists(TEXT, max_size=4)),
    st.tuples(st.just("tool_use"), st.lists(TEXT, max_size=4)),
    st.tuples(st.just("thinking"), st.lists(TEXT, max_size=2)),
)


@SETTINGS
@given(
    blocks=st.lists(BLOCK, max_size=5),
    stop=st.sampled_from(["end_turn", "max_tokens", "tool_use", "stop_sequence", "refusal"]),
    tokens=st.tuples(*[st.integers(0, 10**5)] * 4),
    include_usage=st.booleans(),
    eol=EOL,
    cuts=st.lists(st.integers(0), max_size=8),
)
def test_anthropic_matches_reference(
    blocks: list[tuple[str, list[str]]],
    stop: str,
    tokens: tuple[int, int, int, int],
    include_usage: bool,
    eol: str,
    cuts: list[int],
) -> None:
    inp, cache_w, cache_r, out_tokens = tokens
    usage = {
        "input_tokens": inp,
        "cache_creation_input_tokens": cache_w,
        "cache_read_input_tokens": cache_r,
        "output_tokens": 1,
    }
    evs: list[tuple[str | None, Any]] = [
        ("message_start", {"type": "message_start", "message": {"id": "msg", "usage": usage}}),
        ("ping", {"type": "ping"}),
    ]
    for i, (kind, frags) in enumerate(blocks):
        block: dict[str, Any] = {"type": kind}
        if kind == "tool_use":
            block |= {"id": f"toolu_{i}", "name": f"fn{i}", "input": {}}
        elif kind == "text":
            block["text"] = ""
        start = {"type": "content_block_start", "index": i, "content_block": block}
        evs.append(("content_block_start", start))
        for f in frags:
            delta = {
                "text": {"type": "text_delta", "text": f},
                "tool_use": {"type": "input_json_delta", "partial_json": f},
                "thinking": {"type": "thinking_delta", "thinking": f},
            }[kind]
            evs.append(
                ("content_block_delta", {"type": "content_block_delta", "index": i, "delta": delta})
            )
        evs.append(("content_block_stop", {"type": "content_block_stop", "index": i}))
    evs.append(
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": out_tokens},
            },
        )
    )
    evs.append(("message_stop", {"type": "message_stop"}))
    both("anthropic", chunked(sse(evs, eol), cuts), include_usage)


JSON_ARGS = st.dictionaries(
    st.text(max_size=5),
    st.one_of(st.integers(-(2**63), 2**63 - 1), TEXT, st.booleans(), st.none()),
    max_size=4,
)
PART = st.one_of(
    TEXT.map(lambda t: {"text": t}),
    TEXT.map(lambda t: {"text": t, "thought": True}),
    st.tuples(st.text(max_size=8), JSON_ARGS).map(
        lambda p: {"functionCall": {"name": p[0], "args": p[1]}}
    ),
)


@SETTINGS
@given(
    responses=st.lists(st.lists(PART, max_size=3), max_size=5),
    finish=st.sampled_from(["STOP", "MAX_TOKENS", "SAFETY", "RECITATION", "OTHER"]),
    counts=st.tuples(*[st.integers(0, 10**5)] * 4),
    include_usage=st.booleans(),
    cuts=st.lists(st.integers(0), max_size=8),
)
def test_gemini_matches_reference(
    responses: list[list[dict[str, Any]]],
    finish: str,
    counts: tuple[int, int, int, int],
    include_usage: bool,
    cuts: list[int],
) -> None:
    prompt, cand, cached, thoughts = counts
    usage = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": cand,
        "totalTokenCount": prompt + cand + thoughts,
        "cachedContentTokenCount": cached,
        "thoughtsTokenCount": thoughts,
    }
    evs: list[tuple[str | None, Any]] = [
        (None, {"candidates": [{"content": {"parts": parts, "role": "model"}, "index": 0}]})
        for parts in responses
    ]
    last = {"content": {"parts": [], "role": "model"}, "finishReason": finish, "index": 0}
    evs.append((None, {"candidates": [last], "usageMetadata": usage}))
    both("gemini", chunked(sse(evs, "\r\n"), cuts), include_usage)
