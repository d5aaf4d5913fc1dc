"""POST /v1/messages end to end: the official `anthropic` SDK → the gateway process → the fakes.

Each behaviour runs three times: an `anthropic/…` model (pass-through to the fake Anthropic API),
an OpenAI-shaped model and a Gemini model (both translated). Asserts on what the SDK accumulates
and on the body each fake received."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import anthropic
import httpx
import orjson
import pytest

from tests.conftest import Gateway
from tests.fakes import anthropic_upstream, gemini_upstream, openai_upstream
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.gemini_upstream import FakeGemini
from tests.fakes.openai_upstream import FakeOpenAI
from tests.fakes.provider_config import ANTHROPIC_KEY
from tests.fakes.server import PNG_1X1
from tests.integration.test_limits_and_billing import wait_for_ledger

WEATHER_TOOL: Any = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


@dataclass(frozen=True)
class Family:
    name: str
    text: str
    tools: str
    length: str
    refusal: str
    answer: str
    tool_input: dict[str, Any]
    usage: dict[str, int]  # of the answer to `text`
    provider: str


FAMILIES = [
    Family(
        "passthrough",
        "anthropic/claude-fake",
        "anthropic/claude-tools",
        "anthropic/claude-length",
        "anthropic/claude-refusal",
        "".join(anthropic_upstream.ANSWER),
        anthropic_upstream.TOOL_INPUT,
        {
            "input_tokens": 10,
            "cache_creation_input_tokens": 5,
            "cache_read_input_tokens": 20,
            "output_tokens": 7,
        },
        "anthropic",
    ),
    Family(
        "openai",
        "openai/gpt-fake",
        "openai/tools-fake",
        "openai/length-fake",
        "openai/filter-fake",
        "".join(openai_upstream.ANSWER_WORDS),
        {"city": "Paris", "unit": "c"},
        {"input_tokens": 12, "output_tokens": 4},
        "openai",
    ),
    Family(
        "gemini",
        "google/gemini-fake",
        "google/gemini-tools",
        "google/gemini-length",
        "google/gemini-safety",
        "".join(gemini_upstream.ANSWER),
        gemini_upstream.TOOL_ARGS,
        # prompt 11 of which 4 cached; candidates 6 + thoughts 3
        {"input_tokens": 7, "cache_read_input_tokens": 4, "output_tokens": 9},
        "google",
    ),
]
IDS = [f.name for f in FAMILIES]


def client(gateway: Gateway, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.base_url, api_key=key, max_retries=0, timeout=20)


def usage_of(usage: Any) -> dict[str, int]:
    fields = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    out = {f: getattr(usage, f) for f in fields if getattr(usage, f, None)}
    return out | {"output_tokens": usage.output_tokens}


HELLO: Any = [{"role": "user", "content": "Say hello"}]


@pytest.mark.parametrize("family", FAMILIES, ids=IDS)
def test_text_message_usage_headers_and_cost(
    gateway: Gateway, api_key: str, family: Family
) -> None:
    raw = client(gateway, api_key).messages.with_raw_response.create(
        model=family.text, max_tokens=100, messages=HELLO
    )
    message = raw.parse()
    assert message.type == "message" and message.role == "assistant"
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == family.answer  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert message.model == family.text
    assert usage_of(message.usage) == family.usage
    assert raw.headers["x-klawd-model"] == family.text
    assert raw.headers["x-klawd-provider"] == family.provider
    assert raw.headers["x-ratelimit-limit-requests"]
    assert float(raw.headers["x-klawd-cost-usd"]) > 0


@pytest.mark.parametrize("family", FAMILIES, ids=IDS)
def test_streamed_text_accumulates_the_same_final_message(
    gateway: Gateway, api_key: str, family: Family
) -> None:
    with client(gateway, api_key).messages.stream(
        model=family.text, max_tokens=100, messages=HELLO
    ) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(pieces) == family.answer
    assert len(pieces) > 1, "streamed in several deltas"
    assert [b.type for b in final.content] == ["text"]
    assert final.content[0].text == family.answer  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"
    assert final.model == family.text
    assert usage_of(final.usage) == family.usage


@pytest.mark.parametrize("family", FAMILIES, ids=IDS)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_tool_call_input_arrives_whole_after_fragments(
    gateway: Gateway, api_key: str, family: Family, stream: bool
) -> None:
    sdk = client(gateway, api_key)
    kwargs: Any = {
        "model": family.tools,
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": [WEATHER_TOOL],
    }
    message: anthropic.types.Message
    if stream:
        with sdk.messages.stream(**kwargs) as events:
            json_deltas = [
                e
                for e in events
                if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
            ]
            message = events.get_final_message()
        if family.name != "gemini":  # Gemini sends a function call whole: one fragment
            assert len(json_deltas) > 1
    else:
        message = sdk.messages.create(**kwargs)
    calls = [b for b in message.content if b.type == "tool_use"]
    assert len(calls) == 1
    assert calls[0].name == "get_weather"
    assert calls[0].input == family.tool_input
    assert calls[0].id
    assert message.stop_reason == "tool_use"


@pytest.mark.parametrize("family", FAMILIES, ids=IDS)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_stop_reasons_max_tokens_and_refusal(
    gateway: Gateway, api_key: str, family: Family, stream: bool
) -> None:
    sdk = client(gateway, api_key)
    for model, reason in [(family.length, "max_tokens"), (family.refusal, "refusal")]:
        message: anthropic.types.Message
        if stream:
            with sdk.messages.stream(model=model, max_tokens=100, messages=HELLO) as events:
                message = events.get_final_message()
        else:
            message = sdk.messages.create(model=model, max_tokens=100, messages=HELLO)
        assert message.stop_reason == reason, model


def test_stop_sequence_reason_is_relayed_by_passthrough(gateway: Gateway, api_key: str) -> None:
    message = client(gateway, api_key).messages.create(
        model="anthropic/claude-stop-seq", max_tokens=100, messages=HELLO, stop_sequences=["END"]
    )
    assert message.stop_reason == "stop_sequence"
    assert message.stop_sequence == "END"


def test_stop_sequences_reach_translated_upstreams(
    gateway: Gateway, api_key: str, fake_openai: FakeOpenAI, fake_gemini: FakeGemini
) -> None:
    sdk = client(gateway, api_key)
    message = sdk.messages.create(
        model="openai/gpt-fake", max_tokens=100, messages=HELLO, stop_sequences=["END", "STOP"]
    )
    # OpenAI and Gemini do not say whether a stop sequence ended the text.
    assert message.stop_reason == "end_turn"
    assert fake_openai.last_request("gpt-fake")["body"]["stop"] == ["END", "STOP"]
    sdk.messages.create(
        model="google/gemini-fake", max_tokens=100, messages=HELLO, stop_sequences=["END"]
    )
    config = fake_gemini.last_request("gemini-fake")["body"]["generationConfig"]
    assert config["stopSequences"] == ["END"]


IMAGE_MESSAGES: Any = [
    {
        "role": "user",
        "content": [
            {
                "type": "image",
                "source": {
                    "type": "base64",
                    "media_type": "image/png",
                    "data": base64.b64encode(PNG_1X1).decode(),
                },
            },
            {"type": "text", "text": "What is this?"},
        ],
    }
]


def test_image_input_reaches_every_upstream_in_its_format(
    gateway: Gateway,
    api_key: str,
    fake_anthropic: FakeAnthropic,
    fake_openai: FakeOpenAI,
    fake_gemini: FakeGemini,
) -> None:
    sdk = client(gateway, api_key)
    data = base64.b64encode(PNG_1X1).decode()
    for family in FAMILIES:
        answer = sdk.messages.create(model=family.text, max_tokens=50, messages=IMAGE_MESSAGES)
        assert answer.content[0].text == family.answer  # type: ignore[union-attr]
    passed = fake_anthropic.last_request("claude-fake")["body"]
    assert passed["messages"] == IMAGE_MESSAGES, "pass-through forwards the blocks unchanged"
    parts = fake_openai.last_request("gpt-fake")["body"]["messages"][0]["content"]
    assert parts == [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}},
        {"type": "text", "text": "What is this?"},
    ]
    gemini_parts = fake_gemini.last_request("gemini-fake")["body"]["contents"][0]["parts"]
    assert gemini_parts[0] == {"inlineData": {"mimeType": "image/png", "data": data}}


def passed_through(
    gateway: Gateway, api_key: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> None:
    """`body` posted as an Anthropic SDK would (its version header), answered with 200."""
    response = httpx.post(
        f"{gateway.base_url}/v1/messages",
        headers={"x-api-key": api_key, "anthropic-version": "2023-06-01"} | (headers or {}),
        json=body,
        timeout=20,
    )
    assert response.status_code == 200, response.text


def test_passthrough_rewrites_only_the_model_and_uses_the_gateway_key(
    gateway: Gateway, api_key: str, fake_anthropic: FakeAnthropic
) -> None:
    body = {
        "model": "anthropic/claude-fake",
        "max_tokens": 64,
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "messages": HELLO,
        "top_k": 5,
        "thinking": {"type": "disabled"},
        "metadata": {"user_id": "u-1"},
    }
    passed_through(gateway, api_key, body)
    recorded = fake_anthropic.last_request("claude-fake")
    assert recorded["body"] == body | {"model": "claude-fake"}
    headers = {k.lower(): v for k, v in recorded["headers"].items()}
    assert headers["x-api-key"] != api_key
    assert headers["anthropic-version"] == "2023-06-01"


def passthrough_bytes(body: dict[str, Any], model: str) -> bytes:
    """What a pass-through sends: the client's body with only `model` rewritten (in the
    client's place) and `models` left out, as orjson writes that dict."""
    return orjson.dumps({k: v for k, v in body.items() if k != "models"} | {"model": model})


