"""The embedded store: one SQLite file, one connection, driven from one worker thread.

SQLite calls block, so every call runs on a single-thread executor: the event loop never waits on
disk, and the single thread serialises writes (no "database is locked" between our own calls).
WAL mode and a busy timeout let the `klawd` CLI use the same file while the server runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from gateway import _core
from gateway.limits import EmbeddedLimiter, Limiter
from gateway.store import sqlite_grants, sqlite_keys
from gateway.store.base import (
    Account,
    CreditGrant,
    CustomLimits,
    StoreError,
    UsageEntry,
    UsageRow,
)
from gateway.store.sqlite_keys import SqliteKeys
from gateway.store.sqlite_ledger import (
    LEDGER_SCHEMA,
    LedgerBatch,
    LedgerNames,
    entry_fields,
    fixed_runs,
    migrate_ledger,
)
from gateway.store.sqlite_responses import RESPONSES_SCHEMA, SqliteResponses
from gateway.store.sqlite_tx import immediate
from gateway.store.sqlite_webhooks import WEBHOOK_SCHEMA, SqliteWebhooks
from gateway.threads import DaemonThreadExecutor, behind_the_event_loop

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    plan TEXT NOT NULL,
    credits_micros INTEGER NOT NULL,
    limits TEXT NOT NULL DEFAULT '{}',
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    name TEXT NOT NULL,
    prefix TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    revoked_at INTEGER,
    policy TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS api_keys_account ON api_keys(account_id);
CREATE TABLE IF NOT EXISTS response_cache (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS response_cache_expiry ON response_cache(expires_at);
"""

# The starting credit is the account's first grant (gateway/store/sqlite_grants.py).
INSERT_ACCOUNT = (
    "INSERT INTO accounts (id, name, plan, credits_micros, limits, created_at, grant_seq,"
    " grant_micros, grant_at, grant_spent) VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?, 0)"
)
SELECT_ACCOUNT = (
    "SELECT id, name, plan, credits_micros, limits, created_at FROM accounts WHERE id = ?"
)
SELECT_USAGE = (
    "SELECT day, model, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), SUM(images),"
    " SUM(cost_micros) FROM usage_ledger WHERE account_id = ? AND day >= ? AND day <= ?"
    " GROUP BY day, model ORDER BY day, model"
)
_limits_decoder = msgspec.json.Decoder(CustomLimits)


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


