"""The client's chat body translated for a Gemini upstream by one scan in Rust
(`_core.gemini_chat_request`) against the Python path it stands in for
(`orjson.dumps(translate_request(...))`, kept in gateway/providers/gemini.py as the fallback).

Whenever the scan answers, its bytes are exactly what the Python path writes, and the Python
path did not refuse the body; where the scan cannot tell, it answers None and the Python path
decides (the same result or error as before)."""

from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import assume, given, settings

from gateway import _core
from gateway.errors import InvalidRequest
from gateway.providers.base import ChatCall
from gateway.providers.gemini import translate_request
from gateway.schemas.openai import DEFAULT_MAX_TOKENS, decode_chat_request
from tests.core.test_anthropic_body import IMAGE, TOOL_CALL, USER, bodies, text
from tests.providers.test_requests_match_official_sdk_types import check_gemini_request
from tests.unit.translation_helpers import chat_call

AGENT = Path(__file__).parents[2] / "loadtests" / "bench" / "agent_request.json"


def reference(body: bytes) -> bytes | None:
    """The Python path's body for `body`; None where it is a 400."""
    call = ChatCall(
        decode_chat_request(body), body, chat_call("gemini", "g").target, "chatcmpl-1", 1
    )
    try:
        return orjson.dumps(translate_request(call))
    except InvalidRequest:
        return None


def same(body: bytes) -> bytes | None:
    out = _core.gemini_chat_request(body, DEFAULT_MAX_TOKENS)
    if out is not None:
        assert out == reference(body), body
    return out


def valid_for_the_sdk(body: bytes) -> None:
    """The body type-checks against google-genai's request types (which forbid unknown
    fields), as the Python path's bodies are checked."""
    check_gemini_request(orjson.loads(body))


def test_a_coding_agents_request_is_translated_by_the_scan() -> None:
    """The bench's agent request (tools, tool calls and results — one of them a text that
    starts with `{` and is not JSON —, an image, breakpoints Gemini does not take)."""
    body = AGENT.read_bytes()
    out = same(body)
    assert out is not None
    valid_for_the_sdk(out)
    # the agent's request stays undecoded: its messages are never built as Python objects
    assert type(decode_chat_request(body)).__name__ == "_ScannedChatRequest"


def body_of(**fields: Any) -> bytes:
    return orjson.dumps({"model": "google/g", "messages": [USER]} | fields)


CALL = {"role": "assistant", "tool_calls": [TOOL_CALL]}  # id t1, function f


