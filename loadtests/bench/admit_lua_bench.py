"""Redis server time of the admission and settlement functions, before and after keys for teams,
in one run on one redis-server: `klawd_admit_v1` against `klawd_admit_v2` (a key without and with
a budget and limits), `klawd_settle_v2` against `klawd_settle_v3` and `klawd_settle_v4` (v3 plus
the account's credit grant, for `budget.threshold` of the credit), and `klawd_settle_v5` (a batch
of one account's entries in one call) per entry; and a request's admission plus its share of a
50-entry settlement with reservation holds (`klawd_admit_v3` + `klawd_settle_v6`) against
without (`klawd_admit_v2` + `klawd_settle_v5`). Redis's own per-call figure (INFO commandstats,
usec_per_call), so client and event-loop noise stay out of it.

    .venv/bin/python loadtests/bench/admit_lua_bench.py [--calls 20000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gateway.store.redis import LIBRARY
from tests.conftest import free_port
from tests.redis_server import RedisServer

A = "klawd:acct:{bench}"
ACCOUNT = [f"{A}:rpm", f"{A}:rpd", f"{A}:tpm", f"{A}:credits"]
KEY = [f"{A}:krpm:k", f"{A}:krpd:k"] + [
    f"{A}:kspend:k:{p}" for p in ("d:2026-12-03", "m:2026-12", "t")
]
LIMITS = [10**9, 10**9, 0, 20, 1]  # rpm, rpd, tpm, reserve 20 micro-dollars, consume


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=20000)
    args = parser.parse_args()
    server = RedisServer(free_port(), Path(tempfile.mkdtemp(prefix="klawd-lua-")))
    server.start()
    try:
        client = redis.Redis.from_url(server.url)
        client.execute_command("FUNCTION", "LOAD", "REPLACE", LIBRARY)
        client.set(f"{A}:credits", 10**15)
        client.hset(A, mapping={"grant_seq": 1, "grant": 10**15, "grant_at": 0, "grant_spent": 0})

        def measure(name: str, call: Callable[[int], object]) -> None:
            client.execute_command("CONFIG", "RESETSTAT")
            started = time.perf_counter()
            for i in range(args.calls):
                call(i)
            wall = (time.perf_counter() - started) / args.calls * 1e6
            server_us = client.info("commandstats")["cmdstat_fcall"]["usec_per_call"]
            print(f"{name:44} {server_us:8.2f} {wall:10.1f}")

        def settle_keys(i: int, tag: str) -> list[str]:
            return [f"{A}:credits", f"{A}:usage:2026-12-03", f"{A}:ledger", f"{A}:{tag}:{i}"]

        entry = [0, "m/x", 10, 4, 0, 20, '{"id":"use_x"}']
        print(f"{'function':44} {'server us':>8} {'client us':>10}")
        measure(
            "klawd_admit_v1 (before)",
            lambda i: client.execute_command("FCALL", "klawd_admit_v1", 4, *ACCOUNT, *LIMITS),
        )
        measure(
            "klawd_admit_v2, key without budget/limits",
            lambda i: client.execute_command(
                "FCALL", "klawd_admit_v2", 9, *ACCOUNT, *KEY, *LIMITS, 0, 0, -1, -1, -1
            ),
        )
        measure(
            "klawd_admit_v2, key with budget + limits",
            lambda i: client.execute_command(
                "FCALL", "klawd_admit_v2", 9, *ACCOUNT, *KEY, *LIMITS, 10**8, 10**8, 10**14, -1, -1
            ),
        )
        measure(
            "klawd_settle_v2 (before)",
            lambda i: client.execute_command(
                "FCALL", "klawd_settle_v2", 4, *settle_keys(i, "s2"), *entry
            ),
        )
        measure(
            "klawd_settle_v3, key without budget",
            lambda i: client.execute_command(
                "FCALL",
                "klawd_settle_v3",
                8,
                *settle_keys(i, "s3"),
                f"{A}:kusage:2026-12-03",
                *KEY[2:],
                *entry,
                "k",
                0,
            ),
        )
        measure(
            "klawd_settle_v4, key without budget, grant",
            lambda i: client.execute_command(
                "FCALL",
                "klawd_settle_v4",
                9,
                *settle_keys(i, "s4"),
                f"{A}:kusage:2026-12-03",
                *KEY[2:],
                A,
                *entry,
                "k",
                0,
            ),
        )
        batch = 50  # entries per klawd_settle_v5 call: a 20 ms batch of a busy account

        def settle_v4(i: int) -> object:
            keys, argv = [f"{A}:credits", f"{A}:ledger", A], []
            for n in range(batch):
                keys += [f"{A}:usage:2026-12-03", f"{A}:s4:{i}:{n}", f"{A}:kusage:2026-12-03"]
                keys += KEY[2:]
                argv += [*entry, "k", 0]
            return client.execute_command("FCALL", "klawd_settle_v5", len(keys), *keys, *argv)

        client.execute_command("CONFIG", "RESETSTAT")
        for i in range(args.calls // batch):
            settle_v4(i)
        per_entry = client.info("commandstats")["cmdstat_fcall"]["usec_per_call"] / batch
        print(f"{f'klawd_settle_v5, {batch} entries a call (per entry)':44} {per_entry:8.2f}")
        print(f"{'per request: admission + 1/50 of a settlement':44} {'server us':>8}")
        held = [f"{A}:holds"]
        for name, holds in (("klawd_admit_v2 + klawd_settle_v5", False),
                            ("klawd_admit_v3 + klawd_settle_v6 (holds)", True)):  # fmt: skip
            client.execute_command("CONFIG", "RESETSTAT")
            for i in range(args.calls // batch):
                keys, argv = [f"{A}:credits", f"{A}:ledger", A, *(held if holds else [])], []
                for n in range(batch):
                    if holds:
                        reply = client.execute_command(
                            "FCALL", "klawd_admit_v3", 5, *ACCOUNT, *held, *LIMITS,
                            f"h{i}.{n}", 3_600_000,
                        )  # fmt: skip
                        hold = [reply[9]]
                    else:
                        client.execute_command("FCALL", "klawd_admit_v2", 4, *ACCOUNT, *LIMITS)
                        hold = []
                    keys += [f"{A}:usage:2026-12-03", f"{A}:h{holds}:{i}:{n}"]
                    keys += [f"{A}:kusage:2026-12-03", *KEY[2:]]
                    argv += [20, *entry[1:], "k", 0, *hold]
                function = "klawd_settle_v6" if holds else "klawd_settle_v5"
                client.execute_command("FCALL", function, len(keys), *keys, *argv)
            stats = client.info("commandstats")["cmdstat_fcall"]
            print(f"{name:44} {stats['usec'] / (args.calls // batch * batch):8.2f}")
        print(f"({args.calls} sequential calls each, redis-py, one connection)")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
