"""The parser of `loadtests.bench.wakes` on what perf really prints: the lines below follow
`perf script -F comm,tid,event,trace` of perf 6.1 on the project's machine (raw_syscalls'
arguments in hex, their return in decimal; an int argument of -1 as `ffffffff`)."""

from __future__ import annotations

import os
import threading

from loadtests.bench.wakes import (
    filters,
    handoffs,
    names,
    parse,
    place,
    probed,
    schedstats,
    static_ranges,
)

LIBPYTHON = (0x7F0000000000, 0x7F0000100000, "libpython3.11.so.1.0")

# main (100) waits for the GIL; the blocking thread (101) drops it and wakes main; main polls
# with a timer pending and gets no event (a timer was due), then with no timer (-1) and gets
# one; main's write wakes tokio (102), which preempts it; wrk and an idle core's interrupt
# wake tokio and main; the blocking thread sleeps in a FUTEX_WAIT_BITSET with CLOCK_REALTIME
# that times out.
SCRIPT = """\
          python   100 raw_syscalls:sys_enter: NR 202 (7f0000000a10, 80, 2, 0, 0, 0)
          python   100     sched:sched_switch: prev_comm=python prev_pid=100 prev_prio=120 \
prev_state=S ==> next_comm=python next_pid=101 next_prio=120
          python   101 raw_syscalls:sys_enter: NR 202 (7f0000000a10, 81, 1, 0, 1, 1)
          python   101     sched:sched_waking: comm=python pid=100 prio=120 target_cpu=000
          python   101  raw_syscalls:sys_exit: NR 202 = 1
          python   100  raw_syscalls:sys_exit: NR 202 = 0
          python   100 raw_syscalls:sys_enter: NR 281 (3, 7ffd1000, 400, 1, 0, 8)
          python   100  raw_syscalls:sys_exit: NR 281 = 0
          python   100 raw_syscalls:sys_enter: NR 281 (3, 7ffd1000, 400, ffffffff, 0, 8)
          python   100  raw_syscalls:sys_exit: NR 281 = 2
          python   100 raw_syscalls:sys_enter: NR 1 (c, 7ffd2000, 8, 0, 0, 0)
          python   100     sched:sched_waking: comm=tokio-rt-worker pid=102 prio=120 \
target_cpu=000
          python   100  raw_syscalls:sys_exit: NR 1 = 8
          python   100     sched:sched_switch: prev_comm=python prev_pid=100 prev_prio=120 \
prev_state=R+ ==> next_comm=tokio-rt-worker next_pid=102 next_prio=120
             wrk   555     sched:sched_waking: comm=tokio-rt-worker pid=102 prio=120 \
target_cpu=000
       swapper/0     0     sched:sched_waking: comm=python pid=100 prio=120 target_cpu=000
          python   101 raw_syscalls:sys_enter: NR 202 (559000000b00, 189, 0, 7ffd3000, 0, \
ffffffff)
          python   101  raw_syscalls:sys_exit: NR 202 = -110
          python   101 raw_syscalls:sys_enter: NR 202 (7f0000000a10, 81, 1, 0, 1, 1)
          python   101  raw_syscalls:sys_exit: NR 202 = 0
"""
NAMED = {100: "python (main)", 101: "python (0)", 102: "tokio-rt-worker (0)"}


def test_a_gil_hand_off_reads_as_a_futex_wake_ending_a_futex_wait() -> None:
    seen, wakes = parse(SCRIPT, NAMED, [LIBPYTHON])
    main, blocking, tokio = seen[100], seen[101], seen[102]
    assert wakes[("python (main) [futex wait]", "python (0) [futex wake]")] == 1
    assert main.futex_waits == {"libpython3.11.so.1.0, woken": 1}
    assert main.sleeps == 1
    assert blocking.futex_wakes == 2 and blocking.futex_woke == 1  # (the second woke nobody)
    assert blocking.futex_waits == {"heap/anon, timed out": 1}
    assert tokio.calls == {}


def test_the_loop_woken_by_a_timer_is_told_from_one_woken_by_an_event() -> None:
    seen, _ = parse(SCRIPT, NAMED, [LIBPYTHON])
    assert seen[100].polls == {">0 empty": 1, "none": 1}
    assert seen[100].timer_only == 1


