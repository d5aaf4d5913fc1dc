"""Bounds end to end: prompts that cannot fit a model's context and absurd request shapes are
refused before any upstream call, cost nothing, and are answered quickly (official SDKs as the
clients; the fakes record every request they get)."""

from __future__ import annotations

import secrets
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.conftest import Gateway
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.openai_upstream import FakeOpenAI

# openai/gpt-fake has an 8192-token context in the test catalog; 40 000 characters are about
# 10 000 tokens by the documented estimate (4 characters per token).
TOO_LONG = 40_000


def _nested(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "array", "items": schema}
    return schema


def openai_client(gateway: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key=key, max_retries=0, timeout=30)


def anthropic_client(gateway: Gateway, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.base_url, api_key=key, max_retries=0)


def credits(gateway: Gateway, key: str) -> float:
    view = httpx.get(f"{gateway.base_url}/v1/account", headers={"authorization": f"Bearer {key}"})
    value: float = view.json()["credits_usd"]
    return value


def marker() -> str:
    return f"marker-{secrets.token_hex(8)} "


def received(fake: FakeOpenAI | FakeAnthropic, text: str) -> bool:
    return any(text in str(r["body"]) for r in fake.requests)


@pytest.mark.parametrize("stream", [False, True])
def test_a_prompt_past_the_context_is_refused_before_the_upstream_and_costs_nothing(
    gateway: Gateway, api_key: str, fake_openai: FakeOpenAI, stream: bool
) -> None:
    before = credits(gateway, api_key)
    tag = marker()
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client(gateway, api_key).chat.completions.create(
            model="openai/gpt-fake",
            messages=[{"role": "user", "content": tag + "x" * TOO_LONG}],
            stream=stream,
        )
    error: Any = caught.value.body
    assert error["code"] == "context_length_exceeded"
    assert error["type"] == "invalid_request"
    assert "8192" in error["message"]
    assert not received(fake_openai, tag), "refused before any upstream call"
    assert credits(gateway, api_key) == before, "nothing reserved or charged"


def test_requested_output_counts_against_the_context(
    gateway: Gateway, api_key: str, fake_openai: FakeOpenAI
) -> None:
    """About 2 000 prompt tokens fit 8192 alone, but not with 7 000 tokens of output asked for;
    with no max_tokens the model may stop wherever the context ends, so it is served."""
    prompt = [{"role": "user", "content": "x" * 8_000}]
    client = openai_client(gateway, api_key)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="openai/gpt-fake", messages=prompt, max_tokens=7_000)
    assert caught.value.code == "context_length_exceeded"
    assert client.chat.completions.create(model="openai/gpt-fake", messages=prompt).choices
    served = client.chat.completions.create(
        model="openai/gpt-fake", messages=prompt, max_tokens=5_000
    )
    assert served.choices[0].message.content


def test_messages_api_refuses_a_prompt_past_the_context_in_anthropic_shape(
    gateway: Gateway, api_key: str, fake_anthropic: FakeAnthropic
) -> None:
    # anthropic/claude-fake: 100 000 tokens of context in the test catalog
    tag = marker()
    client = anthropic_client(gateway, api_key)
    before = credits(gateway, api_key)
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(
            model="anthropic/claude-fake",
            max_tokens=100,
            messages=[{"role": "user", "content": tag + "x" * 500_000}],
        )
    body: Any = caught.value.body
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert "100000-token context" in body["error"]["message"]
    assert not received(fake_anthropic, tag)
    assert credits(gateway, api_key) == before


@pytest.mark.parametrize("stream", [False, True])
def test_the_responses_api_refuses_a_prompt_past_the_context(
    gateway: Gateway, api_key: str, fake_openai: FakeOpenAI, stream: bool
) -> None:
    """The Responses API resolves its targets through the chat path, so it gets the bound."""
    before = credits(gateway, api_key)
    tag = marker()
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client(gateway, api_key).responses.create(
            model="openai/gpt-fake", input=tag + "x" * TOO_LONG, stream=stream
        )
    assert caught.value.code == "context_length_exceeded"
    assert not received(fake_openai, tag)
    assert credits(gateway, api_key) == before


