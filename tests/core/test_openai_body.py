"""The OpenAI single answer's one-scan rewrites in Rust (`_core.openai_chat_request`,
`_core.openai_chat_answer`) against the Python path they stand in for (orjson, then dict
operations: kept in gateway/providers/openai.py as the fallback).

Whenever the scan answers, its text parses to what the Python path writes, members in the same
order, and the token counts are `TokenUsage.from_openai`'s; where it cannot tell, it answers
None and the Python path decides (the same result or error as before)."""

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import _core
from gateway.billing import TokenUsage
from gateway.schemas.openai import DEFAULT_MAX_TOKENS

SETTINGS = settings(max_examples=500, deadline=None, database=None)


def reference_request(body: bytes, model: str, stream: bool) -> dict[str, Any]:
    """OpenAIProvider.build_request's Python path (`_client_payload` and what follows it)."""
    payload: dict[str, Any] = orjson.loads(body)
    payload["model"] = model
    payload.pop("models", None)
    if "max_tokens" not in payload and "max_completion_tokens" not in payload:
        payload["max_tokens"] = DEFAULT_MAX_TOKENS
    if stream:
        options = payload.get("stream_options")
        payload["stream_options"] = {
            **(options if isinstance(options, dict) else {}),
            "include_usage": True,
        }
    return payload


def reference_answer(body: bytes, model: str) -> tuple[dict[str, Any], TokenUsage] | None:
    """OpenAIProvider.parse_response's Python path; None where it answers 502."""
    try:
        completion = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(completion, dict) or not isinstance(completion.get("choices"), list):
        return None
    completion["model"] = model
    return completion, TokenUsage.from_openai(completion.get("usage"))


def same_request(body: bytes, model: str, stream: bool) -> bytes | None:
    out = _core.openai_chat_request(body, model, DEFAULT_MAX_TOKENS, stream)
    if out is not None:
        expected = reference_request(body, model, stream)
        got = orjson.loads(out)
        assert got == expected, body
        assert list(got) == list(expected), body  # the members' order too
    return out


def same_answer(body: bytes, model: str) -> tuple[bytes, int, int, int, int] | None:
    out = _core.openai_chat_answer(body, model)
    if out is not None:
        expected = reference_answer(body, model)
        assert expected is not None, body
        raw, *counts = out
        got = orjson.loads(raw)
        assert got == expected[0], body
        assert list(got) == list(expected[0]), body
        assert TokenUsage(*counts) == expected[1], body
    return out


def test_a_plain_request_is_rewritten_by_the_scan() -> None:
    body = b'{"model":"openai/gpt","messages":[{"role":"user","content":"hi"}],"models":["x/y"]}'
    out = same_request(body, "gpt-4", False)
    assert out == b'{"model":"gpt-4","messages":[{"role":"user","content":"hi"}],"max_tokens":4096}'
    streamed = same_request(body, "gpt-4", True)
    assert streamed is not None
    assert orjson.loads(streamed)["stream_options"] == {"include_usage": True}


def test_unknown_fields_and_numbers_pass_through_as_they_came() -> None:
    body = (
        b'{"model":"m","messages":[],"logit_bias":{"50256":-100},"x":1.50,'
        b'"big":123456789012345678901234567890}'
    )
    out = _core.openai_chat_request(body, "u", DEFAULT_MAX_TOKENS, False)
    assert out is not None
    assert b'"x":1.50' in out and b'"big":123456789012345678901234567890' in out
    assert b'"logit_bias":{"50256":-100}' in out


@pytest.mark.parametrize(
    ("body", "stream"),
    [
        (b'{"model":"a","model":"b","messages":[]}', False),  # a repeated key
        (b'{"\\u006dodel":"a","messages":[]}', False),  # an escaped key
        (b'{"model":"a","stream_options":{"include_usage":false}}', True),  # merged in Python
        (b'{"model":"a","x":"\\ud800"}', False),  # a lone surrogate
    ],
)
def test_what_the_request_scan_cannot_tell_is_left_to_python(body: bytes, stream: bool) -> None:
    assert _core.openai_chat_request(body, "u", DEFAULT_MAX_TOKENS, stream) is None


def test_an_answer_is_renamed_and_its_usage_read_by_the_scan() -> None:
    body = (
        b'{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4-0613",'
        b'"choices":[{"index":0,"message":{"role":"assistant","content":"Hi \\u00e9"},'
        b'"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":7,'
        b'"total_tokens":19,"prompt_tokens_details":{"cached_tokens":4}}}'
    )
    out = same_answer(body, "openai/gpt-4")
    assert out is not None
    assert out[1:] == (12, 7, 4, 0)
    assert out[0] == body.replace(b'"gpt-4-0613"', b'"openai/gpt-4"')


