"""`budget.threshold` through the gateway process: a key's spend passing 80 % and then 100 % of
its daily budget is announced once per threshold, signed like every event, to a receiver on
loopback (tests/fakes/webhook_receiver.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import Gateway, free_port, gateway_config, start_gateway, stop
from tests.fakes.openai_upstream import FakeOpenAI
from tests.fakes.webhook_receiver import WebhookReceiver, verify
from tests.webhooks.test_webhooks_e2e import FAST_HOOKS, receiver, set_hook, wait_for

__all__ = ["receiver"]  # the module-scoped receiver fixture

# The fake answers 12 prompt and 4 completion tokens; openai/gpt-fake costs $1 and $2 per
# million: $0.000020 per request. With max_tokens=1 and "hi" the worst case reserved is
# (ceil(2/3) + 4) tokens in + 1 out = $0.000007.
COST_USD = 0.00002


@pytest.fixture(scope="module")
def hooked(fake_openai: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    directory = tmp_path_factory.mktemp("budget-hooks")
    port = free_port()
    gateway_config(directory / "klawd.toml", port, fake_openai.base_url, extra=FAST_HOOKS)
    running = start_gateway(directory / "klawd.toml", port)
    yield running
    stop(running.process)


def chat(gateway: Gateway, key: str) -> httpx.Response:
    return httpx.post(
        f"{gateway.base_url}/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={
            "model": "openai/gpt-fake",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 1,
        },
        timeout=20,
    )


def thresholds(receiver: WebhookReceiver) -> list[dict[str, Any]]:
    return [d for d in receiver.deliveries("/budget") if d["event"]["type"] == "budget.threshold"]


def test_a_key_passing_80_and_100_percent_is_announced_once_each(
    hooked: Gateway, receiver: WebhookReceiver
) -> None:
    with hooked.admin() as admin:
        account = admin.post(
            "/admin/accounts", json={"name": "b", "plan": "pro", "credits_usd": 10.0}
        ).json()["id"]
        secret = set_hook(admin, account, receiver.origin + "/budget")
        key = admin.post(
            f"/admin/accounts/{account}/keys",
            json={"name": "search", "budget": {"usd_per_day": 0.000024}, "tags": {"team": "s"}},
        ).json()
    first = chat(hooked, key["key"])
    assert first.status_code == 200 and float(first.headers["x-klawd-cost-usd"]) == COST_USD
    (eighty,) = wait_for(lambda: thresholds(receiver), "the 80 % event")  # 20 of 24: 83 %
    event = eighty["event"]
    assert verify(eighty["body"], eighty["headers"]["x-klawd-signature"], secret)
    assert eighty["headers"]["x-klawd-event-id"] == event["id"]
    assert event["data"] | {"period_start": None} == {
        "scope": "key",
        "account_id": account,
        "key_id": key["id"],
        "key_name": "search",
        "tags": {"team": "s"},
        "period": "day",
        "period_start": None,
        "threshold_percent": 80,
        "budget_usd": 0.000024,
        "spend_usd": COST_USD,
    }
    assert len(event["data"]["period_start"]) == 10, "the UTC day, YYYY-MM-DD"
    with hooked.admin() as admin:  # room for one more reservation (20 + 7 <= 28)
        admin.patch(f"/admin/keys/{key['id']}", json={"budget": {"usd_per_day": 0.000028}})
    assert chat(hooked, key["key"]).status_code == 200
    events = wait_for(lambda: len(thresholds(receiver)) >= 2 and thresholds(receiver), "100 %")
    assert [e["event"]["data"]["threshold_percent"] for e in events] == [80, 100]
    assert events[1]["event"]["data"]["spend_usd"] == 2 * COST_USD
    assert chat(hooked, key["key"]).status_code == 402, "spent"
    time.sleep(0.5)  # whatever else settles, no threshold is announced twice
    assert len(thresholds(receiver)) == 2
