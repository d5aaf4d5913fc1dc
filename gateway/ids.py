"""Identifiers that are unique but not secret: request ids, the ids of answers (chat's
`chatcmpl-`, the Messages API's `msg_`, the Responses API's `resp_` and its items') and ledger
entry ids.

`secrets.token_hex` makes a `getrandom` system call per id: three per chat request. These ids
come from the same kernel source (`os.urandom`) read 4 KiB at a time, one 16-byte slot an id
(256 ids a read), so they are as unpredictable, at no system call per request. Secrets (API
keys, webhook secrets, session tokens) keep using `secrets`: nothing that authenticates anyone
comes from here.

The buffer and the cutting are `gateway._core.IdSource`'s (rust_core/src/ids.rs): an id with
its prefix is one C call, no Python frame (`new_id("req_", 12)` is
`f"req_{secrets.token_hex(12)}"`'s shape). Thread-safe (a lock held only while a slot is cut;
the random bytes are read outside it). The buffer is per process: a forked child drops what it
inherited (`os.register_at_fork`), so two workers never hand out the same ids (a ledger id is
the idempotency key of a settlement: a duplicate would be skipped as already billed).
"""

from __future__ import annotations

import os

from gateway import _core

SLOT_BYTES: int = _core.IdSource.SLOT_BYTES
SLOTS: int = _core.IdSource.SLOTS


def _urandom(size: int) -> bytes:
    return os.urandom(size)  # (looked up at each read: a test may count them)


def IdSource() -> _core.IdSource:
    """A source of its own (the module's is `new_id` / `token_hex`)."""
    return _core.IdSource(_urandom)


_source = IdSource()
new_id = _source.new_id
token_hex = _source.token_hex
os.register_at_fork(after_in_child=_source.forget)
