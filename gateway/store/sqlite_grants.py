"""The embedded store's credit grants: the balance an account showed after its last grant and the
cost settled since (columns of `accounts`), for the `budget.threshold` events of the account's
credit (gateway/webhooks/credits.py). `grant_seq` 0: no grant recorded (a file made before
grants were, until the account's next top-up)."""

from __future__ import annotations

import sqlite3

from gateway.store.base import CreditGrant

GRANT_COLUMNS = ("grant_seq", "grant_micros", "grant_at", "grant_spent")

NEW_GRANT = (
    "UPDATE accounts SET grant_seq = grant_seq + 1, grant_micros = ?, grant_at = ?,"
    " grant_spent = 0 WHERE id = ?"
)
CHARGE = "UPDATE accounts SET grant_spent = grant_spent + ? WHERE id = ? AND grant_seq > 0"
SELECT_GRANT = (
    "SELECT grant_seq, grant_micros, grant_at, grant_spent FROM accounts"
    " WHERE id = ? AND grant_seq > 0"
)


def migrate_grants(conn: sqlite3.Connection) -> None:
    """Adds the grant's columns (to new files and to files made before them alike)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(accounts)")}
    for column in GRANT_COLUMNS:
        if column not in columns:
            conn.execute(f"ALTER TABLE accounts ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0")


def new_grant(conn: sqlite3.Connection, account_id: str, balance: int, now: int) -> None:
    conn.execute(NEW_GRANT, (balance, now, account_id))


def charge(conn: sqlite3.Connection, costs: dict[str, int]) -> dict[str, CreditGrant]:
    """Counts each account's settled cost against its grant; returns the grants after."""
    conn.executemany(CHARGE, [(cost, account_id) for account_id, cost in costs.items()])
    return {
        account_id: CreditGrant(*row)
        for account_id in costs
        if (row := conn.execute(SELECT_GRANT, (account_id,)).fetchone())
    }
