"""Identifiers that are unique but not secret: request ids, the ids of answers (chat's
`chatcmpl-`, the Messages API's `msg_`, the Responses API's `resp_` and its items') and ledger
entry ids.

`secrets.token_hex` makes a `getrandom` system call per id: three per chat request. These ids
come from the same kernel source read 4 KiB at a time (256 ids of up to 16 bytes per read), so
they are as unpredictable, at no system call per request. Secrets (API keys, webhook secrets,
session tokens) keep using `secrets`: nothing that authenticates anyone comes from here.

The buffer is per process: a forked child drops what it inherited (`os.register_at_fork`), so
two workers never hand out the same ids (a ledger id is the idempotency key of a settlement: a
duplicate would be skipped as already billed). Thread-safe without a lock on the hot path: each
id takes its own slot with `next()` on an `itertools.count`, one C call under the GIL.
"""

from __future__ import annotations

import itertools
import os
import threading

SLOT_BYTES = 16
SLOTS = 256


class IdSource:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state: tuple[bytes, itertools.count[int]] = (b"", itertools.count(SLOTS))

    def token_hex(self, nbytes: int) -> str:
        """`nbytes` (at most 16) random bytes as hex, as `secrets.token_hex(nbytes)`."""
        if not 0 < nbytes <= SLOT_BYTES:
            raise ValueError(f"1 to {SLOT_BYTES} bytes per id")
        while True:
            state = self._state
            slot = next(state[1])
            if slot < SLOTS:
                start = slot * SLOT_BYTES
                return state[0][start : start + nbytes].hex()
            with self._lock:
                if self._state is state:  # not refilled by another thread meanwhile
                    self._state = (os.urandom(SLOTS * SLOT_BYTES), itertools.count())

    def forget(self) -> None:
        """Drops the buffer (a forked child must not hand out its parent's ids)."""
        self._lock = threading.Lock()  # a child may inherit the lock held
        self._state = (b"", itertools.count(SLOTS))


_source = IdSource()
token_hex = _source.token_hex
os.register_at_fork(after_in_child=_source.forget)
