"""`klawd keys …`: create, change, show, list and revoke API keys from the command line, with the
attributes of gateway/keys.py (budgets, limits, allowed models, tags).

klawd keys create ACCOUNT_ID [--name N] [--expires-at WHEN] [attributes]
klawd keys update KEY_ID [attributes]
klawd keys show KEY_ID
klawd keys list ACCOUNT_ID
klawd keys revoke KEY_ID

attributes: --budget-usd-day X --budget-usd-month X --budget-usd-total X (X or `none`),
            --rpm N --rpd N (N or `none`), --models PATTERN (repeatable; comma-separated lists
            too), --all-models, --tag NAME=VALUE (repeatable), --no-tags
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import msgspec

from gateway import accounts
from gateway.errors import InvalidRequest
from gateway.keys import KeyAttributes
from gateway.metering import utc_day
from gateway.schemas.decoding import decode_json
from gateway.store.base import Store


def _run(args: argparse.Namespace, work: Any) -> int:
    from gateway import cli  # the shared helpers (settings, store, output)

    cli._print_json(cli._with_store(cli._settings(args), work))
    return 0


def _number_or_none(text: str) -> float | None:
    if text.lower() == "none":
        return None
    try:
        return float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a number or `none`: {text!r}") from exc


def attributes_of(args: argparse.Namespace) -> dict[str, Any]:
    """The attributes given on the command line, as the admin API's JSON body."""
    body: dict[str, Any] = {}
    budget = {
        field: getattr(args, option)
        for field, option in (
            ("usd_per_day", "budget_usd_day"),
            ("usd_per_month", "budget_usd_month"),
            ("usd_total", "budget_usd_total"),
        )
        if getattr(args, option) is not _UNSET
    }
    if budget:
        body["budget"] = budget
    limits = {
        field: None if value is None else int(value)
        for field, value in (("requests_per_minute", args.rpm), ("requests_per_day", args.rpd))
        if value is not _UNSET
    }
    if limits:
        body["limits"] = limits
    if args.all_models:
        body["models"] = []
    elif args.models:
        body["models"] = [m.strip() for item in args.models for m in item.split(",") if m.strip()]
    if args.no_tags:
        body["tags"] = {}
    elif args.tag:
        tags: dict[str, str] = {}
        for pair in args.tag:
            name, sep, value = pair.partition("=")
            if not sep:
                raise InvalidRequest(f"--tag takes NAME=VALUE, got {pair!r}.", param="tags")
            tags[name] = value
        body["tags"] = tags
    return body


def cmd_keys_create(args: argparse.Namespace) -> int:
    expires: int | str | None = args.expires_at
    if isinstance(expires, str) and expires.isdigit():
        expires = int(expires)
    body = {"name": args.name, "expires_at": expires, **attributes_of(args)}
    new = decode_json(msgspec.json.Decoder(accounts.NewKey), msgspec.json.encode(body))

    async def work(store: Store) -> Any:
        key, plaintext = await accounts.create_key(store, args.account_id, new)
        return accounts.key_json(key, plaintext)

    return _run(args, work)


def cmd_keys_update(args: argparse.Namespace) -> int:
    body = msgspec.json.encode(attributes_of(args))
    attributes = decode_json(msgspec.json.Decoder(KeyAttributes), body)

    async def work(store: Store) -> Any:
        key = await accounts.update_key(store, args.key_id, attributes)
        return (await accounts.keys_with_spend(store, key.account_id, [key], _today()))[0]

    return _run(args, work)


def cmd_keys_show(args: argparse.Namespace) -> int:
    async def work(store: Store) -> Any:
        key = await accounts.get_key(store, args.key_id)
        return (await accounts.keys_with_spend(store, key.account_id, [key], _today()))[0]

    return _run(args, work)


def cmd_keys_list(args: argparse.Namespace) -> int:
    async def work(store: Store) -> Any:
        account = await accounts.get_account(store, args.account_id)
        keys = await store.list_keys(account.id)
        return await accounts.keys_with_spend(store, account.id, keys, _today())

    return _run(args, work)


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    async def work(store: Store) -> Any:
        return accounts.key_json(await accounts.revoke_key(store, args.key_id))

    return _run(args, work)


def _today() -> str:
    return utc_day(time.time())


_UNSET: Any = object()  # "option not given" (None means `none`: remove the cap)


def _add_attributes(parser: argparse.ArgumentParser) -> None:
    for option in ("--budget-usd-day", "--budget-usd-month", "--budget-usd-total"):
        parser.add_argument(option, type=_number_or_none, default=_UNSET, metavar="USD")
    parser.add_argument("--rpm", type=_number_or_none, default=_UNSET, metavar="N")
    parser.add_argument("--rpd", type=_number_or_none, default=_UNSET, metavar="N")
    parser.add_argument("--models", action="append", metavar="PATTERN", help="'openai/*'")
    parser.add_argument("--all-models", action="store_true", help="clear the allowlist")
    parser.add_argument("--tag", action="append", metavar="NAME=VALUE")
    parser.add_argument("--no-tags", action="store_true", help="remove every tag")


def add_commands(commands: Any, config: argparse.ArgumentParser) -> None:
    keys_cmd = commands.add_parser("keys", help="create, change, show and revoke API keys")
    keys = keys_cmd.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = keys.add_parser("create", parents=[config], help="create a key (shown once)")
    create.add_argument("account_id")
    create.add_argument("--name", default="default")
    create.add_argument("--expires-at", help="unix seconds or ISO 8601 with a time zone")
    _add_attributes(create)
    create.set_defaults(func=cmd_keys_create)
    update = keys.add_parser("update", parents=[config], help="change a key's attributes")
    update.add_argument("key_id")
    _add_attributes(update)
    update.set_defaults(func=cmd_keys_update)
    for name, func, target, help_text in (
        ("show", cmd_keys_show, "key_id", "a key with its spend (never the secret)"),
        ("list", cmd_keys_list, "account_id", "an account's keys with their spend"),
        ("revoke", cmd_keys_revoke, "key_id", "revoke a key"),
    ):
        command = keys.add_parser(name, parents=[config], help=help_text)
        command.add_argument(target)
        command.set_defaults(func=func)
