"""The account holder's pages: dashboard (plan, limits, balance, usage charts, quick starts),
API keys, webhook."""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import date, timedelta

from starlette.requests import Request
from starlette.responses import Response

from gateway import accounts
from gateway.api.common import app_state
from gateway.billing import micros_to_usd
from gateway.errors import GatewayError
from gateway.metering import utc_day
from gateway.store.base import Account, UsageRow
from gateway.web.charts import bar_chart, hbar_chart, money
from gateway.web.context import Web, redirect, usd, utc
from gateway.web.key_settings import (
    attributes_from,
    form_values,
    spend_by_tag,
    submitted_values,
)
from gateway.web.quickstart import snippets
from gateway.web.sessions import Session
from gateway.webhooks import events

CHART_DAYS = 14
EXPIRY_CHOICES = {"never": None, "7": 7, "30": 30, "90": 90}


def _days(today: str, count: int) -> list[str]:
    last = date.fromisoformat(today)
    return [(last - timedelta(days=count - 1 - n)).isoformat() for n in range(count)]


def usage_charts(rows: list[UsageRow], days: list[str]) -> dict[str, object]:
    per_day: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    per_model: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for r in rows:
        for bucket in (per_day[r.day], per_model[r.model or "(none)"]):
            bucket[0] += r.requests
            bucket[1] += r.prompt_tokens + r.completion_tokens
            bucket[2] += r.cost_micros
    models = sorted(per_model.items(), key=lambda kv: (-kv[1][2], -kv[1][0], kv[0]))
    return {
        "requests_by_day": bar_chart(
            "requests-by-day", "Requests per day", [(d, per_day[d][0]) for d in days]
        ),
        "tokens_by_day": bar_chart(
            "tokens-by-day", "Tokens per day", [(d, per_day[d][1]) for d in days]
        ),
        "cost_by_day": bar_chart(
            "cost-by-day",
            "Cost per day (USD)",
            [(d, micros_to_usd(per_day[d][2])) for d in days],
            fmt=money,
        ),
        "requests_by_model": hbar_chart(
            "requests-by-model", "Requests by model", [(m, v[0]) for m, v in models]
        ),
        "cost_by_model": hbar_chart(
            "cost-by-model",
            "Cost by model (USD)",
            [(m, micros_to_usd(v[2])) for m, v in models],
            fmt=money,
        ),
        "totals": {
            "requests": sum(v[0] for v in per_day.values()),
            "tokens": sum(v[1] for v in per_day.values()),
            "cost": usd(sum(v[2] for v in per_day.values())),
        },
    }


