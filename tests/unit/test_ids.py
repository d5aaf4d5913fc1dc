"""Non-secret ids from a buffered random source (gateway/ids.py): unique, fork-safe, thread-safe."""

from __future__ import annotations

import os
import re
import threading

import pytest

from gateway import ids
from gateway.api.middleware import new_request_id
from gateway.ids import SLOTS, IdSource
from gateway.metering import ledger_id
from gateway.responses.translate import new_item_id


def test_ids_have_the_shape_of_token_hex() -> None:
    source = IdSource()
    assert re.fullmatch(r"[0-9a-f]{24}", source.token_hex(12))
    assert re.fullmatch(r"[0-9a-f]{8}", source.token_hex(4))
    assert re.fullmatch(r"[0-9a-f]{32}", source.token_hex(16))
    assert re.fullmatch(r"req_[0-9a-f]{24}", new_request_id())
    assert re.fullmatch(r"use_[0-9a-f]{16}[0-9a-f]{8}", ledger_id())
    assert re.fullmatch(r"fc_[0-9a-f]{24}", new_item_id("fc"))  # Responses API items


def test_an_id_longer_than_a_slot_is_refused() -> None:
    with pytest.raises(ValueError, match="16"):
        IdSource().token_hex(17)


def test_ids_do_not_repeat_across_refills() -> None:
    source = IdSource()
    made = [source.token_hex(12) for _ in range(SLOTS * 5 + 3)]
    assert len(set(made)) == len(made)


def test_the_buffer_is_read_once_per_slots_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[int] = []
    real = os.urandom

    def counting(size: int) -> bytes:
        reads.append(size)
        return real(size)

    monkeypatch.setattr(ids.os, "urandom", counting)
    source = IdSource()
    for _ in range(SLOTS * 2):
        source.token_hex(12)
    assert len(reads) == 2


def test_threads_never_share_an_id() -> None:
    source = IdSource()
    made: list[list[str]] = [[] for _ in range(8)]

    def take(into: list[str]) -> None:
        for _ in range(SLOTS * 3):
            # whole slots: two threads reading one slot give equal ids, two random 4-byte ids
            # are equal by chance once in ~230 runs of this test (6,144 ids)
            into.append(source.token_hex(16))

    threads = [threading.Thread(target=take, args=(into,)) for into in made]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [one for into in made for one in into]
    assert len(set(every)) == len(every)


def test_a_forked_child_does_not_repeat_its_parents_next_ids() -> None:
    ids.token_hex(4)  # the parent holds a partly used buffer
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, then out without running the parent's cleanup
        try:
            os.write(writer, "".join(ids.token_hex(16) for _ in range(4)).encode())
        finally:
            os._exit(0)
    os.close(writer)
    with os.fdopen(reader, "rb") as pipe:
        child = pipe.read().decode()
    os.waitpid(pid, 0)
    parent = "".join(ids.token_hex(16) for _ in range(4))
    assert len(child) == len(parent) == 128
    assert child != parent


def test_an_id_with_its_prefix_is_one_call() -> None:
    assert re.fullmatch(r"chatcmpl-[0-9a-f]{24}", ids.new_id("chatcmpl-", 12))
    assert re.fullmatch(r"resp_[0-9a-f]{32}", ids.new_id("resp_", 16))
    with pytest.raises(ValueError, match="16"):
        ids.new_id("req_", 0)
    made = {ids.new_id("req_", 12) for _ in range(SLOTS * 2)}
    assert len(made) == SLOTS * 2
