"""OpenAI chat → Gemini generateContent and back, as pure functions. No sockets."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.errors import BadGateway, InvalidRequest, RateLimited, ServiceUnavailable
from gateway.providers.gemini import (
    GeminiProvider,
    error_for,
    retry_delay,
    translate_request,
    translate_response,
)
from gateway.routing.catalog import Secret
from gateway.settings import ProviderSettings
from tests.unit.translation_helpers import chat_call


def gemini_body(**fields: Any) -> dict[str, Any]:
    return translate_request(chat_call("gemini", "gemini-x", **fields))


def test_max_output_tokens_is_always_present() -> None:
    assert gemini_body()["generationConfig"] == {"maxOutputTokens": 4096}
    assert gemini_body(max_tokens=9)["generationConfig"]["maxOutputTokens"] == 9


def test_openai_temperature_range_is_gemini_range() -> None:
    assert gemini_body(temperature=2)["generationConfig"]["temperature"] == 2


def test_string_stop_becomes_a_list() -> None:
    assert gemini_body(stop="END")["generationConfig"]["stopSequences"] == ["END"]


def test_tool_result_for_an_unknown_call_is_rejected() -> None:
    with pytest.raises(InvalidRequest) as caught:
        gemini_body(
            messages=[
                {"role": "user", "content": "hi"},
                {"role": "tool", "tool_call_id": "call_nowhere", "content": "1"},
            ]
        )
    assert caught.value.param == "messages[1].tool_call_id"


def test_plain_text_tool_result_is_wrapped_in_an_object() -> None:
    body = gemini_body(
        messages=[
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": ""}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        ]
    )
    assert body["contents"][1]["parts"] == [{"functionCall": {"name": "f", "args": {}}}]
    assert body["contents"][2]["parts"] == [
        {"functionResponse": {"name": "f", "response": {"content": "sunny"}}}
    ]


@pytest.mark.parametrize(
    ("url", "mime"),
    [
        ("https://example.com/a.jpg", "image/jpeg"),
        ("https://example.com/a.webp?x=1", "image/webp"),
        ("https://example.com/photo", "image/jpeg"),
    ],
)
def test_http_image_becomes_file_data_with_a_mime_type(url: str, mime: str) -> None:
    body = gemini_body(
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]
    )
    assert body["contents"][0]["parts"] == [{"fileData": {"mimeType": mime, "fileUri": url}}]


def test_audio_becomes_inline_data() -> None:
    body = gemini_body(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
                ],
            }
        ]
    )
    assert body["contents"][0]["parts"] == [
        {"inlineData": {"mimeType": "audio/wav", "data": "AAAA"}}
    ]


def test_file_parts_are_rejected_naming_the_part() -> None:
    with pytest.raises(InvalidRequest) as caught:
        gemini_body(
            messages=[{"role": "user", "content": [{"type": "file", "file": {"file_id": "f"}}]}]
        )
    assert caught.value.param == "messages[0].content[0]"


def test_json_schema_without_a_schema_is_rejected() -> None:
    with pytest.raises(InvalidRequest) as caught:
        gemini_body(response_format={"type": "json_schema", "json_schema": {"name": "x"}})
    assert caught.value.param == "response_format.json_schema.schema"


def test_response_excludes_thoughts_and_counts_them_as_completion() -> None:
    completion = translate_response(
        chat_call("gemini", "gemini-x"),
        {
            "candidates": [
                {
                    "content": {
                        "parts": [{"text": "plan", "thought": True}, {"text": "Hi"}],
                        "role": "model",
                    },
                    "finishReason": "STOP",
                }
            ],
            "usageMetadata": {
                "promptTokenCount": 5,
                "candidatesTokenCount": 2,
                "thoughtsTokenCount": 7,
                "cachedContentTokenCount": 1,
            },
            "responseId": "r1",
        },
    )
    assert completion.body["choices"][0]["message"]["content"] == "Hi"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (5, 9)
    assert completion.body["usage"]["prompt_tokens_details"] == {"cached_tokens": 1}


def test_function_calls_get_ids_in_the_reframer_scheme() -> None:
    completion = translate_response(
        chat_call("gemini", "gemini-x"),
        {
            "candidates": [
                {
                    "content": {
                        "parts": [
                            {"functionCall": {"name": "a", "args": {"x": 1}}},
                            {"functionCall": {"name": "b"}},
                        ]
                    },
                    "finishReason": "STOP",
                }
            ],
            "responseId": "r1",
        },
    )
    calls = completion.body["choices"][0]["message"]["tool_calls"]
    assert [c["id"] for c in calls] == ["call_chatcmpl-test1_0", "call_chatcmpl-test1_1"]
    assert [orjson.loads(c["function"]["arguments"]) for c in calls] == [{"x": 1}, {}]
    assert completion.body["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize(
    ("reason", "finish"),
    [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("OTHER", "stop"),
        (None, "stop"),
    ],
)
def test_finish_reason_table(reason: str | None, finish: str) -> None:
    candidate: dict[str, Any] = {"content": {"parts": [{"text": "x"}]}}
    if reason:
        candidate["finishReason"] = reason
    completion = translate_response(chat_call("gemini", "gemini-x"), {"candidates": [candidate]})
    assert completion.body["choices"][0]["finish_reason"] == finish


def test_no_candidates_without_a_block_reason_is_bad_gateway() -> None:
    with pytest.raises(BadGateway):
        translate_response(chat_call("gemini", "gemini-x"), {"usageMetadata": {}})


def test_retry_delay_is_read_from_retry_info() -> None:
    parsed = {"error": {"details": [{"@type": "x.RetryInfo", "retryDelay": "2.5s"}]}}
    assert retry_delay(parsed) == 2.5
    assert retry_delay({"error": {}}) is None


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("INVALID_ARGUMENT", InvalidRequest),
        ("OUT_OF_RANGE", InvalidRequest),
        ("UNAUTHENTICATED", BadGateway),
        ("PERMISSION_DENIED", BadGateway),
        ("FAILED_PRECONDITION", BadGateway),
        ("NOT_FOUND", BadGateway),
        ("RESOURCE_EXHAUSTED", RateLimited),
        ("UNAVAILABLE", ServiceUnavailable),
        ("INTERNAL", ServiceUnavailable),
    ],
)
def test_every_rpc_status_has_a_gateway_error(status: str, expected: type) -> None:
    assert type(error_for("google", status, "m", None)) is expected


async def test_error_messages_never_carry_the_provider_key() -> None:
    provider = GeminiProvider(
        "google",
        ProviderSettings(kind="gemini", base_url="http://upstream.invalid"),
        Secret("AIza-SECRET"),
    )
    try:
        error = provider.map_error(
            400,
            orjson.dumps(
                {"error": {"code": 400, "message": "bad AIza-SECRET", "status": "INVALID_ARGUMENT"}}
            ),
            {},
        )
    finally:
        await provider.close()
    assert isinstance(error, InvalidRequest)
    assert "AIza-SECRET" not in error.message and "[redacted]" in error.message


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        ("RESOURCE_EXHAUSTED", True),
        ("UNAVAILABLE", True),
        ("INTERNAL", True),
        ("DEADLINE_EXCEEDED", True),
        ("INVALID_ARGUMENT", False),
        ("PERMISSION_DENIED", False),
        ("NOT_FOUND", False),
    ],
)
def test_only_transient_rpc_statuses_are_retryable(status: str, retryable: bool) -> None:
    error = error_for("google", status, "m", None)
    assert error is not None and error.retryable is retryable
