"""The parsers of `loadtests.bench.syscalls` on what perf and /proc really give: perf's text
below was captured from perf 6.x on the project's machine (`perf stat --per-thread -x ,` and
`perf script -F tid,ip,sym,dso` of a `perf record -e cpu-clock -g`)."""

from __future__ import annotations

import os
import socket
import threading

from loadtests.bench.syscalls import (
    READ_EVENTS,
    _comm_samples,
    _kernel_path,
    _samples,
    core_lines,
    fd_kinds,
    per_thread,
    recurring_sizes,
    size_note,
    syscall_sizes,
    threads,
)

PERF_STAT = """\
# started on Sat Dec  5 18:05:01 2026

python3-12278,147.25,msec,task-clock,147245546,100.00,0.196,CPUs utilized
python3-12278,138,,context-switches,147245546,100.00,937.210,/sec
python3-12278,52,,sched:sched_wakeup,147245546,100.00,353.152,/sec
tokio-runtime-w-12280,9,,context-switches,1200345,100.00,7.498,/sec
tokio-runtime-w-12280,<not counted>,,sched:sched_wakeup,0,0.00,,
python3-12278,41,,syscalls:sys_enter_epoll_pwait,147245546,100.00,278.443,/sec
"""

PERF_SCRIPT = """\
12195 
\tffffffff82250fa7 _raw_spin_lock ([kernel.kallsyms])
\tffffffff8170e2d7 file_close_fd ([kernel.kallsyms])
\tffffffff816d8d4f __x64_sys_close ([kernel.kallsyms])
\tffffffff8223c951 do_syscall_64 ([kernel.kallsyms])
\tffffffff81000130 entry_SYSCALL_64_after_hwframe ([kernel.kallsyms])
\t           fce67 __close_nocancel (/usr/lib/x86_64-linux-gnu/libc.so.6)
\t           32f72 _nl_find_locale (/usr/lib/x86_64-linux-gnu/libc.so.6)

12195 
\t           9c847 memset (/usr/lib/x86_64-linux-gnu/libc.so.6)
\t           1de39 dl_main (/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2)

12201 
\tffffffff8113a2b1 update_process_times+0x61 ([kernel.kallsyms])
\tffffffff81000d46 asm_sysvec_apic_timer_interrupt ([kernel.kallsyms])
\t           9c847 memset (/usr/lib/x86_64-linux-gnu/libc.so.6)
"""


# `perf script -F comm,tid,ip,sym,dso` of a `perf record -a -C 1 -g` (a whole core: every
# program on it, the idle task too).
CORE_SCRIPT = """\
nginx 29348 
\tffffffff8223c951 __pv_queued_spin_lock_slowpath ([kernel.kallsyms])
\tffffffff81f10000 lock_sock_nested ([kernel.kallsyms])
\tffffffff81f20000 tcp_sendmsg ([kernel.kallsyms])
\tffffffff816e9a00 do_writev ([kernel.kallsyms])
\tffffffff8223df91 do_syscall_64 ([kernel.kallsyms])
\tffffffff81000130 entry_SYSCALL_64_after_hwframe ([kernel.kallsyms])
\t           d4ad7 __GI___writev (/usr/lib/x86_64-linux-gnu/libc.so.6)

nginx 29348 
\t           62a10 ngx_palloc+0x20 (/usr/sbin/nginx)

swapper     0 
\tffffffff82240000 pv_native_safe_halt ([kernel.kallsyms])
\tffffffff81000000 common_startup_64 ([kernel.kallsyms])

perf-exec 29362 
\tffffffff817057a2 __d_lookup_rcu ([kernel.kallsyms])
"""


def test_a_core_s_samples_by_program_and_what_each_costs_a_request() -> None:
    samples = list(_comm_samples(CORE_SCRIPT))
    assert [(comm, len(chain)) for comm, chain in samples] == [
        ("nginx", 7),
        ("nginx", 1),
        ("swapper", 2),
        ("perf-exec", 1),
    ]
    assert samples[1][1][0] == ("ngx_palloc", "nginx")  # +0x.. cut, the object's name
    lines = core_lines(iter(samples), 2.0, top=2)  # each sample 2 us a request
    assert lines[0].split() == ["nginx", "4.0", "us/req", "kernel:", "do_writev", "2.0"]
    assert lines[1].split()[:3] == ["idle", "2.0", "us/req"]  # the idle task, named so
    assert lines[1].endswith("<common_startup_64> 2.0")  # not in a system call
    assert lines[3].split() == ["2.0", "us", "nginx", "__pv_queued_spin_lock_slowpath"]