def test_token_counting_is_not_refused_for_length(gateway: Gateway, api_key: str) -> None:
    client = anthropic_client(gateway, api_key)
    counted = client.messages.count_tokens(
        model="openai/gpt-fake", messages=[{"role": "user", "content": "x" * TOO_LONG}]
    )
    assert counted.input_tokens > 8192


def post_chat(gateway: Gateway, key: str, body: bytes) -> httpx.Response:
    return httpx.post(
        f"{gateway.base_url}/v1/chat/completions",
        headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
        content=body,
        timeout=60,
    )


def tiny_messages_body(size: int) -> bytes:
    """`size` bytes of the smallest messages: about 330 000 of them in 10 MB."""
    one = b'{"role":"user","content":"a"},'
    count = (size - 64) // len(one)
    return b'{"model":"openai/gpt-fake","messages":[' + one * count + one[:-1] + b"]}"


def test_ten_megabytes_of_tiny_messages_are_refused_with_the_count(
    gateway: Gateway, api_key: str
) -> None:
    body = tiny_messages_body(10 * 1024 * 1024 - 1024)
    response = post_chat(gateway, api_key, body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "request_too_complex"
    assert error["param"] == "messages"
    assert "bounds.max_messages" in error["message"]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}] * 20_000}]},
            "messages",
        ),
        (
            {
                "tools": [
                    {"type": "function", "function": {"name": f"f{i}", "parameters": {}}}
                    for i in range(1_000)
                ]
            },
            "tools",
        ),
    ],
    ids=["content-parts", "tools"],
)
def test_absurd_shapes_are_400_naming_the_field(
    gateway: Gateway, api_key: str, fields: dict[str, Any], param: str
) -> None:
    body: dict[str, Any] = {
        "model": "openai/gpt-fake",
        "messages": [{"role": "user", "content": "hi"}],
        **fields,
    }
    response = httpx.post(
        f"{gateway.base_url}/v1/chat/completions",
        headers={"authorization": f"Bearer {api_key}"},
        json=body,
        timeout=60,
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "request_too_complex"
    assert error["param"] == param


def test_messages_api_refuses_hundreds_of_stop_sequences(gateway: Gateway, api_key: str) -> None:
    client = anthropic_client(gateway, api_key)
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(
            model="openai/gpt-fake",
            max_tokens=10,
            messages=[{"role": "user", "content": "hi"}],
            stop_sequences=[f"s{i}" for i in range(500)],
        )
    assert "bounds.max_stop_sequences" in str(caught.value)


DEEP_TOOL = {"type": "function", "function": {"name": "deep", "parameters": _nested(70)}}


@pytest.mark.parametrize(
    "fields",
    [
        {"x": _nested(400)},  # an unknown field, forwarded as it is to OpenAI-shaped upstreams
        {"tools": [DEEP_TOOL]},
        {"response_format": {"type": "json_schema", "json_schema": _nested(70)}},
    ],
    ids=["unknown-field", "tool-schema", "response-format"],
)
def test_bodies_nested_past_the_bound_are_400_wherever_the_nesting_is(
    gateway: Gateway, api_key: str, fields: dict[str, Any]
) -> None:
    """Nested deeper than the gateway can write again or walk (64 levels): a 400, never a 500."""
    body = {"model": "openai/gpt-fake", "messages": [{"role": "user", "content": "x"}], **fields}
    response = httpx.post(
        f"{gateway.base_url}/v1/chat/completions",
        headers={"authorization": f"Bearer {api_key}"},
        json=body,
    )
    assert response.status_code == 400, response.text
    assert "deeper than 64 levels" in response.json()["error"]["message"]


def test_messages_api_refuses_a_deep_tool_input(gateway: Gateway, api_key: str) -> None:
    client = anthropic_client(gateway, api_key)
    messages: Any = [
        {"role": "user", "content": "hi"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": _nested(300)}],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1"}]},
    ]
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model="openai/gpt-fake", max_tokens=10, messages=messages)
    assert "deeper than 64 levels" in str(caught.value)


def test_brackets_inside_strings_do_not_count_as_nesting(gateway: Gateway, api_key: str) -> None:
    text = '[{"\\"' * 200 + "]}" * 50
    completion = openai_client(gateway, api_key).chat.completions.create(
        model="openai/gpt-fake", messages=[{"role": "user", "content": text}]
    )
    assert completion.choices
