"""Instructions per stream of the whole app in process, counted by callgrind.

    .venv/bin/python -m loadtests.bench.stream_instructions [--scenario sse] [--tree DIR]

`stream_cost`'s in-process driver (the app with the embedded store and everything on, its
upstream the bench's nginx) run twice under `valgrind --tool=callgrind`: 3 x (2 + 2) and
3 x (2 + 8) rounds of 64 streams of `--scenario`; the difference of the two totals over the
1,152 streams between them is the figure (start-up, imports and warm-up cancel out). A count,
not a timing, but the app's timer-driven work (ledger batches, the metrics flush) grows with the
wall time, which valgrind stretches: read whole-app figures as about ±50K. `--tree DIR`:
another checkout's `gateway` package (with its built `_core`), as stream_cost's. Each run takes
a few minutes (bounded by a timeout).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
import tempfile
from typing import Any

ROUNDS = (2, 8)  # measured rounds per CPU run of stream_cost (which makes three runs)
STREAMS_APART = 3 * (ROUNDS[1] - ROUNDS[0]) * 64
TIMEOUT_S = 1800


def child(scenario: str, rounds: int, tree: str | None) -> None:
    """Under valgrind: stream_cost's driver, `rounds` measured rounds per run, nothing else."""
    sys.argv = ["stream_cost", "--scenarios", scenario, "--open", "0", "--streams", "64"]
    if tree:
        sys.argv += ["--tree", tree]  # stream_cost puts the tree first on the path when imported
    from loadtests.bench import stream_cost

    async def streams(driver: Any, name: str, _: int) -> float:
        model = stream_cost.gateway_model(name)
        for _ in range(2 + rounds):
            await asyncio.gather(*(driver.stream(model) for _ in range(64)))
        return 0.0

    stream_cost.reframer_per_stream = lambda repetitions=0: 0.0  # not this count's
    stream_cost.cpu_per_stream = streams
    stream_cost.main()


def instructions(scenario: str, rounds: int, tree: str | None) -> int:
    with tempfile.TemporaryDirectory(prefix="klawd-stream-instr-") as tmp:
        command = [
            "valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/callgrind.out",
            sys.executable, "-m", "loadtests.bench.stream_instructions",
            "--child", str(rounds), "--scenario", scenario,
        ]  # fmt: skip
        if tree:
            command += ["--tree", tree]
        done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S)
    found = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"callgrind run failed:\n{done.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="sse", help="sse, event, lines, ...")
    parser.add_argument("--tree", help="another checkout's gateway package, measured instead")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.scenario, args.child, args.tree)
        return
    few, many = (instructions(args.scenario, rounds, args.tree) for rounds in ROUNDS)
    print(
        f"{args.scenario}: {(many - few) / STREAMS_APART / 1000:.1f}K instructions per stream "
        f"({few:,} and {many:,} in all; {STREAMS_APART} streams apart)"
    )


if __name__ == "__main__":
    main()
