"""The cloud kinds end to end: the official openai SDK (and the anthropic SDK on /v1/messages)
→ the gateway process → the fake Azure OpenAI, Bedrock and Vertex AI. The fakes check auth as
the clouds do (Azure key, SigV4 recomputed by botocore, JWT verified with the service account's
public key, bearer token on every call), so every success here also proves the gateway's auth."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest

from tests.conftest import Gateway
from tests.fakes import anthropic_upstream, azure_upstream, bedrock_upstream, gemini_upstream
from tests.fakes.azure_upstream import FakeAzure
from tests.fakes.bedrock_upstream import FakeBedrock
from tests.fakes.cloud_config import MODELS, SECRETS
from tests.fakes.openai_upstream import ANSWER_WORDS
from tests.fakes.vertex_upstream import LOCATION, PROJECT, FakeVertex

MESSAGES = [{"role": "user", "content": "Say hello"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@pytest.fixture(scope="module")
def key(cloud_gateway: Gateway) -> str:
    return cloud_gateway.new_key()


def client(gateway: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key=key, max_retries=0, timeout=30)


def assert_no_secret(blob: bytes | str) -> None:
    text = blob.decode(errors="replace") if isinstance(blob, bytes) else blob
    for secret in SECRETS:
        assert secret not in text


def stream_blob(gateway: Gateway, key: str, model: str) -> tuple[int, bytes]:
    with httpx.stream(
        "POST",
        f"{gateway.base_url}/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={"model": model, "messages": MESSAGES, "stream": True},
        timeout=30,
    ) as response:
        return response.status_code, response.read()


def events_of(blob: bytes) -> list[dict[str, Any]]:
    return [
        orjson.loads(e.removeprefix(b"data: "))
        for e in blob.split(b"\n\n")
        if e.startswith(b"data: {")
    ]


# -- text, streaming, usage ----------------------------------------------------------------------

TEXT = {
    "azure/gpt-4o": "".join(ANSWER_WORDS),
    "azure-entra/gpt-4o": "".join(ANSWER_WORDS),
    "bedrock/claude": "".join(bedrock_upstream.ANSWER),
    "vertex/gemini": "".join(gemini_upstream.ANSWER),
    "vertex/claude": "".join(anthropic_upstream.ANSWER),
}


@pytest.mark.parametrize("model", list(TEXT))
def test_text_answer_with_usage_and_provider_header(
    cloud_gateway: Gateway, key: str, model: str
) -> None:
    response = client(cloud_gateway, key).chat.completions.with_raw_response.create(
        model=model, messages=MESSAGES
    )
    completion = response.parse()
    assert completion.choices[0].message.content == TEXT[model]
    assert completion.model == model
    assert completion.usage is not None and completion.usage.prompt_tokens > 0
    assert completion.usage.completion_tokens > 0
    assert response.headers["x-klawd-provider"] == MODELS[model][0]
    assert float(response.headers["x-klawd-cost-usd"]) > 0


@pytest.mark.parametrize("model", list(TEXT))
def test_streamed_text_with_usage_chunk(cloud_gateway: Gateway, key: str, model: str) -> None:
    chunks = list(
        client(cloud_gateway, key).chat.completions.create(
            model=model,
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == TEXT[model]
    # every chunk but the usage one carries a choice (Azure's prompt-filter chunk is not relayed)
    assert all(c.choices for c in chunks[:-1])
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert all(c.model == model for c in chunks)
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == ["stop"]


@pytest.mark.parametrize(
    ("model", "arguments"),
    [
        ("azure/tools", {"city": "Paris", "unit": "c"}),
        ("bedrock/tools", bedrock_upstream.TOOL_INPUT),
        ("vertex/gemini-tools", gemini_upstream.TOOL_ARGS),
        ("vertex/claude-tools", anthropic_upstream.TOOL_INPUT),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_tool_calls_arrive_whole(
    cloud_gateway: Gateway, key: str, model: str, arguments: dict[str, Any], stream: bool
) -> None:
    sdk = client(cloud_gateway, key)
    if stream:
        calls: dict[int, dict[str, str]] = {}
        finish = None
        for chunk in sdk.chat.completions.create(
            model=model, messages=MESSAGES, tools=[WEATHER_TOOL], stream=True
        ):
            for choice in chunk.choices:
                finish = choice.finish_reason or finish
                for call in choice.delta.tool_calls or ():
                    entry = calls.setdefault(call.index, {"name": "", "arguments": ""})
                    if call.function and call.function.name:
                        entry["name"] = call.function.name
                    if call.function and call.function.arguments:
                        entry["arguments"] += call.function.arguments
        assert finish == "tool_calls"
        assert calls[0]["name"] == "get_weather"
        assert orjson.loads(calls[0]["arguments"]) == arguments
    else:
        completion = sdk.chat.completions.create(
            model=model, messages=MESSAGES, tools=[WEATHER_TOOL]
        )
        choice = completion.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.tool_calls is not None
        call = choice.message.tool_calls[0]
        assert call.function.name == "get_weather"  # type: ignore[union-attr]
        assert orjson.loads(call.function.arguments) == arguments  # type: ignore[union-attr]


# -- what each cloud received --------------------------------------------------------------------


def test_azure_gets_its_deployment_url_api_version_and_key(
    cloud_gateway: Gateway, key: str, fake_azure: FakeAzure
) -> None:
    client(cloud_gateway, key).chat.completions.create(model="azure/gpt-4o", messages=MESSAGES)
    sent = fake_azure.last(deployment="gpt4o-prod")
    assert sent["path"] == "/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21"
    assert sent["headers"]["api-key"] == azure_upstream.API_KEY
    client(cloud_gateway, key).chat.completions.create(
        model="azure-entra/gpt-4o", messages=MESSAGES
    )
    sent = fake_azure.requests[-1]
    assert sent["headers"]["authorization"] == f"Bearer {azure_upstream.ENTRA_TOKEN}"
    assert "api-key" not in sent["headers"]


def test_azure_embeddings_and_images(cloud_gateway: Gateway, key: str) -> None:
    sdk = client(cloud_gateway, key)
    embeddings = sdk.embeddings.create(model="azure/embed", input=["a", "b", "c"])
    assert [e.index for e in embeddings.data] == [0, 1, 2]
    images = sdk.images.generate(model="azure/dalle", prompt="a cat", response_format="b64_json")
    assert images.data is not None and images.data[0].b64_json


def test_bedrock_gets_a_converse_body_signed_with_the_session_token(
    cloud_gateway: Gateway, key: str, fake_bedrock: FakeBedrock
) -> None:
    client(cloud_gateway, key).chat.completions.create(
        model="bedrock/claude",
        messages=[{"role": "system", "content": "Be brief."}, *MESSAGES],
        max_tokens=50,
        temperature=0.5,
        stop=["END"],
    )
    sent = fake_bedrock.last(model="anthropic.claude-fake-v1:0", operation="converse")
    assert sent["path"] == "/model/anthropic.claude-fake-v1%3A0/converse"
    assert sent["body"] == {
        "messages": [{"role": "user", "content": [{"text": "Say hello"}]}],
        "system": [{"text": "Be brief."}],
        "inferenceConfig": {"maxTokens": 50, "temperature": 0.5, "stopSequences": ["END"]},
    }
    assert sent["headers"]["x-amz-security-token"] == bedrock_upstream.SESSION_TOKEN
    assert (
        "SignedHeaders=accept;content-type;host;x-amz-date;x-amz-security-token"
        in (sent["headers"]["authorization"])
    )


def test_vertex_uses_publisher_urls_and_one_cached_token(
    cloud_gateway: Gateway, key: str, fake_vertex: FakeVertex
) -> None:
    sdk = client(cloud_gateway, key)
    for model in ("vertex/gemini", "vertex/claude", "vertex/gemini", "vertex/claude"):
        sdk.chat.completions.create(model=model, messages=MESSAGES)
    predicts = [r for r in fake_vertex.requests if r.get("kind") == "predict"][-4:]
    base = f"/v1/projects/{PROJECT}/locations/{LOCATION}/publishers"
    assert predicts[0]["path"] == f"{base}/google/models/gemini-fake:generateContent"
    assert predicts[1]["path"] == f"{base}/anthropic/models/claude-fake:rawPredict"
    assert predicts[1]["body"]["anthropic_version"] == "vertex-2023-10-16"
    assert "model" not in predicts[1]["body"]
    tokens = {r["headers"]["authorization"] for r in predicts}
    assert len(tokens) == 1, "one access token, cached across calls and publishers"


# -- errors --------------------------------------------------------------------------------------


def test_bedrock_throttling_is_retried_then_429_with_retry_after(
    cloud_gateway: Gateway, key: str, fake_bedrock: FakeBedrock
) -> None:
    before = sum(1 for r in fake_bedrock.requests if r["model"] == "fake.throttled")
    with pytest.raises(openai.RateLimitError) as caught:
        client(cloud_gateway, key).chat.completions.create(
            model="bedrock/throttled", messages=MESSAGES
        )
    after = sum(1 for r in fake_bedrock.requests if r["model"] == "fake.throttled")
    assert after - before == 2, "retried like a 429 (attempts = 2)"
    assert caught.value.response.headers["retry-after"]
    assert caught.value.body["type"] == "rate_limit_exceeded"  # type: ignore[index]


@pytest.mark.parametrize(
    ("model", "status", "error_type", "message"),
    [
        ("bedrock/invalid", 400, "invalid_request", "model identifier is invalid"),
        ("azure/filtered", 400, "invalid_request", "content management policy"),
        ("azure/throttled", 429, "rate_limit_exceeded", None),
        ("vertex/gemini-exhausted", 429, "rate_limit_exceeded", None),
        ("bedrock-unset/claude", 503, None, None),
    ],
)
def test_cloud_errors_become_the_envelope(
    cloud_gateway: Gateway,
    key: str,
    model: str,
    status: int,
    error_type: str | None,
    message: str | None,
) -> None:
    response = httpx.post(
        f"{cloud_gateway.base_url}/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={"model": model, "messages": MESSAGES},
        timeout=30,
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    if error_type is not None:
        assert error["type"] == error_type
    if message is not None:
        assert message in error["message"]
    assert_no_secret(response.text)


@pytest.mark.parametrize(
    ("model", "error_type"),
    [
        ("bedrock/stream-throttled", "rate_limit_exceeded"),
        ("bedrock/corrupt", "bad_gateway"),
        ("bedrock/cut", "bad_gateway"),
    ],
)
def test_bedrock_stream_failures_end_with_an_error(
    cloud_gateway: Gateway, key: str, model: str, error_type: str
) -> None:
    status, blob = stream_blob(cloud_gateway, key, model)
    assert b"[DONE]" not in blob
    assert_no_secret(blob)
    if status == 200:
        last = events_of(blob)[-1]
        assert last["error"]["type"] == error_type
    else:  # failed before the first byte: the whole answer is the envelope
        assert orjson.loads(blob)["error"]["type"] == error_type


def test_throttling_inside_a_bedrock_stream_comes_after_the_text_so_far(
    cloud_gateway: Gateway, key: str
) -> None:
    status, blob = stream_blob(cloud_gateway, key, "bedrock/stream-throttled")
    assert status == 200
    events = events_of(blob)
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert events[1]["choices"][0]["delta"]["content"] == bedrock_upstream.ANSWER[0]
    assert "error" in events[-1]


# -- /v1/messages ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model", ["bedrock/claude", "vertex/claude", "vertex/gemini", "azure/gpt-4o"]
)
def test_messages_api_works_with_cloud_models(cloud_gateway: Gateway, key: str, model: str) -> None:
    with anthropic.Anthropic(
        base_url=cloud_gateway.base_url, api_key=key, max_retries=0, timeout=30
    ) as sdk:
        message = sdk.messages.create(
            model=model, max_tokens=100, messages=[{"role": "user", "content": "Say hello"}]
        )
        assert message.content[0].type == "text"
        assert message.content[0].text == TEXT[model]
        with sdk.messages.stream(
            model=model, max_tokens=100, messages=[{"role": "user", "content": "Say hello"}]
        ) as stream:
            final = stream.get_final_message()
        assert final.content[0].type == "text" and final.content[0].text == TEXT[model]
        assert final.usage.output_tokens > 0


def test_no_cloud_secret_in_metrics_or_models(cloud_gateway: Gateway, key: str) -> None:
    metrics = httpx.get(f"{cloud_gateway.base_url}/metrics", timeout=10).text
    models = httpx.get(
        f"{cloud_gateway.base_url}/v1/models", headers={"authorization": f"Bearer {key}"}
    ).text
    status = httpx.get(f"{cloud_gateway.base_url}/status", timeout=10).text
    for text in (metrics, models, status):
        assert_no_secret(text)


# -- /v1/responses --------------------------------------------------------------------------------


@pytest.mark.parametrize("model", list(TEXT))
def test_responses_api_works_with_cloud_models(
    cloud_gateway: Gateway, key: str, model: str
) -> None:
    sdk = client(cloud_gateway, key)
    response = sdk.responses.create(model=model, input="Say hello")
    assert response.status == "completed"
    assert response.output_text == TEXT[model]
    assert response.usage is not None and response.usage.output_tokens > 0
    with sdk.responses.stream(model=model, input="Say hello") as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert events[-1].type == "response.completed"
    assert final.output_text == TEXT[model]


@pytest.mark.parametrize("model", ["bedrock/tools", "vertex/claude-tools", "azure/tools"])
def test_responses_api_function_calls_from_cloud_models(
    cloud_gateway: Gateway, key: str, model: str
) -> None:
    tool = {
        "type": "function",
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
    response = client(cloud_gateway, key).responses.create(
        model=model,
        input="Weather in Paris?",
        tools=[tool],  # type: ignore[list-item]
    )
    calls = [item for item in response.output if item.type == "function_call"]
    assert calls and calls[0].name == "get_weather"
    assert orjson.loads(calls[0].arguments)["city"] == "Paris"


# -- clouds as deployments of one model -----------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_a_throttled_bedrock_deployment_gives_way_to_its_vertex_sibling(
    cloud_gateway: Gateway, key: str, stream: bool
) -> None:
    sdk = client(cloud_gateway, key)
    if stream:
        with sdk.chat.completions.with_streaming_response.create(
            model="cloud/claude", messages=MESSAGES, stream=True
        ) as response:
            assert response.headers["x-klawd-provider"] == "vertex"
            text = "".join(c.choices[0].delta.content or "" for c in response.parse() if c.choices)
    else:
        raw = sdk.chat.completions.with_raw_response.create(model="cloud/claude", messages=MESSAGES)
        assert raw.headers["x-klawd-provider"] == "vertex"
        text = raw.parse().choices[0].message.content or ""
    assert text == "".join(anthropic_upstream.ANSWER)


def test_weighted_azure_deployments_both_serve(cloud_gateway: Gateway, key: str) -> None:
    sdk = client(cloud_gateway, key)
    providers = set()
    for _ in range(12):
        raw = sdk.chat.completions.with_raw_response.create(model="cloud/gpt", messages=MESSAGES)
        assert raw.parse().choices[0].message.content == "".join(ANSWER_WORDS)
        providers.add(raw.headers["x-klawd-provider"])
    assert providers <= {"azure", "azure-entra"} and "azure" in providers
