"""The admin API of webhooks and invoices (Bearer $KLAWD_ADMIN_TOKEN)."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response

from gateway.api.common import app_state, decode_body, json_response, require_admin
from gateway.errors import InvalidRequest
from gateway.webhooks import events


def _kick(request: Request) -> None:
    dispatcher = app_state(request).dispatcher
    if dispatcher is not None:
        dispatcher.kick()


async def put_webhook(request: Request) -> Response:
    """PUT /admin/accounts/{id}/webhook {"url", "events"?} -> {"url", "secret", "events"}."""
    require_admin(request)
    state = app_state(request)
    new = decode_body(await request.body(), events.WebhookIn)
    webhook = await events.set_webhook(
        state.store, state.settings.webhooks, request.path_params["account_id"], new, time.time()
    )
    return json_response(
        {"url": webhook.url, "secret": webhook.secret, "events": list(webhook.events)}
    )


async def get_webhook(request: Request) -> Response:
    require_admin(request)
    state = app_state(request)
    webhook = await events.get_webhook(state.store, request.path_params["account_id"])
    return json_response(
        {
            "url": webhook.url,
            "events": list(webhook.events),
            "updated_at": webhook.updated_at,
            "previous_secret_expires_at": webhook.previous_expires_at,
        }
    )


async def delete_webhook(request: Request) -> Response:
    """DELETE /admin/accounts/{id}/webhook: no more events (pending deliveries fail)."""
    require_admin(request)
    await events.delete_webhook(app_state(request).store, request.path_params["account_id"])
    return Response(status_code=204)


async def rotate_secret(request: Request) -> Response:
    """POST /admin/accounts/{id}/webhook/rotate: a new secret; the old one keeps signing as
    X-Klawd-Signature-Previous for webhooks.rotation_grace_s."""
    require_admin(request)
    state = app_state(request)
    webhook = await events.rotate_secret(
        state.store, state.settings.webhooks, request.path_params["account_id"], time.time()
    )
    return json_response(
        {
            "url": webhook.url,
            "secret": webhook.secret,
            "previous_secret_expires_at": webhook.previous_expires_at,
        }
    )


async def send_test_event(request: Request) -> Response:
    """POST /admin/accounts/{id}/webhook/test: queue a webhook.test event (202)."""
    require_admin(request)
    state = app_state(request)
    delivery = await events.send_test_event(
        state.store, request.path_params["account_id"], time.time()
    )
    _kick(request)
    return json_response(events.delivery_json(delivery), status=202)


async def list_deliveries(request: Request) -> Response:
    """GET /admin/accounts/{id}/webhook/deliveries?limit=: newest first, every attempt."""
    require_admin(request)
    state = app_state(request)
    account_id = request.path_params["account_id"]
    await events.get_webhook(state.store, account_id)
    raw_limit = request.query_params.get("limit", "50")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 200:
        raise InvalidRequest("`limit` must be an integer from 1 to 200.", param="limit")
    deliveries = await state.store.list_deliveries(account_id, int(raw_limit))
    return json_response({"data": [events.delivery_json(d) for d in deliveries]})


async def create_invoice(request: Request) -> Response:
    """POST /admin/accounts/{id}/invoices {"amount_usd", "description"?} -> 201."""
    require_admin(request)
    state = app_state(request)
    new = decode_body(await request.body(), events.InvoiceIn)
    invoice = await events.create_invoice(state.store, request.path_params["account_id"], new)
    return json_response(events.invoice_json(invoice), status=201)


async def list_invoices(request: Request) -> Response:
    """GET /admin/accounts/{id}/invoices: newest first."""
    require_admin(request)
    found = await events.list_invoices(app_state(request).store, request.path_params["account_id"])
    return json_response({"data": [events.invoice_json(i) for i in found]})


async def pay_invoice(request: Request) -> Response:
    """POST /admin/invoices/{id}/paid: idempotent; the first call emits billing.invoice.paid."""
    require_admin(request)
    state = app_state(request)
    invoice = await events.pay_invoice(state.store, request.path_params["invoice_id"], time.time())
    _kick(request)
    return json_response(events.invoice_json(invoice))
