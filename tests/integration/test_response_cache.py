"""The response cache end to end, on both stores: the official openai SDK → the gateway process
(`[cache] enabled = true`) → the fake OpenAI upstream, whose request log shows what reached it."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest

from tests.conftest import Gateway, free_port, gateway_config, start_gateway, stop
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.gemini_upstream import FakeGemini
from tests.fakes.openai_upstream import ANSWER_WORDS, FakeOpenAI
from tests.fakes.provider_config import PROVIDER_ENV, provider_config
from tests.fakes.replicate_upstream import FakeReplicate
from tests.live_bound import running_deadline
from tests.redis_server import RedisServer

ANSWER = "".join(ANSWER_WORDS)


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def cached_gateway(
    request: pytest.FixtureRequest,
    fake_openai: FakeOpenAI,
    fake_anthropic: FakeAnthropic,
    fake_gemini: FakeGemini,
    fake_replicate: FakeReplicate,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    directory = tmp_path_factory.mktemp(f"cache-{request.param}")
    store_url = None
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        server.flush()
        store_url = server.url
    port = free_port()
    config = directory / "klawd.toml"
    providers = provider_config(
        fake_anthropic.base_url, fake_gemini.base_url, fake_replicate.base_url
    )
    extra = providers + "\n[cache]\nenabled = true\n"
    gateway_config(config, port, fake_openai.base_url, extra, store_url)
    running = start_gateway(config, port, PROVIDER_ENV)
    yield running
    stop(running.process)


def client(gateway: Gateway, key: str, mode: str | None = "on") -> openai.OpenAI:
    """The openai SDK asking for the cache (`mode`: the x-klawd-cache header, None: absent)."""
    headers = {"x-klawd-cache": mode} if mode else {}
    return openai.OpenAI(
        base_url=f"{gateway.base_url}/v1",
        api_key=key,
        max_retries=0,
        timeout=20,
        default_headers=headers,
    )


def prompt() -> list[dict[str, Any]]:
    """A prompt no other test sends, so the fake's request log counts this test's calls."""
    return [{"role": "user", "content": f"Say hello ({uuid.uuid4().hex})"}]


def upstream_calls(fake: FakeOpenAI, messages: list[dict[str, Any]]) -> int:
    return sum(1 for r in fake.requests if r["body"].get("messages") == messages)


def test_second_identical_request_is_a_free_hit_that_never_reaches_the_upstream(
    cached_gateway: Gateway, fake_openai: FakeOpenAI
) -> None:
    sdk = client(cached_gateway, cached_gateway.new_key())
    messages = prompt()
    first = sdk.chat.completions.with_raw_response.create(
        model="openai/gpt-fake", messages=messages, temperature=0
    )
    second = sdk.chat.completions.with_raw_response.create(
        model="openai/gpt-fake", messages=messages, temperature=0, user="someone-else"
    )
    assert first.headers["x-klawd-cache"] == "miss"
    assert first.headers["x-klawd-cost-usd"] == "0.000020"
    assert second.headers["x-klawd-cache"] == "hit"
    assert float(second.headers["x-klawd-cost-usd"]) == 0
    assert second.headers["x-klawd-model"] == "openai/gpt-fake"
    assert second.headers["x-klawd-provider"] == "openai"
    assert "x-ratelimit-remaining-requests" in second.headers
    answer = second.parse()
    assert answer.choices[0].message.content == ANSWER
    assert answer.id != first.parse().id
    assert upstream_calls(fake_openai, messages) == 1


def test_stream_is_served_from_a_non_streamed_answer(
    cached_gateway: Gateway, fake_openai: FakeOpenAI
) -> None:
    sdk = client(cached_gateway, cached_gateway.new_key())
    messages = prompt()
    sdk.chat.completions.create(model="openai/gpt-fake", messages=messages, temperature=0)
    with sdk.chat.completions.with_streaming_response.create(
        model="openai/gpt-fake",
        messages=messages,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    ) as response:
        assert response.headers["x-klawd-cache"] == "hit"
        chunks = list(response.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ANSWER
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    usage = chunks[-1].usage
    assert usage is not None and usage.total_tokens == 16
    assert usage.model_extra is not None and usage.model_extra["cost_usd"] == 0
    assert upstream_calls(fake_openai, messages) == 1


def test_non_streamed_request_is_served_from_a_streamed_answer(
    cached_gateway: Gateway, fake_openai: FakeOpenAI
) -> None:
    sdk = client(cached_gateway, cached_gateway.new_key())
    messages = prompt()
    streamed = sdk.chat.completions.create(
        model="openai/tools-fake", messages=messages, temperature=0, stream=True
    )
    calls = {}
    for chunk in streamed:
        for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            calls.setdefault(call.index, "")
            calls[call.index] += call.function.arguments or "" if call.function else ""
    hit = sdk.chat.completions.with_raw_response.create(
        model="openai/tools-fake", messages=messages, temperature=0
    )
    assert hit.headers["x-klawd-cache"] == "hit"
    message = hit.parse().choices[0]
    assert message.finish_reason == "tool_calls"
    assert message.message.tool_calls is not None
    assert [c.function.arguments for c in message.message.tool_calls] == [calls[0]]
    assert upstream_calls(fake_openai, messages) == 1


def test_entries_are_never_shared_across_accounts(
    cached_gateway: Gateway, fake_openai: FakeOpenAI
) -> None:
    messages = prompt()
    for key in (cached_gateway.new_key(), cached_gateway.new_key()):
        response = client(cached_gateway, key).chat.completions.with_raw_response.create(
            model="openai/gpt-fake", messages=messages, temperature=0
        )
        assert response.headers["x-klawd-cache"] == "miss"
    assert upstream_calls(fake_openai, messages) == 2


def test_refresh_calls_the_upstream_and_replaces_the_entry(
    cached_gateway: Gateway, fake_openai: FakeOpenAI
) -> None:
    key = cached_gateway.new_key()
    messages = prompt()
    statuses = []
    for mode in ("on", "refresh", "on"):
        response = client(cached_gateway, key, mode).chat.completions.with_raw_response.create(
            model="openai/gpt-fake", messages=messages, temperature=0
        )
        statuses.append(response.headers["x-klawd-cache"])
    assert statuses == ["miss", "miss", "hit"]
    assert upstream_calls(fake_openai, messages) == 2


def test_sampling_requests_bypass_unless_forced(
    cached_gateway: Gateway, fake_openai: FakeOpenAI
) -> None:
    key = cached_gateway.new_key()
    messages = prompt()
    statuses = []
    for mode in ("on", "on", "force", "force"):
        response = client(cached_gateway, key, mode).chat.completions.with_raw_response.create(
            model="openai/gpt-fake",
            messages=messages,  # temperature 1 by default: sampling
        )
        statuses.append(response.headers["x-klawd-cache"])
    assert statuses == ["bypass", "bypass", "miss", "hit"]
    assert upstream_calls(fake_openai, messages) == 3


def test_without_the_header_the_cache_plays_no_part(
    cached_gateway: Gateway, fake_openai: FakeOpenAI
) -> None:
    sdk = client(cached_gateway, cached_gateway.new_key(), mode=None)
    messages = prompt()
    for _ in range(2):
        response = sdk.chat.completions.with_raw_response.create(
            model="openai/gpt-fake", messages=messages, temperature=0
        )
        assert "x-klawd-cache" not in response.headers
    assert upstream_calls(fake_openai, messages) == 2


def test_a_bad_header_value_is_a_400_naming_it(cached_gateway: Gateway) -> None:
    sdk = client(cached_gateway, cached_gateway.new_key(), mode="sometimes")
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(model="openai/gpt-fake", messages=prompt(), temperature=0)
    assert refused.value.body["param"] == "x-klawd-cache"  # type: ignore[index]


def test_hits_count_against_request_limits(cached_gateway: Gateway) -> None:
    key = cached_gateway.new_key(limits={"requests_per_minute": 2})
    sdk = client(cached_gateway, key)
    messages = prompt()
    for _ in range(2):
        sdk.chat.completions.create(model="openai/gpt-fake", messages=messages, temperature=0)
    with pytest.raises(openai.RateLimitError):
        sdk.chat.completions.create(model="openai/gpt-fake", messages=messages, temperature=0)


def test_hits_are_in_the_ledger_metrics_and_log_line_at_no_cost(cached_gateway: Gateway) -> None:
    key = cached_gateway.new_key()
    sdk = client(cached_gateway, key)
    messages = prompt()
    for _ in range(2):
        sdk.chat.completions.create(model="openai/gpt-fake", messages=messages, temperature=0)
    passed = running_deadline(10)
    metrics = log = ""
    account: dict[str, Any] = {}
    log_path = Path(cached_gateway.config).parent / "gateway.log"
    while not passed():
        # (the ledger is written in batches: the account's usage too is waited for)
        account = httpx.get(
            f"{cached_gateway.base_url}/v1/account",
            headers={"authorization": f"Bearer {key}"},
            timeout=10,
        ).json()
        metrics = httpx.get(f"{cached_gateway.base_url}/metrics", timeout=10).text
        log = log_path.read_text(errors="replace")
        hits = [line for line in metrics.splitlines() if 'result="hit"' in line]
        if (
            '"cache":"hit"' in log
            and hits
            and any(not h.endswith(" 0.0") for h in hits)
            and account["usage_today"]["requests"] >= 1
        ):
            break
        time.sleep(0.2)
    assert 'klawd_cache_requests_total{api="chat",result="hit"}' in metrics
    assert '"cache":"hit"' in log and '"cache":"miss"' in log
    usage = account["usage_today"]
    assert usage["requests"] >= 1  # the ledger is written in batches; the hit adds no cost
    assert usage["cost_usd"] <= 0.00002


# -- the other APIs: /v1/embeddings, /v1/messages, /v1/responses (non-stored) -------------------


def mentions(requests: list[dict[str, Any]], marker: str) -> int:
    return sum(1 for r in requests if marker in orjson.dumps(r["body"]).decode())


def test_embeddings_are_cached(cached_gateway: Gateway, fake_openai: FakeOpenAI) -> None:
    sdk = client(cached_gateway, cached_gateway.new_key())
    text = f"embed me {uuid.uuid4().hex}"
    first = sdk.embeddings.with_raw_response.create(model="openai/embed-fake", input=[text])
    second = sdk.embeddings.with_raw_response.create(
        model="openai/embed-fake", input=[text], user="x"
    )
    assert [first.headers["x-klawd-cache"], second.headers["x-klawd-cache"]] == ["miss", "hit"]
    assert float(second.headers["x-klawd-cost-usd"]) == 0
    assert second.parse().data[0].embedding == first.parse().data[0].embedding
    assert mentions(fake_openai.requests, text) == 1


def anthropic_client(gateway: Gateway, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=gateway.base_url,
        api_key=key,
        max_retries=0,
        timeout=20,
        default_headers={"x-klawd-cache": "on"},
    )


@pytest.mark.parametrize("model", ["anthropic/claude-fake", "openai/gpt-fake"])
def test_messages_stream_is_served_from_a_non_streamed_answer(
    cached_gateway: Gateway,
    fake_anthropic: FakeAnthropic,
    fake_openai: FakeOpenAI,
    model: str,
) -> None:
    """Both a pass-through target (Anthropic) and a translated one (OpenAI)."""
    sdk = anthropic_client(cached_gateway, cached_gateway.new_key())
    marker = uuid.uuid4().hex
    asked = [{"role": "user", "content": f"Say hello {marker}"}]
    first = sdk.messages.with_raw_response.create(
        model=model,
        max_tokens=64,
        messages=asked,  # type: ignore[arg-type]
        extra_body={"temperature": 0},
    )
    assert first.headers["x-klawd-cache"] == "miss"
    text = "".join(b.text for b in first.parse().content if b.type == "text")
    again = sdk.messages.with_raw_response.create(
        model=model,
        max_tokens=64,
        messages=asked,  # type: ignore[arg-type]
        extra_body={"temperature": 0},
    )
    assert again.headers["x-klawd-cache"] == "hit"
    assert "".join(b.text for b in again.parse().content if b.type == "text") == text
    assert again.parse().id != first.parse().id
    with sdk.messages.stream(
        model=model,
        max_tokens=64,
        messages=asked,  # type: ignore[arg-type]
        extra_body={"temperature": 0},
    ) as stream:
        final = stream.get_final_message()
    assert "".join(b.text for b in final.content if b.type == "text") == text
    assert final.stop_reason == "end_turn"
    upstream = fake_anthropic.requests if model.startswith("anthropic/") else fake_openai.requests
    assert mentions(upstream, marker) == 1


def test_messages_non_streamed_request_is_served_from_a_streamed_answer(
    cached_gateway: Gateway, fake_openai: FakeOpenAI
) -> None:
    sdk = anthropic_client(cached_gateway, cached_gateway.new_key())
    marker = uuid.uuid4().hex
    asked = [{"role": "user", "content": f"Say hello {marker}"}]
    with sdk.messages.stream(
        model="openai/gpt-fake",
        max_tokens=64,
        messages=asked,  # type: ignore[arg-type]
        extra_body={"temperature": 0},
    ) as stream:
        streamed = stream.get_final_message()
    hit = sdk.messages.with_raw_response.create(
        model="openai/gpt-fake",
        max_tokens=64,
        messages=asked,  # type: ignore[arg-type]
        extra_body={"temperature": 0},
    )
    assert hit.headers["x-klawd-cache"] == "hit"
    assert [b.text for b in hit.parse().content if b.type == "text"] == [
        b.text for b in streamed.content if b.type == "text"
    ]
    assert mentions(fake_openai.requests, marker) == 1


TOOLS: Any = [
    {
        "name": "get_weather",
        "description": "Weather for a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
]


@pytest.mark.parametrize(
    "model",
    [
        "openai/gpt-fake",
        "openai/tools-fake",
        "google/gemini-fake",
        "google/gemini-tools",
        "openai/error-event",
        "openai/cut-fake",
    ],
)
def test_messages_translated_stream_is_the_same_chained_or_assembled_for_the_cache(
    cached_gateway: Gateway, model: str
) -> None:
    """A translated stream on /v1/messages takes one of two paths: asked without the cache,
    the provider's reframer writes the Anthropic events itself (chained in Rust); asked with
    it (a miss), the provider's OpenAI chunks are assembled for the cache and translated by
    the route (`AnthropicEvents`). Through the real gateway and relay, the same bytes but the
    message id, and the official SDK reads the same message (or the same error) from both."""
    key = cached_gateway.new_key()

    def sdk(cache: bool) -> anthropic.Anthropic:
        headers = {"x-klawd-cache": "on"} if cache else {}
        return anthropic.Anthropic(
            base_url=cached_gateway.base_url,
            api_key=key,
            max_retries=0,
            timeout=20,
            default_headers=headers,
        )

    def asked() -> dict[str, Any]:
        marker = uuid.uuid4().hex  # (a prompt of this test's: never a cache hit)
        return {
            "model": model,
            "max_tokens": 64,
            "messages": [{"role": "user", "content": f"Weather in Paris? {marker}"}],
            "extra_body": {"temperature": 0},
            **({"tools": TOOLS} if "tools" in model else {}),
        }

    def raw(cache: bool, request: dict[str, Any]) -> bytes:
        with sdk(cache).messages.with_streaming_response.create(**request, stream=True) as got:
            assert got.headers.get("x-klawd-cache") == ("miss" if cache else None)
            body = got.read()
        # (the message id, and Gemini's tool call ids made of it)
        return re.sub(rb"msg_[0-9a-f]{24}", b"msg_", body)

    request = asked()  # (the cache's first: the chained stream's is not kept)
    chained, assembled = raw(False, request), raw(True, request)
    assert chained == assembled
    assert chained.startswith(b"event: message_start\n")
    whole = model not in ("openai/error-event", "openai/cut-fake")
    assert (b"event: message_stop\n" in chained) == whole
    assert (b"event: error\n" in chained) != whole

    def read(cache: bool, request: dict[str, Any]) -> Any:
        try:
            with sdk(cache).messages.stream(**request) as stream:
                final = orjson.dumps(stream.get_final_message().model_dump(mode="json"))
                return re.sub(rb"msg_[0-9a-f]{24}", b"msg_", final)
        except anthropic.APIStatusError as exc:
            return type(exc), exc.message

    request = asked()
    assert read(False, request) == read(True, request)


def test_non_stored_responses_are_cached_streamed_and_not(
    cached_gateway: Gateway, fake_openai: FakeOpenAI
) -> None:
    sdk = client(cached_gateway, cached_gateway.new_key())
    marker = uuid.uuid4().hex
    asked = f"Say hello {marker}"
    first = sdk.responses.with_raw_response.create(
        model="openai/gpt-fake", input=asked, temperature=0, store=False
    )
    again = sdk.responses.with_raw_response.create(
        model="openai/gpt-fake", input=asked, temperature=0, store=False
    )
    assert [first.headers["x-klawd-cache"], again.headers["x-klawd-cache"]] == ["miss", "hit"]
    assert again.parse().output_text == first.parse().output_text == ANSWER
    assert again.parse().id != first.parse().id
    with sdk.responses.stream(
        model="openai/gpt-fake", input=asked, temperature=0, store=False
    ) as stream:
        assert stream.get_final_response().output_text == ANSWER
    assert mentions(fake_openai.requests, marker) == 1


def test_a_streamed_response_serves_a_later_non_streamed_one(
    cached_gateway: Gateway, fake_openai: FakeOpenAI
) -> None:
    sdk = client(cached_gateway, cached_gateway.new_key())
    marker = uuid.uuid4().hex
    asked = f"Say hello {marker}"
    with sdk.responses.stream(
        model="openai/gpt-fake", input=asked, temperature=0, store=False
    ) as stream:
        streamed = stream.get_final_response().output_text
    hit = sdk.responses.with_raw_response.create(
        model="openai/gpt-fake", input=asked, temperature=0, store=False
    )
    assert hit.headers["x-klawd-cache"] == "hit"
    assert hit.parse().output_text == streamed == ANSWER
    assert mentions(fake_openai.requests, marker) == 1


def test_stored_responses_bypass_the_cache(cached_gateway: Gateway) -> None:
    sdk = client(cached_gateway, cached_gateway.new_key())
    asked = f"Say hello {uuid.uuid4().hex}"
    for _ in range(2):
        response = sdk.responses.with_raw_response.create(
            model="openai/gpt-fake", input=asked, temperature=0
        )
        assert response.headers["x-klawd-cache"] == "bypass"
