from loadtests.bench import redis_share
from loadtests.bench.redis_dummy import Plan, cpu_target_s, next_deadline, run


def test_the_dummy_is_sized_as_the_process_it_stands_for() -> None:
    # redis-server slept 1,800 times and used 0.09 s of CPU in a 2 s round
    plan = Plan.like(wakes=1800, cpu_s=0.09, wall_s=2.0)
    assert plan.wakes_per_s == 900.0
    assert abs(plan.burn_us - 50.0) < 1e-9
    assert abs(plan.period_s - 1 / 900) < 1e-12
    assert Plan.like(wakes=0, cpu_s=0.1, wall_s=2.0) == Plan(0.0, 0.0)
    # the same CPU a second in ten times as many, ten times shorter wakes
    assert plan.split(10) == Plan(9000.0, 5.0)


def test_the_dummy_keeps_its_deadlines_and_does_not_catch_up_in_a_burst() -> None:
    assert next_deadline(10.0, 0.001, now=10.0005) == 10.001  # on time: the fixed grid
    assert next_deadline(10.0, 0.001, now=10.0015) == 10.001  # late by less than a period
    # stopped for 0.5 s: the next wake is a period from now, not 500 wakes at once
    assert abs(next_deadline(10.0, 0.001, now=10.5) - 10.501) < 1e-9


def test_the_dummy_s_cpu_budget_is_kept_in_total() -> None:
    assert cpu_target_s(0, 50.0) == 0.0
    assert abs(cpu_target_s(900, 50.0) - 0.045) < 1e-12


def test_the_dummy_wakes_as_planned_and_burns_its_budget() -> None:
    import time

    cpu0 = time.process_time()
    wakes = run(Plan(200.0, 100.0), for_s=0.25)
    used = time.process_time() - cpu0
    assert 1 <= wakes <= 50  # at most 0.25 s at 200 a second: a late wake skips, never adds
    assert used >= cpu_target_s(wakes, 100.0)


def test_a_mode_s_rounds_are_compared_with_the_same_round_s_embedded_one() -> None:
    per = {
        "embedded": [{"worker_cpu_us": 100.0}, {"worker_cpu_us": 110.0}, {"worker_cpu_us": 90.0}],
        "redis0": [{"worker_cpu_us": 120.0}, {"worker_cpu_us": 115.0}, {"worker_cpu_us": 99.0}],
        "dummy": [{"worker_cpu_us": 95.0}, {"worker_cpu_us": 100.0}],  # its first round skipped
    }
    assert redis_share.against_embedded(per, "redis0", "worker_cpu_us") == [20.0, 5.0, 9.0]
    assert redis_share.against_embedded(per, "dummy", "worker_cpu_us") == [-15.0, 10.0]


def test_context_switches_are_read_for_every_thread_of_the_tree() -> None:
    import os

    voluntary, involuntary = redis_share.switches(os.getpid())
    assert voluntary > 0 and involuntary >= 0


def test_the_dummy_runs_once_a_round_per_split() -> None:
    modes = redis_share.expanded(["embedded", "redis0", "dummy"], [1, 8])
    assert modes == ["embedded", "redis0", "dummy", "dummy/8"]
    assert [redis_share.split_of(mode) for mode in modes[2:]] == [1, 8]
    assert redis_share.expanded(["embedded", "redis0", "dummy"], [8]) == [
        "embedded",
        "redis0",
        "dummy/8",
    ]


def test_a_burst_runs_from_the_switch_to_the_process_to_the_switch_away() -> None:
    # `perf script -F time,trace` lines of sched_switch events, filtered to pid 42's
    script = b"\n".join(
        [
            b" 100.000100: prev_comm=python prev_pid=7 prev_prio=120 prev_state=R ==> "
            b"next_comm=redis-server next_pid=42 next_prio=98",
            b" 100.001000: prev_comm=redis-server prev_pid=42 prev_prio=98 prev_state=S ==> "
            b"next_comm=python next_pid=7 next_prio=120",
            b" 100.002000: prev_comm=swapper/0 prev_pid=0 prev_prio=120 prev_state=R ==> "
            b"next_comm=redis-server next_pid=42 next_prio=98",
            b" 100.002050: prev_comm=redis-server prev_pid=42 prev_prio=98 prev_state=S ==> "
            b"next_comm=swapper/0 next_pid=0 next_prio=120",
            # switched away from before the trace saw it switched to: not a whole burst
            b" 100.003000: prev_comm=redis-server prev_pid=42 prev_prio=98 prev_state=S ==> "
            b"next_comm=swapper/0 next_pid=0 next_prio=120",
        ]
    )
    runs = redis_share.bursts_us(script, 42)
    assert [round(us, 3) for us in runs] == [900.0, 50.0]
    figures = redis_share.burst_figures(runs)
    assert figures["bursts"] == 2 and figures["burst_max_us"] == runs[0]


def test_a_profile_s_samples_are_counted_by_function_whichever_line_ran() -> None:
    raw = (
        'process 7:"granian --interface asgi";thread 0x1;serve (/x/gateway/app.py:10);'
        "admit (/x/gateway/limits.py:40) 3\n"
        'process 7:"granian --interface asgi";thread 0x1;serve (/x/gateway/app.py:12);'
        "admit (/x/gateway/limits.py:41) 1\n"
        'process 7:"granian --interface asgi";thread 0x2;serve (/x/gateway/app.py:11) 4\n'
        "\n"
    )
    total, own, within = redis_share.by_function(raw)
    assert total == 8
    assert own == {"admit (gateway/limits.py)": 4, "serve (gateway/app.py)": 4}
    assert within == {"serve (gateway/app.py)": 8, "admit (gateway/limits.py)": 4}


def test_a_function_s_share_of_the_samples_is_read_as_us_a_request() -> None:
    rows = [{"worker_cpu_us": 100.0}, {"worker_cpu_us": 200.0}]
    profiles = ["a (p/f.py:1);b (p/f.py:2) 1\na (p/f.py:1) 3\n", "a (p/f.py:1);b (p/f.py:2) 2\n"]
    assert redis_share.per_request(rows, profiles, inclusive=False) == {
        "b (p/f.py)": (25.0 + 200.0) / 2,
        "a (p/f.py)": 75.0 / 2,
    }
    assert redis_share.per_request(rows, profiles, inclusive=True)["a (p/f.py)"] == 150.0
