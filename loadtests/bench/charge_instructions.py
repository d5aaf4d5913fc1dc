"""What an answer's token charge costs (an account with `tokens_per_minute`), counted: the
worker's Python function calls a charge (cProfile, deterministic) and redis-server's
instructions inside `FCALL` a charge (callgrind, `--toggle-collect=fcallCommand`, as
`settle_instructions` counts a settle call), repeatable where a timing moves with the machine.

    .venv/bin/python -m loadtests.bench.charge_instructions [--charges 2000] [--tree DIR]

`--charges` charges of one account through the tree's own `TokenCharges.charge` (the Meter's
call), on a redis-server of its own under valgrind, then the same count under cProfile on a
plain one. `--tree DIR`: another checkout's `gateway` package (its Lua library, its client and
its charge), for a before/after: run the command twice.
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
from pathlib import Path

if "--tree" in sys.argv:
    sys.path.insert(0, str(Path(sys.argv[sys.argv.index("--tree") + 1]).resolve()))
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))

from gateway.limits import LimitSpec
from gateway.store.redis import RedisStore
from gateway.token_charges import TokenCharges
from tests.conftest import free_port
from tests.redis_server import wait_until_answering

SPEC = LimitSpec(requests_per_minute=10**6, requests_per_day=10**8, tokens_per_minute=10**9)


async def charged(url: str, charges: int, profile: cProfile.Profile | None = None) -> None:
    """`charges` charges of one account (the library loaded by a first one, not counted)."""
    store = RedisStore(url)
    try:
        token_charges = TokenCharges(store.limiter())
        await token_charges.charge("acct_bench", SPEC, 100, "req_0")
        if profile is not None:
            profile.enable()
        for n in range(charges):
            await token_charges.charge("acct_bench", SPEC, 100, f"req_{n}")
        if profile is not None:
            profile.disable()
    finally:
        await store.close()


def server(port: int, folder: str, *valgrind: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*valgrind, "redis-server", "--port", str(port), "--save", "", "--appendonly", "no",
         "--dir", folder],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def redis_instructions(charges: int) -> int:
    """redis-server's instructions inside FCALL over `charges` + 1 charges."""
    with tempfile.TemporaryDirectory(prefix="klawd-charge-instr-") as tmp:
        port = free_port()
        out = Path(tmp) / "callgrind.out"
        valgrind = ("valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                    "--toggle-collect=fcallCommand")  # fmt: skip
        running = server(port, tmp, *valgrind)
        try:
            wait_until_answering(port, 60)
            asyncio.run(charged(f"redis://127.0.0.1:{port}/0", charges))
        finally:
            running.terminate()
            running.wait()
        found = re.search(r"^(?:totals|summary): (\d+)", out.read_text(), re.MULTILINE)
        assert found is not None, "callgrind wrote no totals"
        return int(found.group(1))


def python_calls(charges: int) -> int:
    """The worker's Python function calls over `charges` charges (cProfile)."""
    with tempfile.TemporaryDirectory(prefix="klawd-charge-calls-") as tmp:
        port = free_port()
        running = server(port, tmp)
        try:
            wait_until_answering(port)
            profile = cProfile.Profile()
            asyncio.run(charged(f"redis://127.0.0.1:{port}/0", charges, profile))
        finally:
            running.terminate()
            running.wait()
        return int(pstats.Stats(profile).total_calls)  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--charges", type=int, default=2000)
    parser.add_argument("--tree", type=Path, help="another checkout's gateway package")
    args = parser.parse_args()
    import gateway

    inside = redis_instructions(args.charges) / (args.charges + 1)
    calls = python_calls(args.charges) / args.charges
    print(f"gateway from {Path(gateway.__file__).parent}; {args.charges} token charges: "
          f"redis-server's instructions inside FCALL {inside / 1000:.2f} K a charge; the "
          f"worker's Python function calls {calls:.1f} a charge")  # fmt: skip


if __name__ == "__main__":
    main()
