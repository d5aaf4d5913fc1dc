"""SQLite ledger batches: random ledger ids against time-ordered ones (gateway.metering.ledger_id).

    .venv/bin/python loadtests/bench/ledger_bench.py [--batches 60] [--batch 500] [--reps 3]
    .venv/bin/python loadtests/bench/ledger_bench.py --calls --batch 50   # function calls
    .venv/bin/python loadtests/bench/ledger_bench.py --instructions [--tree DIR] [--batch 100]

Per repetition and id kind, a fresh embedded store (a file in a temporary directory, WAL, as the
gateway opens it) settles `--batches` batches of `--batch` entries; the CPU time of this process
(the event loop and the store's thread) is taken around each batch. Printed per kind: the median
and the mean of the last 10 batches (the ledger is largest then), as medians over repetitions.
Bounded: a fixed count of batches.

`--instructions`: callgrind's count per entry of a settle (the whole process, every thread: the
event loop's hand-off, the store's thread, SQLite), load-independent. Two runs under valgrind,
each making a 20,000-row ledger and 60 batches of time-ordered entries (their sizes spread over
a quarter to seven quarters of `--batch`, each size once, as the gateway's 50 ms batches vary
with the request rate), one settling 10 of the batches and one 60: the difference over the 50
batches' entries. `--tree DIR`: another checkout's `gateway` package measured instead.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
if "--tree" in sys.argv:
    sys.path.insert(0, str(Path(sys.argv[sys.argv.index("--tree") + 1]).resolve()))

from gateway.metering import ledger_id
from gateway.store import open_store
from gateway.store.base import UsageEntry


def random_id() -> str:
    return f"use_{secrets.token_hex(12)}"  # the ledger ids before they were time-ordered


def entry(account_id: str, ident: str) -> UsageEntry:
    return UsageEntry(
        id=ident,
        ts=time.time(),
        day="2026-11-26",
        account_id=account_id,
        key_id="key_bench",
        model="bench/m",
        provider="bench",
        prompt_tokens=12,
        completion_tokens=70,
        images=0,
        cost_micros=152,
        reserved_micros=0,
        latency_ms=1,
        status=200,
        request_id="req_bench",
        stream=False,
    )


async def run(kind: str, batches: int, size: int) -> list[float]:
    """CPU ms per batch, in order."""
    make_id = random_id if kind == "random" else ledger_id
    with tempfile.TemporaryDirectory(prefix="klawd-ledger-bench-") as tmp:
        store = open_store(f"sqlite:///{tmp}/ledger.db")
        account = await store.create_account("bench", "free", 10**15)
        times = []
        for _ in range(batches):
            batch = [entry(account.id, make_id()) for _ in range(size)]
            started = time.process_time()
            await store.settle(batch)
            times.append((time.process_time() - started) * 1000)
        await store.close()
    return times


async def calls(batches: int, size: int) -> float:
    """Python function calls per batch under cProfile (deterministic, load-independent), the
    store's work run on this thread (cProfile sees one thread) instead of its executor."""
    import cProfile
    import pstats

    with tempfile.TemporaryDirectory(prefix="klawd-ledger-bench-") as tmp:
        store = open_store(f"sqlite:///{tmp}/ledger.db")

        async def here(work: Any) -> Any:
            return work(store._connect())  # type: ignore[attr-defined]

        account = await store.create_account("bench", "free", 10**15)
        store._run = here  # type: ignore[attr-defined]
        for _ in range(10):  # warm
            await store.settle([entry(account.id, ledger_id()) for _ in range(size)])
        work = [[entry(account.id, ledger_id()) for _ in range(size)] for _ in range(batches)]
        profile = cProfile.Profile()
        profile.enable()
        for batch in work:
            await store.settle(batch)
        profile.disable()
        await store.close()
    return float(pstats.Stats(profile).total_calls) / batches  # type: ignore[attr-defined]


PREFILL = 20  # batches of 1,000 entries in the ledger before the counted ones
BATCHES = 60  # made in both runs; 10 settled in one, all in the other


