"""A request refused at admission (429 for the rate limit, 402 for credit or a key's budget)
leaves no trace on any route that meters: no upstream call, no stored response, no ledger entry
(so no usage and no budget webhook, which are made of settled entries), its request log line
with the refusal's status, and the admission metrics counting one refusal and no admission. On
both stores: the embedded one refuses inside `Meter.start` (decided there, since 696f086),
before the route's `overlapping`; Redis refuses once the admission's reply is read, at the
upstream call's gate or `overlapping`'s exit. What a route does between the two is what this
watches. The app in process as Granian drives it (tests/integration/test_streams_freed.py's
`App`). /v1/messages both ways: reframed to an OpenAI upstream, and passed through to an
Anthropic one (the fake Anthropic API)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import uvloop

from gateway.store.base import StoredResponse
from tests.conftest import ADMIN_TOKEN, free_port, gateway_config
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.openai_upstream import FakeOpenAI
from tests.integration.test_request_log_status import Seen
from tests.integration.test_streams_freed import App, started
from tests.live_bound import within
from tests.redis_server import RedisServer

MODELS = """
[[models]]
id = "openai/embed-fake"
provider = "openai"
upstream_model = "embed-fake"
kind = "embedding"
input_usd_per_mtok = 0.5

[[models]]
id = "openai/img-fake"
provider = "openai"
upstream_model = "img-fake"
kind = "image"
usd_per_image = 0.04
capabilities = ["images"]