@pytest.mark.parametrize(
    "fields",
    [
        # system texts, each message's joined by a blank line; empty ones left out
        {
            "messages": [
                {"role": "system", "content": "a"},
                {"role": "developer", "content": [text("b"), text("")]},
                {"role": "system", "content": ""},
                USER,
            ]
        },
        # turns of one role merged; empty ones left out; tool results are user turns
        {"messages": [USER, USER, {"role": "assistant", "content": ""}, CALL, CALL]},
        # a result named by the latest call with its id, else by its own `name`
        {
            "messages": [
                USER,
                CALL,
                {
                    "role": "assistant",
                    "tool_calls": [TOOL_CALL | {"function": {"name": "g", "arguments": ""}}],
                },
                {"role": "tool", "tool_call_id": "t1", "content": "r"},
                {"role": "tool", "tool_call_id": "t9", "name": "h", "content": "r"},
            ]
        },
        # a result that is a JSON object is sent as that object; other texts as content
        {
            "messages": [
                USER,
                CALL,
                {"role": "tool", "tool_call_id": "t1", "content": ' \n{"a": [1, 2.50]} '},
                {"role": "tool", "tool_call_id": "t1", "content": [text(""), text('{"b":1}')]},
                {"role": "tool", "tool_call_id": "t1", "content": "{'a': 1}"},
                {"role": "tool", "tool_call_id": "t1", "content": '\u00a0{"a": 1}'},
                {"role": "tool", "tool_call_id": "t1", "content": None},
            ]
        },
        # images as data URLs (any type, lower-cased), audio
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "data:IMAGE/BMP;base64,AAAA"}},
                        {"type": "input_audio", "input_audio": {"data": "QQ==", "format": "ogg"}},
                        {"type": "refusal", "refusal": "no"},
                    ],
                }
            ]
        },
        # the generation config, the tools and the choice
        {
            "max_tokens": 5,
            "max_completion_tokens": 7,
            "temperature": 1.5,
            "top_p": 0.25,
            "stop": "END",
            "seed": -3,
            "presence_penalty": 0.5,
            "frequency_penalty": -2,
            "response_format": {"type": "json_schema", "json_schema": {"schema": {}}},
            "tools": [
                {
                    "type": "function",
                    "function": {"name": "f", "description": "", "parameters": {}},
                },
                {"function": {"name": "g", "parameters": {"type": "object"}, "strict": True}},
            ],
            "tool_choice": {"type": "function", "function": {"name": "g"}},
            "parallel_tool_calls": True,
            "logprobs": False,
            "user": "u",
            "n": 1,
        },
        {"tool_choice": "required", "response_format": {"type": "json_object"}, "stop": []},
    ],
)
def test_what_the_python_path_translates_the_scan_writes_alike(fields: dict[str, Any]) -> None:
    out = same(body_of(**fields))
    assert out is not None
    valid_for_the_sdk(out)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"parallel_tool_calls": False}, "parallel_tool_calls"),
        ({"presence_penalty": True}, "presence_penalty"),
        ({"frequency_penalty": "0.5"}, "frequency_penalty"),
        ({"metadata": {"a": "b"}}, "metadata"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "s"}}},
            "response_format.json_schema.schema",
        ),
        ({"messages": [{"role": "system", "content": "only"}]}, "messages"),
        ({"messages": [USER, {"role": "tool", "content": "r"}]}, "messages[1].tool_call_id"),
        (
            {"messages": [USER, {"role": "tool", "tool_call_id": "t1", "content": "r"}]},
            "messages[1].tool_call_id",
        ),
        ({"messages": [{"role": "function", "content": "r", "name": "f"}]}, "messages[0].role"),
        ({"messages": [{"role": "system", "content": [IMAGE]}, USER]}, "messages[0].content[0]"),
        (
            {"messages": [USER, CALL, {"role": "tool", "tool_call_id": "t1", "content": [IMAGE]}]},
            "messages[2].content[0]",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "file", "file": {}}]}]},
            "messages[0].content[0]",
        ),
        (
            {"messages": [{"role": "user", "content": [IMAGE | {"image_url": {"url": "x"}}]}]},
            "messages[0].content[0]",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}
                ]
            },
            "messages[0].content[0]",
        ),
        *(
            (
                {
                    "messages": [
                        USER,
                        {"role": "assistant", "tool_calls": [TOOL_CALL | {"function": function}]},
                    ]
                },
                "messages[1].tool_calls[0].function.arguments",
            )
            for function in [{"name": "f", "arguments": a} for a in ["[1]", "nope", "{"]]
        ),
    ],
)
def test_what_python_refuses_the_scan_never_accepts(fields: dict[str, Any], param: str) -> None:
    body = body_of(**fields)
    call = ChatCall(decode_chat_request(body), body, chat_call("gemini", "g").target, "c", 1)
    with pytest.raises(InvalidRequest) as refused:
        translate_request(call)
    assert refused.value.param == param
    assert _core.gemini_chat_request(body, DEFAULT_MAX_TOKENS) is None


def test_an_http_image_is_left_to_python() -> None:
    """Its type is `mimetypes.guess_type`'s, from the machine's tables."""
    body = body_of(messages=[{"role": "user", "content": [IMAGE]}])
    assert _core.gemini_chat_request(body, DEFAULT_MAX_TOKENS) is None
    assert reference(body) is not None


@settings(max_examples=600, deadline=None, database=None)
@given(bodies())
def test_whenever_the_scan_answers_it_writes_what_the_python_path_writes(body: bytes) -> None:
    try:
        decode_chat_request(body)
    except (msgspec.ValidationError, InvalidRequest):
        assume(False)  # a body the gateway refuses before any translation
    same(body)
