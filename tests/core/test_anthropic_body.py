"""The client's chat body translated for an Anthropic upstream by one scan in Rust
(`_core.anthropic_chat_request`) against the Python path it stands in for
(`orjson.dumps(translate_request(...))`, kept in gateway/providers/anthropic.py as the fallback).

Whenever the scan answers, its bytes are exactly what the Python path writes, and the Python
path did not refuse the body; where the scan cannot tell, it answers None and the Python path
decides (the same result or error as before)."""

from pathlib import Path
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
USER = {"role": "user", "content": "hi"}


def image(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


IMAGE = image("https://example.com/a.png")


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


def test_a_coding_agents_request_is_translated_by_the_scan() -> None:
    """The bench's agent request (tools, tool calls and results, an image, breakpoints)."""
    body = (Path(__file__).parents[2] / "loadtests/bench/agent_request.json").read_bytes()
    for stream in (True, False):
        assert same(body, stream) is not None


EPHEMERAL = {"type": "ephemeral"}
TOOL_CALL = {"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{}"}}


def text(value: str, **fields: Any) -> dict[str, Any]:
    return {"type": "text", "text": value} | fields


@pytest.mark.parametrize(
    "messages",
    [
        # a system breakpoint makes the system text blocks, each message's own
        [
            {"role": "system", "content": "a"},
            {
                "role": "developer",
                "content": [text("b"), text("")],
                "cache_control": EPHEMERAL | {"ttl": "1h"},
            },
            USER,
        ],
        [{"role": "system", "content": None, "cache_control": EPHEMERAL}, USER],  # system []
        [
            {"role": "system", "content": [text("s", cache_control=EPHEMERAL)]},
            {"role": "system", "content": [{"type": "refusal", "refusal": "r"}]},
            USER,
        ],
        # a message's breakpoint goes to its last block (over the part's own)
        [
            {
                "role": "user",
                "content": [text("a", cache_control=EPHEMERAL), text("")],
                "cache_control": EPHEMERAL | {"ttl": "5m"},
            }
        ],
        [
            USER,
            {
                "role": "assistant",
                "content": "a",
                "tool_calls": [TOOL_CALL],
                "cache_control": EPHEMERAL,
            },
        ],
        # a tool message's parts' breakpoints are not read (text_of)
        [
            USER,
            {"role": "tool", "tool_call_id": "t1", "content": [text("r", cache_control=EPHEMERAL)]},
        ],
        [{"role": "user", "content": "", "cache_control": EPHEMERAL}, USER],  # an empty turn
    ],
)
def test_breakpoints_are_placed_as_the_python_path_places_them(
    messages: list[dict[str, Any]],
) -> None:
    body = orjson.dumps({"model": "a/b", "messages": messages})
    assert same(body, False) is not None


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"temperature": 1.5}, "temperature"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"n": 2}, "n"),
        ({"seed": 1}, "seed"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        ({"logprobs": True}, "logprobs"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "s"}}},
            "response_format",
        ),
        ({"messages": [{"role": "system", "content": "only"}]}, "messages"),
        ({"messages": [{"role": "tool", "content": "r"}]}, "messages[0]"),
        ({"messages": [{"role": "tool", "content": "r", "tool_call_id": ""}]}, "messages[0]"),
        ({"messages": [{"role": "function", "content": "r", "name": "f"}]}, "messages[0].role"),
        (
            {"messages": [{"role": "tool", "tool_call_id": "t", "content": [IMAGE]}]},
            "messages[0].content[0]",
        ),
        (
            {"messages": [{"role": "system", "content": [IMAGE]}, USER]},
            "messages[0].content[0]",
        ),
        (
            {"messages": [{"role": "user", "content": [image("data:image/bmp;base64,AAAA")]}]},
            "messages[0].content[0]",
        ),
        (
            {"messages": [{"role": "user", "content": [image("data:image/png;base64,AAA")]}]},
            "messages[0].content[0]",
        ),
        (
            {"messages": [{"role": "user", "content": [image("data:image/png,AAAA")]}]},
            "messages[0].content[0]",
        ),
        (
            {"messages": [{"role": "user", "content": [image("ftp://x/y.png")]}]},
            "messages[0].content[0]",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "file", "file": {}}]}]},
            "messages[0].content[0]",
        ),
        *(
            (
                {
                    "messages": [
                        USER,
                        {
                            "role": "assistant",
                            "tool_calls": [
                                TOOL_CALL | {"function": {"name": "f", "arguments": arguments}}
                            ],
                        },
                    ]
                },
                "messages[1].tool_calls[0].function.arguments",
            )
            for arguments in ["[1]", "nope", "{", '"s"', "null", '{"a":1} x']
        ),
    ],
)
def test_what_python_refuses_the_scan_never_accepts(fields: dict[str, Any], param: str) -> None:
    body = orjson.dumps({"model": "a/b", "messages": [USER]} | fields)
    call = ChatCall(
        decode_chat_request(body), body, chat_call("anthropic", "x").target, "chatcmpl-1", 1
    )
    with pytest.raises(InvalidRequest) as refused:
        translate_request(call, True)
    assert refused.value.param == param
    assert _core.anthropic_chat_request(body, "claude-x", DEFAULT_MAX_TOKENS, True) is None


