"""What the retry loop costs one served try, counted: callgrind's instructions of
`Retrier.call_targets` + `release` per call (one model, one deployment, an attempt that
answers at once), with `[retry] deadline_s` unset or set.

    .venv/bin/python -m loadtests.bench.retry_cost [--deadline-s 30] [--tree DIR]

Runs the loop under valgrind twice, N = 1,000 and N = 6,000 calls in one uvloop task
(`PYTHONHASHSEED=0`, no .pyc written, `setarch -R`); per call = the difference / 5,000, so the
start-up cancels out. `--tree DIR`: another checkout's `gateway` package, for a before/after (a
retrier that takes `deadline_s=`, 19zzm, or one that reads it from the policy, 19zzk). The
counts repeat to within a few instructions on a quiet machine; beside other work they spread by
hundreds (the loop's turns and the timer wheel follow wall time, which callgrind stretches).
Decision 0005, issues 19zzk and 19zzm.
"""

from __future__ import annotations

import argparse
import inspect
import random
import sys
from pathlib import Path

SMALL, LARGE = 1_000, 6_000


def run_calls(calls: int, deadline_s: float | None) -> None:
    """The measured program (run under valgrind with `--calls`)."""
    import uvloop

    from gateway.routing.catalog import Catalog
    from gateway.routing.health import Health
    from gateway.routing.retry import Retrier
    from gateway.settings import RetrySettings, load_settings

    target = Catalog(load_settings(None), {}).entries["openai/gpt-4-turbo"]
    if "deadline_s" in inspect.signature(Retrier).parameters:
        policy = RetrySettings()
        retrier = Retrier(lambda _t: policy, Health(), rng=random.Random(1), deadline_s=deadline_s)
    else:  # (before 19zzm: the policy carried it)
        policy = RetrySettings(deadline_s=deadline_s)  # type: ignore[call-arg]
        retrier = Retrier(lambda _t: policy, Health(), rng=random.Random(1))

    async def attempt(_target: object) -> str:
        return "ok"

    async def main() -> None:
        for _ in range(calls):
            _, served, _ = await retrier.call_targets([target], attempt)
            retrier.release(served, 0, 0)

    uvloop.run(main())


def count(calls: int, args: argparse.Namespace) -> int:
    """valgrind's instruction total for one run of `calls` calls."""
    from loadtests.bench.measure import callgrind_total  # (here: the counted child need not)

    arguments = ["loadtests.bench.retry_cost", "--calls", str(calls)]
    if args.deadline_s is not None:
        arguments += ["--deadline-s", str(args.deadline_s)]
    if args.tree:
        arguments += ["--tree", args.tree]
    return callgrind_total(arguments)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deadline-s", type=float, default=None, help="unset when not given")
    parser.add_argument("--tree", help="another checkout's gateway package")
    parser.add_argument("--calls", type=int, help=argparse.SUPPRESS)  # the measured run
    args = parser.parse_args()
    if args.tree:
        sys.path.insert(0, str(Path(args.tree).resolve()))
    if args.calls is not None:
        run_calls(args.calls, args.deadline_s)
        return
    small, large = count(SMALL, args), count(LARGE, args)
    deadline = "unset" if args.deadline_s is None else f"{args.deadline_s:g} s"
    tree = args.tree or "this checkout"
    per_call = (large - small) // (LARGE - SMALL)
    print(f"{tree}, deadline {deadline}: {per_call} instructions per call ({small}, {large})")


if __name__ == "__main__":
    main()