class SqliteStore(SqliteKeys, SqliteWebhooks, SqliteResponses):
    # A batch has a fixed cost of about 0.2 ms in the store's thread (the commit, the balance and
    # spend statements, the hop), spread over its entries: at 3,000-7,000 requests a second,
    # 50 ms batches cost 4.0-4.9 us per entry against 5.9-6.7 us at 20 ms (docs/benchmarks.md,
    # issue 19zc). The thread runs behind the event loop (nice 19) and lets go of the GIL
    # inside SQLite, so a larger batch delays no request by much.
    settle_interval_s = 0.05

    def __init__(self, path: Path) -> None:
        self.path = path
        # A daemon: a call stuck for good (another process holds the file locked, a disk that
        # stalls) must not hold the process's exit once the shutdown has given up on it.
        self._executor = DaemonThreadExecutor("klawd-sqlite", initializer=behind_the_event_loop)
        self._conn: sqlite3.Connection | None = None
        # Credit reservations live in memory: an embedded store belongs to exactly one process,
        # so the check-and-reserve of every request needs no thread hop. The stored balance
        # moves at settlement (by the actual cost). The book (gateway._core.CreditBook: per
        # account the stored balance as last read or written and what requests not settled yet
        # reserve; per key and period the same of its spend) is updated by the store's thread
        # inside the same job as the SQL it mirrors, so every read through the store is one
        # consistent snapshot; the embedded limiter decides an admission against it in one
        # call (decision 0011, twenty-eighth pass).
        self.book = _core.CreditBook()
        self._puts_lock = threading.Lock()  # the Responses API's batch of rows to keep
        self._names = LedgerNames()  # the ledger's names' ids (the store's thread alone)
        # Changes made by another connection (the `klawd` CLI on the same file): watched with
        # PRAGMA data_version once a server registers its caches (on_invalidate).
        self._handlers: list[Callable[[str, str], None]] = []
        self._watcher: asyncio.Task[None] | None = None

    # -- plumbing -------------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA busy_timeout=5000")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.executescript(
                SCHEMA + LEDGER_SCHEMA + WEBHOOK_SCHEMA + RESPONSES_SCHEMA + sqlite_keys.KEY_SCHEMA
            )
            sqlite_keys.migrate_keys(conn)
            sqlite_grants.migrate_grants(conn)
            migrate_ledger(conn)
            self._conn = conn
        return self._conn

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            return work(self._connect())

        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, call)
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite store failed: {exc.__class__.__name__}") from exc

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher

        def shut() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await asyncio.get_running_loop().run_in_executor(self._executor, shut)
        self._executor.shutdown(wait=True)

    def limiter(self) -> Limiter:
        return EmbeddedLimiter(self)

    def on_invalidate(self, handler: Callable[[str, str], None]) -> None:
        """The serving process changes the store only through itself and drops its own cache
        entries as it does; what another process (the CLI) commits to the same file is seen by
        a watcher (PRAGMA data_version, every EXTERNAL_CHANGES_POLL_S), which then drops every
        cached key and account ("all") and the balances it holds."""
        self._handlers.append(handler)
        if self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch_external_changes())

    async def _watch_external_changes(self) -> None:
        def version(conn: sqlite3.Connection) -> int:
            return int(conn.execute("PRAGMA data_version").fetchone()[0])

        seen: int | None = None
        while True:
            try:
                current = await self._run(version)
            except StoreError:
                current = None
            if seen is not None and current is not None and current != seen:
                self.book.forget_balances()  # read again at each account's next reservation
                self.book.forget_spend()
                for handler in self._handlers:
                    handler("all", "")
            if current is not None:
                seen = current
            await asyncio.sleep(EXTERNAL_CHANGES_POLL_S)

    async def ping(self) -> None:
        await self._run(lambda conn: conn.execute("SELECT 1").fetchone())

    # -- response cache -------------------------------------------------------------------------
    async def cache_get(self, key: str) -> bytes | None:
        def get(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute(
                "SELECT value FROM response_cache WHERE key = ? AND expires_at > ?",
                (key, time.time()),
            ).fetchone()
            return None if row is None else bytes(row[0])

        return await self._run(get)

    async def cache_put(self, key: str, value: bytes, ttl_s: float) -> None:
        def put(conn: sqlite3.Connection) -> None:
            now = time.time()
            conn.execute(
                "INSERT OR REPLACE INTO response_cache (key, value, expires_at) VALUES (?, ?, ?)",
                (key, value, now + ttl_s),
            )
            # Expired entries go a few at a time, with the writes that add new ones.
            conn.execute(
                "DELETE FROM response_cache WHERE key IN (SELECT key FROM response_cache"
                " WHERE expires_at <= ? LIMIT 16)",
                (now,),
            )

        await self._run(put)

    # -- accounts -------------------------------------------------------------------------------
    async def count_accounts(self) -> int:
        row = await self._run(lambda c: c.execute("SELECT COUNT(*) FROM accounts").fetchone())
        return int(row[0])

    async def create_account(self, name: str, plan: str, credits_micros: int) -> Account:
        account = Account(new_id("acct"), name, plan, credits_micros, CustomLimits(), _now())

        def insert(conn: sqlite3.Connection) -> None:
            created = account.created_at
            conn.execute(
                INSERT_ACCOUNT,
                (account.id, name, plan, credits_micros, "{}", created, credits_micros, created),
            )

        await self._run(insert)
        return account

    async def get_account(self, account_id: str) -> Account | None:
        return await self._run(lambda conn: self._get(conn, account_id))

    def _get(self, conn: sqlite3.Connection, account_id: str) -> Account | None:
        """The account with the balance the other stores report: what is left after the
        reservations of requests in flight (read on the store's thread: one snapshot)."""
        account = _get_account(conn, account_id)
        if account is None:
            return None
        reserved = self.book.load_balance(account.id, account.credits_micros)
        if not reserved:
            return account
        return msgspec.structs.replace(account, credits_micros=account.credits_micros - reserved)

    async def update_account(
        self,
        account_id: str,
        *,
        plan: str | None = None,
        limits: CustomLimits | None = None,
        add_credits_micros: int = 0,
    ) -> Account | None:
        def update(conn: sqlite3.Connection) -> Account | None:
            with immediate(conn):  # (was committed even when it failed halfway)
                if _get_account(conn, account_id) is None:
                    return None
                conn.execute(
                    "UPDATE accounts SET plan = COALESCE(?, plan),"
                    " limits = COALESCE(?, limits), credits_micros = credits_micros + ?"
                    " WHERE id = ?",
                    (
                        plan,
                        msgspec.json.encode(limits).decode() if limits is not None else None,
                        add_credits_micros,
                        account_id,
                    ),
                )
                account = self._get(conn, account_id)
                if account is not None and add_credits_micros > 0:
                    sqlite_grants.new_grant(conn, account_id, account.credits_micros, _now())
                return account

        return await self._run(update)

    # -- credits and usage ----------------------------------------------------------------------
    async def read_balance(self, account_id: str) -> bool:
        """The account's stored balance read into the credit book; False: no such account."""
        return await self._run(lambda conn: self._get(conn, account_id) is not None)

    async def reserve_credits(self, account_id: str, micros: int) -> bool:
        if self.book.reserve_credits(account_id, micros):
            return True
        # Never read, or not enough: the stored balance may have grown since it was read
        # (credits added with the CLI), so read it again before refusing.
        if not await self.read_balance(account_id):
            return False
        return bool(self.book.reserve_credits(account_id, micros))

    async def release_credits(self, account_id: str, micros: int) -> None:
        self.book.release_credits(account_id, micros)

    async def settle(
        self, entries: list[UsageEntry], resent: bool = False
    ) -> dict[str, CreditGrant]:
        """One transaction per batch, set-based (a few statements, not two per entry), so the
        writer thread holds the GIL briefly: the entries are inserted (an id already in the
        ledger, a replayed entry, settles nothing twice), and each account's balance, each key's
        spend and each reservation move once per batch by the sums of its entries (one pass
        over the entries). `resent`: each account of the batch is charged (by 0 if none of its
        entries settled now), so its grant is returned (Store.settle)."""

        def settle(conn: sqlite3.Connection) -> dict[str, CreditGrant]:
            # One cursor for the batch's statements: `conn.execute` makes a cursor each
            # (~1.2K instructions, a weak reference kept by the connection), ~10 a batch.
            cur = conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                settled = _insert_new(cur, LedgerBatch(entries), self._names)
                if settled is None:  # (rolled back: a replay, an entry given twice)
                    cur.execute("BEGIN IMMEDIATE")
                    settled = _insert_replayed(cur, entries, self._names)
                sums = _Sums(settled)
                costs = sums.costs
                if resent:
                    costs = {entry.account_id: 0 for entry in entries} | costs
                balances, grants = sqlite_grants.charge(cur, costs)
                key_totals = sqlite_keys.record_spend(cur, sums.key_costs)
                cur.execute("COMMIT")
            except BaseException:
                self._names.forget()  # (names it added are gone; first: a ROLLBACK may raise)
                if conn.in_transaction:  # (SQLite may have rolled back itself: sqlite_tx.py)
                    conn.execute("ROLLBACK")
                raise
            self.book.settled_credits(sums.reserved, balances)
            self.book.settled_spend(sqlite_keys.released_spend(sums.key_reserved), key_totals)
            return grants

        return await self._run(settle)

    async def usage(self, account_id: str, since_day: str, until_day: str) -> list[UsageRow]:
        def select(conn: sqlite3.Connection) -> list[UsageRow]:
            rows = conn.execute(SELECT_USAGE, (account_id, since_day, until_day)).fetchall()
            return [UsageRow(*row) for row in rows]

        return await self._run(select)


def _insert_new(conn: sqlite3.Cursor, batch: LedgerBatch, names: LedgerNames) -> LedgerBatch | None:
    """The entries into the ledger, in the transaction begun; returns them. Usually every one
    is new and the insert says so (each row written): no lookup, and no savepoint (a statement
    of its own, and its release at the commit, every batch). Otherwise (an id the ledger holds
    already, a replay, or one given twice) the transaction is rolled back, names and all, and
    None returned: `_insert_replayed` does it again in a new one."""
    if batch.insert(conn, names) == len(batch.entries):
        return batch
    names.forget()  # (names it added are gone; first: a ROLLBACK may raise)
    conn.execute("ROLLBACK")
    return None


def _insert_replayed(
    conn: sqlite3.Cursor, entries: list[UsageEntry], names: LedgerNames
) -> LedgerBatch:
    """The entries not in the ledger yet, each new id's first entry alone, into it; returns
    those settled now."""
    settled = LedgerBatch(_new_entries(entries, _ledger_ids(conn, [e.id for e in entries])))
    settled.insert(conn, names)
    return settled


def _new_entries(entries: list[UsageEntry], in_ledger: set[str]) -> list[UsageEntry]:
    """The entries to settle: not in the ledger yet, each id once (the first one)."""
    if not in_ledger and len({e.id for e in entries}) == len(entries):
        return entries  # the usual batch: nothing replayed
    seen = set(in_ledger)
    settled: list[UsageEntry] = []
    for entry in entries:
        if entry.id not in seen:
            seen.add(entry.id)
            settled.append(entry)
    return settled


class _Sums:
    """A batch's sums: per account its cost and what it had reserved, per (key id, day) its
    cost and what it had reserved against the key's budgets. A batch of one (account, key,
    day) is summed a column at a time (C-level `sum`s of the batch's slices: ~0.2K
    instructions an entry); any other, in one pass by (account, key, day) first, of which a
    batch holds few: one key and one lookup per entry, where adding into the four sums entry
    by entry was four (3.5K against 2.2K instructions an entry, callgrind)."""

    __slots__ = ("costs", "key_costs", "key_reserved", "reserved")

    def __init__(self, batch: LedgerBatch) -> None:
        entries = batch.entries
        groups: dict[tuple[str, str, str], list[int]] = {}
        if entries and batch.same(_SUMMED_BY):
            first = entries[0]
            groups[(first.account_id, first.key_id, first.day)] = [
                sum(batch.column(field)) for field in _SUMMED
            ]
        else:
            for entry in entries:
                group = (entry.account_id, entry.key_id, entry.day)
                sums = groups.get(group)
                if sums is None:
                    groups[group] = [
                        entry.cost_micros,
                        entry.reserved_micros,
                        entry.key_reserved_micros,
                    ]
                else:
                    sums[0] += entry.cost_micros
                    sums[1] += entry.reserved_micros
                    sums[2] += entry.key_reserved_micros
        costs: dict[str, int] = {}
        reserved: dict[str, int] = {}
        key_costs: dict[tuple[str, str], int] = {}
        key_reserved: dict[tuple[str, str], int] = {}
        for (account_id, key_id, day), (cost, held, key_held) in groups.items():
            costs[account_id] = costs.get(account_id, 0) + cost
            reserved[account_id] = reserved.get(account_id, 0) + held
            if key_id:
                key = (key_id, day)
                key_costs[key] = key_costs.get(key, 0) + cost
                if key_held:
                    key_reserved[key] = key_reserved.get(key, 0) + key_held
        self.costs = costs
        self.reserved = reserved
        self.key_costs = key_costs
        self.key_reserved = key_reserved


_SUMMED_BY = entry_fields("account_id", "key_id", "day")
_SUMMED = entry_fields("cost_micros", "reserved_micros", "key_reserved_micros")


def _ledger_ids(conn: sqlite3.Cursor, ids: list[str]) -> set[str]:
    """Which of `ids` the ledger already holds, looked up by statements of 256, 64, 16, 4 or 1
    ids (each prepared once and kept in the connection's statement cache: an IN list of the
    batch's own length was a statement of its own, parsed again for most batches)."""
    found: set[str] = set()
    for count, start, end in fixed_runs(len(ids), LOOKUP_IDS):
        found.update(row[0] for row in conn.execute(_LOOKUPS[count], ids[start:end]))
    return found


LOOKUP_IDS = (256, 64, 16, 4, 1)  # (under SQLite's oldest limit of 999 variables)
_LOOKUPS = {
    count: f"SELECT id FROM ledger WHERE id IN ({','.join('?' * count)})"  # noqa: S608
    for count in LOOKUP_IDS
}
EXTERNAL_CHANGES_POLL_S = 0.5


def _get_account(conn: sqlite3.Connection, account_id: str) -> Account | None:
    row: Any = conn.execute(SELECT_ACCOUNT, (account_id,)).fetchone()
    if row is None:
        return None
    return Account(row[0], row[1], row[2], row[3], _limits_decoder.decode(row[4]), row[5])


def _now() -> int:
    return int(time.time())
