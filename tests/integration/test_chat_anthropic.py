"""anthropic/… models end to end: the official openai SDK → the gateway process → the fake
Anthropic Messages API. Asserts on what the client gets and on the body the fake received."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.conftest import Gateway
from tests.fakes.anthropic_upstream import ANSWER, TOOL_FRAGMENTS, TOOL_INPUT, FakeAnthropic
from tests.fakes.provider_config import ANTHROPIC_KEY
from tests.fakes.server import PNG_1X1

MESSAGES = [{"role": "user", "content": "Say hello"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
PNG_DATA_URL = "data:image/png;base64," + base64.b64encode(PNG_1X1).decode()


def client(gateway: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key=key, max_retries=0, timeout=20)


def sent(fake: FakeAnthropic, model: str) -> dict[str, Any]:
    body: dict[str, Any] = fake.last_request(model)["body"]
    return body


def test_text_answer_with_cache_tokens_in_prompt_usage_and_cost(
    gateway: Gateway, api_key: str
) -> None:
    response = client(gateway, api_key).chat.completions.with_raw_response.create(
        model="anthropic/claude-fake", messages=MESSAGES
    )
    completion = response.parse()
    assert completion.choices[0].message.content == "".join(ANSWER)
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "anthropic/claude-fake"
    assert completion.id.startswith("chatcmpl-") and completion.id != "msg_013Zva2CMHLNnXjNJJKqJ2EF"
    assert completion.usage is not None
    # input 10 + cache writes 5 + cache reads 20
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (35, 7)
    assert completion.usage.total_tokens == 42
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 20
    assert response.headers["x-klawd-provider"] == "anthropic"
    assert response.headers["x-klawd-model"] == "anthropic/claude-fake"
    assert response.headers["x-klawd-cost-usd"] == "0.000049"  # 35 x $1/M + 7 x $2/M


def test_upstream_gets_auth_headers_system_on_top_and_default_max_tokens(
    gateway: Gateway, api_key: str, fake_anthropic: FakeAnthropic
) -> None:
    client(gateway, api_key).chat.completions.create(
        model="anthropic/claude-fake",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": "Answer in English."},
            {"role": "user", "content": "Hi"},
            {"role": "user", "content": [{"type": "text", "text": "there"}]},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Bye"},
        ],
        stop="END",
        temperature=0.3,
        top_p=0.9,
        user="end-user-7",
    )
    received = fake_anthropic.last_request("claude-fake")
    assert received["headers"]["x-api-key"] == ANTHROPIC_KEY
    assert received["headers"]["anthropic-version"] == "2023-06-01"
    body = received["body"]
    assert body["system"] == "Be brief.\n\nAnswer in English."
    assert body["max_tokens"] == 4096
    assert body["stop_sequences"] == ["END"]
    assert (body["temperature"], body["top_p"]) == (0.3, 0.9)
    assert body["metadata"] == {"user_id": "end-user-7"}
    assert body["messages"] == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]},
        {"role": "user", "content": [{"type": "text", "text": "Bye"}]},
    ]
    assert "stream" not in body


def test_max_tokens_and_stop_list_are_forwarded(
    gateway: Gateway, api_key: str, fake_anthropic: FakeAnthropic
) -> None:
    client(gateway, api_key).chat.completions.create(
        model="anthropic/claude-fake", messages=MESSAGES, max_tokens=77, stop=["a", "b"]
    )
    body = sent(fake_anthropic, "claude-fake")
    assert body["max_tokens"] == 77
    assert body["stop_sequences"] == ["a", "b"]


def test_streamed_text_with_usage(
    gateway: Gateway, api_key: str, fake_anthropic: FakeAnthropic
) -> None:
    stream = client(gateway, api_key).chat.completions.create(
        model="anthropic/claude-fake",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "".join(ANSWER)
    assert {c.model for c in chunks} == {"anthropic/claude-fake"}
    assert len({c.id for c in chunks}) == 1
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop"
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (35, 7)
    assert sent(fake_anthropic, "claude-fake")["stream"] is True


def test_streamed_tool_call_fragments_are_reassembled_exactly(
    gateway: Gateway, api_key: str, fake_anthropic: FakeAnthropic
) -> None:
    stream = client(gateway, api_key).chat.completions.create(
        model="anthropic/claude-tools", messages=MESSAGES, tools=[WEATHER_TOOL], stream=True
    )
    arguments: list[str] = []
    names, ids, finish = set(), set(), None
    for chunk in stream:
        if not chunk.choices:
            continue
        for call in chunk.choices[0].delta.tool_calls or []:
            assert call.index == 0
            if call.id:
                ids.add(call.id)
            if call.function and call.function.name:
                names.add(call.function.name)
            if call.function and call.function.arguments:
                arguments.append(call.function.arguments)
        finish = chunk.choices[0].finish_reason or finish
    assert len(arguments) == len(TOOL_FRAGMENTS), "each upstream fragment is relayed"
    assert "".join(arguments) == "".join(TOOL_FRAGMENTS)
    assert orjson.loads("".join(arguments)) == TOOL_INPUT
    assert names == {"get_weather"} and ids == {"toolu_01A09q90qw90lq917835lq9"}
    assert finish == "tool_calls"
    tools = sent(fake_anthropic, "claude-tools")["tools"]
    assert tools == [
        {
            "name": "get_weather",
            "description": "Weather for a city",
            "input_schema": WEATHER_TOOL["function"]["parameters"],  # type: ignore[index]
        }
    ]


def test_non_streamed_tool_call_has_json_string_arguments(gateway: Gateway, api_key: str) -> None:
    completion = client(gateway, api_key).chat.completions.create(
        model="anthropic/claude-tools", messages=MESSAGES, tools=[WEATHER_TOOL]
    )
    message = completion.choices[0].message
    assert message.content == "Let me check."
    assert message.tool_calls is not None
    call = message.tool_calls[0]
    assert call.type == "function" and call.id == "toolu_01A09q90qw90lq917835lq9"
    assert call.function.name == "get_weather"
    assert orjson.loads(call.function.arguments) == TOOL_INPUT
    assert completion.choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"type": "auto"}),
        ("none", {"type": "none"}),
        ("required", {"type": "any"}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            {"type": "tool", "name": "get_weather"},
        ),
    ],
)
def test_tool_choice_is_translated(
    gateway: Gateway,
    api_key: str,
    fake_anthropic: FakeAnthropic,
    choice: Any,
    expected: dict[str, str],
) -> None:
    client(gateway, api_key).chat.completions.create(
        model="anthropic/claude-tools", messages=MESSAGES, tools=[WEATHER_TOOL], tool_choice=choice
    )
    assert sent(fake_anthropic, "claude-tools")["tool_choice"] == expected


def test_parallel_tool_calls_off_disables_parallel_tool_use(
    gateway: Gateway, api_key: str, fake_anthropic: FakeAnthropic
) -> None:
    client(gateway, api_key).chat.completions.create(
        model="anthropic/claude-tools",
        messages=MESSAGES,
        tools=[WEATHER_TOOL],
        parallel_tool_calls=False,
    )
    assert sent(fake_anthropic, "claude-tools")["tool_choice"] == {
        "type": "auto",
        "disable_parallel_tool_use": True,
    }


def test_tool_results_become_tool_result_blocks_in_one_user_turn(
    gateway: Gateway, api_key: str, fake_anthropic: FakeAnthropic
) -> None:
    client(gateway, api_key).chat.completions.create(
        model="anthropic/claude-fake",
        messages=[
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "toolu_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    },
                    {
                        "id": "toolu_2",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
            {"role": "tool", "tool_call_id": "toolu_2", "content": "24C"},
        ],
        tools=[WEATHER_TOOL],
    )
    messages = sent(fake_anthropic, "claude-fake")["messages"]
    assert messages[1] == {
        "role": "assistant",
        "content": [
            {
                "type": "tool_use",
                "id": "toolu_1",
                "name": "get_weather",
                "input": {"city": "Paris"},
            },
            {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Rome"}},
        ],
    }
    assert messages[2] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
            {"type": "tool_result", "tool_use_id": "toolu_2", "content": "24C"},
        ],
    }


def test_image_parts_become_base64_and_url_sources(
    gateway: Gateway, api_key: str, fake_anthropic: FakeAnthropic
) -> None:
    completion = client(gateway, api_key).chat.completions.create(
        model="anthropic/claude-fake",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Compare"},
                    {"type": "image_url", "image_url": {"url": PNG_DATA_URL}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                ],
            }
        ],
    )
    assert completion.choices[0].message.content == "".join(ANSWER)
    content = sent(fake_anthropic, "claude-fake")["messages"][0]["content"]
    assert content[1] == {
        "type": "image",
        "source": {
            "type": "base64",
            "media_type": "image/png",
            "data": PNG_DATA_URL.split(",", 1)[1],
        },
    }
    assert content[2] == {
        "type": "image",
        "source": {"type": "url", "url": "https://example.com/cat.jpg"},
    }


@pytest.mark.parametrize(
    ("model", "finish"),
    [
        ("claude-fake", "stop"),
        ("claude-stop-seq", "stop"),
        ("claude-length", "length"),
        ("claude-tools", "tool_calls"),
        ("claude-refusal", "content_filter"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_each_stop_reason_maps_to_its_finish_reason(
    gateway: Gateway, api_key: str, model: str, finish: str, stream: bool
) -> None:
    sdk = client(gateway, api_key)
    if stream:
        chunks = list(
            sdk.chat.completions.create(model=f"anthropic/{model}", messages=MESSAGES, stream=True)
        )
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
        assert finishes[-1] == finish
    else:
        completion = sdk.chat.completions.create(model=f"anthropic/{model}", messages=MESSAGES)
        assert completion.choices[0].finish_reason == finish


@pytest.mark.parametrize(
    ("model", "status", "error_type"),
    [
        ("claude-overloaded", 503, "service_unavailable"),
        ("claude-rate-limit", 429, "rate_limit_exceeded"),
        ("claude-invalid", 400, "invalid_request"),
        ("claude-auth", 502, "bad_gateway"),
        ("claude-permission", 502, "bad_gateway"),
        ("claude-not-found", 502, "bad_gateway"),
        ("claude-too-large", 413, "request_too_large"),
        ("claude-api-error", 503, "service_unavailable"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_upstream_errors_map_to_the_envelope(
    gateway: Gateway,
    api_key: str,
    fake_anthropic: FakeAnthropic,
    model: str,
    status: int,
    error_type: str,
    stream: bool,
) -> None:
    before = sum(1 for r in fake_anthropic.requests if r["body"].get("model") == model)
    with pytest.raises(openai.APIStatusError) as caught:
        client(gateway, api_key).chat.completions.create(
            model=f"anthropic/{model}{'~stream' if stream else ''}",
            messages=MESSAGES,
            stream=stream,
        )
    assert sum(1 for r in fake_anthropic.requests if r["body"].get("model") == model) > before, (
        "the upstream answered (no open circuit)"
    )
    assert caught.value.status_code == status
    assert caught.value.body["type"] == error_type  # type: ignore[index]
    assert ANTHROPIC_KEY not in caught.value.response.text


def test_rate_limit_carries_upstream_retry_after(gateway: Gateway, api_key: str) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        client(gateway, api_key).chat.completions.create(
            model="anthropic/claude-rate-limit~again", messages=MESSAGES
        )
    assert caught.value.response.headers["retry-after"] == "13"


def test_invalid_request_carries_the_upstream_message(gateway: Gateway, api_key: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client(gateway, api_key).chat.completions.create(
            model="anthropic/claude-invalid", messages=MESSAGES
        )
    assert "image exceeds 5 MB maximum" in caught.value.message


@pytest.mark.parametrize(
    ("model", "error_type"),
    [("claude-error-event", "service_unavailable"), ("claude-cut", "bad_gateway")],
)
def test_stream_failing_mid_way_ends_with_an_error_event(
    gateway: Gateway, api_key: str, model: str, error_type: str
) -> None:
    with httpx.stream(
        "POST",
        f"{gateway.base_url}/v1/chat/completions",
        headers={"authorization": f"Bearer {api_key}"},
        json={"model": f"anthropic/{model}", "messages": MESSAGES, "stream": True},
        timeout=20,
    ) as response:
        assert response.status_code == 200
        blob = response.read()
    events = [e for e in blob.split(b"\n\n") if e]
    assert b"[DONE]" not in blob
    first = orjson.loads(events[0].removeprefix(b"data: "))
    assert first["choices"][0]["delta"]["role"] == "assistant"
    last = orjson.loads(events[-1].removeprefix(b"data: "))
    assert last["error"]["type"] == error_type
    assert ANTHROPIC_KEY.encode() not in blob


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 3, "logprobs": True}, "top_logprobs"),
        ({"seed": 7}, "seed"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"temperature": 1.5}, "temperature"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"logit_bias": {"42": 1}}, "logit_bias"),
    ],
)
def test_parameters_anthropic_cannot_honour_are_400_naming_them(
    gateway: Gateway, api_key: str, fake_anthropic: FakeAnthropic, extra: dict[str, Any], param: str
) -> None:
    before = len(fake_anthropic.requests)
    response = httpx.post(
        f"{gateway.base_url}/v1/chat/completions",
        headers={"authorization": f"Bearer {api_key}"},
        json={"model": "anthropic/claude-fake", "messages": MESSAGES, **extra},
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request"
    assert response.json()["error"]["param"] == param
    assert len(fake_anthropic.requests) == before, "nothing is sent upstream"


@pytest.mark.parametrize(
    "extra", [{"n": 1}, {"logprobs": False}, {"temperature": 1.0}, {"presence_penalty": 0}]
)
def test_neutral_values_of_unsupported_parameters_are_accepted(
    gateway: Gateway, api_key: str, extra: dict[str, Any]
) -> None:
    response = httpx.post(
        f"{gateway.base_url}/v1/chat/completions",
        headers={"authorization": f"Bearer {api_key}"},
        json={"model": "anthropic/claude-fake", "messages": MESSAGES, **extra},
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("model", "tries"),
    [("claude-overloaded", 3), ("claude-api-error", 3), ("claude-invalid", 1), ("claude-auth", 1)],
)
def test_only_transient_upstream_errors_are_retried(
    gateway: Gateway, api_key: str, fake_anthropic: FakeAnthropic, model: str, tries: int
) -> None:
    """The test config allows 3 attempts per target (tests/conftest.py `[retry]`)."""
    before = sum(1 for r in fake_anthropic.requests if r["body"].get("model") == model)
    with pytest.raises(openai.APIStatusError):
        client(gateway, api_key).chat.completions.create(
            model=f"anthropic/{model}~retry", messages=MESSAGES
        )
    after = sum(1 for r in fake_anthropic.requests if r["body"].get("model") == model)
    assert after - before == tries
