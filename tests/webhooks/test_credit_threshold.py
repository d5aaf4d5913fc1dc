"""`budget.threshold` for an account's credit, through the gateway process on SQLite and on
Redis: the cost settled since the last grant passing 80 % and then 100 % of it is announced once
per threshold, signed like every event, to a receiver on loopback; more spend announces nothing
again; a top-up (a new grant) re-arms both. And the rule itself, without sockets."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.store.base import CreditGrant
from gateway.webhooks.credits import passed
from tests.conftest import Gateway, free_port, gateway_config, start_gateway, stop
from tests.fakes.openai_upstream import FakeOpenAI
from tests.fakes.webhook_receiver import WebhookReceiver, verify
from tests.redis_server import RedisServer
from tests.webhooks.test_budget_threshold import COST_USD, chat
from tests.webhooks.test_webhooks_e2e import FAST_HOOKS, receiver, set_hook, wait_for

__all__ = ["receiver"]  # the module-scoped receiver fixture

# A grant of five requests: each costs $0.00002 (20 micro-dollars) and reserves 7 (see
# test_budget_threshold.py), so four pass 80 % and the fifth spends the whole grant.
GRANT_USD = 5 * COST_USD


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def hooked(
    request: pytest.FixtureRequest,
    fake_openai: FakeOpenAI,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    directory = tmp_path_factory.mktemp(f"credit-hooks-{request.param}")
    store_url = None
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        server.flush()
        store_url = server.url
    port = free_port()
    config = directory / "klawd.toml"
    gateway_config(config, port, fake_openai.base_url, extra=FAST_HOOKS, store_url=store_url)
    running = start_gateway(config, port)
    yield running
    stop(running.process)


def credit_events(receiver: WebhookReceiver, path: str) -> list[dict[str, Any]]:
    return [
        d
        for d in receiver.deliveries(path)
        if d["event"]["type"] == "budget.threshold" and d["event"]["data"]["scope"] == "account"
    ]


def spend(gateway: Gateway, key: str, requests: int) -> None:
    for _ in range(requests):
        answer = chat(gateway, key)
        assert answer.status_code == 200, answer.text
        assert float(answer.headers["x-klawd-cost-usd"]) == COST_USD


def test_an_accounts_credit_passing_80_and_100_percent_is_announced_once_per_grant(
    hooked: Gateway, receiver: WebhookReceiver
) -> None:
    path = f"/credit-{hooked.base_url.rsplit(':', 1)[1]}"
    with hooked.admin() as admin:
        created = admin.post(
            "/admin/accounts", json={"name": "c", "plan": "pro", "credits_usd": GRANT_USD}
        )
        account = created.json()["id"]
        secret = set_hook(admin, account, receiver.origin + path)
        key = admin.post(f"/admin/accounts/{account}/keys", json={"name": "k"}).json()["key"]
    spend(hooked, key, 3)  # 60 %
    spend(hooked, key, 1)  # 80 %
    (eighty,) = wait_for(lambda: credit_events(receiver, path), "the 80 % event")
    event = eighty["event"]
    assert verify(eighty["body"], eighty["headers"]["x-klawd-signature"], secret)
    assert eighty["headers"]["x-klawd-event-id"] == event["id"]
    granted_at = datetime.strptime(event["data"]["period_start"], "%Y-%m-%dT%H:%M:%SZ")
    assert abs(granted_at.replace(tzinfo=UTC).timestamp() - time.time()) < 120
    assert event["data"] | {"period_start": None} == {
        "scope": "account",
        "account_id": account,
        "key_id": None,
        "key_name": None,
        "tags": {},
        "period": "grant",
        "period_start": None,
        "grant": 1,
        "threshold_percent": 80,
        "budget_usd": GRANT_USD,
        "spend_usd": 4 * COST_USD,
        "balance_usd": COST_USD,
    }
    spend(hooked, key, 1)  # the whole grant
    events = wait_for(
        lambda: len(credit_events(receiver, path)) >= 2 and credit_events(receiver, path), "100 %"
    )
    hundred = events[1]
    assert verify(hundred["body"], hundred["headers"]["x-klawd-signature"], secret)
    assert [e["event"]["data"]["threshold_percent"] for e in events] == [80, 100]
    assert hundred["event"]["data"]["spend_usd"] == GRANT_USD
    assert hundred["event"]["data"]["balance_usd"] == 0
    assert chat(hooked, key).status_code == 402, "spent"
    time.sleep(0.5)  # whatever else settles or is retried, nothing is announced twice
    assert len(credit_events(receiver, path)) == 2

    with hooked.admin() as admin:  # a top-up is a new grant: both thresholds again
        topped = admin.patch(f"/admin/accounts/{account}", json={"credits_usd": GRANT_USD})
        assert topped.status_code == 200 and topped.json()["credits_usd"] == GRANT_USD
    spend(hooked, key, 3)
    time.sleep(0.3)
    assert len(credit_events(receiver, path)) == 2, "60 % of the new grant: nothing yet"
    spend(hooked, key, 2)
    events = wait_for(
        lambda: len(credit_events(receiver, path)) >= 4 and credit_events(receiver, path), "grant 2"
    )
    # the last two may settle in one batch: then both are stored at once, in either order
    assert sorted(
        (e["event"]["data"]["grant"], e["event"]["data"]["threshold_percent"]) for e in events
    ) == [(1, 80), (1, 100), (2, 80), (2, 100)]
    time.sleep(0.5)
    assert len(credit_events(receiver, path)) == 4
    for got in events:
        assert verify(got["body"], got["headers"]["x-klawd-signature"], secret)
    assert len({e["event"]["id"] for e in events}) == 4


def test_eighty_percent_is_passed_at_four_fifths_of_the_grant() -> None:
    assert passed(CreditGrant(1, 1_000, 0, 799), None) == []
    assert passed(CreditGrant(1, 1_000, 0, 800), None) == [80]
    assert passed(CreditGrant(1, 1_000, 0, 999), None) == [80]


def test_a_grant_is_spent_at_its_whole_or_when_what_is_left_covers_no_request() -> None:
    assert passed(CreditGrant(1, 1_000, 0, 1_000), None) == [80, 100]
    assert passed(CreditGrant(1, 1_000, 0, 1_250), None) == [80, 100], "settled past zero"
    assert passed(CreditGrant(1, 1_000, 0, 950), 60) == [80, 100], "50 left, 60 reserved"
    assert passed(CreditGrant(1, 1_000, 0, 950), 50) == [80], "50 left covers 50"


def test_a_grant_of_nothing_is_never_announced() -> None:
    assert passed(CreditGrant(1, 0, 0, 0), None) == []
    assert passed(CreditGrant(1, 0, 0, 30), 5) == []
