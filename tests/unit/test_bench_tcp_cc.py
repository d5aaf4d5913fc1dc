"""loadtests/bench/tcp_cc.py: a command's TCP sockets, connected and accepted, made to use the
congestion control asked for."""

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from loadtests.bench import tcp_cc

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import socket
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen()
client = socket.create_connection(listener.getsockname())
server, _ = listener.accept()
name = lambda s: s.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16).rstrip(b"\\0")
print(name(client).decode(), name(server).decode())
"""


def _default() -> str:
    with socket.socket() as probe:
        return (
            probe.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16).rstrip(b"\0").decode()
        )


def _another() -> str | None:
    """A congestion control a socket here may choose that is not the default."""
    default = _default()
    return next((n for n in ("cubic", "reno", "bbr") if n != default and tcp_cc.usable(n)), None)


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no cc")
def test_a_command_s_connected_and_accepted_sockets_use_the_congestion_control_asked_for() -> None:
    other = _another()
    if other is None:
        pytest.skip("no congestion control other than the default may be chosen here")
    run = subprocess.run(
        [sys.executable, "-m", "loadtests.bench.tcp_cc", other, "--", sys.executable, "-c", CHILD],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert run.stdout.split() == [other, other], (run.stdout, run.stderr)


def test_a_congestion_control_no_socket_may_choose_is_refused_before_running() -> None:
    with pytest.raises(SystemExit, match="may not choose"):
        tcp_cc.main(["no-such-cc", "--", "false"])
