"""Webhook events: the signed body, the headers, the backoff; and the operations on an account's
webhook and invoices that the admin API and Mission Control share.

    body  = {"id": "evt_…", "type": T, "created": <unix>, "data": {…}}   (compact JSON, UTF-8)
    X-Klawd-Signature          = hex(HMAC-SHA256(secret, body))          (the exact bytes sent)
    X-Klawd-Signature-Previous = the same with the previous secret, during a rotation's grace
    X-Klawd-Event-Id, X-Klawd-Timestamp = id and created, repeated from the signed body
"""

from __future__ import annotations

import hashlib
import hmac
import random
import secrets
from typing import Annotated

import msgspec
import orjson
from msgspec import Meta, Struct

from gateway.billing import micros_to_usd, usd_to_micros
from gateway.errors import InvalidRequest, NotFound
from gateway.settings import WebhookSettings
from gateway.store.base import Account, Delivery, Invoice, Store, UsageRow, Webhook
from gateway.webhooks.ssrf import BlockedAddress, check_url

USAGE_UPDATED = "usage.updated"
INVOICE_PAID = "billing.invoice.paid"
BUDGET_THRESHOLD = "budget.threshold"
TEST_EVENT = "webhook.test"
EVENT_TYPES = (USAGE_UPDATED, INVOICE_PAID, BUDGET_THRESHOLD)
USER_AGENT = "Klawd-Webhooks/1"


class WebhookIn(Struct, forbid_unknown_fields=True):
    url: Annotated[str, Meta(min_length=1, max_length=2000)]
    events: list[str] | None = None


class InvoiceIn(Struct, forbid_unknown_fields=True):
    amount_usd: Annotated[float, Meta(gt=0, le=1_000_000_000)]
    description: Annotated[str, Meta(max_length=500)] = ""


def sign(body: bytes, secret: str) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def new_event(account_id: str, kind: str, now: float, data: dict[str, object]) -> Delivery:
    event_id = f"evt_{secrets.token_hex(12)}"
    body = orjson.dumps({"id": event_id, "type": kind, "created": int(now), "data": data})
    return Delivery(
        id=event_id,
        account_id=account_id,
        type=kind,
        body=body.decode(),
        created_at=now,
        status="pending",
        next_attempt_at=now,
    )


def headers(delivery: Delivery, webhook: Webhook, now: float) -> dict[str, str]:
    body = delivery.body.encode()
    out = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-Klawd-Event-Id": delivery.id,
        "X-Klawd-Timestamp": str(int(delivery.created_at)),
        "X-Klawd-Signature": sign(body, webhook.secret),
    }
    previous = webhook.previous_secret
    if previous and webhook.previous_expires_at is not None and now < webhook.previous_expires_at:
        out["X-Klawd-Signature-Previous"] = sign(body, previous)
    return out


def next_attempt(
    delivery: Delivery, failures: int, now: float, config: WebhookSettings, rng: random.Random
) -> float | None:
    """When to try again after `failures` failed attempts: exponential backoff with jitter
    (half the delay fixed, half random), or None past the retry horizon (give up)."""
    delay = min(config.retry_max_delay_s, config.retry_base_delay_s * 2 ** (failures - 1))
    at = now + delay / 2 + rng.uniform(0, delay / 2)
    return None if at > delivery.created_at + config.retry_horizon_s else at


def usage_rows_json(rows: list[UsageRow]) -> list[dict[str, object]]:
    return [
        {
            "model": r.model,
            "requests": r.requests,
            "prompt_tokens": r.prompt_tokens,
            "completion_tokens": r.completion_tokens,
            "images": r.images,
            "cost_usd": micros_to_usd(r.cost_micros),
        }
        for r in rows
    ]


def usage_event(
    account: Account, rows: list[UsageRow], start: float, end: float, now: float
) -> Delivery:
    return new_event(
        account.id,
        USAGE_UPDATED,
        now,
        {
            "account_id": account.id,
            "period": {"start": int(start), "end": int(end)},
            "usage": usage_rows_json(rows),
            "total": {
                "requests": sum(r.requests for r in rows),
                "prompt_tokens": sum(r.prompt_tokens for r in rows),
                "completion_tokens": sum(r.completion_tokens for r in rows),
                "images": sum(r.images for r in rows),
                "cost_usd": micros_to_usd(sum(r.cost_micros for r in rows)),
            },
            "balance_usd": micros_to_usd(account.credits_micros),
        },
    )


# -- operations -----------------------------------------------------------------------------------
async def _account(store: Store, account_id: str) -> Account:
    account = await store.get_account(account_id)
    if account is None:
        raise NotFound(f"No account '{account_id[:100]}'.")
    return account


