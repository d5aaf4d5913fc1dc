"""`klawd usage replay LOG…`: the ledger entries a gateway could not write, settled from its log.

A gateway whose store stays unreachable through its shutdown writes each entry it still holds
to its log as an `unsettled usage entry {json}` line (gateway/usage.py). This command reads
those lines (from log files, or `-` for standard input: `kubectl logs … | klawd usage replay -`),
raw or wrapped by a log shipper as JSON records, and settles the entries as the gateway would
have: the ledger, the balances, the keys' spend, their holds on Redis, and the budget and credit
threshold events (queued in the store, delivered by a running gateway). Replaying is idempotent:
the store skips an entry whose id is already in the ledger, so a log can be replayed twice, or
again after a run that failed halfway.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from typing import IO, Any

import msgspec

from gateway.store.base import Store, UsageEntry
from gateway.webhooks.budgets import BudgetWatch
from gateway.webhooks.credits import CreditWatch

MARKER = "unsettled usage entry "  # gateway/usage.py's log line, before the entry's JSON
BATCH = 500  # entries per settle call (one transaction, one Redis call per account)

_decoder = msgspec.json.Decoder(UsageEntry)


class Found(msgspec.Struct):
    """The entries of a log's marked lines (each id once, the first), and the marked lines that
    could not be read (as "file:line")."""

    entries: list[UsageEntry]
    unreadable: list[str]


def entries_in(named_lines: Iterable[tuple[str, Iterable[str]]]) -> Found:
    found = Found([], [])
    seen: set[str] = set()
    for name, lines in named_lines:
        for number, line in enumerate(lines, 1):
            at = line.find(MARKER)
            if at < 0:
                continue
            entry = _entry_after_marker(line, at)
            if entry is None:
                found.unreadable.append(f"{name}:{number}")
                continue
            if entry.id not in seen:
                seen.add(entry.id)
                found.entries.append(entry)
    return found


def _entry_after_marker(line: str, at: int) -> UsageEntry | None:
    """The entry of a marked line: the raw log line, or the same line wrapped by a log shipper as
    a JSON record (Docker's json-file `{"log": "…"}`, Fluent Bit, Loki exports), where the entry's
    quotes are escaped and the record goes on after it."""
    try:
        return _decoder.decode(line[at + len(MARKER) :].strip())
    except msgspec.DecodeError:  # (a ValidationError is one)
        pass
    try:
        record = msgspec.json.decode(line.strip())
    except msgspec.DecodeError:
        return None
    for text in _strings(record):
        inner = text.find(MARKER)
        if inner >= 0:
            try:
                return _decoder.decode(text[inner + len(MARKER) :].strip())
            except msgspec.DecodeError:
                return None
    return None


def _strings(value: object, depth: int = 0) -> Iterator[str]:
    """The strings of a decoded JSON record (a shipper may nest the line a few levels down)."""
    if isinstance(value, str):
        yield value
    elif depth < 8 and isinstance(value, dict):
        for item in value.values():
            yield from _strings(item, depth + 1)
    elif depth < 8 and isinstance(value, list):
        for item in value:
            yield from _strings(item, depth + 1)


async def replay(store: Store, entries: list[UsageEntry]) -> None:
    """Settles `entries` in batches, each followed by the checks the gateway runs after a
    settlement (gateway/state.py: the keys' budgets, the accounts' credit thresholds)."""
    budgets, credits = BudgetWatch(store), CreditWatch(store)
    for start in range(0, len(entries), BATCH):
        batch = entries[start : start + BATCH]
        grants = await store.settle(batch, resent=True)  # settled after all, some may be
        await budgets.settled(batch)
        await credits.settled(batch, grants)


def _opened(paths: list[str], stack: ExitStack) -> Iterator[tuple[str, IO[str]]]:
    for path in paths:
        if path == "-":
            yield "<stdin>", sys.stdin
        else:
            yield path, stack.enter_context(open(path, encoding="utf-8", errors="replace"))


def cmd_usage_replay(args: argparse.Namespace) -> int:
    from gateway import cli  # the shared helpers (settings, store, output)

    settings = cli._settings(args)
    try:
        with ExitStack() as stack:
            found = entries_in(_opened(args.logs, stack))
    except OSError as exc:
        sys.stderr.write(f"klawd: cannot read {exc.filename}: {exc.strerror}\n")
        return 2

    async def work(store: Store) -> Any:
        await replay(store, found.entries)
        return {"entries": len(found.entries), "unreadable_lines": found.unreadable}

    cli._print_json(cli._with_store(settings, work))
    if found.unreadable:
        sys.stderr.write(
            f"klawd: {len(found.unreadable)} marked line(s) could not be read as a usage entry "
            "(listed above); the others were settled\n"
        )
        return 1
    return 0


def add_commands(commands: Any, config: argparse.ArgumentParser) -> None:
    usage = commands.add_parser("usage", help="settle usage a gateway could not write")
    sub = usage.add_subparsers(dest="action", required=True, metavar="ACTION")
    replay_cmd = sub.add_parser(
        "replay",
        parents=[config],
        help="settle the `unsettled usage entry` lines of gateway logs (idempotent)",
    )
    replay_cmd.add_argument("logs", nargs="+", metavar="LOG", help="a log file, or - for stdin")
    replay_cmd.set_defaults(func=cmd_usage_replay)
