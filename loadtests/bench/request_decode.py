"""What the chat route's read of a request body costs before routing: the decode and the counts.

    taskset -c 0 .venv/bin/python -m loadtests.bench.request_decode [--tree DIR]
        [--runs 5] [--calls 2000] [--instructions]

For each body of loadtests.bench.anthropic_request (one message, a 22-message conversation, a
coding agent's 52.6 KB request with and without its image and breakpoints) it times what
`chat_completions` does with the body before it routes: `decode_chat_request` (validation,
the nesting check) and the prompt's counts (`prompt_counts`, read by the bounds, the routing
policy and the reservation). It prints the Python function calls per body under cProfile and
the µs per body, best and median of `--runs` runs of `--calls` calls (process CPU).
`--instructions`: the instructions per body instead, under callgrind (the script run with 0
and with 200 calls of one body, the difference divided by 200; deterministic). `--tree DIR`
measures another checkout's `gateway` package (with its built `_core`).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

if "--tree" in sys.argv:
    sys.path.insert(0, str(Path(sys.argv[sys.argv.index("--tree") + 1]).resolve()))

from gateway import _core
from gateway.schemas.openai import decode_chat_request
from loadtests.bench.anthropic_request import BODIES


def read(body: bytes) -> object:
    return decode_chat_request(body).prompt_counts


def instructions(
    name: str,
    tree: Path | None,
    calls: int,
    module: str = "loadtests.bench.request_decode",
    extra: tuple[str, ...] = (),
) -> int:
    """Instructions of the script (`module`, with `extra` arguments) with `calls` reads of body
    `name`, under callgrind."""
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        "-m",
        module,
        *extra,
        "--only",
        name,
        "--count",
        str(calls),
        *(["--tree", str(tree)] if tree else []),
    ]
    # (one hash seed: a random one moves the start-up's instructions by thousands per body)
    environ = os.environ | {"PYTHONHASHSEED": "0"}
    done = subprocess.run(
        command, capture_output=True, text=True, check=True, timeout=600, env=environ
    )
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise RuntimeError(done.stderr[-2000:])
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, help="another checkout's gateway package")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--instructions", action="store_true")
    parser.add_argument("--only", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.count is not None:  # one run under callgrind (--instructions)
        body = BODIES[args.only]
        for _ in range(args.count):
            read(body)
        return
    print(f"gateway from {Path(_core.__file__).parent}")
    for name, body in BODIES.items():
        read(body)
        if args.instructions:
            per = (instructions(name, args.tree, 200) - instructions(name, args.tree, 0)) / 200
            print(f"{name:30s} {len(body):6d} B  {per:10.0f} instructions per body")
            continue
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(100):
            read(body)
        profile.disable()
        calls = pstats.Stats(profile).total_calls / 100  # type: ignore[attr-defined]
        per_call = []
        for _ in range(args.runs):
            started = time.process_time()
            for _ in range(args.calls):
                read(body)
            per_call.append((time.process_time() - started) * 1e6 / args.calls)
        print(
            f"{name:30s} {len(body):6d} B  {calls:6.1f} calls  best {min(per_call):8.2f}  "
            f"median {statistics.median(per_call):8.2f} us"
        )


if __name__ == "__main__":
    main()