@pytest.mark.parametrize(
    "body",
    [
        b'{"choices":[],"usage":{"prompt_tokens":true}}',  # True counts as 1 in Python
        b'{"choices":[],"usage":{"prompt_tokens":2.0}}',
        b'{"choices":[],"usage":{"completion_tokens":"3"}}',
        b'{"choices":{}}',
        b'{"id":"x"}',
        b"[]",
        b"not json",
        b'{"choices":[],"x":1e400}',  # past a double: orjson refuses it (the 502 in Python)
    ],
)
def test_what_the_answer_scan_cannot_tell_is_left_to_python(body: bytes) -> None:
    assert _core.openai_chat_answer(body, "m") is None


def test_a_number_past_a_double_is_the_python_paths_answer() -> None:
    # The answer scan relayed it where orjson (the Python path) answers 502; a stream's chunk
    # with one is relayed as its typed view reads it, as before.
    body = b'{"choices":[{"message":{"content":"x"}}],"n":[1.8e308,-1e999]}'
    assert reference_answer(body, "m") is None
    assert same_answer(body, "m") is None
    assert same_request(b'{"model":"a","messages":[],"x":1e400}', "u", False) is None
    reframer = _core.Reframer("openai", "m", "id", 1, False)
    chunk = b'{"choices":[{"delta":{"content":"a"}}],"x":1e400}'
    assert reframer.feed(b"data: " + chunk + b"\n\n") == (
        b'data: {"choices":[{"delta":{"content":"a"}}],"x":1e400,"model":"m"}\n\n'
    )


KEYS = st.sampled_from(
    [
        "model",
        "models",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "stream_options",
        "choices",
        "usage",
        "prompt_tokens",
        "completion_tokens",
        "prompt_tokens_details",
        "cached_tokens",
        "cache_creation_input_tokens",
        "x",
    ]
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6)
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=12,
)
SPACE = st.sampled_from(["", " ", "\n", "\t ", "\r\n"])


COUNTS = st.none() | st.integers(min_value=-(2**63), max_value=2**64 - 1) | SCALARS
USAGE = st.fixed_dictionaries(
    {},
    optional={
        "prompt_tokens": COUNTS,
        "completion_tokens": COUNTS,
        "total_tokens": COUNTS,
        "cache_creation_input_tokens": COUNTS,
        "prompt_tokens_details": st.fixed_dictionaries({}, optional={"cached_tokens": COUNTS})
        | VALUES,
    },
)


@st.composite
def documents(draw: st.DrawFn) -> bytes:
    """A JSON object of the members both paths read (and others), written with random
    whitespace; sometimes a member repeated, sometimes a byte changed, inserted or removed."""
    members = list(draw(st.dictionaries(KEYS, VALUES, max_size=5)).items())
    if draw(st.booleans()):
        members.insert(draw(st.integers(0, len(members))), ("model", draw(st.text(max_size=4))))
    if draw(st.booleans()):
        members.append(("choices", draw(st.lists(VALUES, max_size=2))))
    if draw(st.booleans()):
        members.insert(draw(st.integers(0, len(members))), ("usage", draw(USAGE | VALUES)))
    if members and draw(st.integers(0, 9)) == 0:
        members.append(draw(st.sampled_from(members)))
    parts = []
    for key, value in members:
        gap = draw(SPACE)
        parts.append(
            f'{gap}"{key}"{draw(SPACE)}:{gap}'.encode() + orjson.dumps(value) + gap.encode()
        )
    text = draw(SPACE).encode() + b"{" + b",".join(parts) + b"}" + draw(SPACE).encode()
    edits = draw(
        st.lists(
            st.tuples(
                st.integers(0, 10_000), st.sampled_from(b'{}[]",:\\ 0-.etn\xc3'), st.integers(0, 2)
            ),
            max_size=2,
        )
        if draw(st.integers(0, 3)) == 0
        else st.just([])
    )
    for at, byte, how in edits:
        at %= len(text) + 1
        if how == 0 and at < len(text):
            text = text[:at] + bytes([byte]) + text[at + 1 :]
        elif how == 1:
            text = text[:at] + bytes([byte]) + text[at:]
        elif at < len(text):
            text = text[:at] + text[at + 1 :]
    return text


@SETTINGS
@given(documents(), st.booleans())
def test_the_request_scan_never_writes_otherwise_than_python(body: bytes, stream: bool) -> None:
    same_request(body, "up/stream\u00e9", stream)


@SETTINGS
@given(documents())
def test_the_answer_scan_never_reads_otherwise_than_python(body: bytes) -> None:
    same_answer(body, "prov/model")