@pytest.mark.parametrize("stream", [False, True], ids=["answer", "stream"])
@pytest.mark.parametrize("chain", [False, True], ids=["one-target", "fallback-chain"])
def test_passthrough_sends_each_try_its_model_in_the_same_bytes(
    gateway: Gateway, api_key: str, fake_anthropic: FakeAnthropic, stream: bool, chain: bool
) -> None:
    """One target: one body. A chain: the overloaded first target is tried three times (the
    test config's attempts), then the fallback answers; every try gets the bytes of the
    client's body with its own model, whatever the key order (`model` not first here), and
    the same header lines: the provider's, then the client's version and beta, then its key."""
    failing = f"claude-overloaded~bytes{'stream' if stream else ''}"
    first = f"anthropic/{failing}" if chain else "anthropic/claude-fake"
    body: dict[str, Any] = {
        "max_tokens": 64,
        "system": "Be brief, ü.",
        "model": first,
        "messages": HELLO,
        "stream": stream,
        "metadata": {"user_id": "u-1"},
    }
    if chain:
        body["models"] = ["anthropic/claude-fake"]
    seen = len(fake_anthropic.requests)
    passed_through(gateway, api_key, body, {"anthropic-beta": "tools-2024-04-04"})
    sent = [r["raw"] for r in fake_anthropic.requests[seen:]]
    tried = [failing.split("~")[0]] * 3 if chain else []
    assert sent == [passthrough_bytes(body, m) for m in [*tried, "claude-fake"]]
    origin = fake_anthropic.base_url.removeprefix("http://").encode()
    heads = [r["head"] for r in fake_anthropic.requests[seen:]]
    assert heads == [
        (
            (b"Host", origin),
            (b"Content-Length", str(len(raw)).encode()),
            (b"content-type", b"application/json"),
            (b"accept", b"text/event-stream" if stream else b"application/json"),
            (b"anthropic-version", b"2023-06-01"),
            (b"anthropic-beta", b"tools-2024-04-04"),
            (b"x-api-key", ANTHROPIC_KEY.encode()),
        )
        for raw in sent
    ]


