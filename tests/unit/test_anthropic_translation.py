"""OpenAI chat → Anthropic Messages and back, as pure functions. No sockets."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import (
    BadGateway,
    GatewayTimeout,
    InvalidRequest,
    RateLimited,
    RequestTooLarge,
    ServiceUnavailable,
)
from gateway.providers.anthropic import error_for, translate_request, translate_response
from tests.unit.translation_helpers import chat_call


def anthropic_body(stream: bool = False, **fields: Any) -> dict[str, Any]:
    return translate_request(chat_call("anthropic", "claude-x", **fields), stream)


@pytest.mark.parametrize("temperature", [0, 0.5, 1])
def test_temperature_from_0_to_1_is_sent_unchanged(temperature: float) -> None:
    assert anthropic_body(temperature=temperature)["temperature"] == temperature


@pytest.mark.parametrize("temperature", [1.01, 1.5, 2])
def test_temperature_above_1_is_rejected_naming_it(temperature: float) -> None:
    with pytest.raises(InvalidRequest) as caught:
        anthropic_body(temperature=temperature)
    assert caught.value.param == "temperature"


def test_unset_temperature_and_top_p_are_left_to_the_upstream_default() -> None:
    body = anthropic_body()
    assert "temperature" not in body and "top_p" not in body


def test_max_tokens_is_always_present() -> None:
    assert anthropic_body()["max_tokens"] == 4096
    assert anthropic_body(max_tokens=10)["max_tokens"] == 10
    assert anthropic_body(max_completion_tokens=20)["max_tokens"] == 20


def test_stream_flag_only_on_streams() -> None:
    assert anthropic_body(stream=True)["stream"] is True
    assert "stream" not in anthropic_body()


def test_system_messages_anywhere_are_collected_in_order() -> None:
    body = anthropic_body(
        messages=[
            {"role": "system", "content": [{"type": "text", "text": "A"}]},
            {"role": "user", "content": "hi"},
            {"role": "developer", "content": "B"},
        ]
    )
    assert body["system"] == "A\n\nB"
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]


def test_consecutive_assistant_turns_merge_and_empty_ones_vanish() -> None:
    body = anthropic_body(
        messages=[
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "a"},
            {"role": "assistant", "content": ""},
            {"role": "assistant", "content": "b"},
        ]
    )
    assert body["messages"][1] == {
        "role": "assistant",
        "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
    }
    assert len(body["messages"]) == 2


@pytest.mark.parametrize(
    ("url", "param"),
    [
        ("data:image/bmp;base64,AAAA", "messages[0].content[0]"),
        ("data:image/png,notbase64", "messages[0].content[0]"),
        ("data:image/png;base64,***", "messages[0].content[0]"),
        ("ftp://example.com/cat.png", "messages[0].content[0]"),
    ],
)
def test_unusable_image_urls_are_rejected_naming_the_part(url: str, param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        anthropic_body(
            messages=[
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}
            ]
        )
    assert caught.value.param == param


def test_audio_parts_are_rejected_naming_the_part() -> None:
    with pytest.raises(InvalidRequest) as caught:
        anthropic_body(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "listen"},
                        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
                    ],
                }
            ]
        )
    assert caught.value.param == "messages[0].content[1]"


def test_tool_call_arguments_that_are_not_an_object_are_rejected() -> None:
    with pytest.raises(InvalidRequest) as caught:
        anthropic_body(
            messages=[
                {"role": "user", "content": "hi"},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "t1",
                            "type": "function",
                            "function": {"name": "f", "arguments": "[1"},
                        }
                    ],
                },
            ]
        )
    assert caught.value.param == "messages[1].tool_calls[0].function.arguments"


def test_tool_without_parameters_gets_an_empty_object_schema() -> None:
    body = anthropic_body(tools=[{"type": "function", "function": {"name": "ping"}}])
    assert body["tools"] == [{"name": "ping", "input_schema": {"type": "object", "properties": {}}}]


def test_deprecated_function_role_is_rejected() -> None:
    with pytest.raises(InvalidRequest) as caught:
        anthropic_body(messages=[{"role": "function", "name": "f", "content": "1"}])
    assert caught.value.param == "messages[0].role"


def test_only_system_messages_is_rejected() -> None:
    with pytest.raises(InvalidRequest) as caught:
        anthropic_body(messages=[{"role": "system", "content": "be nice"}])
    assert caught.value.param == "messages"


def test_response_counts_cache_tokens_in_the_prompt_and_skips_thinking() -> None:
    call = chat_call("anthropic", "claude-x")
    completion = translate_response(
        call,
        {
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "x"},
                {"type": "text", "text": "Hi"},
                {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": [1, "é"]}},
            ],
            "stop_reason": "tool_use",
            "usage": {
                "input_tokens": 3,
                "cache_creation_input_tokens": 4,
                "cache_read_input_tokens": 5,
                "output_tokens": 6,
            },
        },
    )
    body = completion.body
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (12, 6)
    assert body["usage"]["prompt_tokens_details"] == {"cached_tokens": 5}
    assert body["id"] == "chatcmpl-test1" and body["created"] == 1700000000
    assert body["model"] == "p/claude-x"
    message = body["choices"][0]["message"]
    assert message["content"] == "Hi"
    assert message["tool_calls"] == [
        {
            "id": "toolu_1",
            "type": "function",
            "function": {"name": "f", "arguments": '{"a":[1,"é"]}'},
        }
    ]
    assert body["choices"][0]["finish_reason"] == "tool_calls"


def test_tool_only_response_has_null_content() -> None:
    completion = translate_response(
        chat_call("anthropic", "claude-x"),
        {
            "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}],
            "stop_reason": "tool_use",
            "usage": {},
        },
    )
    assert completion.body["choices"][0]["message"]["content"] is None


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        (None, "stop"),
    ],
)
def test_stop_reason_table(stop_reason: str | None, finish: str) -> None:
    completion = translate_response(
        chat_call("anthropic", "claude-x"),
        {"content": [{"type": "text", "text": "x"}], "stop_reason": stop_reason},
    )
    assert completion.body["choices"][0]["finish_reason"] == finish


@pytest.mark.parametrize("answer", [None, [], {"content": "text"}, {"type": "message"}])
def test_response_without_content_blocks_is_bad_gateway(answer: Any) -> None:
    with pytest.raises(BadGateway):
        translate_response(chat_call("anthropic", "claude-x"), answer)


@pytest.mark.parametrize(
    ("error_type", "expected"),
    [
        ("invalid_request_error", InvalidRequest),
        ("authentication_error", BadGateway),
        ("permission_error", BadGateway),
        ("billing_error", BadGateway),
        ("not_found_error", BadGateway),
        ("request_too_large", RequestTooLarge),
        ("rate_limit_error", RateLimited),
        ("timeout_error", GatewayTimeout),
        ("api_error", ServiceUnavailable),
        ("overloaded_error", ServiceUnavailable),
    ],
)
def test_every_error_type_has_a_gateway_error(error_type: str, expected: type) -> None:
    assert type(error_for("anthropic", error_type, "m", 3.0)) is expected


def test_unknown_error_type_falls_back_to_the_status() -> None:
    assert error_for("anthropic", "brand_new_error", "m", None) is None


@pytest.mark.parametrize(
    ("error_type", "retryable"),
    [
        ("rate_limit_error", True),
        ("overloaded_error", True),
        ("api_error", True),
        ("timeout_error", True),
        ("invalid_request_error", False),
        ("authentication_error", False),
        ("not_found_error", False),
    ],
)
def test_only_transient_error_types_are_retryable(error_type: str, retryable: bool) -> None:
    error = error_for("anthropic", error_type, "m", None)
    assert error is not None and error.retryable is retryable
