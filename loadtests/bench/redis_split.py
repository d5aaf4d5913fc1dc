"""Redis ÷ embedded split into its two factors, round by round: the worker's share of its core and
its CPU a request, beside redis-server's share of that core.

    .venv/bin/python -m loadtests.bench.redis_split LOG [LOG ...]

A worker that keeps its core busy serves (its share of the core) ÷ (its CPU a request), so a
round's Redis ÷ embedded rate is (the Redis worker's share ÷ the embedded worker's) times (the
embedded worker's CPU a request ÷ the Redis worker's): side_by_side's `{m}_busy` (the worker's
CPU s ÷ the turn's wall s) and `{m}_cpu`, up to wrk's start and end inside the wall. redis-server
runs on the worker's core at real-time priority (`make bench` since issue 19zzzze): its share of
that core, (`{m}_all_cpu` minus `{m}_cpu`) ÷ `{m}_cpu` times the Redis worker's share, is time the
Redis worker cannot have. Where the core's total (the worker's share, plus redis-server's) is the
same for both stores, the first factor is redis-server's cost to the worker, whatever the worker's
code does; the second is the workers' own CPU a request, which moves with the machine's speed state
from round to round (decision 0012). `report.section` prints the table for every run with both
gateways; LOG: the output of a side_by_side run already made (its per-round lines), so that past
runs can be read the same way (decision 0010, twenty-ninth pass).
"""

from __future__ import annotations

import argparse
import re
import statistics
from pathlib import Path
from typing import NamedTuple

Samples = dict[str, dict[str, list[float]]]

EMBEDDED = "gateway-sqlite"
# Split against the embedded gateway: the one on Redis, and another checkout's (`--before`; on
# Redis with `--before-store redis`, else redis-server's share reads 0).
SPLIT = ("gateway-redis", "gateway-before")

# side_by_side's line for a contender's turn (see its `pieces`): the measure, the round, the
# contender, its rate, then its worker's CPU a request and share of its core, and redis-server's
# CPU a request where it has one.
_TURN = re.compile(r"^\s+(\S+) round \d+ (\S+): WrkResult\(requests_per_s=([0-9.]+)")
_WORKER = re.compile(r"worker ([0-9.]+) \(([0-9.]+) of its core")
_STORE = re.compile(r"redis-server ([0-9.]+)")


class Round(NamedTuple):
    rate: float  # Redis ÷ embedded, requests (or streams) a second
    share: float  # the Redis worker's share of its core ÷ the embedded worker's
    cpu: float  # the embedded worker's CPU a request ÷ the Redis worker's
    store: float  # redis-server's share of the worker's core, in the Redis turn
    core_embedded: float  # the core's share taken: the embedded worker's
    core_redis: float  # ... the Redis worker's and redis-server's


def samples_from_log(text: str) -> Samples:
    """The figures `rounds` needs, from a side_by_side run's printed turns, in round order."""
    samples: Samples = {}
    for line in text.splitlines():
        turn, worker = _TURN.match(line), _WORKER.search(line)
        if turn is None or worker is None:
            continue
        measure, name, rate = turn.group(1), turn.group(2), float(turn.group(3))
        cpu, busy = float(worker.group(1)), float(worker.group(2))
        store = _STORE.search(line)
        row = samples.setdefault(name, {})
        for key, value in (
            (measure, rate),
            (f"{measure}_cpu", cpu),
            (f"{measure}_busy", busy),
            (f"{measure}_all_cpu", cpu + (float(store.group(1)) if store else 0.0)),
        ):
            row.setdefault(key, []).append(value)
    return samples


def rounds(samples: Samples, measure: str, name: str = SPLIT[0]) -> list[Round]:
    """Each round's factors of `name` ÷ embedded on `measure` (none: a figure missing)."""
    keys = (measure, f"{measure}_busy", f"{measure}_cpu", f"{measure}_all_cpu")
    redis = [samples.get(name, {}).get(k) or [] for k in keys]
    embedded = [samples.get(EMBEDDED, {}).get(k) or [] for k in keys]
    out = []
    for (rate, busy, cpu, all_cpu), (e_rate, e_busy, e_cpu, _) in zip(
        zip(*redis, strict=False), zip(*embedded, strict=False), strict=False
    ):
        if not (e_rate and e_busy and cpu):
            continue
        store = (all_cpu - cpu) / cpu * busy
        out.append(Round(rate / e_rate, busy / e_busy, e_cpu / cpu, store, e_busy, busy + store))
    return out


def _spread(values: list[float], form: str) -> str:
    """The median, and the lowest and highest of the rounds."""
    return f"{statistics.median(values):{form}} ({min(values):{form}} to {max(values):{form}})"


def lines(samples: Samples) -> list[str]:
    """The split's table, a row a measure each of SPLIT ran beside the embedded gateway
    (medians of the rounds), and a note on how to read it; nothing when no pair ran or a figure
    is missing."""
    rows = []
    for name in SPLIT:
        mine = samples.get(name, {})
        for measure in [k for k in mine if f"{k}_busy" in mine and f"{k}_all_cpu" in mine]:
            found = rounds(samples, measure, name)
            if not found:
                continue
            cells = (
                name,
                f"{statistics.median(r.rate for r in found):.2f}",
                _spread([r.share for r in found], ".3f"),
                _spread([r.cpu for r in found], ".2f"),
                f"{statistics.median(r.store for r in found):.3f}",
                f"{statistics.median(r.core_embedded for r in found):.3f} vs "
                f"{statistics.median(r.core_redis for r in found):.3f}",
            )
            rows.append(f"| {measure} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    return [
        "Redis ÷ embedded split (decision 0010, twenty-ninth pass): a round's ratio is the Redis "
        "worker's share of its core ÷ the embedded worker's, times the embedded worker's CPU a "
        "request ÷ the Redis worker's; redis-server, on the worker's core at real-time priority, "
        "takes its own share of that core from the Redis worker. Medians of the rounds (their "
        "range in brackets); where the core's total is the same for both, the share's factor is "
        "redis-server's cost to the worker, and the CPU's is the workers' own.",
        "",
        "| measure | gateway | ÷ embedded | worker's share of its core, ÷ embedded "
        "| CPU a request, embedded ÷ it | redis-server's share of the core "
        "| core taken: embedded vs it + redis-server |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
        *rows,
        "",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logs", nargs="+", type=Path, help="side_by_side runs' output")
    args = parser.parse_args()
    for log in args.logs:
        print(f"{log}:")
        print("\n".join(lines(samples_from_log(log.read_text())) or ["  no Redis/embedded pair"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