def spread_sizes(size: int) -> list[int]:
    span = max(1, 3 * size // 2)
    return [size - span // 2 + (n * 37) % span for n in range(BATCHES)]


async def settle_some(settled: int, size: int) -> None:
    """The child of `--instructions`: the ledger filled, BATCHES batches made, `settled` of them
    settled."""
    with tempfile.TemporaryDirectory(prefix="klawd-ledger-bench-") as tmp:
        store = open_store(f"sqlite:///{tmp}/ledger.db")
        account = await store.create_account("bench", "free", 10**15)
        for _ in range(PREFILL):
            await store.settle([entry(account.id, ledger_id()) for _ in range(1000)])
        work = [[entry(account.id, ledger_id()) for _ in range(n)] for n in spread_sizes(size)]
        for batch in work[:settled]:
            await store.settle(batch)
        await store.close()


def instructions(size: int, tree: str | None) -> float:
    """Instructions per settled entry: the 60-batch run's count less the 10-batch run's."""
    counts = []
    with tempfile.TemporaryDirectory(prefix="klawd-ledger-callgrind-") as tmp:
        for settled in (10, BATCHES):
            out = f"{tmp}/callgrind.{settled}"
            command = [
                "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
                __file__, "--settle-some", str(settled), "--batch", str(size),
                *(["--tree", tree] if tree else []),
            ]  # fmt: skip
            done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
            if done.returncode != 0:
                raise SystemExit(f"callgrind run failed:\n{done.stderr[-3000:]}")
            summary = next(
                line for line in Path(out).read_text().splitlines() if line.startswith("summary:")
            )
            counts.append(int(summary.split()[1]))
    return (counts[1] - counts[0]) / sum(spread_sizes(size)[10:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--calls", action="store_true", help="function calls per batch only")
    parser.add_argument(
        "--instructions", action="store_true", help="callgrind's instructions per entry only"
    )
    parser.add_argument("--tree", help="with --instructions: another checkout's gateway package")
    parser.add_argument("--settle-some", type=int, help=argparse.SUPPRESS)  # --instructions' child
    args = parser.parse_args()
    if args.settle_some is not None:
        uvloop.run(settle_some(args.settle_some, args.batch))
        return 0
    if args.instructions:
        if not 4 <= args.batch <= 1000:
            parser.error("bounds: --batch 4..1000 with --instructions")
        per_entry = instructions(args.batch, args.tree)
        sizes = spread_sizes(args.batch)
        print(f"SQLite settle ({args.tree or 'this checkout'}), batches of {min(sizes)}-"
              f"{max(sizes)} onto a {PREFILL * 1000:,}-row ledger: "
              f"{per_entry / 1000:.1f}K instructions per entry")  # fmt: skip
        return 0
    if not (10 <= args.batches <= 1000 and 1 <= args.batch <= 5000 and 1 <= args.reps <= 10):
        parser.error("bounds: --batches 10..1000, --batch 1..5000, --reps 1..10")
    if args.calls:
        per_batch = uvloop.run(calls(args.batches, args.batch))
        print(f"SQLite settle, batches of {args.batch}: {per_batch:.1f} function calls per batch"
              f" ({per_batch / args.batch:.2f} per entry)")  # fmt: skip
        return 0
    medians: dict[str, list[float]] = {"random": [], "time-ordered": []}
    lasts: dict[str, list[float]] = {"random": [], "time-ordered": []}
    for _ in range(args.reps):
        for kind in medians:
            times = uvloop.run(run(kind, args.batches, args.batch))
            medians[kind].append(statistics.median(times))
            lasts[kind].append(statistics.mean(times[-10:]))
    rows = args.batches * args.batch
    print(f"SQLite settle, {args.batches} batches of {args.batch} ({rows} rows), CPU ms per batch")
    print(f"{'ids':<14} {'median':>8} {'last 10':>8}")
    for kind in medians:
        print(
            f"{kind:<14} {statistics.median(medians[kind]):>8.2f} "
            f"{statistics.median(lasts[kind]):>8.2f}"
        )
    ratio = statistics.median(medians["random"]) / statistics.median(medians["time-ordered"])
    print(f"random / time-ordered (median): {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
