"""The embedded store's Responses API answers (a mixin of SqliteStore: same connection, same
single worker thread). One row per response, its StoredResponse as JSON; expired rows are
never read and are deleted whenever a response is kept."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import msgspec

from gateway.store.base import StoredResponse

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


class SqliteResponses:
    if TYPE_CHECKING:

        async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T: ...

    async def put_response(self, stored: StoredResponse) -> None:
        body = msgspec.json.encode(stored)

        def put(conn: sqlite3.Connection) -> None:
            # autocommit connection: each statement is its own transaction
            conn.execute("DELETE FROM responses WHERE expires_at <= ?", (stored.created_at,))
            conn.execute(
                "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?)",
                (stored.id, stored.account_id, stored.created_at, stored.expires_at, body),
            )

        await self._run(put)

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