def pages(web: Web) -> dict[str, object]:
    async def dashboard(request: Request) -> Response:
        found = await web.account_session(request)
        if isinstance(found, Response):
            return found
        session, account = found
        state = app_state(request)
        today = utc_day(time.time())
        days = _days(today, CHART_DAYS)
        rows = await state.store.usage(account.id, days[0], today)
        admission = await state.meter.peek(account)
        models = sorted(
            [e.model.id for e in state.catalog.entries.values() if e.model.kind == "chat"]
            + list(state.catalog.routes)
        )
        chosen = request.query_params.get("model", "")
        if chosen not in models:
            chosen = "klawd/echo" if "klawd/echo" in models else (models[0] if models else "")
        base = state.settings.mission_control.public_base_url or str(request.base_url)
        base_url = base.rstrip("/") + "/v1"
        return await web.render(
            request,
            "dashboard.html",
            {
                "account": account,
                "limits": accounts.effective_limits(state.settings, account),
                "remaining_minute": admission.remaining_requests,
                "remaining_day": admission.remaining_requests_day,
                "charts": usage_charts(rows, days),
                "models": models,
                "model": chosen,
                "base_url": base_url,
                "snippets": snippets(base_url, chosen),
                "invoices": await state.store.list_invoices(account.id),
            },
            session,
        )

    async def _keys_page(
        request: Request,
        session: Session,
        account: Account,
        new_key: str | None = None,
        error: str | None = None,
        draft: dict[str, str] | None = None,
    ) -> Response:
        """`draft`: the create-key form as submitted, shown again with its error."""
        store = app_state(request).store
        keys = await store.list_keys(account.id)
        keys.sort(key=lambda k: (k.revoked_at is not None, -k.created_at))
        spend = await store.key_spend(account.id, [k.id for k in keys], utc_day(time.time()))
        return await web.render(
            request,
            "keys.html",
            {
                "account": account,
                "keys": keys,
                "spend": spend,
                "tag_spend": spend_by_tag(keys, spend),
                "key_values": {k.id: form_values(k.policy) for k in keys},
                "draft": draft or {},
                "new_key": new_key,
                "error": error,
                "now": time.time(),
            },
            session,
            status=400 if error else 200,
        )

    async def keys(request: Request) -> Response:
        found = await web.account_session(request)
        if isinstance(found, Response):
            return found
        return await _keys_page(request, *found)

    async def create_key(request: Request) -> Response:
        found = await web.account_session(request)
        if isinstance(found, Response):
            return found
        session, account = found
        form = await web.form(request, session.nonce)
        if form is None:
            return web.forbidden()
        name = form.get("name") or "default"
        expiry = form.get("expires", "never")
        draft = {**submitted_values(form), "name": form.get("name"), "expires": expiry}
        if expiry not in EXPIRY_CHOICES or len(name) > 200:
            return await _keys_page(
                request, session, account, error="Invalid name or expiry.", draft=draft
            )
        days = EXPIRY_CHOICES[expiry]
        expires_at = int(time.time() + days * 86400) if days else None
        try:
            attributes = attributes_from(form)
            new = accounts.NewKey(
                name=name,
                expires_at=expires_at,
                budget=attributes.budget,
                limits=attributes.limits,
                models=attributes.models,
                tags=attributes.tags,
            )
            _key, plaintext = await accounts.create_key(app_state(request).store, account.id, new)
        except GatewayError as exc:
            return await _keys_page(request, session, account, error=exc.message, draft=draft)
        return await _keys_page(request, session, account, new_key=plaintext)

    async def revoke_key(request: Request) -> Response:
        found = await web.account_session(request)
        if isinstance(found, Response):
            return found
        session, account = found
        if await web.form(request, session.nonce) is None:
            return web.forbidden()
        state = app_state(request)
        key_id = request.path_params["key_id"]
        if any(k.id == key_id for k in await state.store.list_keys(account.id)):
            await accounts.revoke_key(state.store, key_id)
            state.keys.invalidate(key_id)
        return redirect("/keys")

    async def key_settings(request: Request) -> Response:
        """The account holder sets a key's budgets, limits, allowed models and tags."""
        found = await web.account_session(request)
        if isinstance(found, Response):
            return found
        session, account = found
        form = await web.form(request, session.nonce)
        if form is None:
            return web.forbidden()
        state = app_state(request)
        key_id = request.path_params["key_id"]
        if not any(k.id == key_id for k in await state.store.list_keys(account.id)):
            return redirect("/keys")
        try:
            await accounts.update_key(state.store, key_id, attributes_from(form))
        except GatewayError as exc:
            return await _keys_page(request, session, account, error=exc.message)
        state.keys.invalidate(key_id)
        return redirect("/keys")

    async def _webhook_page(
        request: Request,
        session: Session,
        account: Account,
        secret: str | None = None,
        error: str | None = None,
        message: str | None = None,
    ) -> Response:
        store = app_state(request).store
        webhook = await store.get_webhook(account.id)
        deliveries = await store.list_deliveries(account.id, 25) if webhook else []
        return await web.render(
            request,
            "webhook.html",
            {
                "account": account,
                "webhook": webhook,
                "secret": secret,
                "deliveries": deliveries,
                "event_types": events.EVENT_TYPES,
                "error": error,
                "message": message,
            },
            session,
            status=400 if error else 200,
        )

    async def webhook(request: Request) -> Response:
        found = await web.account_session(request)
        if isinstance(found, Response):
            return found
        return await _webhook_page(request, *found)

    async def webhook_action(request: Request) -> Response:
        found = await web.account_session(request)
        if isinstance(found, Response):
            return found
        session, account = found
        form = await web.form(request, session.nonce)
        if form is None:
            return web.forbidden()
        state = app_state(request)
        action = request.path_params["action"]
        now = time.time()
        try:
            if action == "save":
                chosen = [e for e in form.all("events") if e in events.EVENT_TYPES]
                hook = await events.set_webhook(
                    state.store,
                    state.settings.webhooks,
                    account.id,
                    events.WebhookIn(url=form.get("url"), events=chosen),
                    now,
                )
                return await _webhook_page(
                    request, session, account, secret=hook.secret, message="Webhook saved."
                )
            if action == "reveal":
                hook = await events.get_webhook(state.store, account.id)
                return await _webhook_page(request, session, account, secret=hook.secret)
            if action == "rotate":
                hook = await events.rotate_secret(
                    state.store, state.settings.webhooks, account.id, now
                )
                return await _webhook_page(
                    request,
                    session,
                    account,
                    secret=hook.secret,
                    message="Secret rotated; the previous one signs too until "
                    f"{utc(hook.previous_expires_at)}.",
                )
            if action == "delete":
                await events.delete_webhook(state.store, account.id)
                return await _webhook_page(
                    request, session, account, message="Webhook removed: no more events."
                )
            if action == "test":
                await events.send_test_event(state.store, account.id, now)
                if state.dispatcher is not None:
                    state.dispatcher.kick()
                return await _webhook_page(
                    request, session, account, message="Test event queued; see below."
                )
        except GatewayError as exc:
            return await _webhook_page(request, session, account, error=exc.message)
        return redirect("/webhook")

    return {
        "dashboard": dashboard,
        "keys": keys,
        "create_key": create_key,
        "revoke_key": revoke_key,
        "key_settings": key_settings,
        "webhook": webhook,
        "webhook_action": webhook_action,
    }
