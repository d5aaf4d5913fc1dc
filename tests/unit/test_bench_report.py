"""The benchmark report's targets: each ratio printed with the spread of its rounds."""

from pathlib import Path

from loadtests.bench import report


def test_a_target_line_gives_the_median_and_the_range_of_the_rounds() -> None:
    samples = {
        "bare": {"rps": [100.0, 100.0, 100.0, 100.0]},
        "gateway-sqlite": {"rps": [90.0, 95.0, 85.0, 110.0]},
    }
    lines = report.targets(samples)
    line = next(x for x in lines if x.startswith("- embedded: single answers ≥ 1.0x bare"))
    assert line == (
        "- embedded: single answers ≥ 1.0x bare: 0.93 (rounds 0.85 to 1.10) vs 1.00"
        " → MISSED by 7%, within the rounds' spread"
    )


def test_redis_over_embedded_on_a_lower_is_better_measure_gives_its_range_inverted() -> None:
    samples = {
        "gateway-sqlite": {"rps_cpu": [1.0, 1.0], "rps": [100.0, 100.0]},
        "gateway-redis": {"rps_cpu": [2.0, 1.0], "rps": [100.0, 100.0]},
    }
    line = next(x for x in report.targets(samples) if "Redis ÷ embedded, rps_cpu" in x)
    assert line.startswith("- Redis ÷ embedded, rps_cpu: 0.67 (rounds 0.50 to 1.00) vs 0.95")


def test_the_table_leaves_out_a_measure_no_contender_ran() -> None:
    samples = {
        "bare": {"rps": [100.0, 100.0]},
        "gateway-sqlite": {"rps": [90.0, 95.0], "rps_all_cpu": [10.0, 10.0]},
    }
    table = report.table(samples)
    assert "| single answers, req/s, 64 connections | 100 | 92 (0.93x bare) |" in table
    assert "/v1/messages" not in table  # opt-in, not run
    assert "| single answers: CPU µs per request with the store's" in table  # the gateway's only


def test_a_verdict_says_whether_every_round_agrees_with_the_median() -> None:
    assert report.verdict(0.93, 1.0, True, (0.85, 1.10)) == (
        "MISSED by 7%, within the rounds' spread"
    )
    assert report.verdict(0.91, 1.0, True, (0.87, 0.94)) == "MISSED by 9%, in every round"
    assert report.verdict(1.03, 1.0, True, (0.98, 1.12)) == "met, not in every round"
    assert report.verdict(1.03, 1.0, True, (1.01, 1.12)) == "met"
    assert report.verdict(0.997, 1.0, True, (0.996, 0.998)) == "MISSED by 0.3%, in every round"
    # lower is better (a latency): the rounds' highest is the worst
    assert report.verdict(0.34, 0.35, False, (0.30, 0.36)) == "met, not in every round"
    assert report.verdict(0.36, 0.35, False, None) == "MISSED by 3%"


def test_the_listen_line_names_only_the_rounds_whose_counters_moved() -> None:
    quiet = {"ListenOverflows": 0, "ListenDrops": 0, "TCPSynRetrans": 0}
    assert report.listen_line({"bare lines": [quiet, quiet]}).startswith("No round had")
    dropped = {"ListenOverflows": 3, "ListenDrops": 3, "TCPSynRetrans": 0}
    line = report.listen_line({"bare lines": [quiet], "gateway-sqlite anth": [quiet, dropped]})
    assert "bare lines" not in line
    assert "'gateway-sqlite anth': ['none', 'ListenOverflows 3, ListenDrops 3']" in line


def test_a_round_whose_wall_clock_stepped_is_named_and_a_steady_run_says_nothing() -> None:
    assert report.clock_lines({}) == []
    line = report.clock_lines({"gateway-sqlite messages-tools round 3": 61.2})[0]
    assert "{'gateway-sqlite messages-tools round 3': 61.2}" in line


def test_the_rounds_that_shared_the_machine_are_named_and_a_quiet_run_says_nothing() -> None:
    assert report.others_lines({}) == []
    line = report.others_lines({"bare anth round 3": 0.45})[0]
    assert "{'bare anth round 3': 0.45}" in line


