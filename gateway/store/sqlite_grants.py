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
# A settled batch moves each account once: its stored balance by the actual cost (the
# reservation was only ever held in memory; never below zero: the ledger keeps the true cost) and
# the cost counted against its grant, if it has one; then one read of both (two statements an
# account, where the balance's update and read and the grant's were four).
CHARGE = (
    "UPDATE accounts SET credits_micros = MAX(0, credits_micros - ?),"
    " grant_spent = grant_spent + (CASE WHEN grant_seq > 0 THEN ? ELSE 0 END) WHERE id = ?"
)
SELECT_CHARGED = (
    "SELECT credits_micros, grant_seq, grant_micros, grant_at, grant_spent FROM accounts"
    " WHERE id = ?"
)


def migrate_grants(conn: sqlite3.Connection) -> None:
    """Adds the grant's columns (to new files and to files made before them alike)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(accounts)")}
    for column in GRANT_COLUMNS:
        if column not in columns:
            conn.execute(f"ALTER TABLE accounts ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0")


def new_grant(conn: sqlite3.Connection, account_id: str, balance: int, now: int) -> None:
    conn.execute(NEW_GRANT, (balance, now, account_id))


def charge(
    conn: sqlite3.Cursor, costs: dict[str, int]
) -> tuple[dict[str, int], dict[str, CreditGrant]]:
    """Takes each account's settled cost from its balance and counts it against its grant;
    returns the balances and the grants after."""
    balances: dict[str, int] = {}
    grants: dict[str, CreditGrant] = {}
    for account_id, cost in costs.items():  # (a batch has one account or a few: no executemany)
        conn.execute(CHARGE, (cost, cost, account_id))
        row = conn.execute(SELECT_CHARGED, (account_id,)).fetchone()
        if row is not None:
            balances[account_id] = row[0]
            if row[1] > 0:
                grants[account_id] = CreditGrant(row[1], row[2], row[3], row[4])
    return balances, grants
