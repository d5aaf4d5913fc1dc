"""What a settled entry costs the Redis server: the store's settle call (`klawd_settle_v17`
since issue 19zzzzzq) over batches of one account's entries as the usage recorder sends them
(`RedisStore.settle`), counted by Redis itself.

    .venv/bin/python -m loadtests.bench.settle_cost [--batches 200] [--batch 50] [--tree DIR]

Each batch's entries are admitted from a lease (`klawd_admit_lease_v1`, as a busy worker admits
them: their holds are the lease's) or, with `--exact`, each by `klawd_admit_v3` (a hold of its
own). Around the settle calls only (`CONFIG RESETSTAT` before each, `INFO commandstats` after),
per entry: the commands the functions ran (calls of each) and Redis's time in `FCALL` and in
each command inside it (µs, their `usec`: a command's own time, not the Lua around it), medians
over batches. The counts are deterministic; the time is Redis's own, on one
redis-server of its own (no client or event-loop time in it), still moved by the machine's load.
`--tree DIR`: another checkout's `gateway` package (its library and its client), measured
instead, for a before/after (run once per tree, back to back). Bounded by `--batches`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

if "--tree" in sys.argv:
    sys.path.insert(0, str(Path(sys.argv[sys.argv.index("--tree") + 1]).resolve()))
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))

from gateway.metering import ledger_id
from gateway.store.base import UsageEntry, open_store
from gateway.store.redis import RedisStore
from tests.conftest import free_port
from tests.redis_server import RedisServer

RESERVE = 8_197
COST = 26
CREDIT = 10**12


def commandstats(info: dict[str, dict[str, float]]) -> dict[str, tuple[int, int]]:
    return {
        name.removeprefix("cmdstat_"): (int(fields["calls"]), int(fields["usec"]))
        for name, fields in info.items()
        if name.startswith("cmdstat_")
    }


async def batch_holds(store: RedisStore, account_id: str, size: int, exact: bool) -> list[str]:
    """The holds of `size` admitted requests: a lease's (as a busy worker's), or their own."""
    acct = f"klawd:acct:{{{account_id}}}"
    keys = [f"{acct}:rpm", f"{acct}:rpd", f"{acct}:tpm", f"{acct}:credits", f"{acct}:holds"]
    head = [10**9, 10**9, 0, RESERVE, 1]
    hold_ms = store.reservation_hold_ms
    if exact:
        holds = []
        for _ in range(size):
            reply = await store.fcall(
                "klawd_admit_v3", keys, [*head, f"h{ledger_id()[-16:]}", hold_ms]
            )
            holds.append(reply[9].decode())
        return holds
    lease = "L" + ledger_id()[-16:]
    reply = await store.fcall(
        "klawd_admit_lease_v1",
        [*keys, f"{acct}:leases"],
        [*head, f"h{ledger_id()[-16:]}", hold_ms, size, size * RESERVE, 250, lease],
    )
    assert int(reply[11]) == size, "no lease granted"
    return [reply[14].decode()] * size


def entry(account_id: str, hold: str) -> UsageEntry:
    return UsageEntry(
        id=ledger_id(),
        ts=time.time(),
        day=time.strftime("%Y-%m-%d", time.gmtime()),
        account_id=account_id,
        key_id="key_0123456789abcdef",
        model="benchjson/m",
        provider="benchjson",
        prompt_tokens=12,
        completion_tokens=7,
        images=0,
        cost_micros=COST,
        reserved_micros=RESERVE,
        latency_ms=1,
        status=200,
        request_id="req_0123456789abcdef01234567",
        stream=True,
        hold_id=hold,
    )


async def run(url: str, batches: int, size: int, exact: bool) -> None:
    import redis.asyncio as aioredis

    store = open_store(url)
    assert isinstance(store, RedisStore)
    stats = aioredis.from_url(url)
    try:
        account = await store.create_account("settle", "free", CREDIT)
        per_entry: dict[str, list[float]] = {}
        for _ in range(batches):
            holds = await batch_holds(store, account.id, size, exact)
            entries = [entry(account.id, hold) for hold in holds]
            await stats.config_resetstat()
            await store.settle(entries)
            counts = commandstats(await stats.info("commandstats"))
            for name, (calls, usec) in counts.items():
                if name in ("config|resetstat", "info"):
                    continue
                per_entry.setdefault(f"calls {name}", []).append(calls / size)
                per_entry.setdefault(f"usec {name}", []).append(usec / size)
        for name in sorted(per_entry):
            values = per_entry[name]
            while len(values) < batches:
                values.append(0.0)
            print(f"  {name:28} {statistics.median(values):8.3f}")
    finally:
        await stats.aclose()
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--exact", action="store_true", help="entries admitted one by one")
    parser.add_argument("--tree", type=Path, help="another checkout's gateway package")
    args = parser.parse_args()
    import gateway

    print(f"gateway from {Path(gateway.__file__).parent}; {args.batches} batches of {args.batch}"
          f" entries, {'each its own hold' if args.exact else 'leased'}; per entry:")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="klawd-settle-cost-") as tmp:
        server = RedisServer(free_port(), Path(tmp))
        server.start()
        try:
            asyncio.run(run(server.url, args.batches, args.batch, args.exact))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
