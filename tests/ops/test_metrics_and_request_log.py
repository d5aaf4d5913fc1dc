"""/metrics and the per-request JSON log line, against the session gateway (embedded store)."""

from __future__ import annotations

import time

import httpx
import orjson
from starlette.routing import Mount

from gateway.app import routes
from tests.conftest import UPSTREAM_KEY, Gateway
from tests.fakes.openai_upstream import FakeOpenAI
from tests.live_bound import running_deadline
from tests.scrape import scrape, total

PROMPT = "a prompt that must never reach a log line or a label"


def chat(gateway: Gateway, key: str, model: str, request_id: str, stream: bool = False) -> int:
    with httpx.Client(timeout=20) as client:
        response = client.post(
            f"{gateway.base_url}/v1/chat/completions",
            headers={"authorization": f"Bearer {key}", "x-request-id": request_id},
            json={
                "model": model,
                "stream": stream,
                "messages": [{"role": "user", "content": PROMPT}],
            },
        )
        response.read()
        return response.status_code


def route_templates() -> set[str]:
    """Every route template of the app, with the prefix of the mounts they sit under."""
    templates = set()
    for route in routes():
        if isinstance(route, Mount):
            templates |= {route.path + getattr(child, "path", "") for child in route.routes}
        else:
            templates.add(getattr(route, "path", ""))
    return templates


def log_lines(gateway: Gateway, request_id: str) -> list[dict[str, object]]:
    """The JSON request lines of `request_id` (the writer thread may lag a little)."""
    passed = running_deadline(10)
    while True:
        text = (gateway.config.parent / "gateway.log").read_text(errors="replace")
        lines = [
            orjson.loads(line)
            for line in text.splitlines()
            if line.startswith("{") and f'"request_id":"{request_id}"' in line
        ]
        if lines or passed():
            return lines
        time.sleep(0.05)


