"""The Responses API translation, no sockets: request → chat (gateway/responses/translate.py)
and chat.completion → Response (gateway/responses/answer.py)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.errors import InvalidRequest
from gateway.responses.answer import response_fields, to_response
from gateway.responses.translate import (
    normalize_input,
    read_input,
    responses_param,
    to_chat_request,
)
from gateway.schemas.openai import ImagePart, TextPart
from gateway.schemas.responses import decode_responses_request


def translate(body: dict[str, Any], history: list[dict[str, Any]] | None = None) -> Any:
    """As the route translates (this turn's items as `read_input` parsed them), checked
    against the stored items parsed again (as the route did before 19zzzo): the same chat
    request and body, or the same error (message and parameter)."""
    raw = orjson.dumps(body)
    request = decode_responses_request(raw)
    fields = orjson.loads(raw)
    try:
        items = normalize_input(request)
        parsed_again: Any = to_chat_request(request, fields, [*(history or []), *items])
    except InvalidRequest as exc:
        parsed_again = exc
    try:
        _, turn = read_input(request)
        translation = to_chat_request(request, fields, history or [], turn)
    except InvalidRequest as exc:
        assert isinstance(parsed_again, InvalidRequest), exc
        assert (exc.message, exc.param) == (parsed_again.message, parsed_again.param)
        raise
    assert translation == parsed_again
    return translation


def test_a_string_input_is_one_user_message_after_the_instructions() -> None:
    t = translate({"model": "m/x", "input": "hi", "instructions": "Be brief."})
    assert [(m.role, m.content) for m in t.chat.messages] == [
        ("system", "Be brief."),
        ("user", "hi"),
    ]


def test_stored_items_get_ids_types_and_text_parts() -> None:
    request = decode_responses_request(
        orjson.dumps({"model": "m/x", "input": [{"role": "user", "content": "hi"}]})
    )
    [item] = normalize_input(request)
    assert item["id"].startswith("msg_") and item["type"] == "message"
    assert item["content"] == [{"type": "input_text", "text": "hi"}]
    assert item["status"] == "completed"


def test_an_answer_with_text_and_calls_becomes_one_assistant_message_then_tool_messages() -> None:
    history = [
        {"type": "message", "role": "user", "content": "weather?"},
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Let me look."}],
        },
        {"type": "function_call", "call_id": "call_1", "name": "w", "arguments": '{"c":"Paris"}'},
        {"type": "function_call", "call_id": "call_2", "name": "w", "arguments": '{"c":"Rome"}'},
        {"type": "reasoning", "id": "rs_1", "summary": []},
    ]
    t = translate(
        {
            "model": "m/x",
            "input": [
                {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
                {
                    "type": "function_call_output",
                    "call_id": "call_2",
                    "output": [{"type": "input_text", "text": "rain"}],
                },
            ],
        },
        history,
    )
    roles = [m.role for m in t.chat.messages]
    assert roles == ["user", "assistant", "tool", "tool"]
    assistant = t.chat.messages[1]
    assert assistant.content == "Let me look."
    assert [c.id for c in assistant.tool_calls or []] == ["call_1", "call_2"]
    assert [m.content for m in t.chat.messages[2:]] == ["sunny", "rain"]
    body = orjson.loads(t.body)
    assert body["messages"][1]["tool_calls"][0]["type"] == "function"


def test_developer_is_system_and_user_parts_keep_images() -> None:
    t = translate(
        {
            "model": "m/x",
            "input": [
                {"role": "developer", "content": "rules"},
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "what is it?"},
                        {"type": "input_image", "image_url": "https://x/y.png", "detail": "low"},
                    ],
                },
            ],
        }
    )
    system, user = t.chat.messages
    assert (system.role, system.content) == ("system", "rules")
    assert isinstance(user.content, list)
    assert isinstance(user.content[0], TextPart)
    assert isinstance(user.content[1], ImagePart) and user.content[1].image_url.detail == "low"
    assert t.chat.needs() == {"vision"}


def test_settings_map_to_chat_fields_and_unknown_fields_pass_through() -> None:
    t = translate(
        {
            "model": "m/x",
            "input": "hi",
            "max_output_tokens": 50,
            "temperature": 0.5,
            "top_p": 0.9,
            "user": "u1",
            "stream": True,
            "tools": [{"type": "function", "name": "w", "parameters": {"type": "object"}}],
            "tool_choice": {"type": "function", "name": "w"},
            "parallel_tool_calls": False,
            "text": {"format": {"type": "json_object"}},
            "metadata": {"k": "v"},
            "seed": 7,
            "prompt_cache_key": "ignored",
        }
    )
    body = orjson.loads(t.body)
    assert body["max_tokens"] == 50 and body["temperature"] == 0.5 and body["top_p"] == 0.9
    assert body["user"] == "u1" and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["tools"] == [
        {"type": "function", "function": {"name": "w", "parameters": {"type": "object"}}}
    ]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "w"}}
    assert body["parallel_tool_calls"] is False
    assert body["response_format"] == {"type": "json_object"}
    assert body["seed"] == 7, "a field the Responses API does not have passes on, as on chat"
    assert "metadata" not in body and "prompt_cache_key" not in body


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "x", "text": {"format": {"type": "json_schema"}}}, "text.format"),
        ({"input": "x", "include": ["reasoning.encrypted_content"]}, "include"),
        ({"input": "x", "tool_choice": {"type": "file_search"}}, "tool_choice.type"),
        ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
        (
            {"input": [{"role": "system", "content": [{"type": "input_image", "image_url": "u"}]}]},
            "input[0].content[0]",
        ),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_text"}]}]},
            "input[0].content[0].text",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "detail": "x"}]}]},
            "input[0].content[0].detail",
        ),
        # A part's type that is not a string (a list is not hashable: a TypeError before).
        (
            {"input": [{"role": "user", "content": [{"type": ["input_text"], "text": "x"}]}]},
            "input[0].content[0].type",
        ),
        ({"input": "x", "metadata": {str(i): "v" for i in range(17)}}, "metadata"),
    ],
)
def test_what_cannot_be_translated_is_a_400_naming_the_place(
    body: dict[str, Any], param: str
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        translate({"model": "m/x", **body})
    assert refused.value.param == param


def test_a_chat_parameter_named_by_a_provider_becomes_the_responses_one() -> None:
    assert responses_param("response_format") == "text.format"
    assert responses_param("messages[3].content") == "input"
    assert responses_param("max_tokens") == "max_output_tokens"
    assert responses_param("temperature") == "temperature"
    assert responses_param(None) is None


def completion(message: dict[str, Any], finish: str = "stop") -> dict[str, Any]:
    return {
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {
            "prompt_tokens": 10,
            "completion_tokens": 3,
            "prompt_tokens_details": {"cached_tokens": 4},
            "cache_creation_input_tokens": 2,
        },
    }


def test_a_completion_becomes_a_response_with_items_named_from_its_id() -> None:
    request = decode_responses_request(b'{"model":"m/x","input":"hi","metadata":{"a":"b"}}')
    message = {
        "role": "assistant",
        "content": "Hi!",
        "tool_calls": [{"id": "call_9", "function": {"name": "w", "arguments": "{}"}}],
    }
    response = to_response(completion(message), "resp_abc", 5, "m/x", response_fields(request))
    assert [i["id"] for i in response["output"]] == ["msg_abc_0", "fc_abc_1"]
    assert response["output"][0]["content"][0]["text"] == "Hi!"
    assert response["output"][1]["call_id"] == "call_9"
    assert response["status"] == "completed" and response["incomplete_details"] is None
    assert response["usage"]["input_tokens"] == 10
    assert response["usage"]["input_tokens_details"] == {
        "cached_tokens": 4,
        "cache_write_tokens": 2,
    }
    assert response["usage"]["total_tokens"] == 13
    assert response["metadata"] == {"a": "b"} and response["store"] is True
    assert response["tool_choice"] == "auto" and response["temperature"] == 1.0


@pytest.mark.parametrize(
    ("finish", "reason"), [("length", "max_output_tokens"), ("content_filter", "content_filter")]
)
def test_length_and_content_filter_make_the_response_incomplete(finish: str, reason: str) -> None:
    request = decode_responses_request(b'{"model":"m/x","input":"hi"}')
    response = to_response(
        completion({"role": "assistant", "content": "H"}, finish),
        "resp_x",
        1,
        "m/x",
        response_fields(request),
    )
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": reason}


@pytest.mark.parametrize(
    ("item", "param"),
    [
        (
            {"role": "assistant", "content": [{"type": "input_image", "image_url": "x"}]},
            "input[2].content[0]",
        ),
        (
            {"role": "user", "content": [{"type": "input_image", "file_id": "f"}]},
            "input[2].content[0].image_url",
        ),
        (
            {
                "type": "function_call_output",
                "call_id": "c",
                "output": [{"type": "input_image", "image_url": "https://x/y.png"}],
            },
            "input[2].output",
        ),
        ({"role": "user", "content": [{"type": "file"}]}, "input[1].content[0].type"),
        ({"type": "nope"}, "input[1].type"),
    ],
)
def test_an_input_refused_after_the_history_names_the_same_parameter_as_before(
    item: dict[str, Any], param: str
) -> None:
    """Errors raised while the chat request is made (not while the input is read) name the
    item by its place after the history, as when the stored items were parsed again; a
    skipped item (reasoning) takes no place."""
    history = [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a"}]}
    ]
    body = {"model": "m/x", "input": [{"type": "reasoning", "summary": []}, item]}
    with pytest.raises(InvalidRequest) as raised:
        translate(body, [*history, *history])
    assert raised.value.param == param
