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

`--request-path`: only the stream's own work, repeatably (trace_share's `--request-path` method):
callgrind starts with collection off and counts inside `operator.call` alone, through which, in
the measured rounds, every step of each stream's ASGI coroutine (`trace_share.Steps`) and every
`data_received` of the upstream connections (httptools' parse of the answer, its HTTP chunks)
run. Start-up, the warm-up, timers and other callbacks of the event loop (the ledger's batches,
the metrics flush), the other threads and valgrind's slowness are left out; one run of 3 x 4
rounds of 64 streams, the count divided by its 768 streams. How many reads of the upstream a
stream took is printed too: a paced stream's (`lines20`) depends on how fast the process keeps
up under valgrind (a slower run reads several events at once), so compare its counts at equal
reads per stream. `--profile FILE` keeps callgrind's
file (`callgrind_annotate --inclusive=yes FILE`).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import operator
import re
import subprocess
import sys
import tempfile
from typing import Any

ROUNDS = (2, 8)  # measured rounds per CPU run of stream_cost (which makes three runs)
STREAMS_APART = 3 * (ROUNDS[1] - ROUNDS[0]) * 64
PATH_ROUNDS = 4  # --request-path: measured rounds per CPU run
PATH_STREAMS = 3 * PATH_ROUNDS * 64
TIMEOUT_S = 1800


def child(scenario: str, rounds: int, tree: str | None, request_path: bool = False) -> None:
    """Under valgrind: stream_cost's driver, `rounds` measured rounds per run, nothing else
    (`request_path`: those rounds' streams counted through `operator.call`)."""
    sys.argv = ["stream_cost", "--scenarios", scenario, "--open", "0", "--streams", "64"]
    if tree:
        sys.argv += ["--tree", tree]  # stream_cost puts the tree first on the path when imported
    from loadtests.bench import stream_cost
    from loadtests.bench.trace_share import Counted

    # (imported after stream_cost, which put `tree` first on the path)
    http_client = importlib.import_module("gateway.providers.http_client")
    received = http_client._Connection.data_received
    reads = 0
    counting = False

    def counted_received(conn: Any, data: bytes) -> None:
        nonlocal reads
        if not counting:
            received(conn, data)
            return
        reads += 1
        operator.call(received, conn, data)

    if request_path:
        # Installed before any connection is made: the event loop's transport keeps the bound
        # method it found when the connection was made (uvloop does), so a later patch is not seen.
        http_client._Connection.data_received = counted_received

    async def streams(driver: Any, name: str, _: int) -> float:
        nonlocal counting
        model = stream_cost.gateway_model(name)
        for _ in range(2):
            await asyncio.gather(*(driver.stream(model) for _ in range(64)))
        app = driver.harness.app
        if request_path:
            driver.harness.app = Counted(app)
            counting = True
        try:
            for _ in range(rounds):
                await asyncio.gather(*(driver.stream(model) for _ in range(64)))
        finally:
            driver.harness.app = app
            counting = False
        return 0.0

    stream_cost.reframer_per_stream = lambda repetitions=0: 0.0  # not this count's
    stream_cost.cpu_per_stream = streams
    stream_cost.main()
    if request_path:
        print(f"upstream reads: {reads}")


def instructions(
    scenario: str,
    rounds: int,
    tree: str | None,
    request_path: bool = False,
    profile: str | None = None,
) -> int:
    """`profile`: callgrind's output file kept there (for `callgrind_annotate`)."""
    with tempfile.TemporaryDirectory(prefix="klawd-stream-instr-") as tmp:
        out = profile or f"{tmp}/callgrind.out"
        command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
        if request_path:
            command += ["--collect-atstart=no", "--toggle-collect=_operator_call"]
        command += [
            sys.executable, "-m", "loadtests.bench.stream_instructions",
            "--child", str(rounds), "--scenario", scenario,
        ]  # fmt: skip
        if tree:
            command += ["--tree", tree]
        if request_path:
            command += ["--request-path"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S)
    pattern = r"Collected\s*:\s*(\d+)" if request_path else r"I\s+refs:\s+([\d,]+)"
    found = re.search(pattern, done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"callgrind run failed:\n{done.stderr[-2000:]}")
    if request_path:
        read = re.search(r"upstream reads: (\d+)", done.stdout)
        print(f"upstream reads per stream: {int(read[1]) / PATH_STREAMS if read else 0:.2f}")
    return int(found.group(1).replace(",", ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="sse", help="sse, event, lines, ...")
    parser.add_argument("--tree", help="another checkout's gateway package, measured instead")
    parser.add_argument(
        "--request-path", action="store_true", help="count the streams' own steps only"
    )
    parser.add_argument("--profile", help="with --request-path: keep callgrind's file there")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.scenario, args.child, args.tree, args.request_path)
        return
    if args.request_path:
        counted = instructions(args.scenario, PATH_ROUNDS, args.tree, True, args.profile)
        print(
            f"{args.scenario}: {counted / PATH_STREAMS / 1000:.1f}K instructions per stream on "
            f"the request path ({counted:,} over {PATH_STREAMS} streams)"
        )
        return
    few, many = (instructions(args.scenario, rounds, args.tree) for rounds in ROUNDS)
    print(
        f"{args.scenario}: {(many - few) / STREAMS_APART / 1000:.1f}K instructions per stream "
        f"({few:,} and {many:,} in all; {STREAMS_APART} streams apart)"
    )


if __name__ == "__main__":
    main()