def test_perf_stat_per_thread_counts_whole_numbers_by_short_name() -> None:
    assert per_thread(PERF_STAT) == {
        12278: {"cs": 138, "wakes": 52, "epoll_pw": 41},  # task-clock (msec) left out
        12280: {"cs": 9},  # a thread name with dashes; <not counted> left out
    }


def test_perf_script_samples_and_the_kernel_path_each_was_taken_in() -> None:
    samples = list(_samples(PERF_SCRIPT))
    assert [(tid, len(chain)) for tid, chain in samples] == [(12195, 7), (12195, 2), (12201, 3)]
    assert samples[0][1][0] == ("_raw_spin_lock", "[kernel.kallsyms]")
    assert samples[1][1][0] == ("memset", "libc.so.6")
    assert samples[2][1][0] == ("update_process_times", "[kernel.kallsyms]")  # +0x.. cut
    assert _kernel_path(samples[0][1]) == "close"  # the system call, prefix cut
    assert _kernel_path(samples[2][1]) == "<asm_sysvec_apic_timer_in>"  # an interrupt, 24 chars


def test_this_process_threads_and_descriptors_by_kind() -> None:
    started, done = threading.Event(), threading.Event()
    native: list[int] = []

    def run() -> None:
        native.append(threading.get_native_id())
        started.set()
        done.wait(10)

    thread = threading.Thread(target=run)
    thread.start()
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    served, _ = listener.accept()
    wake = os.eventfd(0)
    read_end, write_end = os.pipe()
    try:
        started.wait(10)
        found = threads(os.getpid())
        assert native[0] in found and threading.get_native_id() in found
        assert all(len(times) == 3 for times in found.values())  # nice, utime, stime
        kinds = fd_kinds(os.getpid(), port)
        assert kinds[served.fileno()] == "tcp from a client"
        assert kinds[client.fileno()] == f"tcp to :{port}"
        assert kinds[wake] == "eventfd"
        assert kinds[read_end] == kinds[write_end] == "pipe"
    finally:
        done.set()
        thread.join()
        for closing in (served, client, listener):
            closing.close()
        for fd in (wake, read_end, write_end):
            os.close(fd)


# `perf script -F tid,event,trace` of a `perf record` of the READ_EVENTS: a writev of two
# pieces and a write to fd 3 (a socket), a write to fd 2 (stderr), and another thread's exit
# whose entry was not recorded.
WRITES_SCRIPT = """\
23467  syscalls:sys_enter_write: fd: 0x00000002, buf: 0x5589519874b0, count: 0x000000ed
23467   syscalls:sys_exit_write: 0xed
23469   syscalls:sys_exit_write: 0x12
23467 syscalls:sys_enter_writev: fd: 0x00000003, vec: 0x7f528913b710, vlen: 0x00000002
23467  syscalls:sys_exit_writev: 0x12
23467  syscalls:sys_enter_write: fd: 0x00000003, buf: 0x7f5288dd2a50, count: 0x00000005
23467   syscalls:sys_exit_write: 0xfffffffffffffff5
"""


def test_writes_to_the_client_counted_with_their_sizes() -> None:
    # what a write returned is recorded, as a read's is (the client's pieces' sizes)
    assert {"syscalls:sys_exit_write", "syscalls:sys_exit_writev"} <= set(READ_EVENTS)
    calls, sizes = syscall_sizes(WRITES_SCRIPT, {2: "pipe", 3: "tcp from a client"})
    assert calls == {
        (23467, "write", "pipe"): 1,
        (23467, "writev", "tcp from a client"): 1,
        (23467, "write", "tcp from a client"): 1,
    }
    assert sizes[(23467, "writev", "tcp from a client")] == [18]  # both pieces, one call
    assert sizes[(23467, "write", "tcp from a client")] == [-11]  # -EAGAIN
    assert sizes[(23467, "write", "pipe")] == [237]


def test_sizes_read_by_their_median_and_small_share() -> None:
    assert size_note([2006, 120, 3000, 300]) == "median 2006 B, 50% under 512 B"
    assert size_note([699]) == "median 699 B, 0% under 512 B"


def test_writes_that_carry_no_events_told_by_their_recurring_size() -> None:
    # two streams: each head alone (505 B), the end alone once (5 B); events' writes vary
    sizes = [505, 700, 4000, 5, 505, 812, 6100]
    assert recurring_sizes(sizes, done=2) == "505 B 1.00"
    assert recurring_sizes([*sizes, 5], done=2) == "505 B 1.00, 5 B 1.00"
    assert recurring_sizes([699, 2006], done=1) == ""
