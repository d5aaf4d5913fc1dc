"""Webhooks through the gateway's admin API, delivered by the gateway process to a receiver on
loopback (this gateway allows private networks in its own config; the shared one does not)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Gateway, free_port, gateway_config, start_gateway, stop
from tests.fakes.openai_upstream import FakeOpenAI
from tests.fakes.webhook_receiver import WebhookReceiver, verify

FAST_HOOKS = """
[webhooks]
allow_private_networks = true
usage_interval_s = 1
poll_interval_s = 0.1
retry_base_delay_s = 0.2
retry_max_delay_s = 0.4
retry_horizon_s = 60
"""


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def hooked(fake_openai: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    directory = tmp_path_factory.mktemp("webhooks")
    port = free_port()
    gateway_config(directory / "klawd.toml", port, fake_openai.base_url, extra=FAST_HOOKS)
    running = start_gateway(directory / "klawd.toml", port)
    yield running
    stop(running.process)


def wait_for(check: Callable[[], Any], what: str, tries: int = 200) -> Any:
    """Polls `check` until it returns something truthy (bounded: tries x 0.05 s)."""
    for _ in range(tries):
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def new_account(admin: httpx.Client) -> str:
    created = admin.post(
        "/admin/accounts", json={"name": "hooks", "plan": "pro", "credits_usd": 10.0}
    )
    assert created.status_code == 201
    account_id: str = created.json()["id"]
    return account_id


def set_hook(admin: httpx.Client, account_id: str, url: str, **extra: Any) -> str:
    answer = admin.put(f"/admin/accounts/{account_id}/webhook", json={"url": url, **extra})
    assert answer.status_code == 200, answer.text
    assert answer.json()["url"] == url
    secret: str = answer.json()["secret"]
    return secret


def test_private_and_non_http_urls_are_refused_when_set(gateway: Gateway) -> None:
    with gateway.admin() as admin:
        account_id = new_account(admin)
        for url in (
            "http://127.0.0.1:9/hook",
            "http://localhost/hook",
            "http://169.254.169.254/latest/meta-data/",
            "http://[::1]/hook",
            "http://10.0.0.8/hook",
            "ftp://93.184.215.14/hook",
        ):
            refused = admin.put(f"/admin/accounts/{account_id}/webhook", json={"url": url})
            assert refused.status_code == 400, url
            assert refused.json()["error"]["type"] == "invalid_request"
            assert refused.json()["error"]["param"] == "url"
        public = admin.put(
            f"/admin/accounts/{account_id}/webhook", json={"url": "https://93.184.215.14/hook"}
        )
        assert public.status_code == 200
        assert set(public.json()) >= {"url", "secret"}
        missing = admin.put("/admin/accounts/acct_nope/webhook", json={"url": "https://1.1.1.1/"})
        assert missing.status_code == 404
        unknown = admin.put(
            f"/admin/accounts/{account_id}/webhook",
            json={"url": "https://1.1.1.1/", "events": ["usage.exploded"]},
        )
        assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "events"


def test_webhook_admin_needs_the_admin_token(gateway: Gateway) -> None:
    answer = httpx.put(
        f"{gateway.base_url}/admin/accounts/acct_x/webhook", json={"url": "https://1.1.1.1/"}
    )
    assert answer.status_code == 401


def test_test_event_is_retried_after_500s_then_never_again(
    hooked: Gateway, receiver: WebhookReceiver
) -> None:
    receiver.scripts["/retry"] = [500, 500]
    with hooked.admin() as admin:
        account_id = new_account(admin)
        secret = set_hook(admin, account_id, receiver.origin + "/retry", events=[])
        queued = admin.post(f"/admin/accounts/{account_id}/webhook/test")
        assert queued.status_code == 202
        event_id = queued.json()["id"]

        def delivered() -> list[dict[str, Any]]:
            log = admin.get(f"/admin/accounts/{account_id}/webhook/deliveries").json()["data"]
            return [d for d in log if d["id"] == event_id and d["status"] == "delivered"]

        (entry,) = wait_for(delivered, "the test event to be delivered")
        assert [a["status_code"] for a in entry["attempts"]] == [500, 500, 200]
        assert entry["attempts"][0]["response"].startswith("answer 500")
        assert len(entry["attempts"][0]["response"]) <= 256
        # a few more scheduler ticks: nothing is sent again after the success
        time.sleep(1.0)
    got = [g for g in receiver.deliveries("/retry") if g["event"]["type"] == "webhook.test"]
    assert len(got) == 3
    assert {g["event"]["id"] for g in got} == {event_id}
    for g in got:
        assert verify(g["body"], g["headers"]["x-klawd-signature"], secret)
        assert g["headers"]["x-klawd-event-id"] == event_id
        assert g["headers"]["x-klawd-timestamp"] == str(g["event"]["created"])
        assert g["event"]["type"] == "webhook.test"


def test_rotation_signs_with_the_new_secret_and_the_previous_one(
    hooked: Gateway, receiver: WebhookReceiver
) -> None:
    with hooked.admin() as admin:
        account_id = new_account(admin)
        old = set_hook(admin, account_id, receiver.origin + "/rotate", events=[])
        rotated = admin.post(f"/admin/accounts/{account_id}/webhook/rotate")
        assert rotated.status_code == 200
        new = rotated.json()["secret"]
        assert new != old and rotated.json()["previous_secret_expires_at"] > time.time()
        again = set_hook(admin, account_id, receiver.origin + "/rotate", events=[])
        assert again == new, "changing the URL keeps the secret"
        admin.post(f"/admin/accounts/{account_id}/webhook/test")
        (got,) = wait_for(lambda: receiver.deliveries("/rotate"), "the rotated delivery")
    assert verify(got["body"], got["headers"]["x-klawd-signature"], new)
    assert not verify(got["body"], got["headers"]["x-klawd-signature"], old)
    assert verify(got["body"], got["headers"]["x-klawd-signature-previous"], old)


def test_invoice_paid_emits_one_event(hooked: Gateway, receiver: WebhookReceiver) -> None:
    with hooked.admin() as admin:
        account_id = new_account(admin)
        secret = set_hook(
            admin, account_id, receiver.origin + "/invoice", events=["billing.invoice.paid"]
        )
        created = admin.post(
            f"/admin/accounts/{account_id}/invoices",
            json={"amount_usd": 12.5, "description": "November"},
        )
        assert created.status_code == 201
        invoice = created.json()
        assert {k: invoice[k] for k in ("account_id", "amount_usd", "status")} == {
            "account_id": account_id,
            "amount_usd": 12.5,
            "status": "open",
        }
        assert invoice["id"].startswith("inv_")
        paid = admin.post(f"/admin/invoices/{invoice['id']}/paid")
        assert paid.status_code == 200 and paid.json()["status"] == "paid"
        assert admin.post(f"/admin/invoices/{invoice['id']}/paid").json()["status"] == "paid"
        assert admin.post("/admin/invoices/inv_missing/paid").status_code == 404
        (got,) = wait_for(lambda: receiver.deliveries("/invoice"), "the invoice event")
        time.sleep(0.5)  # ticks after the second "paid": still one event
        listed = admin.get(f"/admin/accounts/{account_id}/invoices").json()["data"]
        assert [(i["id"], i["status"]) for i in listed] == [(invoice["id"], "paid")]
    assert len(receiver.deliveries("/invoice")) == 1
    assert verify(got["body"], got["headers"]["x-klawd-signature"], secret)
    assert got["event"]["type"] == "billing.invoice.paid"
    assert got["event"]["data"]["invoice"]["id"] == invoice["id"]
    assert got["event"]["data"]["invoice"]["amount_usd"] == 12.5


def test_usage_updated_reports_every_request_once(
    hooked: Gateway, receiver: WebhookReceiver
) -> None:
    with hooked.admin() as admin:
        account_id = new_account(admin)
        secret = set_hook(admin, account_id, receiver.origin + "/usage", events=["usage.updated"])
        key = admin.post(f"/admin/accounts/{account_id}/keys", json={}).json()["key"]
    made = 0
    with httpx.Client(base_url=hooked.base_url, timeout=10) as client:
        for _ in range(6):
            answer = client.post(
                "/v1/chat/completions",
                headers={"authorization": f"Bearer {key}"},
                json={"model": "openai/gpt-fake", "messages": [{"role": "user", "content": "hi"}]},
            )
            assert answer.status_code == 200
            made += 1
            time.sleep(0.3)  # spread the requests over several 1 s periods

    def reported() -> int:
        return sum(g["event"]["data"]["total"]["requests"] for g in receiver.deliveries("/usage"))

    wait_for(lambda: reported() == made, "every request to be reported")
    got = receiver.deliveries("/usage")
    periods = [g["event"]["data"]["period"]["start"] for g in got]
    assert len(periods) == len(set(periods)), "each period is reported once"
    assert len({g["event"]["id"] for g in got}) == len(got)
    for g in got:
        assert verify(g["body"], g["headers"]["x-klawd-signature"], secret)
        for row in g["event"]["data"]["usage"]:
            assert row["model"] == "openai/gpt-fake"
    assert any(g["event"]["data"]["total"]["cost_usd"] > 0 for g in got)


def test_redirects_are_not_followed(hooked: Gateway, receiver: WebhookReceiver) -> None:
    receiver.scripts["/moved"] = [302] * 100
    with hooked.admin() as admin:
        account_id = new_account(admin)
        set_hook(admin, account_id, receiver.origin + "/moved", events=[])
        admin.post(f"/admin/accounts/{account_id}/webhook/test")

        def attempts() -> list[Any]:
            log = admin.get(f"/admin/accounts/{account_id}/webhook/deliveries").json()["data"]
            return log[0]["attempts"] if log else []

        first = wait_for(attempts, "a first attempt")
    assert first[0]["status_code"] == 302
    assert [r for r in receiver.requests if r["path"] == "/redirected"] == []


def test_a_deleted_webhook_gets_no_more_events(hooked: Gateway, receiver: WebhookReceiver) -> None:
    with hooked.admin() as admin:
        account_id = new_account(admin)
        set_hook(admin, account_id, receiver.origin + "/deleted")
        assert admin.delete(f"/admin/accounts/{account_id}/webhook").status_code == 204
        assert admin.delete(f"/admin/accounts/{account_id}/webhook").status_code == 404
        assert admin.get(f"/admin/accounts/{account_id}/webhook").status_code == 404
        invoice = admin.post(f"/admin/accounts/{account_id}/invoices", json={"amount_usd": 1})
        admin.post(f"/admin/invoices/{invoice.json()['id']}/paid")
        time.sleep(2.5)  # two usage periods and many scheduler ticks
    assert receiver.deliveries("/deleted") == []


def test_deliveries_of_an_account_without_webhook_are_404(hooked: Gateway) -> None:
    with hooked.admin() as admin:
        account_id = new_account(admin)
        assert admin.get(f"/admin/accounts/{account_id}/webhook/deliveries").status_code == 404
        assert admin.post(f"/admin/accounts/{account_id}/webhook/test").status_code == 404


def test_webhook_settings_are_read_back(tmp_path: Path) -> None:
    from gateway.settings import load_settings

    (tmp_path / "k.toml").write_text(FAST_HOOKS)
    hooks = load_settings(tmp_path / "k.toml").webhooks
    assert hooks.allow_private_networks and hooks.usage_interval_s == 1


def test_delivery_attempts_are_counted_by_type_and_outcome(
    hooked: Gateway, receiver: WebhookReceiver
) -> None:
    from tests.scrape import scrape, total

    name = "klawd_webhook_deliveries_total"
    _, before = scrape(f"{hooked.base_url}/metrics")
    receiver.scripts["/counted"] = [503]
    with hooked.admin() as admin:
        account_id = new_account(admin)
        set_hook(admin, account_id, receiver.origin + "/counted", events=[])
        admin.post(f"/admin/accounts/{account_id}/webhook/test")
        wait_for(lambda: len(receiver.deliveries("/counted")) == 2, "a retry and a success")

    def counted() -> bool:
        _, after = scrape(f"{hooked.base_url}/metrics")
        delivered = total(after, name, event="webhook.test", outcome="delivered") - total(
            before, name, event="webhook.test", outcome="delivered"
        )
        failed = total(after, name, event="webhook.test", outcome="failed") - total(
            before, name, event="webhook.test", outcome="failed"
        )
        return delivered >= 1 and failed >= 1

    wait_for(counted, "the attempts in /metrics")
