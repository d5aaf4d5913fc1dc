"""The admission hot path before and after keys for teams, in one run: the metering bench
(loadtests/bench/metering_bench.py) against a temporary worktree of the commit before them and
against this checkout, alternated round by round so that both see the same machine load.

    .venv/bin/python loadtests/bench/key_admission_compare.py [--base 66d898c] [--rounds 3]
        [--requests 2000] [--repeat 3]

Both trees use this checkout's built extension module (the keys-for-teams change touched no
Rust). Reported per variant: the median over rounds of µs per request and of the hot-path Redis
round trips per request (one admission FCALL each, plus the pipelined settle batches shared by
the requests of each 20 ms).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "loadtests" / "bench" / "metering_bench.py"
BASE = "66d898c"  # main just before keys for teams (issue 17)


def run(tree: Path, variants: str, requests: int, repeat: int) -> dict[str, Any]:
    options = ["--requests", str(requests), "--repeat", str(repeat), "--json"]
    done = subprocess.run(
        [sys.executable, str(BENCH), "--tree", str(tree), "--variants", variants, *options],
        capture_output=True,
        check=True,
        timeout=1800,
    )
    result: dict[str, Any] = orjson.loads(done.stdout.splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", default=BASE)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    old = Path(tempfile.mkdtemp(prefix="klawd-before-keys-")) / "tree"
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(old), args.base],
        check=True,
        capture_output=True,
    )
    try:
        for module in (REPO / "gateway").glob("_core*.so"):
            shutil.copy2(module, old / "gateway" / module.name)
        samples: dict[str, list[tuple[float, float]]] = {}
        for _ in range(args.rounds):
            for label, tree, variants in (
                (f"before ({args.base})", old, "redis,bypassed"),
                ("keys for teams", REPO, "redis,redis-key,bypassed"),
            ):
                for variant, value in run(tree, variants, args.requests, args.repeat).items():
                    samples.setdefault(f"{label}: {variant}", []).append(
                        (value["us"], value["round_trips"])
                    )
    finally:
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "remove", "--force", str(old)],
            check=False,
            capture_output=True,
        )
    print(f"{'tree: variant':48} {'us/request':>11} {'trips/request':>14}")
    for name, values in samples.items():
        us = statistics.median(v[0] for v in values)
        trips = statistics.median(v[1] for v in values)
        print(f"{name:48} {us:11.1f} {trips:14.3f}")
    print(
        f"(median of {args.rounds} rounds, each the median of {args.repeat} runs of "
        f"{args.requests} requests)"
    )


if __name__ == "__main__":
    main()
