"""Resilience end to end: retries, timeouts, keepalive, client disconnects, /status."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.conftest import Gateway
from tests.fakes.openai_upstream import FakeOpenAI
from tests.live_bound import polls
from tests.scrape import parse, total

BOUND_S = 30  # a polling wait's hang guard, in running time (never a timing assertion)


def post(gateway: Gateway, key: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{gateway.base_url}/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json=body,
        timeout=30,
    )


def messages() -> list[dict[str, str]]:
    return [{"role": "user", "content": "hi"}]


def stream_events(gateway: Gateway, key: str, model: str) -> tuple[bytes, list[bytes]]:
    """The whole raw stream, and its data events (keepalive comments left out)."""
    with httpx.stream(
        "POST",
        f"{gateway.base_url}/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={"model": model, "messages": messages(), "stream": True},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        blob = response.read()
    return blob, [e for e in blob.split(b"\n\n") if e and not e.startswith(b":")]


def test_retryable_upstream_failures_are_retried(
    gateway: Gateway, api_key: str, fake_openai: FakeOpenAI
) -> None:
    user = f"flaky-{uuid.uuid4()}"
    response = post(
        gateway, api_key, {"model": "openai/flaky", "messages": messages(), "user": user}
    )
    assert response.status_code == 200
    assert fake_openai.attempts[user] == 3, "two 503s, then the answer"
    assert response.json()["model"] == "openai/flaky"


def test_first_byte_timeout_is_504(gateway: Gateway, api_key: str) -> None:
    # the fake holds its answer until the gateway lets go: a 504 means the 1 s first-byte
    # timeout cut it
    response = post(gateway, api_key, {"model": "slowai/hang-headers", "messages": messages()})
    assert response.status_code == 504
    assert response.json()["error"]["type"] == "gateway_timeout"


def test_idle_stream_ends_with_a_timeout_event(gateway: Gateway, api_key: str) -> None:
    blob, events = stream_events(gateway, api_key, "slowai/stall-stream")
    assert b"[DONE]" not in blob
    last = orjson.loads(events[-1][len(b"data: ") :])
    assert last["error"]["type"] == "gateway_timeout"


def test_silent_upstream_gets_keepalive_comments_the_sdk_ignores(
    gateway: Gateway, api_key: str, fake_openai: FakeOpenAI
) -> None:
    with httpx.stream(
        "POST",
        f"{gateway.base_url}/v1/chat/completions",
        headers={"authorization": f"Bearer {api_key}"},
        json={"model": "openai/pause-fake", "messages": messages(), "stream": True},
        timeout=30,
    ) as response:
        reads = []
        for read in response.iter_raw():
            reads.append(read)
            if sum(r.count(b": keepalive\n\n") for r in reads) >= 2:
                fake_openai.release()
    blob = b"".join(reads)
    assert blob.count(b": keepalive\n\n") >= 2
    assert blob.endswith(b"data: [DONE]\n\n")
    # the official SDK reads the same kind of stream without noticing the comments
    client = openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key=api_key, max_retries=0)
    stream = client.chat.completions.create(
        model="openai/pause-fake", messages=messages(), stream=True
    )  # type: ignore[arg-type]
    first = next(iter(stream))
    time.sleep(2.5)
    fake_openai.release()
    rest = list(stream)
    assert first.choices[0].delta.role == "assistant"
    assert rest[-1].choices[0].finish_reason == "stop"


def test_client_disconnect_cancels_the_upstream_and_bills_what_was_sent(
    gateway: Gateway, fake_openai: FakeOpenAI
) -> None:
    key = gateway.new_key(plan="enterprise", credits_usd=10.0)
    user = f"hold-{uuid.uuid4()}"
    with httpx.stream(
        "POST",
        f"{gateway.base_url}/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={"model": "openai/hold-fake", "messages": messages(), "stream": True, "user": user},
        timeout=30,
    ) as response:
        first = next(response.iter_raw())
        assert first.startswith(b"data: {")
        closed_at = time.monotonic()
    # within 5 s of this process's running time (a stop of the machine counts 0.5 s): the
    # upstream (held 60 s) closed at once, not at its own end
    for _ in polls(5, 0.02):
        if user in fake_openai.disconnected_at:
            break
    assert user in fake_openai.disconnected_at, "the upstream connection was not closed in 5 s"
    print(f"upstream closed {fake_openai.disconnected_at[user] - closed_at:.3f} s after the client")
    view: dict[str, Any] = {}
    for _ in polls(10, 0.05):
        view = httpx.get(
            f"{gateway.base_url}/v1/account", headers={"authorization": f"Bearer {key}"}
        ).json()
        if view["usage_today"]["requests"] == 1:
            break
    assert view["usage_today"]["requests"] == 1, "the abandoned stream is in the ledger"
    assert view["usage_today"]["prompt_tokens"] >= 1, "billed by estimate: no upstream usage came"


def test_status_shows_provider_health_as_json_and_html(gateway: Gateway, api_key: str) -> None:
    for _ in range(6):
        post(gateway, api_key, {"model": "openai/fail-500~status", "messages": messages()})
    post(gateway, api_key, {"model": "openai/gpt-fake", "messages": messages()})
    status = httpx.get(f"{gateway.base_url}/status").json()
    openai_status = next(p for p in status["providers"] if p["name"] == "openai")
    models = {m["id"]: m for m in openai_status["models"]}
    assert models["openai/fail-500~status"]["state"] == "open"
    assert models["openai/gpt-fake"]["state"] == "closed"
    assert openai_status["state"] == "degraded"
    assert 0 < openai_status["error_rate"] < 1
    assert openai_status["latency_ms"] is not None
    page = httpx.get(f"{gateway.base_url}/status", headers={"accept": "text/html"})
    assert page.headers["content-type"].startswith("text/html")
    assert "<table>" in page.text and "openai" in page.text


def test_open_circuit_answers_503_fast_without_calling_upstream(
    gateway: Gateway, api_key: str, fake_openai: FakeOpenAI
) -> None:
    for _ in range(6):
        post(gateway, api_key, {"model": "openai/fail-500~open", "messages": messages()})
    before = len(fake_openai.requests)
    response = post(gateway, api_key, {"model": "openai/fail-500~open", "messages": messages()})
    assert response.status_code == 503
    assert "circuit open" in response.json()["error"]["message"]
    assert int(response.headers["retry-after"]) >= 1
    assert len(fake_openai.requests) == before


@pytest.mark.parametrize(
    ("model", "error_type"),
    [
        ("openai/cut-then-fallback", "bad_gateway"),
        ("openai/error-then-fallback", "service_unavailable"),
    ],
    ids=["cut", "error-event"],
)
def test_streams_the_upstream_breaks_off_open_the_circuit_and_the_fallback_serves(
    gateway: Gateway, api_key: str, model: str, error_type: str
) -> None:
    """Each stream starts (200, events relayed) and is then cut by the upstream, or ended
    by its error event (its server failing: a 503 mid-stream): counted served when it
    started, and a failure once it broke off. After five, the circuit is open and the model's
    fallback serves the next stream whole. Before, a deployment that broke every stream after
    its first byte was never taken out of rotation, and until the error event was counted, one
    that said it failed mid-stream neither (the drain's 503 is not counted)."""
    body = {"model": model, "messages": messages(), "stream": True}
    headers = {"authorization": f"Bearer {api_key}"}
    for _ in range(5):
        with httpx.stream(
            "POST", f"{gateway.base_url}/v1/chat/completions", headers=headers, json=body
        ) as response:
            assert response.headers["x-klawd-model"] == model
            assert f'"{error_type}"'.encode() in response.read()
    with httpx.stream(
        "POST", f"{gateway.base_url}/v1/chat/completions", headers=headers, json=body
    ) as response:
        assert response.headers["x-klawd-model"] == "openai/gpt-fake"
        assert response.read().endswith(b"data: [DONE]\n\n")


@pytest.mark.asked_again_if_stopped
def test_slow_trickle_is_cut_by_the_total_timeout(gateway: Gateway, api_key: str) -> None:
    """Never idle for 1 s, but 5 s in all: the 3 s whole-request timeout ends it. A stream
    during which the machine was stopped (the gateway with it) and that failed is asked again
    (tests/asked_again.py): resumed, the gateway's 1 s idle timer (or its 3 s one) has run out
    in the stop, not in the trickle's pace, and cuts the stream after too few events to show
    anything."""
    blob, events = stream_events(gateway, api_key, "slowai/trickle")
    assert len(events) > 3, "the trickle was relayed while it lasted"
    assert b"[DONE]" not in blob
    assert orjson.loads(events[-1][len(b"data: ") :])["error"]["type"] == "gateway_timeout"


def retries_of(gateway: Gateway, provider: str) -> float:
    samples = parse(httpx.get(f"{gateway.base_url}/metrics").text)
    return total(samples, "klawd_upstream_retries_total", provider=provider, kind="request")


def test_refused_connection_is_retried_then_503(gateway: Gateway) -> None:
    key = gateway.new_key(credits_usd=1.0)
    before = retries_of(gateway, "deadai")
    response = post(gateway, key, {"model": "deadai/refused", "messages": messages()})
    assert retries_of(gateway, "deadai") - before == 2, "three tries: two retries"
    assert response.status_code == 503
    assert "unreachable" in response.json()["error"]["message"]
    view: dict[str, Any] = {}
    for _ in polls(BOUND_S, 0.05):  # the ledger is written after the answer
        view = httpx.get(
            f"{gateway.base_url}/v1/account", headers={"authorization": f"Bearer {key}"}
        ).json()
        if view["usage_today"]["requests"] == 1:
            break
    assert view["usage_today"]["requests"] == 1
    assert view["credits_usd"] == 1.0, "nothing billed, the reservation released"