def test_wakes_name_the_waker_and_its_call_and_preemptions_name_the_taker() -> None:
    seen, wakes = parse(SCRIPT, NAMED, [LIBPYTHON])
    assert wakes[("tokio-rt-worker (0) [other]", "python (main) [write]")] == 1
    assert wakes[("tokio-rt-worker (0) [other]", "other: wrk")] == 1
    assert wakes[("python (main) [other]", "idle core (interrupt)")] == 1
    assert seen[100].preempted_by == {"tokio-rt-worker (0)": 1}
    assert seen[100].calls == {"futex": 1, "epoll_pwait": 2, "write": 1}


# main polls with no timer and is woken by the upstream's packet (nginx, on the other core), then
# by the blocking thread's eventfd `write` (Granian's call_soon_threadsafe); the blocking thread
# then waits for the GIL and main's drop wakes it.
POLLS = """\
          python   100 raw_syscalls:sys_enter: NR 281 (3, 7ffd1000, 400, ffffffff, 0, 8)
           nginx   777     sched:sched_waking: comm=python pid=100 prio=120 target_cpu=000
          python   100  raw_syscalls:sys_exit: NR 281 = 1
          python   100 raw_syscalls:sys_enter: NR 281 (3, 7ffd1000, 400, ffffffff, 0, 8)
          python   101 raw_syscalls:sys_enter: NR 1 (9, 7ffd4000, 8, 0, 0, 0)
          python   101     sched:sched_waking: comm=python pid=100 prio=120 target_cpu=000
          python   101  raw_syscalls:sys_exit: NR 1 = 8
          python   100  raw_syscalls:sys_exit: NR 281 = 1
          python   101 raw_syscalls:sys_enter: NR 202 (7f0000000a10, 80, 2, 0, 0, 0)
          python   100 raw_syscalls:sys_enter: NR 202 (7f0000000a10, 81, 1, 0, 1, 1)
          python   100     sched:sched_waking: comm=python pid=101 prio=120 target_cpu=000
          python   100  raw_syscalls:sys_exit: NR 202 = 1
"""


def test_hand_offs_sort_the_loops_wakes_by_cause_and_the_gil_by_direction() -> None:
    assert handoffs(*parse(SCRIPT, NAMED, [LIBPYTHON])) == {
        "loop<-socket": 0,
        "loop<-eventfd": 0,
        "loop<-timer": 1,
        "tokio<-loop": 1,
        "GIL loop<-thread": 1,
        "GIL thread<-loop": 0,
        "loop preempted": 1,
    }
    found = handoffs(*parse(POLLS, NAMED, [LIBPYTHON]))
    assert found["loop<-socket"] == 1 and found["loop<-eventfd"] == 1
    assert found["GIL thread<-loop"] == 1 and found["GIL loop<-thread"] == 0


def test_the_speed_probe_is_named_per_core_and_left_out_without_a_reading() -> None:
    assert probed({"1": 253.4, "0": 226.0}) == ", probe µs core 0 226, core 1 253"
    assert probed({}) == ""


def test_a_futex_is_placed_in_the_mapping_that_holds_it() -> None:
    assert place(0x7F0000000A10, [LIBPYTHON]) == "libpython3.11.so.1.0"
    assert place(0x559000000B00, [LIBPYTHON]) == "heap/anon"
    own = static_ranges(os.getpid())
    assert own and all(start < end for start, end, _ in own)


def test_the_kernel_filters_name_every_thread_and_only_the_calls_kept() -> None:
    by_event = dict(filters([100, 101]))
    assert by_event["sched:sched_waking"] == "pid == 100 || pid == 101"
    assert by_event["sched:sched_switch"] == "prev_pid == 100 || prev_pid == 101"
    enter = by_event["raw_syscalls:sys_enter"]
    assert enter.startswith("(common_pid == 100 || common_pid == 101) && (")
    assert "id == 202" in enter and "id == 0 " not in enter  # futex kept, read not


def test_this_process_threads_are_named_and_scheduled() -> None:
    done = threading.Event()
    helper = threading.Thread(target=done.wait)
    helper.start()
    try:
        found = names(os.getpid())
        assert found[os.getpid()].endswith("(main)")
        assert helper.native_id in found and found[helper.native_id].endswith("(0)")
        run, _, slices = schedstats([os.getpid()])[os.getpid()]
        assert run > 0 and slices > 0
    finally:
        done.set()
        helper.join()
