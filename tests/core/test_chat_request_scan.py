"""A long chat body's messages read by one Rust scan (`_core.chat_request_messages`) and
decoded only when a route reads them (`scanned_chat_request`), against the decode it stands
in for: msgspec's of the whole body (`decode_json(_chat_decoder, ...)`, still the path of
every body the scan cannot tell about).

Whenever the scan answers, the request is the one msgspec decodes — every field, the messages
once read, the prompt's counts — or the same 400 with the same message and `param`; a body
msgspec refuses for its messages is never answered."""

from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import _core
from gateway.errors import InvalidRequest
from gateway.schemas import openai
from gateway.schemas.decoding import decode_json
from gateway.schemas.openai import ChatRequest, decode_chat_request, scanned_chat_request
from tests.core.test_anthropic_body import bodies

AGENT = Path(__file__).parents[2] / "loadtests" / "bench" / "agent_request.json"


def outcome(decode: Any) -> tuple[Any, ...]:
    """What a decode gives: the request's fields (messages read) and counts, or its 400."""
    try:
        chat = decode()
    except InvalidRequest as exc:
        return ("refused", exc.message, exc.param)
    if chat is None:
        return ("not scanned",)
    fields = {name: getattr(chat, name) for name in ChatRequest.__struct_fields__}
    return ("decoded", fields, chat.prompt_counts, msgspec.json.encode(chat))


def reference(body: bytes) -> tuple[Any, ...]:
    return outcome(lambda: decode_json(openai._chat_decoder, body))


def test_an_agents_request_is_scanned_and_its_messages_decoded_when_read() -> None:
    body = AGENT.read_bytes()
    chat = decode_chat_request(body)
    assert type(chat).__name__ == "_ScannedChatRequest"
    assert isinstance(openai._MESSAGES.__get__(chat, ChatRequest), openai._Unread)
    assert chat.prompt_counts == reference(body)[2]  # counted without decoding the messages
    assert _core.chat_request_messages(body)[-1] is not None  # the tools' characters too
    assert isinstance(openai._MESSAGES.__get__(chat, ChatRequest), openai._Unread)
    assert outcome(lambda: chat) == reference(body)
    assert isinstance(openai._MESSAGES.__get__(chat, ChatRequest), list)  # decoded once, kept
    assert msgspec.structs.replace(chat, model="x").messages == chat.messages


def test_an_unread_request_is_never_written_without_its_messages() -> None:
    """Its messages' slot holds the body's bytes until read: an encoder that reads the slot
    refuses it (not base64 of the bytes), and `chat_body` reads the messages first."""
    body = AGENT.read_bytes()
    whole = decode_json(openai._chat_decoder, body)
    unread = decode_chat_request(body)
    with pytest.raises(TypeError):
        msgspec.json.encode(unread)
    with pytest.raises(TypeError):
        msgspec.to_builtins(unread)
    assert unread == decode_chat_request(body)
    assert openai.chat_body(unread) == openai.chat_body(whole)
    assert msgspec.json.encode(unread) == msgspec.json.encode(whole)


def test_short_bodies_are_decoded_whole() -> None:
    body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert type(decode_chat_request(body)) is ChatRequest
    assert outcome(lambda: scanned_chat_request(body)) == reference(body)
    longer = body.replace(b"hi", b"hi" * openai.SCAN_ABOVE)
    assert type(decode_chat_request(longer)).__name__ == "_ScannedChatRequest"


def test_a_refusal_outside_the_messages_is_msgspecs_own() -> None:
    body = AGENT.read_bytes().replace(b'"model":', b'"temperature":3,"model":', 1)
    with pytest.raises(InvalidRequest) as refused:
        decode_chat_request(body)
    assert refused.value.param == "temperature"
    assert outcome(lambda: scanned_chat_request(body)) == reference(body)