def test_each_stream_rounds_ratio_is_given_beside_the_reads_of_both() -> None:
    samples = {
        "gateway-sqlite": {"anth": [800.0, 1200.0], "anth_reads": [5.4, 15.5], "rps": [1.0]},
        "bare": {"anth": [1000.0, 1000.0], "anth_reads": [11.8, 7.5], "rps": [1.0]},
    }
    line = report.reads_lines(samples)[0]
    assert "anth 0.80x (5.4 vs 11.8), 1.20x (15.5 vs 7.5)." in line
    assert "rps" not in line.split(":", 1)[1]  # single answers: no reads line
    assert report.reads_lines({"gateway-sqlite": {"anth": [1.0]}, "bare": {"anth": [1.0]}}) == []


def test_a_measure_whose_rounds_do_not_pair_up_gives_no_reads_line() -> None:
    # the bare's first round completed nothing: no ratio for it, and no reads recorded
    samples = {
        "gateway-sqlite": {"anth": [800.0, 900.0], "anth_reads": [5.4, 6.0]},
        "bare": {"anth": [0.0, 1000.0], "anth_reads": [11.8]},
    }
    assert report.reads_lines(samples) == []


def test_the_reads_per_stream_are_no_redis_over_embedded_target() -> None:
    samples = {
        "gateway-sqlite": {"anth": [100.0], "anth_reads": [10.0]},
        "gateway-redis": {"anth": [100.0], "anth_reads": [20.0]},
    }
    lines = report.targets(samples)
    assert any("Redis ÷ embedded, anth:" in x for x in lines)
    assert not any("anth_reads" in x for x in lines)


def test_each_stream_round_gives_the_upstream_s_cpu_beside_its_reads() -> None:
    samples = {
        "gateway-sqlite": {
            "anth": [800.0, 1200.0],
            "anth_reads": [5.4, 15.5],
            "anth_upstream_cpu": [640.0, 450.0],
        },
        "bare": {
            "anth": [1000.0, 1000.0],
            "anth_reads": [11.8, 7.5],
            "anth_upstream_cpu": [470.0, 500.0],
        },
    }
    line = report.reads_lines(samples)[0]
    assert (
        "anth 0.80x (5.4 vs 11.8; upstream 640 vs 470 us), "
        "1.20x (15.5 vs 7.5; upstream 450 vs 500 us)." in line
    )


def test_the_load_generator_s_costs_are_no_redis_over_embedded_target() -> None:
    samples = {
        "gateway-sqlite": {
            "anth": [100.0],
            "anth_upstream_cpu": [400.0],
            "anth_client_cpu": [90.0],
        },
        "gateway-redis": {"anth": [100.0], "anth_upstream_cpu": [600.0], "anth_client_cpu": [95.0]},
    }
    lines = report.targets(samples)
    assert any("Redis ÷ embedded, anth:" in x for x in lines)
    assert not any("_upstream_cpu" in x or "_client_cpu" in x for x in lines)


def test_each_stream_round_gives_the_load_generator_s_core_per_stream_of_redis_and_embedded() -> (
    None
):
    """Where the load generator's core is full it sets the rate (decision 0010, 19zzzze): a
    round's Redis ÷ embedded ratio is read beside that core's µs per stream for each."""
    samples = {
        "gateway-redis": {
            "lines": [1800.0, 2000.0],
            "lines_client_core_us": [540.0, 470.0],
            "lines_client_core": [0.95, 0.94],
            "rps": [1.0],
        },
        "gateway-sqlite": {
            "lines": [2000.0, 2000.0],
            "lines_client_core_us": [486.0, 470.0],
            "lines_client_core": [0.94, 0.95],
            "rps": [1.0],
        },
    }
    line = report.client_core_lines(samples)[0]
    assert (
        "lines 0.90x (540 vs 486 us, ÷ 0.90x; busy 0.95 vs 0.94), "
        "1.00x (470 vs 470 us, ÷ 1.00x; busy 0.94 vs 0.95)." in line
    )
    assert "rps" not in line.split(":", 1)[1]
    # a run from before the core's share was recorded: no line
    assert report.client_core_lines({k: {"lines": v["lines"]} for k, v in samples.items()}) == []
    assert not any("client_core" in x for x in report.targets(samples))


def test_the_report_names_the_host_s_tcp_congestion_control(tmp_path: Path) -> None:
    setting = tmp_path / "tcp_congestion_control"
    setting.write_text("bbr\n")
    assert report.congestion_control(setting) == "bbr"
    assert report.congestion_control(tmp_path / "absent") == "?"
    assert f"(TCP congestion control {report.congestion_control()})" in report.versions()
