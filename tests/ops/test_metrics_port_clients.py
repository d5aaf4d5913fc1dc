"""The separate metrics port (`server.metrics_port`, served by the supervising process through
prometheus_client's threaded WSGI server) bounds each connection's reads and writes: a client
that connects and sends nothing (or stops reading) no longer holds one of its threads for good."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.supervisor import _serve_metrics
from tests.conftest import free_port

PATIENCE_S = 10  # the client's own bound: far past the server's (0.2 s here)


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
        assert silent.recv(1024) == b""  # closed by the server (before: held, recv timed out)


def test_a_scrape_is_still_answered(metrics_port: int) -> None:
    with socket.create_connection(("127.0.0.1", metrics_port), timeout=PATIENCE_S) as client:
        client.sendall(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.0 200 OK\r\n")
