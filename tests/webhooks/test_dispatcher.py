"""The delivery worker and scheduler against a real receiver on loopback, on a SQLite store, with
an injected clock (no sleeping: time moves when the test says so)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import orjson
import pytest

from gateway.settings import WebhookSettings
from gateway.store.base import Store, UsageEntry, open_store
from gateway.webhooks import events
from gateway.webhooks.dispatcher import Dispatcher
from tests.fakes.webhook_receiver import WebhookReceiver, verify
from tests.usage_entries import usage_entry

T0 = 1_794_999_600.0  # a multiple of 3600: the start of an hour


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver()
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = open_store(f"sqlite:///{tmp_path}/hooks.db")
    yield opened
    await opened.close()


CONFIG = WebhookSettings(
    allow_private_networks=True,
    usage_interval_s=3600,
    retry_base_delay_s=10,
    retry_max_delay_s=40,
    retry_horizon_s=100,
    timeout_s=5,
)


async def account_with_hook(
    store: Store, receiver: WebhookReceiver, path: str, config: WebhookSettings = CONFIG
) -> str:
    account = await store.create_account("hooked", "free", 5_000_000)
    await events.set_webhook(
        store, config, account.id, events.WebhookIn(url=receiver.origin + path), T0
    )
    return account.id


async def test_failures_are_retried_with_growing_delays_until_the_horizon(
    store: Store, receiver: WebhookReceiver
) -> None:
    receiver.scripts["/always-500"] = [500] * 50
    account_id = await account_with_hook(store, receiver, "/always-500")
    clock = Clock(T0)
    dispatcher = Dispatcher(store, CONFIG, clock=clock, rng=random.Random(7))
    try:
        test_event = await events.send_test_event(store, account_id, T0)
        gaps: list[float] = []
        for _ in range(20):  # bounded: the horizon ends it after a handful
            due = await store.due_deliveries(clock.now, 10)
            if not due:
                pending = await store.list_deliveries(account_id, 1)
                if pending[0].status != "pending":
                    break
                gaps.append(pending[0].next_attempt_at - clock.now)
                clock.now = pending[0].next_attempt_at
                continue
            await dispatcher.deliver_due(clock.now)
        final = (await store.list_deliveries(account_id, 1))[0]
    finally:
        await dispatcher.close()
    assert final.id == test_event.id
    assert final.status == "failed"
    assert [a.status_code for a in final.attempts] == [500] * len(final.attempts)
    assert all(a.at <= T0 + CONFIG.retry_horizon_s for a in final.attempts)
    # base 10 s doubling, capped at 40 s, jitter within [delay/2, delay]
    bounds = [(5, 10), (10, 20), (20, 40), (20, 40), (20, 40)]
    for gap, (low, high) in zip(gaps, bounds, strict=False):
        assert low <= gap <= high
    assert len(receiver.deliveries("/always-500")) == len(final.attempts)
    assert all(len(a.response_prefix) <= 256 for a in final.attempts), "only a prefix is kept"


async def test_a_success_is_not_delivered_again(store: Store, receiver: WebhookReceiver) -> None:
    receiver.scripts["/once"] = [503]
    account_id = await account_with_hook(store, receiver, "/once")
    clock = Clock(T0)
    dispatcher = Dispatcher(store, CONFIG, clock=clock, rng=random.Random(1))
    try:
        await events.send_test_event(store, account_id, T0)
        await dispatcher.deliver_due(clock.now)
        clock.now += CONFIG.retry_max_delay_s
        await dispatcher.deliver_due(clock.now)
        clock.now += 10 * CONFIG.retry_max_delay_s
        assert await dispatcher.deliver_due(clock.now) == []
    finally:
        await dispatcher.close()
    got = receiver.deliveries("/once")
    assert len(got) == 2 and got[0]["body"] == got[1]["body"], "a retry sends the same bytes"
    (delivery,) = await store.list_deliveries(account_id, 5)
    assert delivery.status == "delivered"
    assert [a.status_code for a in delivery.attempts] == [503, 200]


async def test_hourly_usage_reports_usage_since_the_last_event_once(
    store: Store, receiver: WebhookReceiver
) -> None:
    account_id = await account_with_hook(store, receiver, "/usage")
    webhook = await store.get_webhook(account_id)
    assert webhook is not None
    clock = Clock(T0 + 10)
    dispatcher = Dispatcher(store, CONFIG, clock=clock)

    def used(n: int, model: str) -> UsageEntry:
        return usage_entry(
            id=f"u{n}",
            ts=T0,
            day="2026-11-18",
            account_id=account_id,
            key_id="k",
            model=model,
            provider="p",
            prompt_tokens=10,
            completion_tokens=5,
            cost_micros=1000,
            latency_ms=1,
            request_id=f"r{n}",
        )

    try:
        await store.settle([used(1, "a/x"), used(2, "a/x"), used(3, "b/y")])
        assert await dispatcher.report_usage(clock.now) == 0, "the first hour has not ended"
        clock.now = T0 + 3600 + 1
        assert await dispatcher.report_usage(clock.now) == 1
        assert await dispatcher.report_usage(clock.now) == 0, "an hour is reported once"
        await store.settle([used(4, "b/y")])
        clock.now = T0 + 2 * 3600 + 1
        assert await dispatcher.report_usage(clock.now) == 1
        await dispatcher.deliver_due(clock.now)
    finally:
        await dispatcher.close()
    got = receiver.deliveries("/usage")
    assert [g["event"]["type"] for g in got] == ["usage.updated"] * 2
    for g in got:
        assert verify(g["body"], g["headers"]["X-Klawd-Signature"], webhook.secret)
    first, second = (g["event"]["data"] for g in got)
    assert [(u["model"], u["requests"]) for u in first["usage"]] == [("a/x", 2), ("b/y", 1)]
    assert first["total"]["cost_usd"] == 0.003
    assert first["period"] == {"start": T0, "end": T0 + 3600}
    assert [(u["model"], u["requests"]) for u in second["usage"]] == [("b/y", 1)]
    assert second["period"] == {"start": T0 + 3600, "end": T0 + 7200}
    assert second["balance_usd"] == 4.996, "the balance after the four requests settled"


async def test_private_addresses_are_refused_again_at_delivery(
    store: Store, receiver: WebhookReceiver
) -> None:
    """Set while private networks were allowed, delivered after they no longer are (or a name
    that now resolves to loopback): the attempt is refused before any request."""
    account_id = await account_with_hook(store, receiver, "/rebound")
    strict = WebhookSettings(allow_private_networks=False, retry_horizon_s=100)
    dispatcher = Dispatcher(store, strict, clock=Clock(T0))
    try:
        await events.send_test_event(store, account_id, T0)
        (attempted,) = await dispatcher.deliver_due(T0)
    finally:
        await dispatcher.close()
    assert attempted.attempts[0].status_code is None
    assert "refused" in (attempted.attempts[0].error or "")
    assert receiver.deliveries("/rebound") == []


async def test_every_delivery_is_signed_and_names_its_event(
    store: Store, receiver: WebhookReceiver
) -> None:
    account_id = await account_with_hook(store, receiver, "/signed")
    dispatcher = Dispatcher(store, CONFIG, clock=Clock(T0))
    try:
        sent = await events.send_test_event(store, account_id, T0)
        await dispatcher.deliver_due(T0)
    finally:
        await dispatcher.close()
    webhook = await store.get_webhook(account_id)
    assert webhook is not None
    (got,) = receiver.deliveries("/signed")
    assert got["body"] == sent.body.encode()
    assert verify(got["body"], got["headers"]["X-Klawd-Signature"], webhook.secret)
    assert not verify(got["body"], got["headers"]["X-Klawd-Signature"], "whsec_wrong")
    assert got["headers"]["X-Klawd-Event-Id"] == got["event"]["id"] == sent.id
    assert got["headers"]["X-Klawd-Timestamp"] == str(got["event"]["created"]) == str(int(T0))
    assert "X-Klawd-Signature-Previous" not in got["headers"]
    assert orjson.loads(sent.body)["type"] == "webhook.test"


async def test_a_receiver_that_does_not_answer_in_time_is_a_failed_attempt(
    store: Store, receiver: WebhookReceiver
) -> None:
    receiver.scripts["/hang"] = [0]
    account_id = await account_with_hook(store, receiver, "/hang")
    quick = WebhookSettings(allow_private_networks=True, timeout_s=0.3, retry_horizon_s=100)
    dispatcher = Dispatcher(store, quick, clock=Clock(T0))
    try:
        await events.send_test_event(store, account_id, T0)
        (attempted,) = await dispatcher.deliver_due(T0)
    finally:
        await dispatcher.close()
    assert attempted.status == "pending", "retried later"
    assert attempted.attempts[0].status_code is None
    assert attempted.attempts[0].error == "timed out"


async def test_deliveries_go_direct_whatever_the_proxy_environment_says(
    store: Store, receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SSRF guard checks the address a delivery connects to; through a proxy it could not
    (docs/decisions/0013), so the webhook client ignores HTTP(S)_PROXY."""
    dead_proxy = "http://127.0.0.1:9"  # nothing listens there: a proxied delivery would fail
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, dead_proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    account_id = await account_with_hook(store, receiver, "/direct")
    dispatcher = Dispatcher(store, CONFIG, clock=Clock(T0))
    try:
        await events.send_test_event(store, account_id, T0)
        await dispatcher.deliver_due(T0)
        delivery = (await store.list_deliveries(account_id, 1))[0]
    finally:
        await dispatcher.close()
    assert delivery.status == "delivered"
    assert len(receiver.deliveries("/direct")) == 1
