"""gateway/messages.py, pure: the Anthropic ↔ OpenAI translation and the error names."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway import errors
from gateway.errors import BadGateway, GatewayError, InvalidRequest, RateLimited
from gateway.messages import ERROR_TYPES, error_body, error_event, to_chat_request, to_message
from gateway.schemas.anthropic import decode_messages_request


def test_every_gateway_error_type_has_an_anthropic_name() -> None:
    types = {
        cls.type
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, GatewayError)
    }
    assert types <= set(ERROR_TYPES)


def test_error_body_and_event_keep_the_message_in_anthropic_shape() -> None:
    error = RateLimited("slow down", retry_after_s=3)
    assert error_body(error) == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "slow down"},
    }
    event = error_event(error)
    assert event.startswith(b"event: error\ndata: ") and event.endswith(b"\n\n")
    assert orjson.loads(event.split(b"data: ", 1)[1]) == error_body(error)


def translate(body: dict[str, Any]) -> tuple[Any, dict[str, Any], InvalidRequest | None]:
    raw = orjson.dumps(body)
    translation = to_chat_request(decode_messages_request(raw), raw)
    return translation.chat, orjson.loads(translation.body), translation.refusal


BASE: dict[str, Any] = {"model": "openai/x", "max_tokens": 5}


def test_tool_results_come_before_the_rest_of_the_user_turn() -> None:
    _, body, refusal = translate(
        BASE
        | {
            "messages": [
                {"role": "user", "content": "q"},
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "and"},
                        {
                            "type": "tool_result",
                            "tool_use_id": "t",
                            "content": [
                                {"type": "text", "text": "a"},
                                {"type": "text", "text": "b"},
                            ],
                            "is_error": True,
                        },
                    ],
                },
            ]
        }
    )
    assert refusal is None
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "tool", "user"]
    assert body["messages"][2]["content"] == "Error: a\nb"
    assert body["messages"][1]["tool_calls"][0]["type"] == "function"


def test_refusals_wait_for_a_translated_target() -> None:
    chat, body, refusal = translate(
        BASE
        | {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "document",
                            "source": {"type": "text", "media_type": "text/plain", "data": "d"},
                        }
                    ],
                }
            ],
            "service_tier": "auto",
        }
    )
    assert refusal is not None and refusal.param == "messages[0].content[0]"
    assert chat.model == "openai/x"
    assert "service_tier" not in body


def test_top_k_and_parallel_tool_use_are_forwarded_as_extra_fields() -> None:
    tool = {"name": "f", "input_schema": {"type": "object"}}
    choice = {"type": "auto", "disable_parallel_tool_use": True}
    chat, body, _ = translate(
        BASE
        | {"messages": [{"role": "user", "content": "q"}], "top_k": 3}
        | {"tools": [tool], "tool_choice": choice}
    )
    assert body["top_k"] == 3
    assert body["parallel_tool_calls"] is False
    assert body["tools"] == [
        {"function": {"name": "f", "parameters": {"type": "object"}}, "type": "function"}
    ]
    assert chat.needs() == {"tools"}


def test_a_named_tool_choice_is_openais_with_its_type() -> None:
    tool = {"name": "f", "input_schema": {"type": "object"}}
    _, body, _ = translate(
        BASE
        | {"messages": [{"role": "user", "content": "q"}], "tools": [tool]}
        | {"tool_choice": {"type": "tool", "name": "f"}}
    )
    assert body["tool_choice"] == {"type": "function", "function": {"name": "f"}}


def completion(message: dict[str, Any], finish: str, usage: dict[str, Any]) -> dict[str, Any]:
    return {"choices": [{"message": message, "finish_reason": finish}], "usage": usage}


@pytest.mark.parametrize(
    ("finish", "stop"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("content_filter", "refusal"),
    ],
)
def test_finish_reasons_become_stop_reasons(finish: str, stop: str) -> None:
    answer = to_message(completion({"content": "x"}, finish, {}), "m", "msg_1")
    assert answer["stop_reason"] == stop


def test_cached_prompt_tokens_are_cache_reads_and_tool_calls_are_blocks() -> None:
    call = {"id": "c", "function": {"name": "f", "arguments": '{"a": 1}'}}
    usage = {
        "prompt_tokens": 10,
        "completion_tokens": 2,
        "prompt_tokens_details": {"cached_tokens": 4},
    }
    answer = to_message(
        completion({"content": None, "tool_calls": [call]}, "tool_calls", usage), "m", "msg_1"
    )
    assert answer["content"] == [{"type": "tool_use", "id": "c", "name": "f", "input": {"a": 1}}]
    assert answer["usage"] == {"input_tokens": 6, "cache_read_input_tokens": 4, "output_tokens": 2}


def test_tool_arguments_that_are_not_an_object_are_a_bad_gateway() -> None:
    call = {"id": "c", "function": {"name": "f", "arguments": "[1"}}
    with pytest.raises(BadGateway):
        to_message(completion({"tool_calls": [call]}, "tool_calls", {}), "m", "msg_1")


def test_neutral_values_of_anthropic_only_fields_are_accepted() -> None:
    hello = {"messages": [{"role": "user", "content": "q"}]}
    _, _, refusal = translate(
        BASE | hello | {"thinking": {"type": "disabled"}, "service_tier": "auto"}
    )
    assert refusal is None
    _, _, refusal = translate(
        BASE | hello | {"thinking": {"type": "enabled", "budget_tokens": 1024}}
    )
    assert refusal is not None and refusal.param == "thinking"
