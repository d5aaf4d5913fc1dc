"""What an answer's token charge costs (an account with `tokens_per_minute`), counted: the
worker's Python function calls a charge (cProfile, deterministic) and redis-server's
instructions inside `FCALL` a charge (callgrind, `--toggle-collect=fcallCommand`, as
`settle_instructions` counts a settle call), repeatable where a timing moves with the machine.

    .venv/bin/python -m loadtests.bench.charge_instructions [--charges 2000] [--tree DIR]
        [--live N [--cold]] [--by-function N]

`--charges` charges of one account through the tree's own `TokenCharges.charge` (the Meter's
call), on a redis-server of its own under valgrind, then the same count under cProfile on a
plain one. `--tree DIR`: another checkout's `gateway` package (its Lua library, its client and
its charge), for a before/after: run the command twice.

Without `--live` the account's charge ids pile up (`--charges` of them, all within the store's
5-minute window). `--live N`: before each charge (outside `FCALL`, so not counted) the account's
id set (v3's `klawd:acct:{A}:charges` and v4's `:charge_ids`, each tree reading its own) is made
to hold N ids seen just now and one seen past the window, with the window's expiry: the steady
state of an account charged N times a window (a call's trim has about one id to remove); its
bucket is left as the charge before left it (for v4: a trim not yet due). `--cold` also deletes
the bucket before each charge: an account whose bucket refilled and expired since its last
charge, or its first charge (for v4: the trim runs). `--by-function N`: also the N functions
below `FCALL` with the most inclusive instructions a charge (`callgrind_annotate
--inclusive=yes`, `settle_instructions.inclusive`).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if "--tree" in sys.argv:
    sys.path.insert(0, str(Path(sys.argv[sys.argv.index("--tree") + 1]).resolve()))
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))

import redis

from gateway.limits import LimitSpec
from gateway.store.redis import RedisStore
from gateway.token_charges import TokenCharges
from loadtests.bench.settle_instructions import inclusive
from tests.conftest import free_port
from tests.redis_server import wait_until_answering

SPEC = LimitSpec(requests_per_minute=10**6, requests_per_day=10**8, tokens_per_minute=10**9)
ACCOUNT = "acct_bench"
WINDOW_MS = 300_000  # how long the store remembers a charge's id (gateway/token_charges.py)


class Seed:
    """The account's keys as `--live` and `--cold` ask, set before a charge by a client of its
    own (plain commands: outside `FCALL`)."""

    def __init__(self, url: str, live: int | None, cold: bool) -> None:
        self.client = redis.Redis.from_url(url, socket_timeout=120)  # (under valgrind)
        self.live, self.cold = live, cold

    def __call__(self) -> None:
        if self.live is None:
            return
        acct = f"klawd:acct:{{{ACCOUNT}}}"
        # each version's set (the tree's own is read): v3's scored by the time an id was first
        # seen, v4's by minus that time
        sets = {f"{acct}:charges": 1, f"{acct}:charge_ids": -1}
        now_ms = int(time.time() * 1000)
        pipe = self.client.pipeline(transaction=False)
        pipe.delete(*sets, *([f"{acct}:tpm"] if self.cold else []))
        for key, sign in sets.items() if self.live else ():
            pipe.zadd(key, {f"seen_{n:05}": sign * now_ms for n in range(self.live)})
            pipe.zadd(key, {"stale": sign * (now_ms - WINDOW_MS - 1000)})
            pipe.pexpire(key, WINDOW_MS)
        pipe.execute()


async def charged(
    url: str, charges: int, seed: Seed, profile: cProfile.Profile | None = None
) -> None:
    """`charges` charges of one account (the library loaded by a first one, not counted)."""
    store = RedisStore(url)
    try:
        token_charges = TokenCharges(store.limiter())
        seed()
        await token_charges.charge(ACCOUNT, SPEC, 100, "req_0")
        for n in range(charges):
            seed()
            if profile is not None:
                profile.enable()
            await token_charges.charge(ACCOUNT, SPEC, 100, f"req_{n}")
            if profile is not None:
                profile.disable()
    finally:
        await store.close()
        seed.client.close()


def server(port: int, folder: str, *valgrind: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*valgrind, "redis-server", "--port", str(port), "--save", "", "--appendonly", "no",
         "--dir", folder],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def redis_instructions(
    charges: int, live: int | None, cold: bool, by_function: bool
) -> tuple[int, dict[str, int]]:
    """redis-server's instructions inside FCALL over `charges` + 1 charges, and (with
    `by_function`) each function's inclusive count."""
    with tempfile.TemporaryDirectory(prefix="klawd-charge-instr-") as tmp:
        port = free_port()
        out = Path(tmp) / "callgrind.out"
        valgrind = ("valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                    "--toggle-collect=fcallCommand")  # fmt: skip
        running = server(port, tmp, *valgrind)
        try:
            wait_until_answering(port, 60)
            url = f"redis://127.0.0.1:{port}/0"
            asyncio.run(charged(url, charges, Seed(url, live, cold)))
        finally:
            running.terminate()
            running.wait()
        found = re.search(r"^(?:totals|summary): (\d+)", out.read_text(), re.MULTILINE)
        assert found is not None, "callgrind wrote no totals"
        return int(found.group(1)), inclusive(out) if by_function else {}


def python_calls(charges: int, live: int | None, cold: bool) -> int:
    """The worker's Python function calls over `charges` charges (cProfile)."""
    with tempfile.TemporaryDirectory(prefix="klawd-charge-calls-") as tmp:
        port = free_port()
        running = server(port, tmp)
        try:
            wait_until_answering(port)
            profile = cProfile.Profile()
            url = f"redis://127.0.0.1:{port}/0"
            asyncio.run(charged(url, charges, Seed(url, live, cold), profile))
        finally:
            running.terminate()
            running.wait()
        return int(pstats.Stats(profile).total_calls)  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--charges", type=int, default=2000)
    parser.add_argument("--tree", type=Path, help="another checkout's gateway package")
    parser.add_argument("--live", type=int, metavar="N", help="ids in the set at each charge")
    parser.add_argument("--cold", action="store_true", help="no bucket at each charge")
    parser.add_argument("--by-function", type=int, default=0, metavar="N")
    args = parser.parse_args()
    import gateway

    total, functions = redis_instructions(args.charges, args.live, args.cold, args.by_function > 0)
    inside = total / (args.charges + 1)
    calls = python_calls(args.charges, args.live, args.cold) / args.charges
    state = "" if args.live is None else f" ({args.live} live ids{', cold' if args.cold else ''})"
    print(f"gateway from {Path(gateway.__file__).parent}; {args.charges} token charges{state}: "
          f"redis-server's instructions inside FCALL {inside / 1000:.2f} K a charge; the "
          f"worker's Python function calls {calls:.1f} a charge")  # fmt: skip
    # (below FCALL: the functions above it and FCALL's own hold the whole count)
    below = [(name, count) for name, count in functions.items() if count < 0.99 * total]
    for name, count in sorted(below, key=lambda item: -item[1])[: args.by_function]:
        print(f"  {count / (args.charges + 1) / 1000:7.2f} K a charge, inclusive  {name}")


if __name__ == "__main__":
    main()