def test_translation_sends_system_tools_tool_results_and_history(
    gateway: Gateway, api_key: str, fake_openai: FakeOpenAI
) -> None:
    client(gateway, api_key).messages.create(
        model="openai/gpt-fake",
        max_tokens=77,
        system="Be brief.",
        tools=[WEATHER_TOOL],
        tool_choice={"type": "any"},
        metadata={"user_id": "u-2"},
        messages=[
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"city": "P"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "sunny"},
                    {"type": "text", "text": "Thanks"},
                ],
            },
        ],
    )
    body = fake_openai.last_request("gpt-fake")["body"]
    assert body["max_tokens"] == 77
    assert body["user"] == "u-2"
    assert body["tool_choice"] == "required"
    assert body["tools"][0]["function"]["name"] == "get_weather"
    assert body["tools"][0]["function"]["parameters"] == WEATHER_TOOL["input_schema"]
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "t1",
                    "function": {"name": "get_weather", "arguments": '{"city":"P"}'},
                    "type": "function",
                }
            ],
        },
        {"role": "tool", "content": "sunny", "tool_call_id": "t1"},
        {"role": "user", "content": [{"type": "text", "text": "Thanks"}]},
    ]


def test_translation_refuses_what_it_cannot_express(gateway: Gateway, api_key: str) -> None:
    sdk = client(gateway, api_key)
    with pytest.raises(anthropic.BadRequestError) as refused:
        sdk.messages.create(
            model="openai/gpt-fake",
            max_tokens=10,
            messages=HELLO,
            extra_body={"thinking": {"type": "enabled", "budget_tokens": 1024}},
        )
    assert refused.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "thinking" in refused.value.body["error"]["message"]  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError):
        sdk.messages.create(
            model="google/gemini-fake",
            max_tokens=10,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "document",
                            "source": {"type": "text", "media_type": "text/plain", "data": "x"},
                        }
                    ],
                }
            ],
        )


