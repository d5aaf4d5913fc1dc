"""The client's chat body translated for an Anthropic upstream by one scan in Rust
(`_core.anthropic_chat_request`) against the Python path it stands in for
(`orjson.dumps(translate_request(...))`, kept in gateway/providers/anthropic.py as the fallback).

Whenever the scan answers, its bytes are exactly what the Python path writes, and the Python
path did not refuse the body; where the scan cannot tell, it answers None and the Python path
decides (the same result or error as before)."""

from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gateway import _core
from gateway.errors import InvalidRequest
from gateway.providers.anthropic import translate_request
from gateway.providers.base import ChatCall
from gateway.schemas.openai import DEFAULT_MAX_TOKENS, decode_chat_request
from tests.unit.translation_helpers import chat_call

SETTINGS = settings(max_examples=600, deadline=None, database=None)


def reference(body: bytes, stream: bool) -> bytes | None:
    """The Python path's body for `body` (the upstream model "claude-x"); None where it is a 400."""
    template = chat_call("anthropic", "claude-x")
    call = ChatCall(decode_chat_request(body), body, template.target, "chatcmpl-1", 1)
    try:
        return orjson.dumps(translate_request(call, stream))
    except InvalidRequest:
        return None


def same(body: bytes, stream: bool) -> bytes | None:
    out = _core.anthropic_chat_request(body, "claude-x", DEFAULT_MAX_TOKENS, stream)
    if out is not None:
        assert out == reference(body, stream), body
    return out


def test_a_conversation_is_translated_by_the_scan() -> None:
    body = orjson.dumps(
        {
            "model": "anthropic/claude-x",
            "stream": True,
            "temperature": 0.7,
            "max_tokens": 300,
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": 'hi \u00e9 "quoted"\n\u2028'},
                {"role": "assistant", "content": [{"type": "text", "text": "hello"}]},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                },
            ],
        }
    )
    out = same(body, True)
    assert out is not None
    assert orjson.loads(out)["system"] == "Be brief."
    assert same(b'{"model":"a/b","messages":[{"role":"user","content":"hi"}]}', False) == (
        b'{"model":"claude-x","max_tokens":4096,"messages":[{"role":"user","content":'
        b'[{"type":"text","text":"hi"}]}]}'
    )


@pytest.mark.parametrize(
    "fields",
    [
        {"temperature": 1.5},  # a 400
        {"tools": [{"type": "function", "function": {"name": "f"}}]},
        {"response_format": {"type": "json_object"}},
        {"n": 2},
        {"seed": 1},
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}],
                }
            ]
        },
        {"messages": [{"role": "user", "content": "a", "cache_control": {"type": "ephemeral"}}]},
        {"messages": [{"role": "tool", "content": "r", "tool_call_id": "t"}]},
        {"messages": [{"role": "system", "content": "only"}]},
    ],
)
def test_what_the_scan_cannot_tell_is_left_to_python(fields: dict[str, Any]) -> None:
    body = orjson.dumps({"model": "a/b", "messages": [{"role": "user", "content": "hi"}]} | fields)
    assert _core.anthropic_chat_request(body, "claude-x", DEFAULT_MAX_TOKENS, True) is None


TEXTS = st.one_of(
    st.sampled_from(["", "hi", "a\nb", '"q"\\', "é😀\u2028\x7f\x01\x1f/"]), st.text(max_size=12)
)
CACHE = st.sampled_from([None, {"type": "ephemeral"}])


@st.composite
def parts(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["text"] * 6 + ["refusal", "image_url"]))
    if kind == "text":
        part: dict[str, Any] = {"type": "text", "text": draw(TEXTS)}
    elif kind == "refusal":
        part = {"type": "refusal", "refusal": draw(TEXTS)}
    else:
        part = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    if draw(st.integers(0, 4)) == 0 and kind != "refusal":
        part["cache_control"] = draw(CACHE)
    return part


