"""One write transaction of the embedded store, the same way everywhere."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator


@contextlib.contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """`BEGIN IMMEDIATE` … `COMMIT`; on any failure, the `COMMIT`'s own included, `ROLLBACK`,
    then the failure raised. A `COMMIT` that fails (a full disk, an I/O error) may leave the
    transaction open or may have rolled it back itself (SQLite's "may or may not"): left open,
    the connection's next `BEGIN` would fail, and with it every later write of the store."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
