"""What several A/A runs of the side-by-side resolve, per method (decision 0012, 19zzzzo, 19zzzzr).

    .venv/bin/python -m loadtests.bench.aa_runs --runs whole W1.json W2.json \\
        --runs fresh F1.json F2.json [--measures rps,sse,event,lines,anth]

Each FILE is a `side_by_side --samples-out` of a run with the A/A twins (`--contenders
bare,bare-twin,gateway-sqlite,gateway-sqlite-twin`). For each method and measure, over every
twin pair (report.TWINS) and run: the spread of the per-round log ratios (twin ÷ original:
their sd, and the farthest round from 1), and the run medians (the median of a run's per-round
ratios, what a report's ratio is): their lowest and highest, and their root mean square log
distance from 1, which is what one run's ratio cannot tell from 1 (an A/A ratio's truth is 1).
"""

from __future__ import annotations

import argparse
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import orjson

from loadtests.bench import report

Samples = report.Samples


@dataclass(frozen=True)
class Spread:
    """One method's A/A figures on one measure."""

    rounds: int
    round_sd: float  # sd of the per-round log ratios
    farthest: float  # the farthest round from 1, either way (report.aa_spread)
    medians: list[float]  # each pair's run median, every run
    median_rms: float  # root mean square of the log run medians: their distance from 1


def log_sd(ratios: list[float]) -> float:
    """The sample sd of the ratios' logs (0 with fewer than 2)."""
    return statistics.stdev(math.log(r) for r in ratios) if len(ratios) > 1 else 0.0


def log_rms(ratios: list[float]) -> float:
    """The root mean square of the ratios' logs: their distance from 1, both ways alike."""
    return math.sqrt(statistics.fmean(math.log(r) ** 2 for r in ratios)) if ratios else 0.0


def spread(runs: list[Samples], measure: str) -> Spread | None:
    """`measure`'s A/A figures over `runs` (each run's twin pairs), None if no run has it."""
    rounds: list[float] = []
    medians: list[float] = []
    for samples in runs:
        for name, ref in report.TWINS:
            ratios = report.round_ratios(samples, name, ref, measure)
            if ratios:
                rounds += ratios
                medians.append(statistics.median(ratios))
    if not rounds:
        return None
    return Spread(len(rounds), log_sd(rounds), report.aa_spread(rounds), medians, log_rms(medians))


def table(groups: dict[str, list[Samples]], measures: list[str]) -> list[str]:
    """A markdown table: a row per measure and method, then all measures pooled a method."""
    lines = [
        "| measure | method | rounds | sd of log ratio a round | farthest round | run medians |"
        " rms log of the run medians |",
        "| --- | --- | ---: | ---: | ---: | --- | ---: |",
    ]
    for measure in measures:
        for method, runs in groups.items():
            found = spread(runs, measure)
            if found is None:
                continue
            lines.append(
                f"| {measure} | {method} | {found.rounds} | {found.round_sd:.3f} | "
                f"±{found.farthest:.0%} | {min(found.medians):.3f} to {max(found.medians):.3f} "
                f"({len(found.medians)}) | {found.median_rms:.3f} |"
            )
    for method, runs in groups.items():
        every = [s for m in measures if (s := spread(runs, m)) is not None]
        if every:  # pooled: the log sd's squares weighted by their degrees of freedom
            dof = sum(s.rounds - 1 for s in every)
            pooled_sd = math.sqrt(sum(s.round_sd**2 * (s.rounds - 1) for s in every) / dof)
            medians = [m for s in every for m in s.medians]
            lines.append(
                f"| all | {method} | {sum(s.rounds for s in every)} | {pooled_sd:.3f} | "
                f"±{max(s.farthest for s in every):.0%} | {len(medians)} medians | "
                f"{log_rms(medians):.3f} |"
            )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs",
        nargs="+",
        action="append",
        required=True,
        metavar=("METHOD", "FILE"),
        help="a method's name, then its runs' --samples-out files (repeat per method)",
    )
    parser.add_argument(
        "--measures",
        type=lambda text: text.split(","),
        default=list(report.AA_MEASURES),
    )
    args = parser.parse_args()
    groups: dict[str, list[Samples]] = {}
    for method, *files in args.runs:
        if not files:
            parser.error(f"--runs {method}: name its runs' files")
        groups[method] = [orjson.loads(Path(f).read_bytes())["samples"] for f in files]
    print("\n".join(table(groups, args.measures)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
