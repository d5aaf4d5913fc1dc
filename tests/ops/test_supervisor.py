"""`klawd serve`'s supervising process: the CLI hands over to a process that loads only
Granian (gateway/supervisor.py), keeping its PID, its command line and its exit codes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import httpx

from gateway.supervisor import supervisor_class
from tests.conftest import (
    ADMIN_TOKEN,
    KLAWD,
    UPSTREAM_KEY,
    free_port,
    gateway_config,
    start_gateway,
    stop,
    wait_until_healthy,
)
from tests.fakes.openai_upstream import FakeOpenAI
from tests.live_bound import wait_exit


def _mapped(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def test_the_supervisor_keeps_the_command_line_and_loads_none_of_the_cli(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    port = free_port()
    config = tmp_path / "klawd.toml"
    gateway_config(config, port, fake_openai.base_url)
    gateway = start_gateway(config, port)
    try:
        assert httpx.get(f"{gateway.base_url}/healthz", timeout=10).status_code == 200
        pid = gateway.process.pid  # the process that was started: exec keeps it
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
        assert [part.decode() for part in cmdline[1:]] == [
            KLAWD, "serve", "--config", str(config), "--port", str(port)
        ]  # fmt: skip
        # The CLI had loaded the Rust core and SQLite (settings, the first start's store):
        # the supervising process maps neither; its worker does.
        maps = _mapped(pid)
        assert "_core.cpython" not in maps
        assert "libsqlite3" not in maps
        workers = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        assert len(workers) == 1
        assert "_core.cpython" in _mapped(int(workers[0]))
    finally:
        gateway.process.send_signal(signal.SIGTERM)
        assert wait_exit(gateway.process, 30) == 0
        stop(gateway.process)


def test_a_bad_configuration_still_exits_2_before_any_hand_over(tmp_path: Path) -> None:
    config = tmp_path / "klawd.toml"
    config.write_text("[server]\nno_such_field = 1\n")
    done = subprocess.run(
        [KLAWD, "serve", "--config", str(config)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2
    assert "no_such_field" in done.stderr


def test_a_hand_over_left_in_the_environment_by_another_process_is_not_obeyed(
    tmp_path: Path,
) -> None:
    config = tmp_path / "klawd.toml"
    config.write_text("[server]\nport = 8123\n")
    stale = '1 {"host": "127.0.0.1", "port": 9}'  # another PID's
    done = subprocess.run(
        [KLAWD, "config", "check", "--config", str(config)],
        capture_output=True, text=True, timeout=30, env={**os.environ, "KLAWD_SUPERVISOR": stale},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr  # the CLI ran, not a supervisor


def test_started_with_dash_p_the_supervisor_runs_the_same_gateway_not_the_working_directorys(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    """`python -P -m gateway.cli serve` (how the benchmarks start another checkout's gateway):
    the process it execs keeps `-P`, so a `gateway` package in the working directory is not the
    one that serves (here a decoy whose supervisor exits 97)."""
    decoy = tmp_path / "cwd" / "gateway"
    decoy.mkdir(parents=True)
    (decoy / "__init__.py").write_text("")
    (decoy / "supervisor.py").write_text("raise SystemExit(97)\n")
    port = free_port()
    config = tmp_path / "klawd.toml"
    gateway_config(config, port, fake_openai.base_url)
    env = {**os.environ, "KLAWD_ADMIN_TOKEN": ADMIN_TOKEN, "OPENAI_API_KEY": UPSTREAM_KEY}
    with (tmp_path / "gateway.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-P", "-m", "gateway.cli", "serve", "--config", str(config),
             "--port", str(port)],
            cwd=decoy.parent, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_until_healthy(f"http://127.0.0.1:{port}", process)  # the decoy would exit 97
        assert process.poll() is None
    finally:
        stop(process)


class _SecondSignalDuringSet(threading.Event):
    """The supervisor's interrupt event, in which a second signal arrives while `set()` holds
    the event's lock (as a signal handler runs between two bytecodes of the main thread)."""

    def __init__(self, on_set: Callable[[], None]) -> None:
        super().__init__()
        self.on_set = on_set
        self.sets = 0

    def set(self) -> None:
        with self._cond:  # type: ignore[attr-defined]
            self.sets += 1
            if self.sets == 1:
                self.on_set()  # the second signal's handler, inside the first one's set()
            self._flag = True  # type: ignore[attr-defined]
            self._cond.notify_all()  # type: ignore[attr-defined]


def test_a_second_signal_during_the_first_ones_handler_does_not_deadlock(
    tmp_path: Path,
) -> None:
    """Found on this machine: a supervisor that got SIGTERM twice at once (a test's killpg, and
    `make` passing the same signal on) hung for good, both threads waiting on the event's
    lock. The second signal is now a no-op; the first still announces the drain and stops it."""
    cls = supervisor_class(tmp_path / "signalled")
    supervisor = cls.__new__(cls)  # the handler's state only: no server is started
    supervisor.interrupt_signal = False
    supervisor.main_loop_interrupt = _SecondSignalDuringSet(supervisor.signal_handler_interrupt)
    handler = threading.Thread(target=supervisor.signal_handler_interrupt, daemon=True)
    handler.start()
    handler.join(timeout=10)
    assert not handler.is_alive(), "the second signal deadlocked the supervisor"
    assert supervisor.interrupt_signal and supervisor.main_loop_interrupt.is_set()
    assert (tmp_path / "signalled").exists(), "the drain was announced"
