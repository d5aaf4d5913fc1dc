"""The separate metrics port (`server.metrics_port`, served by the supervising process through
prometheus_client's threaded WSGI server) bounds each connection's reads and writes: a client
that connects and sends nothing (or stops reading) no longer holds one of its threads for good."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.supervisor import _serve_metrics
from tests.conftest import free_port
from tests.live_bound import polls, recv

PATIENCE_S = 10  # the client's own bound, in running time: far past the server's (0.2 s here)


@pytest.fixture
def metrics_port(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    port = free_port()
    server = _serve_metrics("127.0.0.1", port, socket_timeout_s=0.2)
    try:
        yield port
    finally:
        server.shutdown()
        server.server_close()


def test_a_client_that_sends_nothing_is_disconnected(metrics_port: int) -> None:
    with socket.create_connection(("127.0.0.1", metrics_port), timeout=PATIENCE_S) as silent:
        # closed by the server (before: held, the read timed out)
        assert recv(silent, 1024, PATIENCE_S) == b""


def test_a_scrape_is_still_answered(metrics_port: int) -> None:
    with socket.create_connection(("127.0.0.1", metrics_port), timeout=PATIENCE_S) as client:
        client.sendall(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        answer = b""
        while chunk := recv(client, 65536, PATIENCE_S):
            answer += chunk
    assert answer.startswith(b"HTTP/1.0 200 OK\r\n")


def many_series(directory: Path, count: int) -> None:
    """`count` counters in the multiprocess files a worker would have written: an answer far
    larger than a socket's buffers."""
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    counters = MmapedDict(str(directory / "counter_1.db"))
    try:
        for n in range(count):
            labels = [f"{n:08d}" + "x" * 300]
            key = mmap_key("klawd_padding_total", "klawd_padding_total", ["pad"], labels, "pad")
            counters.write_value(key, 1.0, 0.0)
    finally:
        counters.close()


def test_a_client_that_stops_reading_a_large_answer_is_cut_with_one_quiet_line(
    tmp_path: Path,
    metrics_port: int,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A scrape whose client stops reading an answer larger than the sockets' buffers is cut
    after the connection's bound, with one log line naming it; before, wsgiref's error handling
    printed the TimeoutError's traceback on the supervisor's stderr."""
    many_series(tmp_path, 20_000)  # about 7 MB of exposition
    with socket.socket() as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.settimeout(PATIENCE_S)
        client.connect(("127.0.0.1", metrics_port))
        client.sendall(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        received = len(recv(client, 1, PATIENCE_S))  # the answer began
        time.sleep(1)  # then reads nothing, well past the server's 0.2 s
        try:
            while chunk := recv(client, 65536, PATIENCE_S):
                received += len(chunk)
        except ConnectionResetError:
            pass
    assert received < 20_000 * 300  # cut: the answer (each series above 300 bytes) not whole
    cut = "stopped reading"
    for _ in polls(PATIENCE_S, 0.05):
        if any(cut in r.getMessage() for r in caplog.records):
            break
    assert any(cut in r.getMessage() for r in caplog.records), "no line for the cut client"
    lines = [r.getMessage() for r in caplog.records if cut in r.getMessage()]
    assert len(lines) == 1, lines
    assert "Traceback" not in capfd.readouterr().err
