"""Redis ÷ embedded split into the worker's share of its core and its CPU a request."""

import pytest

from loadtests.bench import redis_split

# Two turns of one round as side_by_side prints them (the 2026-12-07 19:48 closing's first
# single-answer round, its fields after the worker's cut short).
LOG = """\
  life 1 of 4: 6 contenders started in 3.1 s
  rps round 1 gateway-sqlite: WrkResult(requests_per_s=7789.22, p50_ms=7.96, p99_ms=15.3, \
bad_responses=0, completed=23429, mean_ms=8.2); ListenOverflows 0; other programs 0.02 cores; \
probe us core 0 241, core 1 369; CPU us a request: upstream 19, wrk 18, worker 128 (0.96 of its \
core, 1.1 sleeps; upstream 0.9 sleeps); load generator's core 0.25 busy
  rps round 1 gateway-redis: WrkResult(requests_per_s=6585.58, p50_ms=9.16, p99_ms=17.22, \
bad_responses=0, completed=19804, mean_ms=9.668); ListenOverflows 0; other programs 0.03 cores; \
probe us core 0 242, core 1 368; CPU us a request: upstream 19, wrk 19, worker 144 (0.91 of its \
core, 1.3 sleeps; upstream 0.9 sleeps), redis-server 6.6; load generator's core 0.24 busy
  rps round 1 bare: WrkResult(requests_per_s=6100.0, p50_ms=9.0, p99_ms=17.0, bad_responses=0, \
completed=18300, mean_ms=9.5); CPU us a request: upstream 19, wrk 19, worker 150 (0.92 of its \
core, 1.2 sleeps; upstream 0.9 sleeps); load generator's core 0.24 busy
"""


def test_a_round_s_ratio_is_the_worker_s_share_of_its_core_times_its_cpu_a_request() -> None:
    samples = {
        "gateway-sqlite": {
            "rps": [1000.0],
            "rps_busy": [0.93],
            "rps_cpu": [100.0],
            "rps_all_cpu": [100.0],
        },
        "gateway-redis": {
            "rps": [900.0],
            "rps_busy": [0.88],
            "rps_cpu": [100.0],
            "rps_all_cpu": [105.0],
        },
    }
    (found,) = redis_split.rounds(samples, "rps")
    assert found.rate == pytest.approx(0.9)
    assert found.share == pytest.approx(0.88 / 0.93)
    assert found.cpu == pytest.approx(1.0)
    assert found.store == pytest.approx(0.05 * 0.88)  # redis-server's 5 µs of the worker's 100
    assert (found.core_embedded, found.core_redis) == pytest.approx((0.93, 0.88 + 0.044))
    row = next(x for x in redis_split.lines(samples) if x.startswith("| rps |"))
    assert row == (
        "| rps | gateway-redis | 0.90 | 0.946 (0.946 to 0.946) | 1.00 (1.00 to 1.00) | 0.044 "
        "| 0.930 vs 0.924 |"
    )


def test_a_side_by_side_log_gives_each_contender_s_turn_figures() -> None:
    samples = redis_split.samples_from_log(LOG)
    assert samples["gateway-redis"] == {
        "rps": [6585.58],
        "rps_cpu": [144.0],
        "rps_busy": [0.91],
        "rps_all_cpu": [150.6],
    }
    assert samples["gateway-sqlite"]["rps_all_cpu"] == [128.0]  # no redis-server: its own
    (found,) = redis_split.rounds(samples, "rps")
    assert found.rate == pytest.approx(6585.58 / 7789.22)
    assert found.store == pytest.approx(6.6 / 144 * 0.91)


def test_no_table_without_both_gateways_or_their_shares() -> None:
    samples = redis_split.samples_from_log(LOG)
    assert redis_split.lines({"gateway-redis": samples["gateway-redis"]}) == []
    # a run from before the shares were recorded
    assert redis_split.lines({k: {"rps": v["rps"]} for k, v in samples.items()}) == []
    assert redis_split.lines(samples)[0].startswith("Redis ÷ embedded split")


def test_another_checkout_s_gateway_is_split_against_the_embedded_one_too() -> None:
    samples = redis_split.samples_from_log(LOG.replace("gateway-redis", "gateway-before"))
    rows = [x for x in redis_split.lines(samples) if x.startswith("| rps |")]
    assert len(rows) == 1
    assert rows[0].startswith("| rps | gateway-before | 0.85 |")
