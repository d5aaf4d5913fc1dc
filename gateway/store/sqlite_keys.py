"""The embedded store's API keys: records with their policies (a JSON column), and the key
budgets: settled spend per key and period in SQLite, reservations of requests in flight in memory
(one process owns an embedded store, as for credits).

A period is `d:YYYY-MM-DD`, `m:YYYY-MM` or `t` (ever). Settling a ledger entry adds its cost to
the three periods of the day the request was admitted (UsageEntry.day) and releases its
reservation from them, in the same transaction that records the entry.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from gateway import _core
from gateway.limits import KeyGate, periods, spend_names
from gateway.store.base import NO_POLICY, ApiKey, KeyPolicy, KeySpend, KeyUsageRow

T = TypeVar("T")

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

INSERT_KEY = (
    "INSERT INTO api_keys (id, account_id, name, prefix, key_hash, created_at, expires_at,"
    " revoked_at, policy) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
SELECT_KEY = (
    "SELECT id, account_id, name, prefix, key_hash, created_at, expires_at, revoked_at, policy"
    " FROM api_keys"
)
SELECT_KEY_BY_HASH = SELECT_KEY + " WHERE key_hash = ?"
SELECT_KEY_BY_ID = SELECT_KEY + " WHERE id = ?"
_policy_decoder = msgspec.json.Decoder(KeyPolicy)


def _key(row: Any) -> ApiKey:
    return ApiKey(
        row[0],
        row[1],
        row[2],
        row[3],
        row[4],
        row[5],
        row[6],
        row[7],
        _policy_decoder.decode(row[8]),
    )


def _key_row(key: ApiKey) -> tuple[Any, ...]:
    return (*msgspec.structs.astuple(key)[:8], msgspec.json.encode(key.policy).decode())


# A (key, day)'s cost added to its three periods by one statement: an executemany of the three
# rows cost ~14K instructions more a batch (its own fixed cost, a step and a reset a row).
# (RETURNING, to read the totals back in the same statement, cost more than the three
# SELECTs: SQLite gathers its rows in an ephemeral table.)
ADD_DAY_SPEND = (
    "INSERT INTO key_spend (key_id, period, micros) VALUES (?, ?, ?), (?, ?, ?), (?, ?, ?)"
    " ON CONFLICT (key_id, period) DO UPDATE SET micros = micros + excluded.micros"
)
SELECT_SPEND = "SELECT micros FROM key_spend WHERE key_id = ? AND period = ?"
SELECT_USAGE_BY_KEY = (
    "SELECT day, key_id, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), SUM(images),"
    " SUM(cost_micros) FROM usage_ledger WHERE account_id = ? AND day >= ? AND day <= ?"
    " GROUP BY day, key_id ORDER BY day, key_id"
)


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


def record_spend(conn: sqlite3.Cursor, costs: Mapping[tuple[str, str], int]) -> dict[str, int]:
    """Add each (key id, day)'s settled cost to the key's periods of that day; returns
    (key id, period) -> new total, keyed as `key_id|period`."""
    added: list[tuple[str, str]] = []
    for (key_id, day), micros in costs.items():
        day_period, month, ever = periods(day)
        conn.execute(
            ADD_DAY_SPEND,
            (key_id, day_period, micros, key_id, month, micros, key_id, ever, micros),
        )
        added += ((key_id, day_period), (key_id, month), (key_id, ever))
    return {
        f"{k}|{p}": int(conn.execute(SELECT_SPEND, (k, p)).fetchone()[0])
        for (k, p) in dict.fromkeys(added)  # (each period once: days of a batch share some)
    }


def usage_by_key(
    conn: sqlite3.Connection, account_id: str, since: str, until: str
) -> list[KeyUsageRow]:
    rows = conn.execute(SELECT_USAGE_BY_KEY, (account_id, since, until)).fetchall()
    return [KeyUsageRow(*row) for row in rows]


def mark_once(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("INSERT OR IGNORE INTO marks (name) VALUES (?)", (name,)).rowcount == 1


def spend_of(conn: sqlite3.Connection, key_ids: list[str], day: str) -> dict[str, KeySpend]:
    return {key_id: KeySpend(*read_spend(conn, key_id, day)) for key_id in key_ids}


def released_spend(reserved: Mapping[tuple[str, str], int]) -> dict[str, int]:
    """(key id, day) -> micros settled, as the book's names of their periods -> micros."""
    released: dict[str, int] = {}
    for (key_id, day), micros in reserved.items():
        for name in spend_names(key_id, day):
            released[name] = released.get(name, 0) + micros
    return released


class SqliteKeys:
    if TYPE_CHECKING:
        book: _core.CreditBook

        async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T: ...

    # -- keys -----------------------------------------------------------------------------------
    async def create_key(
        self,
        account_id: str,
        name: str,
        prefix: str,
        key_hash: str,
        expires_at: int | None,
        policy: KeyPolicy = NO_POLICY,
    ) -> ApiKey:
        key = ApiKey(
            f"key_{secrets.token_hex(12)}",
            account_id,
            name,
            prefix,
            key_hash,
            int(time.time()),
            expires_at,
            None,
            policy,
        )

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(INSERT_KEY, _key_row(key))

        await self._run(insert)
        return key

    async def key_by_hash(self, key_hash: str) -> ApiKey | None:
        def select(conn: sqlite3.Connection) -> ApiKey | None:
            row = conn.execute(SELECT_KEY_BY_HASH, (key_hash,)).fetchone()
            return _key(row) if row else None

        return await self._run(select)

    async def get_key(self, key_id: str) -> ApiKey | None:
        def select(conn: sqlite3.Connection) -> ApiKey | None:
            row = conn.execute(SELECT_KEY_BY_ID, (key_id,)).fetchone()
            return _key(row) if row else None

        return await self._run(select)

    async def update_key(self, key_id: str, policy: KeyPolicy) -> ApiKey | None:
        def update(conn: sqlite3.Connection) -> ApiKey | None:
            conn.execute(
                "UPDATE api_keys SET policy = ? WHERE id = ?",
                (msgspec.json.encode(policy).decode(), key_id),
            )
            row = conn.execute(SELECT_KEY_BY_ID, (key_id,)).fetchone()
            return _key(row) if row else None

        return await self._run(update)

    async def revoke_key(self, key_id: str, now: int) -> ApiKey | None:
        def revoke(conn: sqlite3.Connection) -> ApiKey | None:
            conn.execute(
                "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?",
                (now, key_id),
            )
            row = conn.execute(SELECT_KEY_BY_ID, (key_id,)).fetchone()
            return _key(row) if row else None

        return await self._run(revoke)

    async def key_spend(self, account_id: str, key_ids: list[str], day: str) -> dict[str, KeySpend]:
        return await self._run(lambda conn: spend_of(conn, key_ids, day))

    async def read_key_spend(self, key: KeyGate) -> None:
        """The key's settled spend of its periods of `key.day`, read into the credit book."""
        spent = await self._run(lambda conn: read_spend(conn, key.key_id, key.day))
        self.book.load_spend(spend_names(key.key_id, key.day), spent)

    async def usage_by_key(
        self, account_id: str, since_day: str, until_day: str
    ) -> list[KeyUsageRow]:
        return await self._run(lambda conn: usage_by_key(conn, account_id, since_day, until_day))

    async def mark_once(self, name: str) -> bool:
        return await self._run(lambda conn: mark_once(conn, name))
