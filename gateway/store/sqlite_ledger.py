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

import operator
import sqlite3
from collections.abc import Iterator
from typing import Any

from msgspec.structs import astuple

from gateway.store.base import UsageEntry
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


def entry_fields(*names: str) -> tuple[int, ...]:
    """The positions of UsageEntry's fields `names` in `astuple`'s order: a LedgerBatch's
    columns."""
    return tuple(map(UsageEntry.__struct_fields__.index, names))


# A ledger row's values in `ledger`'s column order are UsageEntry's first LEDGER_COLUMNS fields
# (of the ENTRY_FIELDS that msgspec's `astuple` gives). A batch's rows are inserted by
# statements that bind the values most rows of a batch share once (`?1` to `?6`: day, model,
# provider, images, status, stream) and each row's own values after them: 10 binds a row, not
# 16 (a bind costs the sqlite3 module and SQLite ~300 instructions an integer and ~800 a text,
# the connection's mutex taken each time; docs/decisions/0011, issue 19zzzy).
ENTRY_FIELDS = len(UsageEntry.__struct_fields__)
SHARED_NAMES = ("day", "model", "provider", "images", "status", "stream")
SHARED = entry_fields(*SHARED_NAMES)
OWN = entry_fields(
    "id", "ts", "account_id", "key_id", "prompt_tokens", "completion_tokens", "cost_micros",
    "reserved_micros", "latency_ms", "request_id",
)  # fmt: skip
# account_id and key_id among a row's own values: stored by their names' ids
OWN_NAMED = tuple(map(OWN.index, entry_fields("account_id", "key_id")))
LEDGER_COLUMNS = len(SHARED) + len(OWN)
# Rows a statement inserts (each prepared once and kept in the connection's statement cache):
# 96 rows bind 966 variables, under the 999 a statement of SQLite before 3.32 may bind.
INSERT_ROWS = (96, 32, 16, 8, 4, 2, 1)
_INSERT_USAGE = (
    "INSERT OR IGNORE INTO ledger (id, ts, day, account, api_key, model, provider,"
    " prompt_tokens, completion_tokens, images, cost_micros, reserved_micros, latency_ms, status,"
    " request_id, stream) VALUES "
)


def _row_marks(row: int) -> str:
    """A row's markers in the ledger's column order: the shared ones by their numbers, the
    row's own ones after the shared six, ten a row."""
    marks = []
    for column in range(LEDGER_COLUMNS):
        if column in SHARED:
            marks.append(f"?{SHARED.index(column) + 1}")
        else:
            marks.append(f"?{len(SHARED) + 1 + len(OWN) * row + OWN.index(column)}")
    return "(" + ", ".join(marks) + ")"


_shared = operator.itemgetter(*SHARED)  # (the first row's: every row's, in a group)
_shared_of = operator.attrgetter(*SHARED_NAMES)  # an entry's, to group a mixed batch by
_INSERTS = {rows: _INSERT_USAGE + ", ".join(map(_row_marks, range(rows))) for rows in INSERT_ROWS}


def fixed_runs(total: int, sizes: tuple[int, ...]) -> Iterator[tuple[int, int, int]]:
    """`total` items cut into runs of the fixed `sizes` (largest first, the last size 1), each
    as (size, start, end): a statement per size, prepared once, serves every batch."""
    done = 0
    for size in sizes:
        while total - done >= size:
            yield size, done, done + size
            done += size


class LedgerBatch:
    """A batch's entries as ledger rows: `flat`, every entry's fields flattened (ENTRY_FIELDS a
    row, by one C call an entry), read a column at a time by C-level slices."""

    __slots__ = ("entries", "flat")

    def __init__(self, entries: list[UsageEntry]) -> None:
        flat: list[Any] = []
        extend = flat.extend  # (an entry at a time: a comprehension steps once per value)
        for entry in entries:
            extend(astuple(entry))
        self.entries = entries
        self.flat = flat

    def column(self, field: int) -> list[Any]:
        return self.flat[field::ENTRY_FIELDS]

    def same(self, fields: tuple[int, ...]) -> bool:
        """Whether every row holds the first row's value in each of `fields`."""
        flat, count = self.flat, len(self.entries)
        for field in fields:
            if flat[field::ENTRY_FIELDS].count(flat[field]) != count:
                return False
        return True

    def insert(self, conn: sqlite3.Cursor, names: LedgerNames) -> int:
        """The rows into the ledger, a statement run per group of rows sharing SHARED's values
        (a batch of one model and status: one group); returns the rows written (an id the
        ledger holds already is not written again: INSERT OR IGNORE)."""
        if not self.entries:
            return 0
        if self.same(SHARED):
            return self._insert_group(conn, names)
        groups: dict[tuple[Any, ...], list[UsageEntry]] = {}
        for entry in self.entries:
            groups.setdefault(_shared_of(entry), []).append(entry)
        return sum(LedgerBatch(group)._insert_group(conn, names) for group in groups.values())

    def _insert_group(self, conn: sqlite3.Cursor, names: LedgerNames) -> int:
        flat = self.flat
        day, model, provider, images, status, stream = _shared(flat)
        # (`stream` bound as an int, what SQLite stores for a bool anyway: the sqlite3 module
        # binds a bool through its adapter lookup, ~3.3K instructions)
        shared = [day, names.id_of(conn, model), names.id_of(conn, provider), images, status,
                  operator.index(stream)]  # fmt: skip
        own: list[Any] = [None] * (len(OWN) * len(self.entries))
        for place, field in enumerate(OWN):
            own[place :: len(OWN)] = flat[field::ENTRY_FIELDS]
        names.name_columns(conn, own, len(OWN), OWN_NAMED)
        written = 0
        for rows, start, end in fixed_runs(len(self.entries), INSERT_ROWS):
            values = shared + own[start * len(OWN) : end * len(OWN)]
            written += conn.execute(_INSERTS[rows], values).rowcount
        return written


class LedgerNames:
    """The names' ids this process has read or written, for the store's thread alone. Only ever
    filled from the file inside the batch's transaction, so `forget` must follow its rollback: an
    id written by a transaction rolled back is no name's."""

    __slots__ = ("_ids",)

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}

    def id_of(self, conn: sqlite3.Cursor, name: str) -> int:
        found = self._ids.get(name)
        return self._add(conn, name) if found is None else found

    def _add(self, conn: sqlite3.Cursor, name: str) -> int:
        conn.execute("INSERT OR IGNORE INTO ledger_names (name) VALUES (?)", (name,))
        row = conn.execute("SELECT id FROM ledger_names WHERE name = ?", (name,))
        ident: int = row.fetchone()[0]
        self._ids[name] = ident
        return ident

    def name_columns(
        self, conn: sqlite3.Cursor, values: list[Any], stride: int, columns: tuple[int, ...]
    ) -> None:
        """Replaces `columns` of `values` (rows of `stride` values, flattened) by their names'
        ids, adding the names not in the file yet: one C-level map per column, no Python call
        per row."""
        ids = self._ids
        get = ids.__getitem__
        for column in columns:
            names = values[column::stride]
            try:
                values[column::stride] = map(get, names)
            except KeyError:
                for name in set(names).difference(ids):
                    self._add(conn, name)
                values[column::stride] = map(get, names)

    def forget(self) -> None:
        self._ids.clear()