def test_chat_requests_are_counted_by_route_model_provider_and_status_class(
    gateway: Gateway, api_key: str
) -> None:
    url = f"{gateway.base_url}/metrics"
    _, before = scrape(url)
    assert chat(gateway, api_key, "openai/gpt-fake", "req-metrics-count-1") == 200
    assert chat(gateway, api_key, "openai/gpt-fake", "req-metrics-count-2", stream=True) == 200
    _, after = scrape(url)

    def grew(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert (
        grew("klawd_requests_total", model="openai/gpt-fake", provider="openai", status_class="2xx")
        == 2
    )
    assert grew("klawd_requests_total", model="openai/gpt-fake", stream="true") == 1
    assert (
        grew(
            "klawd_http_requests_total",
            route="/v1/chat/completions",
            method="POST",
            status_class="2xx",
        )
        == 2
    )
    assert grew("klawd_http_request_duration_seconds_count", route="/v1/chat/completions") == 2
    assert grew("klawd_http_time_to_first_byte_seconds_count", route="/v1/chat/completions") == 2
    assert grew("klawd_upstream_request_duration_seconds_count", provider="openai") == 2
    assert grew("klawd_tokens_total", model="openai/gpt-fake", type="prompt") > 0
    assert grew("klawd_tokens_total", model="openai/gpt-fake", type="completion") > 0
    assert grew("klawd_cost_usd_total", model="openai/gpt-fake") > 0
    assert grew("klawd_admitted_total", plan="enterprise") == 2
    assert grew("klawd_store_operation_duration_seconds_count", operation="admit") >= 2
    assert total(after, "klawd_open_streams") == 0


def test_upstream_errors_are_counted_by_provider_and_error_type(
    gateway: Gateway, api_key: str
) -> None:
    url = f"{gateway.base_url}/metrics"
    _, before = scrape(url)
    assert chat(gateway, api_key, "openai/fail-401", "req-metrics-upstream-401") == 502
    _, after = scrape(url)
    labels = {"provider": "openai", "type": "bad_gateway"}
    assert (
        total(after, "klawd_upstream_errors_total", **labels)
        - total(before, "klawd_upstream_errors_total", **labels)
        == 1
    )
    assert (
        total(after, "klawd_requests_total", model="none", status_class="5xx")
        - total(before, "klawd_requests_total", model="none", status_class="5xx")
        == 1
    )


def test_rate_limited_requests_are_counted_by_plan(gateway: Gateway) -> None:
    key = gateway.new_key(plan="free", credits_usd=1.0)
    url = f"{gateway.base_url}/metrics"
    _, before = scrape(url)
    statuses = [chat(gateway, key, "klawd/echo", f"req-metrics-limit-{i}") for i in range(11)]
    assert statuses.count(429) == 1
    _, after = scrape(url)
    labels = {"plan": "free", "outcome": "rate_limited"}
    assert (
        total(after, "klawd_rate_limited_total", **labels)
        - total(before, "klawd_rate_limited_total", **labels)
        == 1
    )


def test_no_label_holds_an_unknown_model_a_key_a_request_id_or_user_text(
    gateway: Gateway, api_key: str
) -> None:
    assert chat(gateway, api_key, "nobody/secret-model-xyz", "req-label-probe-42") == 404
    assert chat(gateway, api_key, "openai/gpt-fake", "req-label-probe-43") == 200
    httpx.get(f"{gateway.base_url}/v1/models/evil%20path%20text", timeout=10)
    text, samples = scrape(f"{gateway.base_url}/metrics")
    for forbidden in ("secret-model-xyz", api_key, "req-label-probe", "evil", PROMPT, UPSTREAM_KEY):
        assert forbidden not in text
    routes = {dict(labels).get("route") for name, labels in samples if "route" in dict(labels)}
    assert "/v1/models/{model_id:path}" in routes
    assert routes <= route_templates() | {"unmatched"}


def test_each_request_writes_one_json_log_line_without_key_or_prompt(
    gateway: Gateway, api_key: str
) -> None:
    assert chat(gateway, api_key, "openai/gpt-fake", "req-log-line-stream", stream=True) == 200
    [line] = log_lines(gateway, "req-log-line-stream")
    assert line["route"] == "/v1/chat/completions"
    assert line["status"] == 200
    assert line["model"] == "openai/gpt-fake"
    assert line["provider"] == "openai"
    assert line["stream"] is True
    assert isinstance(line["account_id"], str) and line["account_id"]
    assert isinstance(line["prompt_tokens"], int) and line["prompt_tokens"] > 0
    assert isinstance(line["completion_tokens"], int) and line["completion_tokens"] > 0
    assert isinstance(line["cost_usd"], float) and line["cost_usd"] > 0
    assert line["retries"] == 0
    assert isinstance(line["latency_ms"], float)
    assert isinstance(line["ttfb_ms"], float) and line["ttfb_ms"] <= line["latency_ms"]
    log_text = (gateway.config.parent / "gateway.log").read_text(errors="replace")
    assert api_key not in log_text
    assert PROMPT not in log_text


def test_a_request_refused_before_admission_is_logged_too(gateway: Gateway) -> None:
    with httpx.Client(timeout=10) as client:
        response = client.get(
            f"{gateway.base_url}/v1/account",
            headers={"authorization": "Bearer sk-klawd-wrong", "x-request-id": "req-log-401"},
        )
    assert response.status_code == 401
    [line] = log_lines(gateway, "req-log-401")
    assert line["status"] == 401
    assert line["route"] == "/v1/account"
    assert line["account_id"] is None
    assert "sk-klawd-wrong" not in (gateway.config.parent / "gateway.log").read_text()


def test_a_stream_is_logged_and_counted_when_it_ends_not_when_it_starts(
    gateway: Gateway, api_key: str, fake_openai: FakeOpenAI
) -> None:
    held_s = 0.5
    with (
        httpx.Client(timeout=20) as client,
        client.stream(
            "POST",
            f"{gateway.base_url}/v1/chat/completions",
            headers={"authorization": f"Bearer {api_key}", "x-request-id": "req-log-held"},
            json={"model": "openai/pause-fake", "stream": True, "messages": [{"role": "user",
                  "content": PROMPT}]},
        ) as response,
    ):  # fmt: skip
        chunks = response.iter_bytes()
        assert next(chunks).startswith(b"data: ")
        _, during = scrape(f"{gateway.base_url}/metrics")
        assert total(during, "klawd_open_streams", route="/v1/chat/completions") == 1
        time.sleep(held_s)
        assert "req-log-held" not in (gateway.config.parent / "gateway.log").read_text()
        fake_openai.release()
        rest = b"".join(chunks)
    assert rest.endswith(b"data: [DONE]\n\n")
    [line] = log_lines(gateway, "req-log-held")
    assert isinstance(line["latency_ms"], float) and line["latency_ms"] >= held_s * 1000
    assert isinstance(line["ttfb_ms"], float) and line["ttfb_ms"] < line["latency_ms"]
    _, after = scrape(f"{gateway.base_url}/metrics")
    assert total(after, "klawd_open_streams", route="/v1/chat/completions") == 0