TEXTS = st.one_of(
    st.sampled_from(["", "hi", "a\nb", '"q"\\', "é😀\u2028\x7f\x01\x1f/"]), st.text(max_size=12)
)
CACHE = st.sampled_from(
    [
        None,
        {"type": "ephemeral"},
        {"type": "ephemeral", "ttl": "5m"},
        {"ttl": "1h", "type": "ephemeral"},
        {"type": "ephemeral", "ttl": None, "x": [1]},
    ]
)
# JSON values as a schema or a call's arguments hold them (numbers orjson may write otherwise)
LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    TEXTS,
)


def nested(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)
    )


# (two levels written out: st.recursive warns, as an error under the suite's filterwarnings,
# on some draws)
VALUES = st.one_of(LEAVES, nested(LEAVES), nested(st.one_of(LEAVES, nested(LEAVES))))
OBJECTS = st.dictionaries(st.sampled_from(["type", "a", "é", "b c", ""]), VALUES, max_size=4)
ARGUMENTS = st.one_of(
    OBJECTS.map(lambda value: orjson.dumps(value).decode()),
    st.sampled_from(
        [
            "",
            "  ",
            "\t\n",
            "\u00a0",
            "{}",
            ' { "a" : [1, 2.50, -0.0, 1E2] } ',
            '{"a": -0}',
            '{"a": 1e400}',
            '{"a": 12345678901234567890}',
            '{"a":1,"a":2}',
            '{"\\u0061": 1}',
            '{"a": "\\u00e9\\/"}',
            "[1]",
            "null",
            "nope",
            '{"a": 1} x',
        ]
    ),
)
IMAGE_URLS = st.one_of(
    st.builds(
        "data:{}{},{}".format,
        st.sampled_from(["image/png", "IMAGE/Jpeg", "image/webp", "image/gif", "image/bmp", ""]),
        st.sampled_from([";base64", ";BASE64", ""]),
        st.sampled_from(["", "AAAA", "AA==", "AAA=", "AAA", "AAAA=", "A===", "QU JD", "ÿÿÿÿ"]),
    ),
    st.sampled_from(["https://x/a.png", 'http://x/a b.jpg?q="1"', "ftp://x/a.png", "x"]),
)


AUDIO = st.sampled_from(
    [
        {"data": "AAAA", "format": "mp3"},
        {"format": "wav", "data": "UklG", "x": 1},
        {"data": "QQ==", "format": "ogg"},
        {"data": "AAAA"},
        {"data": 1, "format": "mp3"},
    ]
)
# A tool result's text: what a tool answers, sometimes a JSON object (Gemini sends that object)
TOOL_TEXTS = st.one_of(
    TEXTS,
    OBJECTS.map(lambda value: orjson.dumps(value).decode()),
    st.sampled_from(
        [
            ' \n{"a": [1, 2.50]} ',
            '{"a": 1}\u00a0',
            "\u00a0{}",
            "{'role': 'user'}",
            "{",
            '{"a":1,"a":2}',
            '{"a": 1e400}',
            '{"a": "\\ud800"}',
            '{"a": -0}',
            "[" * 70 + "]" * 70,
            "{" + '"a":[' * 70 + "]" * 70 + "}",
            '{"a":' + "[" * 70 + "]" * 70,
        ]
    ),
)


@st.composite
def images(draw: st.DrawFn) -> dict[str, Any]:
    url: dict[str, Any] = {"url": draw(IMAGE_URLS)}
    if draw(st.booleans()):
        url["detail"] = draw(st.sampled_from([None, "auto", "low", "high"]))
    return {"type": "image_url", "image_url": url}


