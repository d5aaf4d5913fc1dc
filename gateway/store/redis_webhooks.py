"""The Redis store's webhooks, deliveries, invoices, Mission Control users and secrets.

A mixin of RedisStore (gateway/store/redis.py). Keys (one account's share its hash tag):

    klawd:acct:{A}:webhook        hash: url, events, secret, previous_secret, previous_expires_at,
                                  updated_at, usage_cursor (ledger stream id), usage_period
    klawd:acct:{A}:wh:dlv         hash: delivery id -> Delivery JSON
    klawd:acct:{A}:wh:log         zset: delivery id -> created (the newest DELIVERIES_KEPT)
    klawd:acct:{A}:wh:pending     zset: delivery id -> next attempt (the truth about what is due)
    klawd:acct:{A}:wh:call:<n>    a call's marker (10 min): a call redis-py sends again after
                                  its reply timed out answers as its first try (klawd.lua, v2;
                                  klawd_reserve_v2's and klawd_grant_v2's too)
    klawd:acct:{A}:invoices       hash: invoice id -> Invoice JSON
    klawd:acct:{A}:keys           set of the account's key ids
    klawd:webhooks                set of account ids with a webhook
    klawd:webhooks:due            zset: "account|delivery" -> next attempt (an index over every
                                  account's pending zset, written after it: another slot)
    klawd:invoice:<id>            the invoice's account id
    klawd:user:<email>            User JSON
    klawd:secret:<name>           a value every replica shares (the session signing key)
    klawd:lease:<name>            the scheduler lease (SET NX PX)

Atomic changes of one account (a usage event with its cursor, an invoice paid with its event)
are Redis functions over that account's keys only (gateway/store/lua/klawd.lua), so Redis Cluster
works: the global `due` index is written after, in its own command. If a process dies between
the two, the account's pending zset still holds the delivery and the next usage event of the
account puts it back into the index.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, cast

import msgspec

from gateway.store.base import (
    DELIVERIES_KEPT,
    Account,
    ApiKey,
    Delivery,
    Invoice,
    UsageRow,
    User,
    Webhook,
)

DUE = "klawd:webhooks:due"
WEBHOOKS = "klawd:webhooks"
# Stream entries a page: each holds one record (before klawd_settle_v14) or a settle call's, up
# to SETTLE_CHUNK (100): a page is at most 25,000 records
LEDGER_PAGE = 250
LEDGER_MAX_PAGES = 40_000  # a usage event reads at most this many pages; the rest waits an hour


class _LedgerUsage(msgspec.Struct):
    """The fields of a ledger entry that usage events sum (decode only what is used)."""

    model: str
    prompt_tokens: int
    completion_tokens: int
    images: int
    cost_micros: int


_ledger_entry = msgspec.json.Decoder(_LedgerUsage)


def _records(fields: dict[bytes, bytes] | list[bytes]) -> Iterable[_LedgerUsage]:
    """A ledger stream entry's records, each line of every field's value one: its field `entry`
    (a request's, before klawd_settle_v14), a settle call's `e1`, `e2`, … (v14: one stream entry
    a call), or its `records`, a record a line (v15)."""
    for value in fields.values() if isinstance(fields, dict) else fields[1::2]:
        yield from _ledger_entry.decode_lines(value)


_delivery = msgspec.json.Decoder(Delivery)
_invoice = msgspec.json.Decoder(Invoice)
_user = msgspec.json.Decoder(User)
_events = msgspec.json.Decoder(tuple[str, ...])


def _acct(account_id: str) -> str:
    return f"klawd:acct:{{{account_id}}}"


def _delivery_keys(account_id: str) -> list[str]:
    base = _acct(account_id)
    return [f"{base}:wh:dlv", f"{base}:wh:log", f"{base}:wh:pending"]


def _call_marker(account_id: str) -> str:
    """A key of the account's slot, drawn once per call: `klawd_*_v2` set it when the call
    stored something, so a retry of the same call finds it (redis-py's, after a timed-out read)."""
    return f"{_acct(account_id)}:wh:call:{secrets.token_hex(8)}"


def _delivery_args(d: Delivery) -> list[Any]:
    return [d.id, msgspec.json.encode(d), repr(d.created_at), repr(d.next_attempt_at)]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisWebhooks:
    if TYPE_CHECKING:

        async def _call(self, *args: Any) -> Any: ...
        async def fcall(self, function: str, keys: list[str], args: list[Any]) -> Any: ...
        async def get_account(self, account_id: str) -> Account | None: ...
        async def key_by_hash(self, key_hash: str) -> ApiKey | None: ...

    # -- listings -------------------------------------------------------------------------------
    async def list_accounts(self, limit: int) -> list[Account]:
        ids = sorted(_text(i) for i in await self._call("SMEMBERS", "klawd:accounts"))
        found = [await self.get_account(ident) for ident in ids[:limit]]
        return sorted((a for a in found if a is not None), key=lambda a: (a.created_at, a.id))

    async def list_keys(self, account_id: str) -> list[ApiKey]:
        keys: list[ApiKey] = []
        for key_id in await self._call("SMEMBERS", f"{_acct(account_id)}:keys"):
            key_hash = await self._call("GET", f"klawd:keyid:{_text(key_id)}")
            key = await self.key_by_hash(_text(key_hash)) if key_hash else None
            if key is not None:
                keys.append(key)
        return sorted(keys, key=lambda k: (k.created_at, k.id))

    # -- webhooks -------------------------------------------------------------------------------
    async def put_webhook(self, webhook: Webhook, usage_cursor: str, usage_period: int) -> None:
        key = f"{_acct(webhook.account_id)}:webhook"
        await self._call(
            "HSET",
            key,
            "url",
            webhook.url,
            "events",
            msgspec.json.encode(webhook.events),
            "secret",
            webhook.secret,
            "previous_secret",
            webhook.previous_secret or "",
            "previous_expires_at",
            "" if webhook.previous_expires_at is None else webhook.previous_expires_at,
            "updated_at",
            webhook.updated_at,
        )
        await self._call("HSETNX", key, "usage_cursor", usage_cursor)
        await self._call("HSETNX", key, "usage_period", usage_period)
        await self._call("SADD", WEBHOOKS, webhook.account_id)

    async def get_webhook(self, account_id: str) -> Webhook | None:
        fields = cast(
            dict[bytes, bytes], await self._call("HGETALL", f"{_acct(account_id)}:webhook")
        )
        if b"url" not in fields:
            return None
        expires = fields.get(b"previous_expires_at") or b""
        return Webhook(
            account_id,
            fields[b"url"].decode(),
            _events.decode(fields[b"events"]),
            fields[b"secret"].decode(),
            fields.get(b"previous_secret", b"").decode() or None,
            int(expires) if expires else None,
            int(fields[b"updated_at"]),
        )

    async def delete_webhook(self, account_id: str) -> bool:
        # the index entry last (another slot): an index entry without a webhook is skipped
        gone = await self._call("DEL", f"{_acct(account_id)}:webhook")
        await self._call("SREM", WEBHOOKS, account_id)
        return bool(gone)

    async def webhook_accounts(self) -> list[str]:
        return sorted(_text(i) for i in await self._call("SMEMBERS", WEBHOOKS))

    async def usage_cursor(self, account_id: str) -> str:
        newest = await self._call("XREVRANGE", f"{_acct(account_id)}:ledger", "+", "-", "COUNT", 1)
        return _text(newest[0][0]) if newest else "0-0"

    async def usage_since(self, account_id: str, cursor: str) -> tuple[list[UsageRow], str]:
        ledger = f"{_acct(account_id)}:ledger"
        totals: dict[str, list[int]] = {}
        position = cursor or "0-0"
        for _ in range(LEDGER_MAX_PAGES):
            page = await self._call("XRANGE", ledger, f"({position}", "+", "COUNT", LEDGER_PAGE)
            for entry_id, fields in page:
                position = _text(entry_id)
                for entry in _records(fields):
                    t = totals.setdefault(entry.model, [0, 0, 0, 0, 0])
                    t[0] += 1
                    t[1] += entry.prompt_tokens
                    t[2] += entry.completion_tokens
                    t[3] += entry.images
                    t[4] += entry.cost_micros
            if len(page) < LEDGER_PAGE:
                break
        rows = [UsageRow("", model, *totals[model]) for model in sorted(totals)]
        return rows, position

    async def webhook_usage_state(self, account_id: str) -> tuple[str, int] | None:
        cursor, period = await self._call(
            "HMGET", f"{_acct(account_id)}:webhook", "usage_cursor", "usage_period"
        )
        if period is None:
            return None
        return _text(cursor), int(period)

    async def add_usage_event(
        self, account_id: str, period: int, cursor: str, delivery: Delivery
    ) -> bool:
        added = await self.fcall(
            "klawd_usage_event_v2",
            [f"{_acct(account_id)}:webhook", *_delivery_keys(account_id), _call_marker(account_id)],
            [period, cursor, *_delivery_args(delivery), DELIVERIES_KEPT],
        )
        if added:
            # also heals the index if an earlier write to it was lost
            pending = await self._call("ZRANGE", _delivery_keys(account_id)[2], 0, -1, "WITHSCORES")
            for member, score in pending:
                await self._call("ZADD", DUE, score, f"{account_id}|{_text(member)}")
        return bool(added)

    async def add_delivery(self, delivery: Delivery) -> bool:
        added = await self.fcall(
            "klawd_delivery_add_v2",
            [*_delivery_keys(delivery.account_id), _call_marker(delivery.account_id)],
            [*_delivery_args(delivery), DELIVERIES_KEPT],
        )
        if added:
            await self._index(delivery)
        return bool(added)

    async def _index(self, d: Delivery) -> None:
        member = f"{d.account_id}|{d.id}"
        if d.status == "pending":
            await self._call("ZADD", DUE, repr(d.next_attempt_at), member)
        else:
            await self._call("ZREM", DUE, member)

    async def save_delivery(self, delivery: Delivery) -> None:
        keys = _delivery_keys(delivery.account_id)
        await self.fcall(
            "klawd_delivery_save_v1",
            [keys[0], keys[2]],
            [
                delivery.id,
                msgspec.json.encode(delivery),
                1 if delivery.status == "pending" else 0,
                repr(delivery.next_attempt_at),
            ],
        )
        await self._index(delivery)

    async def due_deliveries(self, now: float, limit: int) -> list[Delivery]:
        members = await self._call("ZRANGEBYSCORE", DUE, "-inf", repr(now), "LIMIT", 0, limit)
        due: list[Delivery] = []
        for member in members:
            account_id, _, delivery_id = _text(member).partition("|")
            raw = await self._call("HGET", _delivery_keys(account_id)[0], delivery_id)
            delivery = _delivery.decode(raw) if raw else None
            if delivery is None or delivery.status != "pending":
                await self._call("ZREM", DUE, member)  # dropped or finished: not due
                continue
            due.append(delivery)
        return due

    async def list_deliveries(self, account_id: str, limit: int) -> list[Delivery]:
        hash_key, log_key, _ = _delivery_keys(account_id)
        ids = await self._call("ZREVRANGE", log_key, 0, limit - 1)
        if not ids:
            return []
        raws = await self._call("HMGET", hash_key, *ids)
        return [_delivery.decode(raw) for raw in raws if raw]

    # -- invoices -------------------------------------------------------------------------------
    async def create_invoice(
        self, account_id: str, amount_micros: int, description: str
    ) -> Invoice:
        invoice = Invoice(
            f"inv_{secrets.token_hex(12)}",
            account_id,
            amount_micros,
            description,
            "open",
            int(time.time()),
            None,
        )
        # the index first (another slot): an index entry without its invoice is harmless
        await self._call("SET", f"klawd:invoice:{invoice.id}", account_id)
        await self._call(
            "HSET", f"{_acct(account_id)}:invoices", invoice.id, msgspec.json.encode(invoice)
        )
        return invoice

    async def get_invoice(self, invoice_id: str) -> Invoice | None:
        account_id = await self._call("GET", f"klawd:invoice:{invoice_id}")
        if not account_id:
            return None
        raw = await self._call("HGET", f"{_acct(_text(account_id))}:invoices", invoice_id)
        return _invoice.decode(raw) if raw else None

    async def list_invoices(self, account_id: str) -> list[Invoice]:
        raws = await self._call("HVALS", f"{_acct(account_id)}:invoices")
        invoices = [_invoice.decode(raw) for raw in raws]
        return sorted(invoices, key=lambda i: (-i.created_at, i.id))

    async def pay_invoice(
        self, invoice: Invoice, paid_at: int, delivery: Delivery | None
    ) -> tuple[Invoice, bool]:
        paid = msgspec.structs.replace(invoice, status="paid", paid_at=paid_at)
        event_args: list[Any] = (
            [*_delivery_args(delivery), DELIVERIES_KEPT] if delivery else ["", "", 0, 0, 0]
        )
        changed, raw = await self.fcall(
            "klawd_invoice_paid_v2",
            [
                f"{_acct(invoice.account_id)}:invoices",
                *_delivery_keys(invoice.account_id),
                _call_marker(invoice.account_id),
            ],
            [invoice.id, msgspec.json.encode(paid), *event_args],
        )
        if int(changed) == 1 and delivery is not None:
            await self._index(delivery)
        return (_invoice.decode(raw) if raw else invoice), int(changed) == 1

    # -- users, secrets, lease ------------------------------------------------------------------
    async def create_user(self, user: User) -> bool:
        key, record = f"klawd:user:{user.email}", msgspec.json.encode(user)
        # a retry of the SET (redis-py's, after a timed-out read) finds this very record
        return bool(await self._call("SET", key, record, "NX")) or (
            await self._call("GET", key) == record
        )

    async def get_user(self, email: str) -> User | None:
        raw = await self._call("GET", f"klawd:user:{email}")
        return _user.decode(raw) if raw else None

    async def shared_secret(self, name: str, candidate: str) -> str:
        key = f"klawd:secret:{name}"
        if await self._call("SET", key, candidate, "NX"):
            return candidate
        return _text(await self._call("GET", key))

    async def lease(self, name: str, owner: str, ttl_s: float) -> bool:
        held = await self.fcall(
            "klawd_lease_v1", [f"klawd:lease:{name}"], [owner, int(ttl_s * 1000)]
        )
        return bool(held)
