"""The embedded store's usage ledger: the table `ledger`, its names stored once, and the view
`usage_ledger` that reads it as the rows it always had.

A row's account, key, model and provider repeat over thousands of rows; they are stored as small
integers, each the id of its text in `ledger_names`. Binding a text costs the sqlite3 module and
SQLite about 800 instructions (a copy, `SQLITE_TRANSIENT`, under the connection's mutex), an
integer about 150, and the row and its `(account, day)` index entry are shorter
(docs/decisions/0011, issue 19zx). Every query reads the view, which joins the names back by
their integer primary key, and keeps its index: `account_id = ?` is one lookup in the names'
unique index, then the same `(account, day)` range as before.

Files made before (`usage_ledger` a table) are rebuilt once, in one transaction, when opened:
every row kept with its rowid (the webhooks' usage cursors are rowids).
"""

from __future__ import annotations

import sqlite3
from typing import Any

from gateway.store.sqlite_tx import immediate

LEDGER_SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger_names (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS ledger (
    id TEXT PRIMARY KEY,
    ts REAL NOT NULL,
    day TEXT NOT NULL,
    account INTEGER NOT NULL,  -- ledger_names.id of each (no foreign key: a lookup per row)
    api_key INTEGER NOT NULL,
    model INTEGER NOT NULL,
    provider INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    images INTEGER NOT NULL,
    cost_micros INTEGER NOT NULL,
    reserved_micros INTEGER NOT NULL,
    latency_ms INTEGER NOT NULL,
    status INTEGER NOT NULL,
    request_id TEXT NOT NULL,
    stream INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS ledger_account_day ON ledger(account, day);
"""
USAGE_VIEW = """
CREATE VIEW IF NOT EXISTS usage_ledger AS SELECT l.rowid AS rowid, l.id AS id, l.ts AS ts,
    l.day AS day, a.name AS account_id, k.name AS key_id, m.name AS model, p.name AS provider,
    l.prompt_tokens AS prompt_tokens, l.completion_tokens AS completion_tokens,
    l.images AS images, l.cost_micros AS cost_micros, l.reserved_micros AS reserved_micros,
    l.latency_ms AS latency_ms, l.status AS status, l.request_id AS request_id,
    l.stream AS stream
FROM ledger AS l JOIN ledger_names AS a ON a.id = l.account
    JOIN ledger_names AS k ON k.id = l.api_key JOIN ledger_names AS m ON m.id = l.model
    JOIN ledger_names AS p ON p.id = l.provider
"""
# The old table's rows, each name by its id (the names added first).
_COPY_OLD = """
INSERT INTO ledger (rowid, id, ts, day, account, api_key, model, provider, prompt_tokens,
    completion_tokens, images, cost_micros, reserved_micros, latency_ms, status, request_id, stream)
SELECT u.rowid, u.id, u.ts, u.day, (SELECT id FROM ledger_names WHERE name = u.account_id),
    (SELECT id FROM ledger_names WHERE name = u.key_id),
    (SELECT id FROM ledger_names WHERE name = u.model),
    (SELECT id FROM ledger_names WHERE name = u.provider), u.prompt_tokens, u.completion_tokens,
    u.images, u.cost_micros, u.reserved_micros, u.latency_ms, u.status, u.request_id, u.stream
FROM usage_ledger AS u ORDER BY u.rowid
"""
_OLD_NAMES = (
    "INSERT OR IGNORE INTO ledger_names (name) SELECT account_id FROM usage_ledger"
    " UNION SELECT key_id FROM usage_ledger UNION SELECT model FROM usage_ledger"
    " UNION SELECT provider FROM usage_ledger"
)


def migrate_ledger(conn: sqlite3.Connection) -> None:
    """Makes the view; a file whose `usage_ledger` is still a table has its rows moved into
    `ledger` first (one transaction: a crash leaves the file as it was)."""
    with immediate(conn):  # (another process opening the same file waits here)
        kind = conn.execute("SELECT type FROM sqlite_master WHERE name = 'usage_ledger'").fetchone()
        if kind is not None and kind[0] == "table":
            conn.execute(_OLD_NAMES)
            conn.execute(_COPY_OLD)
            conn.execute("DROP TABLE usage_ledger")  # (and its index, usage_ledger_account_day)
        conn.execute(USAGE_VIEW)


# A ledger row's values in `ledger`'s column order are UsageEntry's first 16 fields; these are
# the texts stored by their names' ids.
NAMED_COLUMNS = (3, 4, 5, 6)  # account_id, key_id, model, provider


class LedgerNames:
    """The names' ids this process has read or written, for the store's thread alone. Only ever
    filled from the file inside the batch's transaction, so `forget` must follow its rollback: an
    id written by a transaction rolled back is no name's."""

    __slots__ = ("_ids",)

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}

    def name_columns(self, conn: sqlite3.Cursor, values: list[Any], stride: int) -> None:
        """Replaces the named columns of `values` (rows of `stride` values, flattened) by their
        names' ids, adding the names not in the file yet: one C-level map per column, no Python
        call per row."""
        ids = self._ids
        get = ids.__getitem__
        for column in NAMED_COLUMNS:
            names = values[column::stride]
            try:
                values[column::stride] = map(get, names)
            except KeyError:
                for name in set(names).difference(ids):
                    conn.execute("INSERT OR IGNORE INTO ledger_names (name) VALUES (?)", (name,))
                    row = conn.execute("SELECT id FROM ledger_names WHERE name = ?", (name,))
                    ids[name] = row.fetchone()[0]
                values[column::stride] = map(get, names)

    def forget(self) -> None:
        self._ids.clear()
