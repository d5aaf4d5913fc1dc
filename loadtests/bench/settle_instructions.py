"""What a settled entry costs the Redis server, counted: redis-server's instructions inside
`FCALL` (callgrind, `--toggle-collect=fcallCommand`) for the store's settle call, per entry
and per call, repeatable where `settle_cost`'s times move with the machine's load.

    .venv/bin/python -m loadtests.bench.settle_instructions [--calls 20] [--tree DIR]
        [--admissions N [--redis-py]]

Runs redis-server under valgrind twice: `--calls` settle calls of `--small` leased entries,
then of `--large` (each call's entries admitted first from a lease, by one
`klawd_admit_lease_v1`, as `settle_cost` does: inside `FCALL` too, once a call). Per entry: the
slope between the two; per call: the rest (the admission included). `--tree DIR`: another
checkout's `gateway` package (its library and its client), for a before/after. `--by-function N`:
also the N functions whose inclusive instructions grow most an entry (`callgrind_annotate
--inclusive=yes`, the same slope), to tell an entry's pieces apart (Debian's redis-server has no
symbols for its Lua: the VM and its string making show as their callers, e.g. `luaD_precall`,
`lua_pushlstring`).

`--admissions N`: instead, N admissions of one account (each reserving, as a priced request's:
`RedisLimiter.admit`, one `FCALL` each) and their count per admission: `klawd_admit_v3` on the
lean client; `--redis-py`, the store on redis-py (a URL the lean client does not take, as on a
Redis Cluster), whose admissions are `klawd_admit_v4` since issue 19zzzzzl.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

if "--tree" in sys.argv:
    sys.path.insert(0, str(Path(sys.argv[sys.argv.index("--tree") + 1]).resolve()))
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))

from gateway.limits import LimitSpec
from gateway.store.base import open_store
from gateway.store.redis import RedisStore
from loadtests.bench.settle_cost import CREDIT, batch_holds, entry
from tests.conftest import free_port
from tests.redis_server import wait_until_answering


async def settle(url: str, calls: int, size: int) -> None:
    store = open_store(url)
    assert isinstance(store, RedisStore)
    try:
        account = await store.create_account("settle", "free", CREDIT)
        for _ in range(calls):
            holds = await batch_holds(store, account.id, size, exact=False)
            await store.settle([entry(account.id, hold) for hold in holds])
    finally:
        await store.close()


async def admit(url: str, admissions: int) -> None:
    store = open_store(url)
    assert isinstance(store, RedisStore)
    try:
        account = await store.create_account("admit", "free", CREDIT)
        limiter, spec = store.limiter(), LimitSpec(10**9, 10**9)
        for _ in range(admissions):
            assert (await limiter.admit(account.id, spec, 1)).admitted
    finally:
        await store.close()


def instructions(
    calls: int,
    size: int,
    by_function: bool = False,
    run: Callable[[str], Awaitable[None]] | None = None,
) -> tuple[int, dict[str, int]]:
    """redis-server's instructions inside FCALL over `calls` calls of `size` entries (or what
    `run(url)` sends), and (with `by_function`) each function's inclusive count."""
    with tempfile.TemporaryDirectory(prefix="klawd-settle-instr-") as tmp:
        port = free_port()
        out = Path(tmp) / "callgrind.out"
        server = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
             "--toggle-collect=fcallCommand", "redis-server", "--port", str(port), "--save", "",
             "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_until_answering(port, 60)
            url = f"redis://127.0.0.1:{port}/0"
            asyncio.run(settle(url, calls, size) if run is None else run(url))
        finally:
            server.terminate()
            server.wait()
        found = re.search(r"^(?:totals|summary): (\d+)", out.read_text(), re.MULTILINE)
        assert found is not None, "callgrind wrote no totals"
        return int(found.group(1)), inclusive(out) if by_function else {}


def inclusive(out: Path) -> dict[str, int]:
    """function -> its inclusive instructions, from callgrind_annotate."""
    text = subprocess.run(
        ["callgrind_annotate", "--inclusive=yes", "--threshold=100", str(out)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rows = re.findall(r"^\s*([\d,]+) \([^)]*\)\s+(?:\?\?\?:)?(\S+)", text, re.MULTILINE)
    # named functions only: the stripped ones are bare addresses, recursion repeats a name ('2)
    return {
        name: int(count.replace(",", ""))
        for count, name in rows
        if not name.startswith("0x") and "'" not in name and "/" not in name
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--small", type=int, default=10)
    parser.add_argument("--large", type=int, default=90)
    parser.add_argument("--tree", type=Path, help="another checkout's gateway package")
    parser.add_argument("--by-function", type=int, default=0, metavar="N")
    parser.add_argument("--admissions", type=int, default=0, metavar="N")
    parser.add_argument("--redis-py", action="store_true", help="the store on redis-py")
    args = parser.parse_args()
    import gateway

    if args.admissions:
        query = "?client_name=bench" if args.redis_py else ""  # (the lean client refuses it)
        total, _ = instructions(0, 0, run=lambda url: admit(url + query, args.admissions))
        client = "redis-py" if args.redis_py else "the lean client"
        print(f"gateway from {Path(gateway.__file__).parent}; {args.admissions} admissions on"
              f" {client}: redis-server's instructions inside FCALL"
              f" {total / args.admissions / 1000:.2f} K an admission")  # fmt: skip
        return

    by_function = args.by_function > 0
    small, small_fns = instructions(args.calls, args.small, by_function)
    large, large_fns = instructions(args.calls, args.large, by_function)
    slope = (args.large - args.small) * args.calls
    per_entry = (large - small) / slope
    per_call = small / args.calls - args.small * per_entry
    print(f"gateway from {Path(gateway.__file__).parent}; {args.calls} calls of {args.small} and"
          f" of {args.large} leased entries: redis-server's instructions inside FCALL"
          f" {per_entry / 1000:.2f} K an entry, {per_call / 1000:.1f} K a call (with the"
          " lease's admission)")  # fmt: skip
    grown = {name: (large_fns[name] - small_fns.get(name, 0)) / slope for name in large_fns}
    # (below FCALL: the functions above it and FCALL's own hold the whole count)
    below = [item for item in grown.items() if item[1] < 0.99 * per_entry]
    for name, count in sorted(below, key=lambda item: -item[1])[: args.by_function]:
        print(f"  {count / 1000:7.2f} K an entry, inclusive  {name}")


if __name__ == "__main__":
    main()
