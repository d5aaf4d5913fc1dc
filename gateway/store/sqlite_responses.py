"""The embedded store's Responses API answers (a mixin of SqliteStore: same connection, same
single worker thread). One row per response, its StoredResponse as JSON; expired rows are
never read and are deleted whenever responses are kept.

Kept as a group commit: the responses kept while the store's thread has not yet begun the
write of the first are written with it, in one transaction, and each `put_response` returns
once its own row is committed (retrievable), as before. An idle store writes at once (a
batch of one); a busy one pays one commit and one thread hop per batch, not per response
(an autocommitted row cost ~40 us of the store's thread against ~9 us in batches of 50:
docs/benchmarks.md, issue 19zy)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TYPE_CHECKING, TypeVar

import msgspec

from gateway.store.base import StoredResponse, StoreError
from gateway.store.sqlite_tx import immediate

T = TypeVar("T")

RESPONSES_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_account ON responses(account_id, created_at);
CREATE INDEX IF NOT EXISTS responses_expiry ON responses(expires_at);
"""

_decoder = msgspec.json.Decoder(StoredResponse)


Row = tuple[str, str, int, int, bytes]
DELETE_EXPIRED = "DELETE FROM responses WHERE expires_at <= ?"
INSERT = "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?)"


class Puts:
    """Rows to keep, gathered until the store's thread begins their write; `done`: its
    outcome (None, or the error's class name), for every caller whose row it holds."""

    __slots__ = ("done", "rows")

    def __init__(self, row: Row, done: asyncio.Future[str | None]) -> None:
        self.rows = [row]
        self.done = done

    def settle(self, job: asyncio.Future[None]) -> None:
        if self.done.done():
            return
        if job.cancelled():
            self.done.set_result("CancelledError")
            return
        error = job.exception()
        if error is not None and not isinstance(error, sqlite3.Error):
            self.done.set_exception(error)
        else:
            self.done.set_result(None if error is None else error.__class__.__name__)


class SqliteResponses:
    _puts: Puts | None = None  # the batch the store's thread has not begun yet
    _puts_lock = threading.Lock()  # (one per store: set in SqliteStore.__init__)

    if TYPE_CHECKING:
        _executor: Executor

        async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T: ...
        def _connect(self) -> sqlite3.Connection: ...

    async def put_response(self, stored: StoredResponse) -> None:
        row = (
            stored.id,
            stored.account_id,
            stored.created_at,
            stored.expires_at,
            msgspec.json.encode(stored),
        )
        with self._puts_lock:
            puts = self._puts
            if puts is not None:  # its write has not begun: this row goes with it
                puts.rows.append(row)
            else:
                loop = asyncio.get_running_loop()
                puts = Puts(row, loop.create_future())
                # (the batch kept only once its write is scheduled: after close() this raises,
                # and a batch left set would have every later put wait on it for good)
                job = loop.run_in_executor(self._executor, self._put_rows, puts)
                self._puts = puts
                job.add_done_callback(puts.settle)
        # (shielded: a caller cancelled does not cancel the others' outcome)
        failed = await asyncio.shield(puts.done)
        if failed is not None:
            raise StoreError(f"sqlite store failed: {failed}")

    def _put_rows(self, puts: Puts) -> None:
        """In the store's thread: the batch taken (rows kept from now on start the next one)
        and written in one transaction, the expired rows deleted first."""
        with self._puts_lock:
            if self._puts is puts:
                self._puts = None
        rows = puts.rows
        conn = self._connect()
        expired = (max(row[2] for row in rows),)
        if len(rows) == 1:  # alone (an idle store): two statements, each its own transaction
            conn.execute(DELETE_EXPIRED, expired)
            conn.execute(INSERT, rows[0])
            return
        with immediate(conn):
            conn.execute(DELETE_EXPIRED, expired)
            conn.executemany(INSERT, rows)

    async def get_response(
        self, account_id: str, response_id: str, now: int
    ) -> StoredResponse | None:
        def select(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute(
                "SELECT body FROM responses WHERE id = ? AND account_id = ? AND expires_at > ?",
                (response_id, account_id, now),
            ).fetchone()
            return None if row is None else bytes(row[0])

        body = await self._run(select)
        return None if body is None else _decoder.decode(body)

    async def delete_response(self, account_id: str, response_id: str) -> bool:
        def delete(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "DELETE FROM responses WHERE id = ? AND account_id = ?",
                (response_id, account_id),
            )
            return cursor.rowcount > 0

        return await self._run(delete)

    async def list_responses(self, account_id: str, limit: int, now: int) -> list[StoredResponse]:
        def select(conn: sqlite3.Connection) -> list[bytes]:
            rows = conn.execute(
                "SELECT body FROM responses WHERE account_id = ? AND expires_at > ?"
                " ORDER BY created_at DESC, rowid DESC LIMIT ?",
                (account_id, now, limit),
            ).fetchall()
            return [bytes(row[0]) for row in rows]

        return [_decoder.decode(body) for body in await self._run(select)]