[[models]]
id = "anthropic/claude-fake"
provider = "anthropic"
upstream_model = "claude-fake"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0
"""

HI = [{"role": "user", "content": "hi"}]
# Each metered route's requests, priced (a model that costs: credit is reserved for it).
# "PREVIOUS" is replaced by a response the account stored before.
REQUESTS: dict[str, tuple[str, dict[str, Any]]] = {
    "chat": ("/v1/chat/completions", {"model": "openai/gpt-fake", "messages": HI}),
    "chat-stream": (
        "/v1/chat/completions",
        {"model": "openai/gpt-fake", "messages": HI, "stream": True},
    ),
    "messages": ("/v1/messages", {"model": "openai/gpt-fake", "messages": HI, "max_tokens": 64}),
    "messages-stream": (
        "/v1/messages",
        {"model": "openai/gpt-fake", "messages": HI, "max_tokens": 64, "stream": True},
    ),
    "messages-passthrough": (
        "/v1/messages",
        {"model": "anthropic/claude-fake", "messages": HI, "max_tokens": 64},
    ),
    "messages-passthrough-stream": (
        "/v1/messages",
        {"model": "anthropic/claude-fake", "messages": HI, "max_tokens": 64, "stream": True},
    ),
    "responses": ("/v1/responses", {"model": "openai/gpt-fake", "input": "hi"}),
    "responses-stream": (
        "/v1/responses",
        {"model": "openai/gpt-fake", "input": "hi", "stream": True},
    ),
    "responses-previous": (
        "/v1/responses",
        {"model": "openai/gpt-fake", "input": "and?", "previous_response_id": "PREVIOUS"},
    ),
    "responses-previous-stream": (
        "/v1/responses",
        {
            "model": "openai/gpt-fake",
            "input": "and?",
            "previous_response_id": "PREVIOUS",
            "stream": True,
        },
    ),
    "responses-unstored": (
        "/v1/responses",
        {"model": "openai/gpt-fake", "input": "hi", "store": False},
    ),
    "embeddings": ("/v1/embeddings", {"model": "openai/embed-fake", "input": "hello"}),
    "images": ("/v1/images/generations", {"model": "openai/img-fake", "prompt": "a cat"}),
}
NUMBERS = itertools.count()


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def config(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    fake_openai: FakeOpenAI,
    fake_anthropic: FakeAnthropic,
) -> Iterator[Path]:
    store_url = None
    if request.param == "redis":
        redis_server: RedisServer = request.getfixturevalue("redis_server")
        store_url = redis_server.url
    path = tmp_path_factory.mktemp(f"refusals-{request.param}") / "klawd.toml"
    # The app's environment holds one upstream key (`App`); the fake takes any.
    anthropic = (
        f'[providers.anthropic]\nbase_url = "{fake_anthropic.base_url}"\n'
        'api_key_env = "OPENAI_API_KEY"\n'
    )
    gateway_config(
        path, free_port(), fake_openai.base_url, extra=anthropic + MODELS, store_url=store_url
    )
    yield path


async def admin(app: App, path: str, body: dict[str, Any]) -> dict[str, Any]:
    status, answer = await app.request(path, orjson.dumps(body), ADMIN_TOKEN)
    assert status == 201, answer
    found: dict[str, Any] = orjson.loads(answer)
    return found


async def refusable_key(app: App, refusal: str) -> tuple[str, str]:
    """A key whose next priced request is refused as `refusal` says, and a response its account
    stored (by an admitted request to klawd/echo, which reserves no credit): "rate" a key of one
    request a minute, "credit" an account without credit, "budget" a key whose budget is one
    micro-dollar."""
    account = await admin(
        app,
        "/admin/accounts",
        {"name": "refused", "plan": "enterprise", "credits_usd": 0 if refusal == "credit" else 100},
    )
    rules: dict[str, Any] = {}
    if refusal == "rate":
        rules["limits"] = {"requests_per_minute": 1}
    elif refusal == "budget":
        rules["budget"] = {"usd_total": 0.000001}
    key = (await admin(app, f"/admin/accounts/{account['id']}/keys", rules))["key"]
    status, stored = await app.request(
        "/v1/responses", orjson.dumps({"model": "klawd/echo", "input": "hi"}), key
    )
    assert status == 200, stored
    return key, orjson.loads(stored)["id"]


def refusals_and_admissions(app: App) -> dict[str, float]:
    metrics = app.state["klawd"].meter.observer.metrics
    metrics.buffer.flush()
    read = metrics.registry.get_sample_value
    return {
        outcome: read("klawd_rate_limited_total", {"plan": "enterprise", "outcome": outcome}) or 0
        for outcome in ("rate_limited", "insufficient_credits", "key_budget_exceeded")
    } | {"admitted": read("klawd_admitted_total", {"plan": "enterprise"}) or 0}


@pytest.mark.parametrize(
    ("refusal", "status", "outcome"),
    [
        ("rate", 429, "rate_limited"),
        ("credit", 402, "insufficient_credits"),
        ("budget", 402, "key_budget_exceeded"),
    ],
)
def test_a_refused_request_leaves_no_trace_on_any_metered_route(
    config: Path,
    fake_openai: FakeOpenAI,
    fake_anthropic: FakeAnthropic,
    refusal: str,
    status: int,
    outcome: str,
) -> None:

    async def main() -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        async with started(config) as app:
            seen = Seen(app)
            state = app.state["klawd"]
            kept: list[str] = []
            put_response = state.store.put_response

            async def put(stored: StoredResponse) -> None:
                kept.append(stored.id)
                await put_response(stored)

            state.store.put_response = put
            for name, (route, body) in REQUESTS.items():
                # a key of its own: on Redis each refusal is the store's answer, not one
                # remembered from the key's last
                key, previous = await refusable_key(app, refusal)
                if body.get("previous_response_id") == "PREVIOUS":
                    body = body | {"previous_response_id": previous}
                await asyncio.sleep(0.05)  # the echo's ledger entry settled
                before = refusals_and_admissions(app)
                upstream_before = len(fake_openai.requests) + len(fake_anthropic.requests)
                kept.clear()
                request_id = f"req_refused_{next(NUMBERS)}"
                answer_status, answer = await app.request(
                    route, orjson.dumps(body), key, request_id=request_id
                )
                for _ in range(10):  # what the request's end scheduled (ledger, log)
                    await asyncio.sleep(0.01)
                after = refusals_and_admissions(app)
                found[name] = {
                    "status": answer_status,
                    "error": "error" in orjson.loads(answer),
                    "upstream calls": len(fake_openai.requests)
                    + len(fake_anthropic.requests)
                    - upstream_before,
                    "responses kept": len(kept),
                    "ledger": seen.ledger.get(request_id),
                    "logged": seen.lines.get(request_id, {}).get("status"),
                    "metrics": {k: after[k] - before[k] for k in after},
                }
        return found

    found = uvloop.run(within(main(), 120))
    metrics = {
        "rate_limited": 0,
        "insufficient_credits": 0,
        "key_budget_exceeded": 0,
        "admitted": 0,
    } | {outcome: 1}
    expected = {
        "status": status,
        "error": True,
        "upstream calls": 0,
        "responses kept": 0,
        "ledger": None,
        "logged": status,
        "metrics": metrics,
    }
    wrong = {name: seen for name, seen in found.items() if seen != expected}
    assert not wrong, f"expected on every route {expected}; otherwise: {wrong}"