@st.composite
def messages(draw: st.DrawFn) -> dict[str, Any]:
    role = draw(
        st.sampled_from(["system", "developer", "user", "user", "assistant", "assistant", "tool"])
    )
    message: dict[str, Any] = {"role": role}
    content = draw(st.one_of(st.none(), TEXTS, st.lists(parts(), max_size=3)))
    if content is not None or draw(st.booleans()):
        message["content"] = content
    if role == "tool":
        message["tool_call_id"] = "call_1"
    extra = draw(
        st.sampled_from([None, None, None, None, "name", "tool_calls", "cache_control", "x"])
    )
    if extra == "name":
        message["name"] = "bob"
    elif extra == "tool_calls":
        message["tool_calls"] = draw(
            st.sampled_from(
                [
                    None,
                    [],
                    [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
                ]
            )
        )
    elif extra == "cache_control":
        message["cache_control"] = draw(CACHE)
    elif extra == "x":
        message["x"] = draw(st.sampled_from([None, 1, "y", {"z": []}]))
    return message


SAMPLING = st.one_of(
    st.floats(0, 2, allow_nan=False),
    st.sampled_from([0, 1, 0.0, 1.0, 0.7, 0.0001, 0.00001, 1e-7, 0.1 + 0.2]),
    st.integers(0, 6).flatmap(lambda k: st.floats(0, 1).map(lambda x: f"{x:.{k}f}")),  # raw text
)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    fields: dict[str, Any] = {
        "model": "anthropic/claude-x",
        "messages": draw(st.lists(messages(), min_size=1, max_size=6)),
    }
    raw: list[str] = []
    common: dict[str, st.SearchStrategy[Any]] = {
        "temperature": SAMPLING,
        "top_p": SAMPLING,
        "max_tokens": st.one_of(st.none(), st.integers(1, 10**7)),
        "max_completion_tokens": st.one_of(st.none(), st.integers(1, 10**7)),
        "stop": st.one_of(st.none(), TEXTS, st.lists(TEXTS, max_size=4)),
        "user": st.one_of(st.none(), TEXTS),
        "n": st.sampled_from([None, 1, 1, 2]),
        "stream": st.booleans(),
        "stream_options": st.sampled_from([None, {"include_usage": True}]),
        "models": st.sampled_from([None, ["openai/gpt-x"]]),
        "parallel_tool_calls": st.sampled_from([None, True, False]),
    }
    rare: dict[str, st.SearchStrategy[Any]] = {
        "seed": st.sampled_from([None, 0, 7]),
        "tool_choice": st.sampled_from([None, "auto"]),
        "response_format": st.sampled_from([None, {"type": "text"}, {"type": "json_object"}]),
        "logprobs": st.sampled_from([None, False, True]),
        "metadata": st.sampled_from([None, {"a": "b"}]),
    }
    for key, strategy in [*common.items(), *rare.items()]:
        if draw(st.integers(0, 2 if key in common else 9)) == 0:
            value = draw(strategy)
            if isinstance(value, str) and key in ("temperature", "top_p"):
                raw.append(f'"{key}":{value}')
            else:
                fields[key] = value
    body = orjson.dumps(fields)
    body = body[:-1] + b"".join(b"," + r.encode() for r in raw) + b"}" if raw else body
    # escapes orjson does not write (the scan copies only those it does)
    for plain, escaped in draw(st.lists(st.sampled_from(ESCAPES), max_size=2)):
        body = body.replace(plain, escaped)
    return body


ESCAPES = [
    ("é".encode(), b"\\u00e9"),
    (b"/", b"\\/"),
    (b"\\n", b"\\u000a"),
    (b"\\u001f", b"\\u001F"),
    ("😀".encode(), b"\\ud83d\\ude00"),
]


@SETTINGS
@given(bodies(), st.booleans())
def test_whenever_the_scan_answers_it_writes_what_the_python_path_writes(
    body: bytes, stream: bool
) -> None:
    try:
        decode_chat_request(body)
    except (msgspec.ValidationError, InvalidRequest):
        assume(False)  # a body the gateway refuses before any translation
    same(body, stream)
