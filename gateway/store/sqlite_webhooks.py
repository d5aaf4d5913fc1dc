"""The embedded store's webhooks, deliveries, invoices, Mission Control users and secrets.

A mixin of SqliteStore (gateway/store/sqlite.py): same connection, same single worker thread.
The usage cursor of a webhook is the ledger's `rowid`: rows are only ever appended, so "usage
since the last event" is every row after it, whatever the request's own timestamp was.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from gateway.store.base import (
    DELIVERIES_KEPT,
    Account,
    ApiKey,
    Delivery,
    DeliveryAttempt,
    Invoice,
    UsageRow,
    User,
    Webhook,
)
from gateway.store.sqlite_tx import immediate

T = TypeVar("T")

WEBHOOK_SCHEMA = """
CREATE TABLE IF NOT EXISTS webhooks (
    account_id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    events TEXT NOT NULL,
    secret TEXT NOT NULL,
    previous_secret TEXT,
    previous_expires_at INTEGER,
    updated_at INTEGER NOT NULL,
    usage_cursor TEXT NOT NULL,
    usage_period INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    type TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at REAL NOT NULL,
    status TEXT NOT NULL,
    next_attempt_at REAL NOT NULL,
    attempts TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries(status, next_attempt_at);
CREATE INDEX IF NOT EXISTS webhook_deliveries_account
    ON webhook_deliveries(account_id, created_at);
CREATE TABLE IF NOT EXISTS invoices (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    amount_micros INTEGER NOT NULL,
    description TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    paid_at INTEGER
);
CREATE TABLE IF NOT EXISTS users (
    email TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS shared_secrets (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

_attempts = msgspec.json.Decoder(tuple[DeliveryAttempt, ...])
_events = msgspec.json.Decoder(tuple[str, ...])
SELECT_DELIVERY = (
    "SELECT id, account_id, type, body, created_at, status, next_attempt_at, attempts"
    " FROM webhook_deliveries"
)
SELECT_WEBHOOK = (
    "SELECT account_id, url, events, secret, previous_secret, previous_expires_at, updated_at"
    " FROM webhooks WHERE account_id = ?"
)
SELECT_INVOICE = (
    "SELECT id, account_id, amount_micros, description, status, created_at, paid_at FROM invoices"
)


def _delivery(row: Any) -> Delivery:
    return Delivery(
        id=row[0],
        account_id=row[1],
        type=row[2],
        body=row[3],
        created_at=row[4],
        status=row[5],
        next_attempt_at=row[6],
        attempts=_attempts.decode(row[7]),
    )


def _insert_delivery(conn: sqlite3.Connection, d: Delivery) -> bool:
    inserted = conn.execute(
        "INSERT OR IGNORE INTO webhook_deliveries VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            d.id,
            d.account_id,
            d.type,
            d.body,
            d.created_at,
            d.status,
            d.next_attempt_at,
            msgspec.json.encode(d.attempts).decode(),
        ),
    ).rowcount
    # keep the newest DELIVERIES_KEPT of the account
    conn.execute(
        "DELETE FROM webhook_deliveries WHERE account_id = ? AND id NOT IN (SELECT id FROM"
        " webhook_deliveries WHERE account_id = ? ORDER BY created_at DESC LIMIT ?)",
        (d.account_id, d.account_id, DELIVERIES_KEPT),
    )
    return bool(inserted)


def _transaction(conn: sqlite3.Connection, work: Callable[[], T]) -> T:
    with immediate(conn):
        return work()


class SqliteWebhooks:
    if TYPE_CHECKING:

        async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T: ...

    # -- listings -------------------------------------------------------------------------------
    async def list_accounts(self, limit: int) -> list[Account]:
        from gateway.store.sqlite import _get_account

        def select(conn: sqlite3.Connection) -> list[Account]:
            ids = conn.execute(
                "SELECT id FROM accounts ORDER BY created_at, id LIMIT ?", (limit,)
            ).fetchall()
            return [a for (ident,) in ids if (a := _get_account(conn, ident)) is not None]

        return await self._run(select)

    async def list_keys(self, account_id: str) -> list[ApiKey]:
        from gateway.store.sqlite_keys import SELECT_KEY, _key

        def select(conn: sqlite3.Connection) -> list[ApiKey]:
            rows = conn.execute(
                SELECT_KEY + " WHERE account_id = ? ORDER BY created_at, id", (account_id,)
            ).fetchall()
            return [_key(row) for row in rows]

        return await self._run(select)

    # -- webhooks -------------------------------------------------------------------------------
    async def put_webhook(self, webhook: Webhook, usage_cursor: str, usage_period: int) -> None:
        def upsert(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO webhooks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(account_id) DO UPDATE SET url = excluded.url,"
                " events = excluded.events, secret = excluded.secret,"
                " previous_secret = excluded.previous_secret,"
                " previous_expires_at = excluded.previous_expires_at,"
                " updated_at = excluded.updated_at",
                (
                    webhook.account_id,
                    webhook.url,
                    msgspec.json.encode(webhook.events).decode(),
                    webhook.secret,
                    webhook.previous_secret,
                    webhook.previous_expires_at,
                    webhook.updated_at,
                    usage_cursor,
                    usage_period,
                ),
            )

        await self._run(upsert)

    async def get_webhook(self, account_id: str) -> Webhook | None:
        def select(conn: sqlite3.Connection) -> Webhook | None:
            row = conn.execute(SELECT_WEBHOOK, (account_id,)).fetchone()
            if row is None:
                return None
            return Webhook(row[0], row[1], _events.decode(row[2]), *row[3:])

        return await self._run(select)

    async def delete_webhook(self, account_id: str) -> bool:
        def delete(conn: sqlite3.Connection) -> bool:
            gone = conn.execute("DELETE FROM webhooks WHERE account_id = ?", (account_id,))
            return bool(gone.rowcount)

        return await self._run(delete)

    async def webhook_accounts(self) -> list[str]:
        def select(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute("SELECT account_id FROM webhooks ORDER BY account_id").fetchall()
            return [ident for (ident,) in rows]

        return await self._run(select)

    async def usage_cursor(self, account_id: str) -> str:
        def select(conn: sqlite3.Connection) -> str:
            row = conn.execute(
                "SELECT COALESCE(MAX(rowid), 0) FROM usage_ledger WHERE account_id = ?",
                (account_id,),
            ).fetchone()
            return str(row[0])

        return await self._run(select)

    async def usage_since(self, account_id: str, cursor: str) -> tuple[list[UsageRow], str]:
        after = int(cursor or "0")

        def select(conn: sqlite3.Connection) -> tuple[list[UsageRow], str]:
            last = conn.execute(
                "SELECT COALESCE(MAX(rowid), ?) FROM usage_ledger WHERE account_id = ?",
                (after, account_id),
            ).fetchone()[0]
            rows = conn.execute(
                "SELECT model, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens),"
                " SUM(images), SUM(cost_micros) FROM usage_ledger WHERE account_id = ?"
                " AND rowid > ? AND rowid <= ? GROUP BY model ORDER BY model",
                (account_id, after, last),
            ).fetchall()
            return [UsageRow("", *row) for row in rows], str(last)

        return await self._run(select)

    async def webhook_usage_state(self, account_id: str) -> tuple[str, int] | None:
        def select(conn: sqlite3.Connection) -> tuple[str, int] | None:
            row = conn.execute(
                "SELECT usage_cursor, usage_period FROM webhooks WHERE account_id = ?",
                (account_id,),
            ).fetchone()
            return (row[0], int(row[1])) if row else None

        return await self._run(select)

    async def add_usage_event(
        self, account_id: str, period: int, cursor: str, delivery: Delivery
    ) -> bool:
        def add(conn: sqlite3.Connection) -> bool:
            def work() -> bool:
                moved = conn.execute(
                    "UPDATE webhooks SET usage_cursor = ?, usage_period = ?"
                    " WHERE account_id = ? AND usage_period < ?",
                    (cursor, period, account_id, period),
                ).rowcount
                return bool(moved) and _insert_delivery(conn, delivery)

            return _transaction(conn, work)

        return await self._run(add)

    async def add_delivery(self, delivery: Delivery) -> bool:
        return await self._run(
            lambda conn: _transaction(conn, lambda: _insert_delivery(conn, delivery))
        )

    async def save_delivery(self, delivery: Delivery) -> None:
        def update(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE webhook_deliveries SET status = ?, next_attempt_at = ?, attempts = ?"
                " WHERE id = ?",
                (
                    delivery.status,
                    delivery.next_attempt_at,
                    msgspec.json.encode(delivery.attempts).decode(),
                    delivery.id,
                ),
            )

        await self._run(update)

    async def due_deliveries(self, now: float, limit: int) -> list[Delivery]:
        def select(conn: sqlite3.Connection) -> list[Delivery]:
            rows = conn.execute(
                SELECT_DELIVERY + " WHERE status = 'pending' AND next_attempt_at <= ?"
                " ORDER BY next_attempt_at LIMIT ?",
                (now, limit),
            ).fetchall()
            return [_delivery(row) for row in rows]

        return await self._run(select)

    async def list_deliveries(self, account_id: str, limit: int) -> list[Delivery]:
        def select(conn: sqlite3.Connection) -> list[Delivery]:
            rows = conn.execute(
                SELECT_DELIVERY + " WHERE account_id = ? ORDER BY created_at DESC, id LIMIT ?",
                (account_id, limit),
            ).fetchall()
            return [_delivery(row) for row in rows]

        return await self._run(select)

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

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO invoices VALUES (?, ?, ?, ?, ?, ?, ?)",
                msgspec.structs.astuple(invoice),
            )

        await self._run(insert)
        return invoice

    async def get_invoice(self, invoice_id: str) -> Invoice | None:
        def select(conn: sqlite3.Connection) -> Invoice | None:
            row = conn.execute(SELECT_INVOICE + " WHERE id = ?", (invoice_id,)).fetchone()
            return Invoice(*row) if row else None

        return await self._run(select)

    async def list_invoices(self, account_id: str) -> list[Invoice]:
        def select(conn: sqlite3.Connection) -> list[Invoice]:
            rows = conn.execute(
                SELECT_INVOICE + " WHERE account_id = ? ORDER BY created_at DESC, id",
                (account_id,),
            ).fetchall()
            return [Invoice(*row) for row in rows]

        return await self._run(select)

    async def pay_invoice(
        self, invoice: Invoice, paid_at: int, delivery: Delivery | None
    ) -> tuple[Invoice, bool]:
        def pay(conn: sqlite3.Connection) -> tuple[Invoice, bool]:
            def work() -> tuple[Invoice, bool]:
                changed = conn.execute(
                    "UPDATE invoices SET status = 'paid', paid_at = ?"
                    " WHERE id = ? AND status = 'open'",
                    (paid_at, invoice.id),
                ).rowcount
                if changed and delivery is not None:
                    _insert_delivery(conn, delivery)
                row = conn.execute(SELECT_INVOICE + " WHERE id = ?", (invoice.id,)).fetchone()
                return Invoice(*row), bool(changed)

            return _transaction(conn, work)

        return await self._run(pay)

    # -- users, secrets, lease ------------------------------------------------------------------
    async def create_user(self, user: User) -> bool:
        def insert(conn: sqlite3.Connection) -> bool:
            return bool(
                conn.execute(
                    "INSERT OR IGNORE INTO users VALUES (?, ?, ?, ?)",
                    msgspec.structs.astuple(user),
                ).rowcount
            )

        return await self._run(insert)

    async def get_user(self, email: str) -> User | None:
        def select(conn: sqlite3.Connection) -> User | None:
            row = conn.execute(
                "SELECT email, account_id, password_hash, created_at FROM users WHERE email = ?",
                (email,),
            ).fetchone()
            return User(*row) if row else None

        return await self._run(select)

    async def shared_secret(self, name: str, candidate: str) -> str:
        def get(conn: sqlite3.Connection) -> str:
            conn.execute("INSERT OR IGNORE INTO shared_secrets VALUES (?, ?)", (name, candidate))
            row = conn.execute("SELECT value FROM shared_secrets WHERE name = ?", (name,))
            return str(row.fetchone()[0])

        return await self._run(get)

    async def lease(self, name: str, owner: str, ttl_s: float) -> bool:
        """One process owns an embedded store: it is always the lease holder."""
        return ttl_s > 0
