"""Traces end to end: the gateway process with `[telemetry] otlp_endpoint` set exports over
OTLP/HTTP to a real receiver started here (protobuf decoded with opentelemetry-proto); the
official openai SDK is the client and the fake OpenAI upstream records the headers it got."""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from tests.conftest import (
    ADMIN_TOKEN,
    UPSTREAM_KEY,
    Gateway,
    free_port,
    gateway_config,
    start_gateway,
    stop,
)
from tests.fakes.openai_upstream import ANSWER_WORDS, FakeOpenAI
from tests.fakes.otlp_receiver import CLIENT, ERROR, SERVER, OtlpReceiver, ReceivedSpan
from tests.live_bound import running_deadline

SECRET_PROMPT = "tell nobody: the-prompt-text-7f3a"


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    server = OtlpReceiver()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def traced(
    receiver: OtlpReceiver, fake_openai: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    directory = tmp_path_factory.mktemp("traced")
    port = free_port()
    config = directory / "klawd.toml"
    extra = (
        f'[telemetry]\notlp_endpoint = "{receiver.origin}"\nservice_name = "klawd-test"\n'
        "sample_ratio = 1.0\n\n[cache]\nenabled = true\n"
    )
    gateway_config(config, port, fake_openai.base_url, extra)
    # the SDK's batch processor sends every 100 ms instead of 5 s (its own setting)
    running = start_gateway(config, port, {"OTEL_BSP_SCHEDULE_DELAY": "100"})
    yield running
    stop(running.process)


def client(gateway: Gateway, key: str, trace_id: str, **headers: str) -> openai.OpenAI:
    """Every request carries a traceparent with `trace_id` (a sampled remote parent)."""
    parent = f"00-{trace_id}-{secrets.token_hex(8)}-01"
    return openai.OpenAI(
        base_url=f"{gateway.base_url}/v1",
        api_key=key,
        max_retries=0,
        timeout=20,
        default_headers={"traceparent": parent, **headers},
    )


def new_trace() -> str:
    return secrets.token_hex(16)


def messages() -> list[dict[str, Any]]:
    return [{"role": "user", "content": f"{SECRET_PROMPT} {uuid.uuid4().hex}"}]


def log_line(gateway: Gateway, request_id: str) -> dict[str, Any]:
    """The request's JSON log line (written in batches: a bounded wait)."""
    path = Path(gateway.config).parent / "gateway.log"
    passed = running_deadline(10)
    while not passed():
        for text in path.read_text(errors="replace").splitlines():
            if f'"request_id":"{request_id}"' in text:
                line: dict[str, Any] = orjson.loads(text)
                return line
        time.sleep(0.05)
    raise AssertionError(f"no log line for {request_id}")


def by_kind(spans: list[ReceivedSpan], kind: int) -> list[ReceivedSpan]:
    return [s for s in spans if s.kind == kind]


def test_a_request_is_a_server_span_with_the_genai_attributes(
    traced: Gateway, receiver: OtlpReceiver
) -> None:
    trace_id = new_trace()
    key = traced.new_key()
    client(traced, key, trace_id).chat.completions.create(
        model="openai/gpt-fake", messages=messages(), temperature=0
    )
    spans = receiver.trace(trace_id, 2)
    [server] = by_kind(spans, SERVER)
    [upstream] = by_kind(spans, CLIENT)
    assert server.name == "POST /v1/chat/completions"
    assert server.resource["service.name"] == "klawd-test"
    a = server.attributes
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.provider.name"] == "openai"
    assert a["gen_ai.request.model"] == "openai/gpt-fake"
    assert a["gen_ai.response.model"] == "openai/gpt-fake"
    assert a["gen_ai.usage.input_tokens"] == 12
    assert a["gen_ai.usage.output_tokens"] == 4
    assert a["gen_ai.response.finish_reasons"] == ["stop"]
    assert a["klawd.deployment"] == "openai"
    assert a["klawd.account_id"].startswith("acct_")
    assert a["klawd.cost_usd"] == pytest.approx(0.00002)
    assert a["http.route"] == "/v1/chat/completions"
    assert a["http.response.status_code"] == 200
    assert server.status_code != ERROR
    assert upstream.parent_span_id == server.span_id
    assert upstream.attributes["gen_ai.request.model"] == "gpt-fake"
    assert upstream.attributes["gen_ai.provider.name"] == "openai"
    assert upstream.attributes["klawd.deployment"] == "openai"


def test_incoming_traceparent_is_the_parent_and_goes_upstream(
    traced: Gateway, receiver: OtlpReceiver, fake_openai: FakeOpenAI
) -> None:
    trace_id, parent_id = new_trace(), secrets.token_hex(8)
    sdk = openai.OpenAI(
        base_url=f"{traced.base_url}/v1",
        api_key=traced.new_key(),
        max_retries=0,
        default_headers={"traceparent": f"00-{trace_id}-{parent_id}-01"},
    )
    asked = messages()
    response = sdk.chat.completions.with_raw_response.create(
        model="openai/gpt-fake", messages=asked, temperature=0
    )
    spans = receiver.trace(trace_id, 2)
    [server] = by_kind(spans, SERVER)
    [upstream] = by_kind(spans, CLIENT)
    assert server.parent_span_id == parent_id
    [seen] = [r for r in fake_openai.requests if r["body"].get("messages") == asked]
    assert seen["headers"]["traceparent"] == f"00-{trace_id}-{upstream.span_id}-01"
    assert log_line(traced, response.headers["x-request-id"])["trace_id"] == trace_id


def test_a_request_without_traceparent_starts_a_trace_named_in_its_log_line(
    traced: Gateway, receiver: OtlpReceiver
) -> None:
    sdk = openai.OpenAI(base_url=f"{traced.base_url}/v1", api_key=traced.new_key(), max_retries=0)
    response = sdk.chat.completions.with_raw_response.create(
        model="openai/gpt-fake", messages=messages(), temperature=0
    )
    line = log_line(traced, response.headers["x-request-id"])
    spans = receiver.trace(line["trace_id"], 2)
    [server] = by_kind(spans, SERVER)
    assert server.parent_span_id == ""


def test_each_retry_and_fallback_is_a_client_span_under_the_request(
    traced: Gateway, receiver: OtlpReceiver
) -> None:
    trace_id = new_trace()
    sdk = client(traced, traced.new_key(), trace_id)
    # fail-500 three times (the retry policy), then the fallback model answers
    sdk.chat.completions.create(model="openai/fallback-chain", messages=messages(), temperature=0)
    spans = receiver.trace(trace_id, 5)
    [server] = by_kind(spans, SERVER)
    attempts = sorted(by_kind(spans, CLIENT), key=lambda s: s.attributes["klawd.attempt"])
    assert [s.attributes["klawd.attempt"] for s in attempts] == [0, 1, 2, 3]
    assert all(s.parent_span_id == server.span_id for s in attempts)
    assert [s.attributes["gen_ai.request.model"] for s in attempts] == [
        "fail-500",
        "fail-500",
        "fail-500",
        "gpt-fake",
    ]
    assert [s.status_code == ERROR for s in attempts] == [True, True, True, False]
    assert attempts[0].attributes["error.type"] == "service_unavailable"
    assert server.attributes["gen_ai.response.model"] == "openai/gpt-fake"


def test_a_failed_request_is_an_error_span(traced: Gateway, receiver: OtlpReceiver) -> None:
    trace_id = new_trace()
    sdk = client(traced, traced.new_key(), trace_id)
    with pytest.raises(openai.APIStatusError):
        sdk.chat.completions.create(model="openai/fail-500", messages=messages(), temperature=0)
    spans = receiver.trace(trace_id, 4)
    [server] = by_kind(spans, SERVER)
    assert server.status_code == ERROR
    assert server.attributes["http.response.status_code"] == 503
    assert server.attributes["error.type"] == "503"
    assert len(by_kind(spans, CLIENT)) == 3


def test_a_stream_span_carries_usage_finish_reason_and_cache_status(
    traced: Gateway, receiver: OtlpReceiver
) -> None:
    trace_id = new_trace()
    sdk = client(traced, traced.new_key(), trace_id, **{"x-klawd-cache": "on"})
    asked = messages()
    for _ in range(2):  # a miss, then a hit that never goes upstream
        stream = sdk.chat.completions.create(
            model="openai/gpt-fake",
            messages=asked,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        for _ in stream:
            pass
    spans = receiver.trace(trace_id, 3)
    servers = by_kind(spans, SERVER)
    assert sorted(s.attributes["klawd.cache"] for s in servers) == ["hit", "miss"]
    [miss] = [s for s in servers if s.attributes["klawd.cache"] == "miss"]
    [hit] = [s for s in servers if s.attributes["klawd.cache"] == "hit"]
    assert miss.attributes["gen_ai.usage.output_tokens"] == 4
    assert miss.attributes["gen_ai.response.finish_reasons"] == ["stop"]
    assert hit.attributes["klawd.cost_usd"] == 0
    assert len(by_kind(spans, CLIENT)) == 1, "the hit made no upstream attempt"


def test_no_span_holds_a_prompt_a_completion_or_a_secret(
    traced: Gateway, receiver: OtlpReceiver
) -> None:
    trace_id = new_trace()
    key = traced.new_key()
    sdk = client(traced, key, trace_id)
    sdk.chat.completions.create(model="openai/gpt-fake", messages=messages(), temperature=0)
    with pytest.raises(openai.APIStatusError):
        sdk.chat.completions.create(model="openai/fail-401", messages=messages(), temperature=0)
    receiver.trace(trace_id, 4)
    exported = b"".join(receiver.raw)
    answer = "".join(ANSWER_WORDS)
    for forbidden in (SECRET_PROMPT, answer, key, UPSTREAM_KEY, ADMIN_TOKEN):
        assert forbidden.encode() not in exported
