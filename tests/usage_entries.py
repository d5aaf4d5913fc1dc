"""A usage entry for tests: one answered chat request of `openai/gpt-fake` (12 prompt and 4
completion tokens, status 200, no reservation), with the fields a test cares about given."""

from __future__ import annotations

import time
from typing import Any

import msgspec

from gateway.limits import Admission
from gateway.store.base import UsageEntry

_ENTRY = UsageEntry(
    id="use_test",
    ts=0.0,
    day="2026-12-05",
    account_id="acct_test",
    key_id="",
    model="openai/gpt-fake",
    provider="openai",
    prompt_tokens=12,
    completion_tokens=4,
    images=0,
    cost_micros=10,
    reserved_micros=0,
    latency_ms=3,
    status=200,
    request_id="req_test",
    stream=False,
)


def usage_entry(**fields: Any) -> UsageEntry:
    """`_ENTRY` stamped now (unless `ts` is given), with `fields` in place of its own."""
    return msgspec.structs.replace(_ENTRY, **({"ts": time.time()} | fields))


def admitted_entry(admission: Admission, **fields: Any) -> UsageEntry:
    """The entry that settles a request admitted as `admission`: it releases what admission
    reserved (the account's and the key's) and removes its hold (Redis)."""
    return usage_entry(
        reserved_micros=admission.reserved_micros,
        key_reserved_micros=admission.key_reserved_micros,
        hold_id=admission.hold_id,
        **fields,
    )


class Recorded:
    """The meter's recorder, keeping the entries (nothing settles)."""

    overflowing = False

    def __init__(self) -> None:
        self.entries: list[UsageEntry] = []

    def record(self, entry: UsageEntry) -> None:
        self.entries.append(entry)
