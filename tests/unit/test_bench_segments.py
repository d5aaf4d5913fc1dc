"""The TCP segments the upstream sends and takes, as the bench records them (measure.py)."""

import shutil
import socket

import pytest

from loadtests.bench import measure, report

SS = """\
0      0      127.0.0.1:8080 127.0.0.1:5555
\t cubic wscale:7,7 rto:201 segs_out:10 segs_in:7 data_segs_out:8 data_segs_in:2 send 1Mbps
0      0      127.0.0.1:8080 127.0.0.1:5556
\t cubic segs_out:3 segs_in:2
"""


def test_each_connection_s_counters_are_read_from_the_line_after_its_addresses() -> None:
    assert measure.parse_ss(SS) == {
        "127.0.0.1:5555": (10, 7, 8),  # (not data_segs_in's 2 as segs_in)
        "127.0.0.1:5556": (3, 2, 0),
    }


def test_a_new_or_reused_peer_counts_from_zero_and_a_closed_one_is_not_seen() -> None:
    before = {"a": (10, 5, 8), "b": (100, 50, 90), "gone": (7, 7, 7)}
    after = {"a": (15, 6, 12), "b": (4, 2, 3), "new": (20, 3, 18)}
    # a: +5 +1 +4; b's port reused by a new connection: 4 2 3; new: 20 3 18
    assert measure.segments_between(before, after) == (29, 6, 25)


@pytest.mark.skipif(shutil.which("ss") is None, reason="ss (iproute2) is not installed")
def test_a_server_s_segments_are_counted_from_its_sockets() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            server, _ = listener.accept()
            with server:
                server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                before = measure.server_segments(port)
                for _ in range(3):  # each write read whole before the next: a segment each
                    server.sendall(b"x" * 100)
                    got = b""
                    while len(got) < 100:
                        got += client.recv(100 - len(got))
                sent, _, data_sent = measure.segments_between(before, measure.server_segments(port))
    assert data_sent == 3
    assert sent >= 3


def test_each_stream_round_gives_the_upstream_s_segments_beside_its_cpu() -> None:
    samples = {
        "gateway-sqlite": {
            "anth": [800.0],
            "anth_reads": [24.0],
            "anth_upstream_cpu": [590.0],
            "anth_upstream_segments": [95.1],
            "anth_upstream_segments_in": [20.2],
        },
        "bare": {
            "anth": [1000.0],
            "anth_reads": [9.3],
            "anth_upstream_cpu": [550.0],
            "anth_upstream_segments": [72.6],
            "anth_upstream_segments_in": [7.6],
        },
    }
    assert (
        "anth 0.80x (24.0 vs 9.3; upstream 590 vs 550 us, 95 vs 73 segments)."
        in (report.reads_lines(samples)[0])
    )
    redis = {"gateway-redis": samples["gateway-sqlite"], "gateway-sqlite": samples["bare"]}
    assert not any("_segments" in x for x in report.targets(redis))