async def set_webhook(
    store: Store, config: WebhookSettings, account_id: str, new: WebhookIn, now: float
) -> Webhook:
    """Create or change the URL (and events); the secret is made once and kept."""
    await _account(store, account_id)
    events = tuple(new.events) if new.events is not None else EVENT_TYPES
    for event in events:
        if event not in EVENT_TYPES:
            raise InvalidRequest(
                f"Unknown event '{event[:100]}'; choose from {list(EVENT_TYPES)}.", param="events"
            )
    try:
        await check_url(new.url, config.allow_private_networks)
    except BlockedAddress as exc:
        raise InvalidRequest(f"Webhook URL refused: {exc}.", param="url") from exc
    current = await store.get_webhook(account_id)
    webhook = (
        Webhook(account_id, new.url, events, new_secret(), None, None, int(now))
        if current is None
        else msgspec.structs.replace(current, url=new.url, events=events, updated_at=int(now))
    )
    period = int(now // config.usage_interval_s) - 1  # the first event covers from now on
    await store.put_webhook(webhook, await store.usage_cursor(account_id), period)
    return webhook


async def get_webhook(store: Store, account_id: str) -> Webhook:
    await _account(store, account_id)
    webhook = await store.get_webhook(account_id)
    if webhook is None:
        raise NotFound(f"Account '{account_id[:100]}' has no webhook.")
    return webhook


async def rotate_secret(
    store: Store, config: WebhookSettings, account_id: str, now: float
) -> Webhook:
    """A new secret; the old one keeps signing (…-Previous) for `rotation_grace_s`."""
    current = await get_webhook(store, account_id)
    rotated = msgspec.structs.replace(
        current,
        secret=new_secret(),
        previous_secret=current.secret,
        previous_expires_at=int(now + config.rotation_grace_s),
        updated_at=int(now),
    )
    await store.put_webhook(rotated, "", 0)  # cursor and period are kept
    return rotated


async def delete_webhook(store: Store, account_id: str) -> None:
    await get_webhook(store, account_id)
    await store.delete_webhook(account_id)


async def list_invoices(store: Store, account_id: str) -> list[Invoice]:
    await _account(store, account_id)
    return await store.list_invoices(account_id)


async def send_test_event(store: Store, account_id: str, now: float) -> Delivery:
    webhook = await get_webhook(store, account_id)
    delivery = new_event(
        account_id,
        TEST_EVENT,
        now,
        {"account_id": account_id, "url": webhook.url, "message": "A test event from Klawd."},
    )
    await store.add_delivery(delivery)
    return delivery


async def create_invoice(store: Store, account_id: str, new: InvoiceIn) -> Invoice:
    await _account(store, account_id)
    return await store.create_invoice(account_id, usd_to_micros(new.amount_usd), new.description)


async def pay_invoice(store: Store, invoice_id: str, now: float) -> Invoice:
    """Marks the invoice paid; the first time, emits billing.invoice.paid (if subscribed)."""
    invoice = await store.get_invoice(invoice_id)
    if invoice is None:
        raise NotFound(f"No invoice '{invoice_id[:100]}'.")
    webhook = await store.get_webhook(invoice.account_id)
    account = await _account(store, invoice.account_id)
    delivery = None
    if webhook is not None and INVOICE_PAID in webhook.events:
        paid = msgspec.structs.replace(invoice, status="paid", paid_at=int(now))
        delivery = new_event(
            invoice.account_id,
            INVOICE_PAID,
            now,
            {"invoice": invoice_json(paid), "balance_usd": micros_to_usd(account.credits_micros)},
        )
    paid, _changed = await store.pay_invoice(invoice, int(now), delivery)
    return paid


def invoice_json(invoice: Invoice) -> dict[str, object]:
    return {
        "id": invoice.id,
        "account_id": invoice.account_id,
        "amount_usd": micros_to_usd(invoice.amount_micros),
        "description": invoice.description,
        "status": invoice.status,
        "created": invoice.created_at,
        "paid_at": invoice.paid_at,
    }


def delivery_json(delivery: Delivery) -> dict[str, object]:
    return {
        "id": delivery.id,
        "type": delivery.type,
        "created": int(delivery.created_at),
        "status": delivery.status,
        "next_attempt_at": delivery.next_attempt_at if delivery.status == "pending" else None,
        "attempts": [
            {
                "at": a.at,
                "status_code": a.status_code,
                "error": a.error,
                "duration_ms": a.duration_ms,
                "response": a.response_prefix,
            }
            for a in delivery.attempts
        ],
    }