@pytest.mark.parametrize(
    "replace",
    [
        (b'"role":"assistant"', b'"role":"robot"'),
        (b'"role":"tool"', b'"role":"tool","role":"bot"'),
        (b'"type":"text"', b'"type":"texts"'),
        (b'"type":"image_url"', b'"type":"image_url","type":"text"'),
        (b'"url":"', b'"url":"","u":"'),
        (b'"arguments":"', b'"arguments":{},"a":"'),
        (b'"content":"', b'"content":7,"c":"'),
        (b'"cache_control":{"type":"ephemeral"}', b'"cache_control":{"type":"other"}'),
        (b'"tool_call_id":"', b'"tool_call_id":1,"t":"'),
        (b'{"role":"user"', b'{"role":"user","x":' + b"[" * 70 + b"]" * 70),
    ],
)
def test_what_msgspec_refuses_in_the_messages_the_scan_never_answers(
    replace: tuple[bytes, bytes],
) -> None:
    body = AGENT.read_bytes()
    assert replace[0] in body
    body = body.replace(*replace)
    assert reference(body)[0] == "refused"
    assert scanned_chat_request(body) is None
    assert outcome(lambda: decode_chat_request(body)) == reference(body)


CALL = b'{"name":"f","arguments":"{}"}'
# Changes to a valid body's text, most of which msgspec refuses (in a message or outside).
BREAKS = [
    (b'"role":"', b'"role":"x'),
    (b'"role":"', b'"role":1,"r":"'),
    (b'"content":"', b'"content":null,"content":"'),
    (b'"content":[', b'"content":[1,'),
    (b'"content":[', b'"content":[{"type":"text"},'),
    (b'"content":[', b'"content":[{"text":"a","type":"text"},'),
    (b'"content":[', b'"content":[{"type":"input_audio","input_audio":{"data":"x"}},'),
    (b'"content":[', b'"content":[{"type":"file","file":[1]},'),
    (b'"content":[', b'"content":[{"type":"refusal","refusal":null},'),
    (b'"type":"text"', b'"type":"text","x":[{}]'),
    (b'"text":"', b'"text":"\\ud800'),
    (b'"text":"', b'"text":"\\x'),
    (b'"url":"', b'"url":"","u":"'),
    (b'"detail":"', b'"detail":"medium","d":"'),
    (b'"image_url":{', b'"image_url":{"detail":null,'),
    (b'"function":{', b'"function":{"name":null,'),
    (b'"id":"', b'"id":null,"i":"'),
    (b'"tool_calls":[', b'"tool_calls":[{"id":"c","function":' + CALL + b',"type":"fn"},'),
    (b'"tool_calls":[', b'"tool_calls":[{"id":"c","function":' + CALL + b"},"),
    (b'"name":"', b'"name":7,"n":"'),
    (b'"cache_control":{', b'"cache_control":{"ttl":"1d",'),
    (b'"cache_control":{', b'"cache_control":{"ttl":"1h",'),
    (b'"messages":[', b'"messages":[],"m":['),
    (b'"messages":[', b'"messages":{"a":1},"m":['),
    (b'"model":"', b'"model":"","m":"'),
    (b'"model":"', b'"messages":[{"role":"user"}],"m":"'),
    (b'"stream":', b'"stream":"yes","s":'),
    (b'"tools":[', b'"tools":[{"function":{"name":""}},'),
    (b'"tools":[', b'"tools":[{"function":{"name":"g","parameters":{"x":1e400}}},'),
    (b'"max_tokens":', b'"max_tokens":0,"m":'),
    (b"{", b"{\n "),
    (b"}", b"} x"),
    (b'"hi"', b'"h\\u00e9\\ud83d\\ude00 \\/ \\" \\\\"'),
]


@st.composite
def long_bodies(draw: st.DrawFn) -> bytes:
    """The anthropic scan's generated bodies, some made invalid or odd by a change or two."""
    body: bytes = draw(bodies())
    for old, new in draw(st.lists(st.sampled_from(BREAKS), max_size=2)):
        if old in body:
            body = body.replace(old, new, draw(st.integers(1, 2)))
    return body


@settings(max_examples=1500, deadline=None, database=None)
@given(long_bodies())
def test_whenever_the_scan_answers_the_request_or_the_refusal_is_msgspecs(body: bytes) -> None:
    scanned = outcome(lambda: scanned_chat_request(body))
    if scanned[0] != "not scanned":
        assert scanned == reference(body), body
    assert outcome(lambda: decode_chat_request(body)) == reference(body)
