"""google/… models (kind gemini) end to end: the official openai SDK → the gateway process → the
fake Gemini API. Asserts on what the client gets and on the body the fake received."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from gateway.providers.gemini import translate_request
from tests.conftest import Gateway
from tests.fakes.gemini_upstream import ANSWER, TOOL_ARGS, FakeGemini
from tests.fakes.provider_config import GEMINI_KEY
from tests.fakes.server import PNG_1X1
from tests.unit.translation_helpers import chat_call

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
            "additionalProperties": False,
        },
    },
}
PNG_B64 = base64.b64encode(PNG_1X1).decode()


def client(gateway: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key=key, max_retries=0, timeout=20)


def sent(fake: FakeGemini, model: str) -> dict[str, Any]:
    body: dict[str, Any] = fake.last_request(model)["body"]
    return body


def test_text_answer_with_usage_and_cost(gateway: Gateway, api_key: str) -> None:
    response = client(gateway, api_key).chat.completions.with_raw_response.create(
        model="google/gemini-fake", messages=MESSAGES
    )
    completion = response.parse()
    assert completion.choices[0].message.content == "".join(ANSWER), "thoughts are not content"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "google/gemini-fake"
    assert completion.id.startswith("chatcmpl-")
    assert completion.usage is not None
    # candidates 6 + thoughts 3
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (11, 9)
    assert response.headers["x-klawd-provider"] == "google"
    assert response.headers["x-klawd-cost-usd"] == "0.000029"  # 11 x $1/M + 9 x $2/M


def test_upstream_gets_key_header_system_instruction_and_generation_config(
    gateway: Gateway, api_key: str, fake_gemini: FakeGemini
) -> None:
    client(gateway, api_key).chat.completions.create(
        model="google/gemini-fake",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "user", "content": "there"},
            {"role": "assistant", "content": "Hello"},
            {"role": "assistant", "content": "again"},
            {"role": "user", "content": "Bye"},
        ],
        stop=["END", "STOP"],
        temperature=1.5,
        top_p=0.5,
        seed=42,
    )
    received = fake_gemini.last_request("gemini-fake")
    assert received["headers"]["x-goog-api-key"] == GEMINI_KEY
    assert received["path"] == "/v1beta/models/gemini-fake:generateContent"
    body = received["body"]
    assert body["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "Hi"}, {"text": "there"}]},
        {"role": "model", "parts": [{"text": "Hello"}, {"text": "again"}]},
        {"role": "user", "parts": [{"text": "Bye"}]},
    ]
    assert body["generationConfig"] == {
        "maxOutputTokens": 4096,
        "temperature": 1.5,
        "topP": 0.5,
        "stopSequences": ["END", "STOP"],
        "seed": 42,
    }


def test_streamed_text_with_usage(gateway: Gateway, api_key: str, fake_gemini: FakeGemini) -> None:
    chunks = list(
        client(gateway, api_key).chat.completions.create(
            model="google/gemini-fake",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "".join(ANSWER)
    assert {c.model for c in chunks} == {"google/gemini-fake"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (11, 9)
    assert fake_gemini.last_request("gemini-fake")["path"].endswith(
        ":streamGenerateContent?alt=sse"
    )


@pytest.mark.parametrize("stream", [False, True])
def test_function_call_becomes_a_tool_call_with_json_arguments(
    gateway: Gateway, api_key: str, fake_gemini: FakeGemini, stream: bool
) -> None:
    sdk = client(gateway, api_key)
    if stream:
        arguments, name, finish = "", None, None
        for chunk in sdk.chat.completions.create(
            model="google/gemini-tools", messages=MESSAGES, tools=[WEATHER_TOOL], stream=True
        ):
            for call in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
                assert call.function is not None
                name = call.function.name or name
                arguments += call.function.arguments or ""
            if chunk.choices:
                finish = chunk.choices[0].finish_reason or finish
    else:
        completion = sdk.chat.completions.create(
            model="google/gemini-tools", messages=MESSAGES, tools=[WEATHER_TOOL]
        )
        calls = completion.choices[0].message.tool_calls
        assert calls is not None and calls[0].id
        name, arguments = calls[0].function.name, calls[0].function.arguments
        finish = completion.choices[0].finish_reason
    assert name == "get_weather"
    assert orjson.loads(arguments) == TOOL_ARGS
    assert finish == "tool_calls"
    assert sent(fake_gemini, "gemini-tools")["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "Weather for a city",
                    "parametersJsonSchema": WEATHER_TOOL["function"]["parameters"],  # type: ignore[index]
                }
            ]
        }
    ]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"mode": "AUTO"}),
        ("none", {"mode": "NONE"}),
        ("required", {"mode": "ANY"}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            {"mode": "ANY", "allowedFunctionNames": ["get_weather"]},
        ),
    ],
)
def test_tool_choice_becomes_function_calling_config(
    gateway: Gateway, api_key: str, fake_gemini: FakeGemini, choice: Any, expected: Any
) -> None:
    client(gateway, api_key).chat.completions.create(
        model="google/gemini-tools", messages=MESSAGES, tools=[WEATHER_TOOL], tool_choice=choice
    )
    config = sent(fake_gemini, "gemini-tools")["toolConfig"]
    assert config == {"functionCallingConfig": expected}


def test_tool_results_become_function_responses_named_after_their_call(
    gateway: Gateway, api_key: str, fake_gemini: FakeGemini
) -> None:
    client(gateway, api_key).chat.completions.create(
        model="google/gemini-fake",
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 18}'},
            {"role": "user", "content": "Thanks"},
        ],
        tools=[WEATHER_TOOL],
    )
    contents = sent(fake_gemini, "gemini-fake")["contents"]
    assert contents[1] == {
        "role": "model",
        "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}],
    }
    assert contents[2] == {
        "role": "user",
        "parts": [
            {"functionResponse": {"name": "get_weather", "response": {"temp_c": 18}}},
            {"text": "Thanks"},
        ],
    }


def test_image_parts_become_inline_and_file_data(
    gateway: Gateway, api_key: str, fake_gemini: FakeGemini
) -> None:
    client(gateway, api_key).chat.completions.create(
        model="google/gemini-fake",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Compare"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a/cat.png"}},
                ],
            }
        ],
    )
    parts = sent(fake_gemini, "gemini-fake")["contents"][0]["parts"]
    assert parts == [
        {"text": "Compare"},
        {"inlineData": {"mimeType": "image/png", "data": PNG_B64}},
        {"fileData": {"mimeType": "image/png", "fileUri": "https://example.com/a/cat.png"}},
    ]


@pytest.mark.parametrize(
    ("response_format", "config"),
    [
        ({"type": "json_object"}, {"responseMimeType": "application/json"}),
        (
            {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "object"}},
            },
            {"responseMimeType": "application/json", "responseJsonSchema": {"type": "object"}},
        ),
    ],
)
def test_json_response_format_sets_the_response_mime_type(
    gateway: Gateway, api_key: str, fake_gemini: FakeGemini, response_format: Any, config: Any
) -> None:
    client(gateway, api_key).chat.completions.create(
        model="google/gemini-fake", messages=MESSAGES, response_format=response_format
    )
    generation = sent(fake_gemini, "gemini-fake")["generationConfig"]
    assert {k: generation[k] for k in config} == config


@pytest.mark.parametrize(
    ("model", "finish"),
    [
        ("gemini-fake", "stop"),
        ("gemini-length", "length"),
        ("gemini-safety", "content_filter"),
        ("gemini-tools", "tool_calls"),
        ("gemini-blocked", "content_filter"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_each_finish_reason_maps(
    gateway: Gateway, api_key: str, model: str, finish: str, stream: bool
) -> None:
    sdk = client(gateway, api_key)
    if stream:
        chunks = list(
            sdk.chat.completions.create(model=f"google/{model}", messages=MESSAGES, stream=True)
        )
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == finish
    else:
        completion = sdk.chat.completions.create(model=f"google/{model}", messages=MESSAGES)
        assert completion.choices[0].finish_reason == finish


@pytest.mark.parametrize(
    ("model", "status", "error_type"),
    [
        ("gemini-exhausted", 429, "rate_limit_exceeded"),
        ("gemini-invalid", 400, "invalid_request"),
        ("gemini-bad-key", 502, "bad_gateway"),
        ("gemini-permission", 502, "bad_gateway"),
        ("gemini-not-found", 502, "bad_gateway"),
        ("gemini-internal", 503, "service_unavailable"),
        ("gemini-unavailable", 503, "service_unavailable"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_upstream_errors_map_to_the_envelope(
    gateway: Gateway,
    api_key: str,
    fake_gemini: FakeGemini,
    model: str,
    status: int,
    error_type: str,
    stream: bool,
) -> None:
    before = sum(1 for r in fake_gemini.requests if r["model"] == model)
    with pytest.raises(openai.APIStatusError) as caught:
        client(gateway, api_key).chat.completions.create(
            model=f"google/{model}{'~stream' if stream else ''}", messages=MESSAGES, stream=stream
        )
    assert sum(1 for r in fake_gemini.requests if r["model"] == model) > before, (
        "the upstream answered (no open circuit)"
    )
    assert caught.value.status_code == status
    assert caught.value.body["type"] == error_type  # type: ignore[index]
    assert GEMINI_KEY not in caught.value.response.text


def test_resource_exhausted_carries_the_retry_delay(gateway: Gateway, api_key: str) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        client(gateway, api_key).chat.completions.create(
            model="google/gemini-exhausted~again", messages=MESSAGES
        )
    assert caught.value.response.headers["retry-after"] == "21"


def test_invalid_argument_carries_the_upstream_message(gateway: Gateway, api_key: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client(gateway, api_key).chat.completions.create(
            model="google/gemini-invalid", messages=MESSAGES
        )
    assert "generation_config.temperature" in caught.value.message


@pytest.mark.parametrize(
    ("model", "error_type"),
    [("gemini-error-event", "service_unavailable"), ("gemini-cut", "bad_gateway")],
)
def test_stream_failing_mid_way_ends_with_an_error_event(
    gateway: Gateway, api_key: str, model: str, error_type: str
) -> None:
    with httpx.stream(
        "POST",
        f"{gateway.base_url}/v1/chat/completions",
        headers={"authorization": f"Bearer {api_key}"},
        json={"model": f"google/{model}", "messages": MESSAGES, "stream": True},
        timeout=20,
    ) as response:
        assert response.status_code == 200
        blob = response.read()
    events = [e for e in blob.split(b"\n\n") if e]
    assert b"[DONE]" not in blob
    assert orjson.loads(events[1].removeprefix(b"data: "))["choices"][0]["delta"]["content"]
    last = orjson.loads(events[-1].removeprefix(b"data: "))
    assert last["error"]["type"] == error_type
    assert GEMINI_KEY.encode() not in blob


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"parallel_tool_calls": False, "tools": [WEATHER_TOOL]}, "parallel_tool_calls"),
        ({"logit_bias": {"42": 1}}, "logit_bias"),
    ],
)
def test_parameters_gemini_cannot_honour_are_400_naming_them(
    gateway: Gateway, api_key: str, fake_gemini: FakeGemini, extra: dict[str, Any], param: str
) -> None:
    before = len(fake_gemini.requests)
    response = httpx.post(
        f"{gateway.base_url}/v1/chat/completions",
        headers={"authorization": f"Bearer {api_key}"},
        json={"model": "google/gemini-fake", "messages": MESSAGES, **extra},
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
    assert len(fake_gemini.requests) == before, "nothing is sent upstream"


def test_penalties_are_forwarded(gateway: Gateway, api_key: str, fake_gemini: FakeGemini) -> None:
    client(gateway, api_key).chat.completions.create(
        model="google/gemini-fake", messages=MESSAGES, presence_penalty=0.5, frequency_penalty=-1
    )
    config = sent(fake_gemini, "gemini-fake")["generationConfig"]
    assert (config["presencePenalty"], config["frequencyPenalty"]) == (0.5, -1)


@pytest.mark.parametrize(
    ("model", "tries"),
    [
        ("gemini-unavailable", 3),
        ("gemini-internal", 3),
        ("gemini-invalid", 1),
        ("gemini-bad-key", 1),
    ],
)
def test_only_transient_upstream_errors_are_retried(
    gateway: Gateway, api_key: str, fake_gemini: FakeGemini, model: str, tries: int
) -> None:
    """The test config allows 3 attempts per target (tests/conftest.py `[retry]`)."""
    before = sum(1 for r in fake_gemini.requests if r["model"] == model)
    with pytest.raises(openai.APIStatusError):
        client(gateway, api_key).chat.completions.create(
            model=f"google/{model}~retry", messages=MESSAGES
        )
    after = sum(1 for r in fake_gemini.requests if r["model"] == model)
    assert after - before == tries


def test_a_coding_agents_stream_sends_the_python_paths_bytes(
    gateway: Gateway, api_key: str, fake_gemini: FakeGemini
) -> None:
    """The bench's agent request (loadtests/bench/agent_request.json: 46 messages, tools, tool
    calls and results, an image), sent by the SDK and translated by the Rust scan: the fake
    receives byte for byte what `orjson.dumps(translate_request(...))` writes."""
    agent = orjson.loads(
        (Path(__file__).parents[2] / "loadtests/bench/agent_request.json").read_bytes()
    )
    fields = {k: v for k, v in agent.items() if k not in ("model", "stream", "stream_options")}
    chunks = list(
        client(gateway, api_key).chat.completions.create(
            model="google/gemini-tools", stream=True, **fields
        )
    )
    assert chunks[-1].choices[0].finish_reason is not None
    expected = orjson.dumps(translate_request(chat_call("gemini", "gemini-tools", **fields)))
    assert fake_gemini.last_request("gemini-tools")["raw"] == expected
