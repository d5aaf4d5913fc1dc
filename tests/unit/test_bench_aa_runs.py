"""What several A/A runs resolve (loadtests/bench/aa_runs.py): the arithmetic of its table."""

import math

import pytest

from loadtests.bench import aa_runs


def test_the_log_spreads_treat_a_ratio_and_its_inverse_alike() -> None:
    assert aa_runs.log_rms([1.1, 1 / 1.1]) == pytest.approx(math.log(1.1))
    assert aa_runs.log_rms([]) == 0.0
    assert aa_runs.log_sd([1.1, 1 / 1.1]) == pytest.approx(math.log(1.1) * math.sqrt(2))
    assert aa_runs.log_sd([1.2]) == 0.0


def test_a_spread_pools_both_twin_pairs_of_every_run_and_takes_each_run_s_median() -> None:
    run1 = {
        "bare": {"sse": [100.0, 100.0, 100.0]},
        "bare-twin": {"sse": [110.0, 120.0, 90.0]},
        "gateway-sqlite": {"sse": [50.0, 50.0, 50.0]},
        "gateway-sqlite-twin": {"sse": [50.0, 45.0, 55.0]},
    }
    run2 = {"bare": {"sse": [100.0]}, "bare-twin": {"sse": [80.0]}}
    found = aa_runs.spread([run1, run2], "sse")
    assert found is not None
    assert found.rounds == 7
    assert found.medians == pytest.approx([1.1, 1.0, 0.8])
    assert found.median_rms == pytest.approx(
        math.sqrt((math.log(1.1) ** 2 + math.log(0.8) ** 2) / 3)
    )
    assert found.farthest == pytest.approx(0.25)  # 0.8 is 1.25 the other way
    assert aa_runs.spread([run1], "rps") is None


def test_the_table_has_a_row_per_measure_and_method_and_a_pooled_row() -> None:
    run = {"bare": {"rps": [100.0, 100.0]}, "bare-twin": {"rps": [110.0, 90.0]}}
    lines = aa_runs.table({"whole": [run], "fresh": [run, run]}, ["rps", "sse"])
    assert lines[2].startswith("| rps | whole | 2 | 0.142 | ±11% | 1.000 to 1.000 (1) | 0.000 |")
    assert lines[3].startswith("| rps | fresh | 4 | 0.116 |")
    assert lines[4].startswith("| all | whole | 2 | 0.142 |")
    assert len(lines) == 6  # no sse row: no run has it
