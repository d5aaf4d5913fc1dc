"""What the bench records of the listen queues in each round (measure.ListenWatch)."""

import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from loadtests.bench import contenders, measure, report


def test_the_listen_counters_are_read_from_tcpext_s_lines(tmp_path: Path) -> None:
    netstat = tmp_path / "netstat"
    netstat.write_text(
        "TcpExt: SyncookiesSent ListenOverflows ListenDrops TCPSynRetrans\n"
        "TcpExt: 1 7 9 4\n"
        "IpExt: InNoRoutes ListenDrops\n"
        "IpExt: 0 99\n"
    )
    assert measure.listen_counters(netstat) == {
        "ListenOverflows": 7, "ListenDrops": 9, "TCPSynRetrans": 4,
    }  # fmt: skip


def test_the_accept_queue_counts_connections_the_server_has_not_accepted() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        port = server.getsockname()[1]
        assert measure.accept_queues({port}) == {port: 0}
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        try:
            for _ in range(100):  # the handshake's last ACK queues each (loopback: at once)
                if measure.accept_queues({port}) == {port: 3}:
                    break
                time.sleep(0.01)
            assert measure.accept_queues({port}) == {port: 3}
            server.accept()[0].close()
            assert measure.accept_queues({port}) == {port: 2}
        finally:
            for client in clients:
                client.close()


def test_both_nginx_servers_accept_every_pending_connection_at_once(tmp_path: Path) -> None:
    """nginx's default (one accept per pass of its loop) held a round's new connections for
    seconds behind busy streams: the 3 s p99 of issue 19zzc."""
    for conf in (contenders.upstream_conf(tmp_path, 1), contenders.proxy_conf(tmp_path, 1, 2)):
        assert "multi_accept on;" in conf.split("http {", 1)[0]


def test_a_round_counts_the_connections_the_upstream_accepted(tmp_path: Path) -> None:
    if shutil.which("nginx") is None or not Path(contenders.ECHO_MODULE).exists():
        pytest.skip("nginx with the echo module is not installed")
    port = contenders.free_port()
    (tmp_path / "nginx.conf").write_text(contenders.upstream_conf(tmp_path, port))
    nginx = subprocess.Popen(["nginx", "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path)])
    base = f"http://127.0.0.1:{port}"
    try:
        contenders.wait_for(lambda: httpx.get(f"{base}/nginx-status").status_code == 200, "nginx")
        url = base + contenders.upstream_path("anthtools")
        with httpx.Client() as client:
            watch = measure.ListenWatch({"upstream": port}, base)
            with watch:
                for _ in range(3):  # one connection, kept alive
                    assert client.post(url, content=b"{}").status_code == 200
                httpx.post(url, content=b"{}")  # and one more
        assert watch.upstream_accepts == 2
        assert set(watch.counters) == set(measure.LISTEN_COUNTERS)
    finally:
        nginx.terminate()
        nginx.wait(10)


def test_a_round_whose_wall_clock_jumps_says_by_how_much() -> None:
    """A VM resumed from a snapshot has its wall clock set forward, which wrk times with."""
    walls, monotonics = iter([1000.0, 1024.0]), iter([50.0, 54.0])
    with measure.ClockWatch(lambda: next(walls), lambda: next(monotonics)) as clock:
        pass
    assert clock.step_s == 20.0
    with measure.ClockWatch() as steady:
        pass
    assert abs(steady.step_s) < 0.5


def _stat(proc: Path, pid: int, parent: int, ticks: int, children: int = 0) -> None:
    """A /proc/PID/stat line: pid (comm) state ppid, then the fields up to utime, stime, cutime
    and cstime (its ended children's)."""
    (proc / str(pid)).mkdir(exist_ok=True)
    fields = ["S", str(parent), *["0"] * 9, str(ticks), "0", str(children), "0", *["0"] * 18]
    (proc / str(pid) / "stat").write_text(f"{pid} (a (b) c) {' '.join(fields)}\n")


def test_a_round_counts_the_cpu_of_programs_outside_the_bench_only(tmp_path: Path) -> None:
    _stat(tmp_path, 100, 1, 500)  # the bench's driver
    _stat(tmp_path, 101, 100, 500)  # a contender
    _stat(tmp_path, 102, 101, 500)  # its worker
    _stat(tmp_path, 200, 1, 500)  # another program
    _stat(tmp_path, 201, 200, 100)  # its child, which ends during the round
    _stat(tmp_path, 3, 2, 500)  # a kernel thread
    times = iter([10.0, 12.0])
    with measure.OthersWatch(100, tmp_path, lambda: next(times)) as others:
        for pid, parent in ((100, 1), (101, 100), (102, 101), (3, 2)):
            _stat(tmp_path, pid, parent, 900)
        _stat(tmp_path, 200, 1, 530, children=120)  # 30 of its own, 20 of the child's
        shutil.rmtree(tmp_path / "201")
        _stat(tmp_path, 300, 1, 10)  # started during the round
    assert others.cores == pytest.approx((30 + 20 + 10) / measure.CLOCK_TICKS / 2.0)


def _proc_stat(path: Path, steal: dict[str, int]) -> None:
    """/proc/stat's cpu lines: user nice system idle iowait irq softirq steal guest guest_nice."""
    lines = [f"cpu 1 2 3 4 5 6 7 {sum(steal.values())} 0 0"]
    lines += [f"{core} 1 2 3 4 5 6 7 {ticks} 0 0" for core, ticks in steal.items()]
    path.write_text("\n".join([*lines, "intr 1 2 3", "ctxt 99"]) + "\n")


def test_a_round_reads_the_time_the_host_took_from_each_core(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    _proc_stat(stat, {"cpu0": 40, "cpu1": 7})
    times = iter([10.0, 12.0])
    with measure.StealWatch(stat, lambda: next(times)) as steal:
        _proc_stat(stat, {"cpu0": 40 + measure.CLOCK_TICKS // 2, "cpu1": 7})
    assert steal.by_core == {"cpu0": pytest.approx(0.25), "cpu1": 0.0}
    assert str(steal) == "cpu0 25%, cpu1 0%"
    assert report.steal_lines({}) == []
    (line, _) = report.steal_lines({"bare rps round 2": {"cpu0": 0.25, "cpu1": 0.0}})
    assert "bare rps round 2" in line and "0.25" in line
