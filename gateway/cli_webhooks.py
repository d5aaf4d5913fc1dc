"""`klawd webhook …` and `klawd invoices …`: the admin API's webhook and invoice operations from
the command line (a running gateway delivers the events these store)."""

from __future__ import annotations

import argparse
import time
from typing import Any

from gateway.store.base import Store
from gateway.webhooks import events


def _run(args: argparse.Namespace, work: Any) -> int:
    from gateway import cli  # the shared helpers (settings, store, output)

    settings = cli._settings(args)
    args.settings = settings
    cli._print_json(cli._with_store(settings, work))
    return 0


def cmd_webhook_set(args: argparse.Namespace) -> int:
    async def work(store: Store) -> Any:
        new = events.WebhookIn(url=args.url, events=args.events)
        hook = await events.set_webhook(
            store, args.settings.webhooks, args.account_id, new, time.time()
        )
        return {"url": hook.url, "secret": hook.secret, "events": list(hook.events)}

    return _run(args, work)


def cmd_webhook_rotate(args: argparse.Namespace) -> int:
    async def work(store: Store) -> Any:
        hook = await events.rotate_secret(
            store, args.settings.webhooks, args.account_id, time.time()
        )
        return {
            "url": hook.url,
            "secret": hook.secret,
            "previous_secret_expires_at": hook.previous_expires_at,
        }

    return _run(args, work)


def cmd_webhook_test(args: argparse.Namespace) -> int:
    async def work(store: Store) -> Any:
        return events.delivery_json(
            await events.send_test_event(store, args.account_id, time.time())
        )

    return _run(args, work)


def cmd_webhook_deliveries(args: argparse.Namespace) -> int:
    async def work(store: Store) -> Any:
        await events.get_webhook(store, args.account_id)
        found = await store.list_deliveries(args.account_id, args.limit)
        return {"data": [events.delivery_json(d) for d in found]}

    return _run(args, work)


def cmd_invoices_create(args: argparse.Namespace) -> int:
    async def work(store: Store) -> Any:
        new = events.InvoiceIn(amount_usd=args.amount_usd, description=args.description)
        return events.invoice_json(await events.create_invoice(store, args.account_id, new))

    return _run(args, work)


def cmd_webhook_delete(args: argparse.Namespace) -> int:
    async def work(store: Store) -> Any:
        await events.delete_webhook(store, args.account_id)
        return {"deleted": True}

    return _run(args, work)


def cmd_invoices_list(args: argparse.Namespace) -> int:
    async def work(store: Store) -> Any:
        found = await events.list_invoices(store, args.account_id)
        return {"data": [events.invoice_json(i) for i in found]}

    return _run(args, work)


def cmd_invoices_pay(args: argparse.Namespace) -> int:
    async def work(store: Store) -> Any:
        return events.invoice_json(await events.pay_invoice(store, args.invoice_id, time.time()))

    return _run(args, work)


def add_commands(commands: Any, config: argparse.ArgumentParser) -> None:
    hook_cmd = commands.add_parser("webhook", help="an account's webhook and its deliveries")
    hook = hook_cmd.add_subparsers(dest="action", required=True, metavar="ACTION")
    set_cmd = hook.add_parser("set", parents=[config], help="set the URL (prints the secret)")
    set_cmd.add_argument("account_id")
    set_cmd.add_argument("url")
    set_cmd.add_argument("--events", nargs="*", help=f"default: {' '.join(events.EVENT_TYPES)}")
    set_cmd.set_defaults(func=cmd_webhook_set)
    for name, func, help_text in (
        ("rotate", cmd_webhook_rotate, "new secret; the old one signs during the grace period"),
        ("test", cmd_webhook_test, "queue a webhook.test event"),
        ("deliveries", cmd_webhook_deliveries, "recent deliveries and their attempts"),
        ("delete", cmd_webhook_delete, "remove the webhook (no more events)"),
    ):
        sub = hook.add_parser(name, parents=[config], help=help_text)
        sub.add_argument("account_id")
        if name == "deliveries":
            sub.add_argument("--limit", type=int, default=20)
        sub.set_defaults(func=func)

    inv_cmd = commands.add_parser("invoices", help="create invoices and mark them paid")
    inv = inv_cmd.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = inv.add_parser("create", parents=[config], help="create an open invoice")
    create.add_argument("account_id")
    create.add_argument("--amount-usd", type=float, required=True)
    create.add_argument("--description", default="")
    create.set_defaults(func=cmd_invoices_create)
    listing = inv.add_parser("list", parents=[config], help="an account's invoices")
    listing.add_argument("account_id")
    listing.set_defaults(func=cmd_invoices_list)
    pay = inv.add_parser("pay", parents=[config], help="mark paid (emits billing.invoice.paid)")
    pay.add_argument("invoice_id")
    pay.set_defaults(func=cmd_invoices_pay)