# -- errors ---------------------------------------------------------------------------------------


def error_of(exc: anthropic.APIStatusError) -> dict[str, Any]:
    assert isinstance(exc.body, dict)
    assert exc.body["type"] == "error"
    error: dict[str, Any] = exc.body["error"]
    return error


def test_gateway_errors_in_anthropic_shape(gateway: Gateway, api_key: str) -> None:
    with pytest.raises(anthropic.AuthenticationError) as bad_key:
        client(gateway, "sk-klawd-nope").messages.create(
            model="openai/gpt-fake", max_tokens=10, messages=HELLO
        )
    assert error_of(bad_key.value)["type"] == "authentication_error"
    sdk = client(gateway, api_key)
    with pytest.raises(anthropic.NotFoundError) as unknown:
        sdk.messages.create(model="openai/no-such-model", max_tokens=10, messages=HELLO)
    assert error_of(unknown.value)["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as invalid:
        sdk.messages.create(
            model="openai/gpt-fake", max_tokens=10, messages=HELLO, extra_body={"temperature": 3}
        )
    assert error_of(invalid.value)["type"] == "invalid_request_error"
    assert "temperature" in error_of(invalid.value)["message"]
    missing = httpx.post(
        f"{gateway.base_url}/v1/messages",
        headers={"x-api-key": api_key},
        json={"model": "openai/gpt-fake", "messages": HELLO},
        timeout=10,
    )
    assert missing.status_code == 400
    assert missing.json()["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in missing.json()["error"]["message"]


def test_insufficient_credits_is_a_billing_error(gateway: Gateway) -> None:
    key = gateway.new_key(plan="enterprise", credits_usd=0.0)
    with pytest.raises(anthropic.APIStatusError) as refused:
        client(gateway, key).messages.create(model="openai/gpt-fake", max_tokens=10, messages=HELLO)
    assert refused.value.status_code == 402
    assert error_of(refused.value)["type"] == "billing_error"


def test_rate_limit_is_a_rate_limit_error_with_retry_after(gateway: Gateway) -> None:
    key = gateway.new_key(plan="free")
    sdk = client(gateway, key)
    with pytest.raises(anthropic.RateLimitError) as limited:
        for _ in range(20):
            sdk.messages.create(model="openai/gpt-fake", max_tokens=10, messages=HELLO)
    assert error_of(limited.value)["type"] == "rate_limit_error"
    assert int(limited.value.response.headers["retry-after"]) >= 1
    assert limited.value.response.headers["x-ratelimit-remaining-requests"] == "0"


# upstream failure → (status, SDK exception, Anthropic error type), per family
UPSTREAM_ERRORS = {
    "passthrough": [
        ("anthropic/claude-invalid", 400, "invalid_request_error"),
        ("anthropic/claude-auth", 502, "api_error"),
        ("anthropic/claude-too-large", 413, "request_too_large"),
        ("anthropic/claude-rate-limit", 429, "rate_limit_error"),
        ("anthropic/claude-overloaded", 503, "overloaded_error"),
    ],
    "openai": [
        ("openai/fail-400", 400, "invalid_request_error"),
        ("openai/fail-401", 502, "api_error"),
        ("openai/fail-429", 429, "rate_limit_error"),
        ("openai/fail-500", 503, "overloaded_error"),
        ("openai/garbage", 502, "api_error"),
    ],
    "gemini": [
        ("google/gemini-invalid", 400, "invalid_request_error"),
        ("google/gemini-bad-key", 502, "api_error"),
        ("google/gemini-exhausted", 429, "rate_limit_error"),
        ("google/gemini-unavailable", 503, "overloaded_error"),
    ],
}


@pytest.mark.parametrize("family", IDS)
def test_upstream_errors_keep_statuses_and_get_anthropic_types(
    gateway: Gateway, api_key: str, family: str
) -> None:
    suffix = "" if family == "openai" else "~msg"
    for model, status, error_type in UPSTREAM_ERRORS[family]:
        response = httpx.post(
            f"{gateway.base_url}/v1/messages",
            headers={"x-api-key": api_key},
            json={"model": model + suffix, "max_tokens": 10, "messages": HELLO},
            timeout=30,
        )
        assert response.status_code == status, (model, response.text)
        assert response.json() == {
            "type": "error",
            "error": {"type": error_type, "message": response.json()["error"]["message"]},
        }
        if status == 429:
            assert int(response.headers["retry-after"]) >= 1
        for secret in ("SECRET", "sk-upstream"):
            assert secret not in response.text


@pytest.mark.parametrize(
    "model",
    [
        "anthropic/claude-error-event~msgstream",
        "openai/error-event",
        "google/gemini-error-event~msgstream",
    ],
)
def test_mid_stream_failure_ends_with_an_error_event(
    gateway: Gateway, api_key: str, model: str
) -> None:
    with httpx.stream(
        "POST",
        f"{gateway.base_url}/v1/messages",
        headers={"x-api-key": api_key},
        json={"model": model, "max_tokens": 10, "messages": HELLO, "stream": True},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        text = response.read().decode()
    events = [e for e in text.split("\n\n") if e]
    assert events[0].startswith("event: message_start\n")
    name, data = events[-1].split("\n", 1)
    assert name == "event: error"
    error = orjson.loads(data.removeprefix("data: "))
    assert error["type"] == "error"
    assert error["error"]["type"] in ("overloaded_error", "api_error")
    assert "event: message_stop" not in text
    with pytest.raises(anthropic.APIStatusError):
        with client(gateway, api_key).messages.stream(
            model=model, max_tokens=10, messages=HELLO
        ) as stream:
            stream.until_done()


@pytest.mark.parametrize(
    "model", ["anthropic/claude-cut~msgstream", "openai/cut-fake", "google/gemini-cut~msgstream"]
)
def test_stream_cut_by_the_upstream_ends_with_an_api_error_event(
    gateway: Gateway, api_key: str, model: str
) -> None:
    with httpx.stream(
        "POST",
        f"{gateway.base_url}/v1/messages",
        headers={"authorization": f"Bearer {api_key}"},
        json={"model": model, "max_tokens": 10, "messages": HELLO, "stream": True},
        timeout=30,
    ) as response:
        text = response.read().decode()
    last = [e for e in text.split("\n\n") if e][-1]
    assert last.startswith("event: error\n")
    assert '"api_error"' in last


def test_silent_stream_gets_anthropic_ping_events(
    gateway: Gateway, api_key: str, fake_openai: FakeOpenAI
) -> None:
    with httpx.stream(
        "POST",
        f"{gateway.base_url}/v1/messages",
        headers={"x-api-key": api_key},
        json={"model": "openai/pause-fake", "max_tokens": 10, "messages": HELLO, "stream": True},
        timeout=30,
    ) as response:
        seen = b""
        for piece in response.iter_raw():
            seen += piece
            if b"event: ping\n" in seen:
                fake_openai.release()
        text = seen.decode()
    assert 'event: ping\ndata: {"type":"ping"}\n\n' in text
    assert ": keepalive" not in text
    assert text.rstrip().endswith('data: {"type":"message_stop"}')


def test_usage_is_billed_to_the_account(gateway: Gateway) -> None:
    key = gateway.new_key(plan="enterprise", credits_usd=10.0)
    sdk = client(gateway, key)
    raw = sdk.messages.with_raw_response.create(
        model="openai/gpt-fake", max_tokens=10, messages=HELLO
    )
    cost = float(raw.headers["x-klawd-cost-usd"])
    with sdk.messages.stream(model="anthropic/claude-fake", max_tokens=10, messages=HELLO) as s:
        s.until_done()
    usage = wait_for_ledger(gateway, key, 2)["usage_today"]
    assert usage["requests"] == 2
    # openai 12 + 4; anthropic 10 + 5 + 20 cache + 7
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (12 + 35, 4 + 7)
    assert cost == pytest.approx((12 * 1 + 4 * 2) / 1_000_000)


def test_models_list_in_anthropic_shape_for_anthropic_clients(
    gateway: Gateway, api_key: str
) -> None:
    ids = [m.id for m in client(gateway, api_key).models.list()]
    assert {"anthropic/claude-fake", "openai/gpt-fake", "google/gemini-fake"} <= set(ids)
    assert "klawd/auto" in ids
    assert "openai/embed-fake" not in ids  # not a chat model
    plain = httpx.get(
        f"{gateway.base_url}/v1/models", headers={"authorization": f"Bearer {api_key}"}
    ).json()
    assert plain["object"] == "list", "without anthropic-version: OpenAI-shaped as before"
    refused = httpx.get(
        f"{gateway.base_url}/v1/models", headers={"anthropic-version": "2023-06-01"}
    )
    assert refused.status_code == 401
    assert refused.json()["error"]["type"] == "authentication_error"


def test_unknown_block_types_pass_through_and_are_refused_by_translation(
    gateway: Gateway, api_key: str, fake_anthropic: FakeAnthropic
) -> None:
    block = {"type": "search_result", "source": "s", "title": "t", "content": []}
    body = {
        "model": "anthropic/claude-fake",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": [block, {"type": "text", "text": "Hi"}]}],
    }
    url = f"{gateway.base_url}/v1/messages"
    passed = httpx.post(url, headers={"x-api-key": api_key}, json=body, timeout=20)
    assert passed.status_code == 200, passed.text
    assert fake_anthropic.last_request("claude-fake")["body"]["messages"] == body["messages"]
    refused = httpx.post(
        url, headers={"x-api-key": api_key}, json=body | {"model": "openai/gpt-fake"}, timeout=20
    )
    assert refused.status_code == 400
    assert "search_result" in refused.json()["error"]["message"]
    malformed = body | {"messages": [{"role": "user", "content": [{"type": "text", "text": 7}]}]}
    bad = httpx.post(url, headers={"x-api-key": api_key}, json=malformed, timeout=20)
    assert bad.status_code == 400
    assert "messages[0].content[0].text" in bad.json()["error"]["message"]


def test_the_local_echo_model_answers_anthropic_clients(gateway: Gateway, api_key: str) -> None:
    sdk = client(gateway, api_key)
    whole = sdk.messages.create(model="klawd/echo", max_tokens=50, messages=HELLO)
    with sdk.messages.stream(model="klawd/echo", max_tokens=50, messages=HELLO) as stream:
        streamed = stream.get_final_message()
    assert whole.content[0].text == streamed.content[0].text  # type: ignore[union-attr]
    assert "Say hello" in whole.content[0].text  # type: ignore[union-attr]
    assert whole.usage.output_tokens == streamed.usage.output_tokens > 0


def test_count_tokens_passes_through_or_estimates(
    gateway: Gateway, api_key: str, fake_anthropic: FakeAnthropic
) -> None:
    sdk = client(gateway, api_key)
    counted = sdk.messages.count_tokens(model="anthropic/claude-fake", messages=HELLO)
    assert counted.input_tokens == anthropic_upstream.COUNTED_TOKENS
    assert fake_anthropic.last_request("claude-fake")["path"] == "/v1/messages/count_tokens"
    long_text: Any = [{"role": "user", "content": "word " * 400}]
    for model in ("openai/gpt-fake", "google/gemini-fake"):
        short = sdk.messages.count_tokens(model=model, messages=HELLO).input_tokens
        long = sdk.messages.count_tokens(model=model, messages=long_text).input_tokens
        assert 0 < short < long
        assert long == 2000 // 4 + 4  # 4 characters per token, 4 per message
    with pytest.raises(anthropic.NotFoundError):
        sdk.messages.count_tokens(model="openai/no-such-model", messages=HELLO)


def tokens_counted(gateway: Gateway, api_key: str, raw: bytes) -> httpx.Response:
    """`raw` posted to /v1/messages/count_tokens as an Anthropic SDK posts its JSON."""
    return httpx.post(
        f"{gateway.base_url}/v1/messages/count_tokens",
        headers={
            "x-api-key": api_key,
            "anthropic-version": "2023-06-01",
            "content-type": "application/json",
        },
        content=raw,
        timeout=20,
    )


def test_count_tokens_passes_the_body_on_with_only_the_model_rewritten(
    gateway: Gateway, api_key: str, fake_anthropic: FakeAnthropic
) -> None:
    body: dict[str, Any] = {
        "system": "Be brief, ü.",
        "model": "anthropic/claude-fake",
        "messages": HELLO,
        "models": ["openai/gpt-fake"],
        "tools": [WEATHER_TOOL],
    }
    seen = len(fake_anthropic.requests)
    response = tokens_counted(gateway, api_key, orjson.dumps(body))
    assert response.status_code == 200, response.text
    assert response.json() == {"input_tokens": anthropic_upstream.COUNTED_TOKENS}
    [sent] = fake_anthropic.requests[seen:]
    assert sent["path"] == "/v1/messages/count_tokens"
    assert sent["raw"] == passthrough_bytes(body, "claude-fake")


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b'{"model": "anthropic/claude-fake", "messages": [', None),
        (b'{"model": "anthropic/claude-fake", "messages": {"role": "user"}}', "messages"),
        (b'{"model": "anthropic/claude-fake"}', "messages"),
        (b'["anthropic/claude-fake"]', None),
    ],
    ids=["not-json", "messages-not-a-list", "no-messages", "not-an-object"],
)
def test_count_tokens_refuses_bad_bodies_in_anthropic_shape(
    gateway: Gateway, api_key: str, fake_anthropic: FakeAnthropic, raw: bytes, param: str | None
) -> None:
    seen = len(fake_anthropic.requests)
    response = tokens_counted(gateway, api_key, raw)
    assert response.status_code == 400
    error = response.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert param is None or param in error["error"]["message"]
    assert len(fake_anthropic.requests) == seen, "nothing sent upstream"


def test_body_over_the_limit_is_413_in_anthropic_shape(gateway: Gateway, api_key: str) -> None:
    """Refused by the middleware before any handler runs, still in the shape the client speaks."""
    huge = "x" * (10 * 1024 * 1024 + 10)
    response = httpx.post(
        f"{gateway.base_url}/v1/messages",
        headers={"x-api-key": api_key, "anthropic-version": "2023-06-01"},
        json={
            "model": "klawd/echo",
            "max_tokens": 10,
            "messages": [{"role": "user", "content": huge}],
        },
        timeout=30,
    )
    assert response.status_code == 413
    assert response.json() == {
        "type": "error",
        "error": {"type": "request_too_large", "message": response.json()["error"]["message"]},
    }