@st.composite
def parts(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(
        st.sampled_from(["text"] * 6 + ["refusal", "image_url", "image_url", "input_audio"])
    )
    if kind == "text":
        part: dict[str, Any] = {"type": "text", "text": draw(TEXTS)}
    elif kind == "refusal":
        part = {"type": "refusal", "refusal": draw(TEXTS)}
    elif kind == "input_audio":
        part = {"type": "input_audio", "input_audio": draw(AUDIO)}
    else:
        part = draw(images())
    if draw(st.integers(0, 3)) == 0:
        part["cache_control"] = draw(CACHE)
    return part


@st.composite
def tool_calls(draw: st.DrawFn) -> list[dict[str, Any]]:
    calls = []
    for index in range(draw(st.integers(0, 3))):
        call: dict[str, Any] = {
            "id": draw(st.sampled_from([f"call_{index}", "", 'c"é'])),
            "function": {"name": draw(st.sampled_from(["f", "read_file", "ü"])),
                         "arguments": draw(ARGUMENTS)},
        }  # fmt: skip
        if draw(st.booleans()):
            call["type"] = "function"
        calls.append(call)
    return calls


@st.composite
def messages(draw: st.DrawFn) -> dict[str, Any]:
    role = draw(
        st.sampled_from(
            ["system", "developer", "user", "user", "assistant", "assistant", "tool", "tool"]
        )
    )
    message: dict[str, Any] = {"role": role}
    texts = TOOL_TEXTS if role == "tool" else TEXTS
    content = draw(
        st.one_of(
            st.none(),
            texts,
            st.lists(parts(), max_size=3),
            st.lists(texts.map(lambda value: {"type": "text", "text": value}), max_size=2),
        )
    )
    if content is not None or draw(st.booleans()):
        message["content"] = content
    if role == "tool" or draw(st.integers(0, 5)) == 0:
        message["tool_call_id"] = draw(st.sampled_from(["call_1", "call_1", "", None, 'c"\n']))
    if role == "assistant" and draw(st.booleans()):
        message["tool_calls"] = draw(tool_calls())
    extra = draw(
        st.sampled_from([None, None, None, None, "name", "tool_calls", "cache_control", "x"])
    )
    if extra == "name":
        message["name"] = draw(st.sampled_from(["bob", "", None, "f\u00e9"]))
    elif extra == "tool_calls":
        message["tool_calls"] = draw(st.one_of(st.none(), tool_calls()))
    elif extra == "cache_control":
        message["cache_control"] = draw(CACHE)
    elif extra == "x":
        message["x"] = draw(st.sampled_from([None, 1, "y", {"z": []}]))
    return message


@st.composite
def tools(draw: st.DrawFn) -> list[dict[str, Any]]:
    found = []
    for _ in range(draw(st.integers(0, 3))):
        function: dict[str, Any] = {"name": draw(st.sampled_from(["f", "read_file", "é" * 3]))}
        for key, values in (
            ("description", st.sampled_from([None, "", "Reads a file.", 'a\nb "c"'])),
            ("parameters", st.one_of(st.none(), st.just({}), OBJECTS)),
            ("strict", st.sampled_from([None, True, False])),
        ):
            if draw(st.booleans()):
                function[key] = draw(values)
        tool: dict[str, Any] = {"function": function}
        if draw(st.booleans()):
            tool["type"] = "function"
        if draw(st.integers(0, 3)) == 0:
            tool["cache_control"] = draw(CACHE)
        found.append(tool)
    return found


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
        "parallel_tool_calls": st.sampled_from([None, True, False, 1, 1.0, 0]),
        "tools": st.one_of(st.none(), tools()),
        "tool_choice": st.sampled_from(
            [None, "none", "auto", "required", {"type": "function", "function": {"name": "f"}}]
        ),
    }
    rare: dict[str, st.SearchStrategy[Any]] = {
        "seed": st.sampled_from([None, 0, 7, -3, 2**63 - 1, 2**64 - 1]),
        "response_format": st.sampled_from(
            [
                None,
                {"type": "text"},
                {"type": "text", "json_schema": None, "x": 1},
                {"json_schema": {"name": "s"}, "type": "text"},
                {"type": "json_object"},
                {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"}}},
                {"type": "json_schema", "json_schema": {"schema": {}, "strict": True}},
                {"type": "json_schema", "json_schema": {"schema": [1]}},
                {"type": "json_schema", "json_schema": {"name": "s"}},
                {"type": "json_schema", "json_schema": None},
            ]
        ),
        "logprobs": st.sampled_from([None, False, True, 0]),
        "top_logprobs": st.sampled_from([None, 0, 0.0, False, 2]),
        "frequency_penalty": st.sampled_from([None, 0, 0.0, -0.0, False, 0.5, "0", -2, 1e20]),
        "presence_penalty": st.sampled_from([None, 0, 1e-300, True, 1.5, 1]),
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
