"""The embedded store's key budgets: settled spend per key and period in SQLite, reservations of
requests in flight in memory (one process owns an embedded store, as for credits).

A period is `d:YYYY-MM-DD`, `m:YYYY-MM` or `t` (ever). Settling a ledger entry adds its cost to
the three periods of the day the request was admitted (UsageEntry.day) and releases its
reservation from them, in the same transaction that records the entry.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable

from gateway.limits import KeyGate
from gateway.store.base import KeySpend, KeyUsageRow, UsageEntry

KEY_SCHEMA = """
CREATE TABLE IF NOT EXISTS key_spend (
    key_id TEXT NOT NULL,
    period TEXT NOT NULL,
    micros INTEGER NOT NULL,
    PRIMARY KEY (key_id, period)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS marks (
    name TEXT PRIMARY KEY
) WITHOUT ROWID;
"""

ADD_SPEND = (
    "INSERT INTO key_spend (key_id, period, micros) VALUES (?, ?, ?)"
    " ON CONFLICT (key_id, period) DO UPDATE SET micros = micros + excluded.micros"
)
SELECT_SPEND = "SELECT micros FROM key_spend WHERE key_id = ? AND period = ?"
SELECT_USAGE_BY_KEY = (
    "SELECT day, key_id, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), SUM(images),"
    " SUM(cost_micros) FROM usage_ledger WHERE account_id = ? AND day >= ? AND day <= ?"
    " GROUP BY day, key_id ORDER BY day, key_id"
)


def periods(day: str) -> tuple[str, str, str]:
    return f"d:{day}", f"m:{day[:7]}", "t"


def migrate_keys(conn: sqlite3.Connection) -> None:
    """Files made before keys had policies get the column (added empty: no limits)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(api_keys)")}
    if "policy" not in columns:
        conn.execute("ALTER TABLE api_keys ADD COLUMN policy TEXT NOT NULL DEFAULT '{}'")


def read_spend(conn: sqlite3.Connection, key_id: str, day: str) -> tuple[int, int, int]:
    values = []
    for period in periods(day):
        row = conn.execute(SELECT_SPEND, (key_id, period)).fetchone()
        values.append(int(row[0]) if row else 0)
    return values[0], values[1], values[2]


def record_spend(conn: sqlite3.Connection, entries: Iterable[UsageEntry]) -> dict[str, int]:
    """Add each entry's cost to its key's periods; returns (key id, period) -> new total, keyed
    as `key_id|period`."""
    totals: dict[tuple[str, str], int] = {}
    for entry in entries:
        if not entry.key_id:
            continue
        for period in periods(entry.day):
            totals[(entry.key_id, period)] = totals.get((entry.key_id, period), 0) + (
                entry.cost_micros
            )
    conn.executemany(ADD_SPEND, [(k, p, micros) for (k, p), micros in totals.items()])
    return {f"{k}|{p}": int(conn.execute(SELECT_SPEND, (k, p)).fetchone()[0]) for (k, p) in totals}


def usage_by_key(
    conn: sqlite3.Connection, account_id: str, since: str, until: str
) -> list[KeyUsageRow]:
    rows = conn.execute(SELECT_USAGE_BY_KEY, (account_id, since, until)).fetchall()
    return [KeyUsageRow(*row) for row in rows]


def mark_once(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("INSERT OR IGNORE INTO marks (name) VALUES (?)", (name,)).rowcount == 1


def spend_of(conn: sqlite3.Connection, key_ids: list[str], day: str) -> dict[str, KeySpend]:
    return {key_id: KeySpend(*read_spend(conn, key_id, day)) for key_id in key_ids}


class KeySpendBook:
    """Settled spend as last read or written, and reservations in flight, per key and period.
    The lock makes the event loop's check-and-reserve atomic with the store thread's updates."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spent: dict[str, int] = {}  # "key|period" -> settled micros
        self._reserved: dict[str, int] = {}  # "key|period" -> reserved micros

    def try_reserve(self, key: KeyGate, micros: int) -> bool | None:
        """None when the key's spend of this day was never read; else whether it fits."""
        names = [f"{key.key_id}|{p}" for p in periods(key.day)]
        caps = (key.budget.day_micros, key.budget.month_micros, key.budget.total_micros)
        with self._lock:
            if any(name not in self._spent for name in names):
                return None
            for name, cap in zip(names, caps, strict=True):
                if cap is not None and (
                    self._spent[name] + self._reserved.get(name, 0) + micros > cap
                ):
                    return False
            if micros:
                for name in names:
                    self._reserved[name] = self._reserved.get(name, 0) + micros
            return True

    def load(self, key_id: str, day: str, spent: tuple[int, int, int]) -> None:
        with self._lock:
            if len(self._spent) > 300_000:
                self._spent.clear()
            for period, value in zip(periods(day), spent, strict=True):
                self._spent[f"{key_id}|{period}"] = value

    def release(self, key_id: str, day: str, micros: int) -> None:
        with self._lock:
            self._release(key_id, day, micros)

    def _release(self, key_id: str, day: str, micros: int) -> None:
        for period in periods(day):
            name = f"{key_id}|{period}"
            left = self._reserved.get(name, 0) - micros
            if left > 0:
                self._reserved[name] = left
            else:
                self._reserved.pop(name, None)

    def settled(self, entries: list[UsageEntry], totals: dict[str, int]) -> None:
        with self._lock:
            for entry in entries:
                if entry.key_id and entry.key_reserved_micros:
                    self._release(entry.key_id, entry.day, entry.key_reserved_micros)
            self._spent.update(totals)

    def forget(self) -> None:
        with self._lock:
            self._spent.clear()
