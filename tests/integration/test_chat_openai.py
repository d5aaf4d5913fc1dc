"""Chat completions end to end: the official openai SDK → the gateway process → a fake upstream."""

from __future__ import annotations

import threading
import time

import httpx
import openai
import orjson
import pytest

from tests.conftest import UPSTREAM_KEY, Gateway
from tests.fakes.openai_upstream import ANSWER_WORDS, FakeOpenAI

MESSAGES = [{"role": "user", "content": "Say hello"}]


def client(gateway: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key=key, max_retries=0, timeout=20)


def test_non_streamed_answer_carries_upstream_content_and_catalog_model(
    gateway: Gateway, api_key: str, fake_openai: FakeOpenAI
) -> None:
    response = client(gateway, api_key).chat.completions.with_raw_response.create(
        model="openai/gpt-fake",
        messages=MESSAGES,
        temperature=0.5,
        extra_body={"logit_bias": {"42": 1}},
    )
    completion = response.parse()
    assert completion.choices[0].message.content == "".join(ANSWER_WORDS)
    assert completion.model == "openai/gpt-fake"
    assert completion.usage is not None and completion.usage.total_tokens == 16
    assert response.headers["x-klawd-model"] == "openai/gpt-fake"
    assert response.headers["x-klawd-provider"] == "openai"
    # 12 prompt tokens at $1/M + 4 completion tokens at $2/M = 20 micro-dollars
    assert response.headers["x-klawd-cost-usd"] == "0.000020"
    assert response.headers["x-request-id"].startswith("req_")


def test_upstream_receives_provider_key_and_translated_body(
    gateway: Gateway, api_key: str, fake_openai: FakeOpenAI
) -> None:
    client(gateway, api_key).chat.completions.create(
        model="openai/gpt-fake",
        messages=MESSAGES,
        temperature=0.5,
        extra_body={"logit_bias": {"42": 1}},
    )
    received = fake_openai.last_request("gpt-fake")
    assert received["headers"]["Authorization"] == f"Bearer {UPSTREAM_KEY}"
    body = received["body"]
    assert body["model"] == "gpt-fake"
    assert body["messages"] == MESSAGES
    assert body["temperature"] == 0.5
    assert body["logit_bias"] == {"42": 1}, "unknown fields pass through"
    assert body["max_tokens"] == 4096, "the seed's default is made explicit"


def test_streamed_answer_is_relayed_with_catalog_model(
    gateway: Gateway, api_key: str, fake_openai: FakeOpenAI
) -> None:
    stream = client(gateway, api_key).chat.completions.create(
        model="openai/gpt-fake", messages=MESSAGES, stream=True
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "".join(ANSWER_WORDS)
    assert {c.model for c in chunks} == {"openai/gpt-fake"}
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks), "no usage chunk unless the client asked"
    upstream = fake_openai.last_request("gpt-fake")["body"]
    assert upstream["stream_options"] == {"include_usage": True}


