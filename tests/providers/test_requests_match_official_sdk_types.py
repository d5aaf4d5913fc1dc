"""The translated request bodies type-check against the official SDKs' own request types: field
names, nesting and value types as the provider defines them (google-genai's pydantic models
forbid unknown fields; the anthropic TypedDicts are checked for unknown keys by hand)."""

from __future__ import annotations

from typing import Any, get_type_hints

import orjson
import pydantic
import pytest
from anthropic.types import (
    ImageBlockParam,
    TextBlockParam,
    ToolParam,
    ToolResultBlockParam,
    ToolUseBlockParam,
    message_create_params,
)
from google.genai import types as genai_types

from gateway.providers.anthropic import translate_request as anthropic_request
from gateway.providers.gemini import translate_request as gemini_request
from tests.unit.translation_helpers import chat_call

TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "Look"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
        ],
    },
    {
        "role": "assistant",
        "content": "Checking",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
    {"role": "user", "content": "Thanks"},
]
EPHEMERAL = {"type": "ephemeral"}
# Anthropic's prompt-cache breakpoints as LiteLLM and OpenRouter take them in OpenAI bodies.
CACHED_CONVERSATION = [
    {
        "role": "system",
        "content": [{"type": "text", "text": "A manual.", "cache_control": EPHEMERAL}],
    },
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "Look", "cache_control": EPHEMERAL | {"ttl": "1h"}},
            {
                "type": "image_url",
                "image_url": {"url": "https://example.com/cat.jpg"},
                "cache_control": EPHEMERAL,
            },
        ],
    },
    *CONVERSATION[2:4],
    {"role": "user", "content": "Thanks", "cache_control": EPHEMERAL},
]
REQUESTS: list[dict[str, Any]] = [
    {"messages": CONVERSATION},
    {"messages": CONVERSATION, "tools": [TOOL], "tool_choice": "auto", "stop": "END"},
    {"messages": CONVERSATION, "tools": [TOOL], "tool_choice": "required", "max_tokens": 5},
    {
        "messages": CONVERSATION,
        "tools": [TOOL],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "temperature": 0.2,
        "top_p": 0.5,
        "user": "u1",
    },
    {"messages": CONVERSATION, "tools": [TOOL], "parallel_tool_calls": False},
    {"messages": CACHED_CONVERSATION, "tools": [TOOL | {"cache_control": EPHEMERAL}]},
]

ANTHROPIC_BODY = pydantic.TypeAdapter(message_create_params.MessageCreateParamsNonStreaming)
BLOCKS = {
    "text": TextBlockParam,
    "image": ImageBlockParam,
    "tool_use": ToolUseBlockParam,
    "tool_result": ToolResultBlockParam,
}


# The gateway pins `anthropic-version: 2023-06-01`, whose Messages API has sampling parameters;
# the installed SDK targets a newer API version whose request type no longer lists them.
PINNED_VERSION_ONLY = {"temperature", "top_p"}


def keys_of(typed_dict: Any) -> set[str]:
    return set(get_type_hints(typed_dict))


@pytest.mark.parametrize("fields", REQUESTS)
def test_anthropic_body_is_a_valid_message_create_params(fields: dict[str, Any]) -> None:
    body = anthropic_request(chat_call("anthropic", "claude-x", **fields), stream=False)
    ANTHROPIC_BODY.validate_python(body)
    allowed = keys_of(message_create_params.MessageCreateParamsNonStreaming) | PINNED_VERSION_ONLY
    assert set(body) <= allowed
    for message in body["messages"]:
        for block in message["content"]:
            assert set(block) <= keys_of(BLOCKS[block["type"]]), block
    for tool in body.get("tools", []):
        assert set(tool) <= keys_of(ToolParam)
    if isinstance(body.get("system"), list):
        for block in body["system"]:
            assert set(block) <= keys_of(TextBlockParam), block


def test_cache_control_becomes_anthropic_breakpoints() -> None:
    body = anthropic_request(chat_call("anthropic", "claude-x", **REQUESTS[-1]), stream=False)
    marked = [
        block
        for message in body["messages"]
        for block in message["content"]
        if "cache_control" in block
    ]
    assert [b["type"] for b in marked] == ["text", "image", "text"]
    assert marked[0]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
    assert body["system"] == [{"type": "text", "text": "A manual.", "cache_control": EPHEMERAL}]
    assert body["tools"][0]["cache_control"] == EPHEMERAL


def test_gemini_drops_cache_control_and_still_type_checks() -> None:
    """Gemini has no per-block breakpoints (its caching is implicit or a separate cachedContent
    resource): the hint is dropped, as listed in docs/decisions/0014."""
    body = gemini_request(chat_call("gemini", "gemini-x", **REQUESTS[-1]))
    assert b"cache_control" not in orjson.dumps(body)
    for content in body["contents"]:
        genai_types.Content.model_validate(content)


def check_gemini_request(body: dict[str, Any]) -> None:
    """`body` type-checks as a GenerateContentRequest's members (google-genai's types)."""
    assert set(body) <= {"contents", "systemInstruction", "tools", "toolConfig", "generationConfig"}
    for content in body["contents"]:
        genai_types.Content.model_validate(content)
    if "systemInstruction" in body:
        genai_types.Content.model_validate(body["systemInstruction"])
    for tool in body.get("tools", []):
        genai_types.Tool.model_validate(tool)
    if "toolConfig" in body:
        genai_types.ToolConfig.model_validate(body["toolConfig"])
    genai_types.GenerationConfig.model_validate(body["generationConfig"])


@pytest.mark.parametrize("fields", REQUESTS[:4] + REQUESTS[-1:])
def test_gemini_body_is_a_valid_generate_content_request(fields: dict[str, Any]) -> None:
    body = gemini_request(chat_call("gemini", "gemini-x", **fields))
    assert "systemInstruction" in body
    check_gemini_request(body)


def test_gemini_models_reject_unknown_fields() -> None:
    """Otherwise the test above would prove nothing about field names."""
    with pytest.raises(pydantic.ValidationError):
        genai_types.GenerationConfig.model_validate({"maxTokens": 5})