def test_stream_with_include_usage_ends_with_usage_chunk(gateway: Gateway, api_key: str) -> None:
    stream = client(gateway, api_key).chat.completions.create(
        model="openai/gpt-fake",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    # 12 prompt tokens at $1/M + 4 completion tokens at $2/M
    assert chunks[-1].usage.model_extra == {"cost_usd": 0.00002}


def test_stream_is_exact_sse_with_whole_events(gateway: Gateway, api_key: str) -> None:
    """Every network read a naive client makes holds whole `data: {json}\\n\\n` events."""
    with httpx.stream(
        "POST",
        f"{gateway.base_url}/v1/chat/completions",
        headers={"authorization": f"Bearer {api_key}"},
        json={"model": "openai/gpt-fake", "messages": MESSAGES, "stream": True},
        timeout=20,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        reads = list(response.iter_raw())
    blob = b"".join(reads)
    for read in reads:
        assert read.endswith(b"\n\n"), f"a read ended mid-event: {read[-40:]!r}"
    events = blob.split(b"\n\n")
    assert events[-1] == b""
    events = events[:-1]
    assert events[-1] == b"data: [DONE]"
    for event in events[:-1]:
        assert event.startswith(b"data: {") and b"\n" not in event
        payload = orjson.loads(event[len(b"data: ") :])
        assert payload["object"] == "chat.completion.chunk"
        assert payload["model"] == "openai/gpt-fake"


def test_streamed_tool_call_arguments_are_reassembled(gateway: Gateway, api_key: str) -> None:
    stream = client(gateway, api_key).chat.completions.create(
        model="openai/tools-fake",
        messages=MESSAGES,
        stream=True,
        tools=[
            {
                "type": "function",
                "function": {"name": "get_weather", "parameters": {"type": "object"}},
            }
        ],
    )
    arguments = ""
    name = None
    finish = None
    for chunk in stream:
        if not chunk.choices:
            continue
        for call in chunk.choices[0].delta.tool_calls or []:
            assert call.function is not None
            name = call.function.name or name
            arguments += call.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert name == "get_weather"
    assert orjson.loads(arguments) == {"city": "Paris", "unit": "c"}
    assert finish == "tool_calls"


def test_first_event_arrives_before_upstream_finishes(
    gateway: Gateway, api_key: str, fake_openai: FakeOpenAI
) -> None:
    stream = client(gateway, api_key).chat.completions.create(
        model="openai/pause-fake", messages=MESSAGES, stream=True
    )
    releaser = threading.Timer(5.0, fake_openai.release)
    releaser.start()
    try:
        started = time.monotonic()
        first = next(iter(stream))
        waited = time.monotonic() - started
        assert first.choices[0].delta.role == "assistant"
        assert waited < 5.0, "the first event waited for the upstream to finish"
    finally:
        fake_openai.release()
        releaser.cancel()
    rest = list(stream)
    assert rest[-1].choices[0].finish_reason == "stop"


@pytest.mark.parametrize("model", ["openai/cut-fake", "openai/error-event"])
def test_upstream_failure_mid_stream_ends_with_error_event(
    gateway: Gateway, api_key: str, model: str
) -> None:
    with httpx.stream(
        "POST",
        f"{gateway.base_url}/v1/chat/completions",
        headers={"authorization": f"Bearer {api_key}"},
        json={"model": model, "messages": MESSAGES, "stream": True},
        timeout=20,
    ) as response:
        assert response.status_code == 200
        blob = response.read()
    events = [e for e in blob.split(b"\n\n") if e]
    assert b"[DONE]" not in blob
    last = orjson.loads(events[-1][len(b"data: ") :])
    assert last["error"]["type"] in {"bad_gateway", "service_unavailable"}
    assert UPSTREAM_KEY.encode() not in blob


def test_invalid_key_is_authentication_error(gateway: Gateway) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        client(gateway, "sk-klawd-not-a-real-key").chat.completions.create(
            model="openai/gpt-fake", messages=MESSAGES
        )
    assert caught.value.status_code == 401
    assert caught.value.body == {
        "type": "authentication_error",
        "message": caught.value.body["message"],
    }  # type: ignore[index]


def test_missing_key_is_401(gateway: Gateway) -> None:
    response = httpx.post(
        f"{gateway.base_url}/v1/chat/completions",
        json={"model": "klawd/echo", "messages": MESSAGES},
    )
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


def test_unknown_model_is_not_found(gateway: Gateway, api_key: str) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client(gateway, api_key).chat.completions.create(model="nope/nothing", messages=MESSAGES)
    assert caught.value.code == "model_not_found"
    assert caught.value.param == "model"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": -0.1}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"temperature": "hot"}, "temperature"),
    ],
)
def test_invalid_body_is_bad_request_naming_the_field(
    gateway: Gateway, api_key: str, extra: dict[str, object], param: str
) -> None:
    body = {"model": "openai/gpt-fake", "messages": MESSAGES, **extra}
    response = httpx.post(
        f"{gateway.base_url}/v1/chat/completions",
        headers={"authorization": f"Bearer {api_key}"},
        json=body,
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request"
    assert response.json()["error"]["param"] == param


def test_bad_request_through_the_sdk(gateway: Gateway, api_key: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client(gateway, api_key).chat.completions.create(
            model="openai/gpt-fake", messages=MESSAGES, temperature=3
        )
    assert caught.value.param == "temperature"


def test_malformed_json_is_400(gateway: Gateway, api_key: str) -> None:
    response = httpx.post(
        f"{gateway.base_url}/v1/chat/completions",
        headers={"authorization": f"Bearer {api_key}", "content-type": "application/json"},
        content=b'{"model": "openai/gpt-fake", "messages": [',
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request"


def test_upstream_auth_failure_is_502_and_never_leaks_the_key(
    gateway: Gateway, api_key: str
) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        client(gateway, api_key).chat.completions.create(model="openai/fail-401", messages=MESSAGES)
    assert caught.value.status_code == 502
    assert caught.value.body["type"] == "bad_gateway"  # type: ignore[index]
    assert UPSTREAM_KEY not in caught.value.response.text


def test_upstream_429_is_rate_limit_with_retry_after(gateway: Gateway, api_key: str) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        client(gateway, api_key).chat.completions.create(
            model="openai/fail-429~again", messages=MESSAGES
        )
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.body["type"] == "rate_limit_exceeded"  # type: ignore[index]


def test_upstream_500_is_503(gateway: Gateway, api_key: str) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        client(gateway, api_key).chat.completions.create(model="openai/fail-500", messages=MESSAGES)
    assert caught.value.status_code == 503
    assert caught.value.body["type"] == "service_unavailable"  # type: ignore[index]


def test_upstream_400_is_translated_with_its_message(gateway: Gateway, api_key: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client(gateway, api_key).chat.completions.create(model="openai/fail-400", messages=MESSAGES)
    assert "max_tokens is too large" in caught.value.message


def test_upstream_nonsense_is_502(gateway: Gateway, api_key: str) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client(gateway, api_key).chat.completions.create(model="openai/garbage", messages=MESSAGES)
    assert caught.value.status_code == 502
    assert caught.value.body["type"] == "bad_gateway"  # type: ignore[index]


def test_failed_model_falls_back_to_its_configured_fallback(gateway: Gateway, api_key: str) -> None:
    response = client(gateway, api_key).chat.completions.with_raw_response.create(
        model="openai/fallback-chain", messages=MESSAGES
    )
    assert response.headers["x-klawd-model"] == "openai/gpt-fake"
    assert response.parse().model == "openai/gpt-fake"


def test_model_without_provider_key_is_503_naming_the_variable(
    gateway: Gateway, api_key: str
) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        client(gateway, api_key).chat.completions.create(model="keyless/claude", messages=MESSAGES)
    assert caught.value.status_code == 503
    assert "KLAWD_TEST_UNSET_PROVIDER_KEY" in caught.value.message


def test_request_id_is_echoed(gateway: Gateway) -> None:
    response = httpx.get(f"{gateway.base_url}/healthz", headers={"x-request-id": "client-abc-1"})
    assert response.headers["x-request-id"] == "client-abc-1"


def test_oversized_body_is_413(gateway: Gateway, api_key: str) -> None:
    huge = "x" * (10 * 1024 * 1024 + 10)
    response = httpx.post(
        f"{gateway.base_url}/v1/chat/completions",
        headers={"authorization": f"Bearer {api_key}"},
        json={"model": "klawd/echo", "messages": [{"role": "user", "content": huge}]},
        timeout=30,
    )
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "request_too_large"
