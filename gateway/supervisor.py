"""`klawd serve`'s supervising process: Granian's supervisor, and nothing else loaded.

`klawd serve` prepares everything in the CLI (settings, admin token, first start, open-files
limit, the metrics and drain directories), then replaces itself (`exec`, same PID, same command
line when started as the `klawd` script) with a fresh interpreter that imports only Granian,
this module and `gateway.drain`, and hands it what it prepared in one environment variable.
Why: the supervisor holds its memory for the server's life and its worker is forked from it,
so what the CLI had loaded (the store, the accounts code, SQLite, the first start's objects)
was counted twice in the server's RSS, once in each process (docs/decisions/0012, seventh
pass). Signals, exit codes, the metrics port and the graceful shutdown are Granian's and the
code's below, as they were in the CLI.

This module is also the `klawd` console script's entry (`entry`): it decides between the
supervisor and the CLI before the CLI's modules are imported.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypedDict

import orjson

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

# Set only across the exec ("<pid> <spec as JSON>"), removed by the supervising process; a
# value that another process left in the environment (another PID) is not obeyed.
SPEC_ENV = "KLAWD_SUPERVISOR"
SCRIPT = "klawd"

log = logging.getLogger(__name__)


class Spec(TypedDict):
    """What the CLI prepared, for Granian (JSON in `SPEC_ENV`)."""

    host: str
    port: int
    workers: int
    kill_timeout_s: int
    max_header_bytes: int
    max_in_flight: int
    listen_backlog: int
    metrics_port: int | None
    drain_file: str
    remove_dirs: list[str]  # temporary directories of this run, removed once it ends


def entry() -> int:
    """The `klawd` command: the supervising process when the CLI handed over, else the CLI."""
    spec = handed_over()
    if spec is not None:
        return supervise(spec)
    from gateway.cli import main

    return main()


def handed_over() -> Spec | None:
    """What the CLI handed over, if this process is the one it exec'd (the variable is removed
    either way, so that no worker or child inherits it)."""
    pid, _, spec = os.environ.pop(SPEC_ENV, "").partition(" ")
    if pid != str(os.getpid()):
        return None
    handed: Spec = orjson.loads(spec)
    return handed


def hand_over(spec: Spec) -> NoReturn:
    """Replaces this process (the CLI, with everything it loaded) by the supervising one."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.environ[SPEC_ENV] = f"{os.getpid()} {orjson.dumps(spec).decode()}"
    os.execv(sys.executable, _argv())  # noqa: S606 (the same program, no shell)


def _argv() -> list[str]:
    """Started as the `klawd` script: the same command line again (interpreter options too), so
    that `ps` and process managers see what they started; otherwise `python -m` this module,
    with `-P` if this process had it: `-m` puts the working directory first on the path, so a
    `gateway` there would be run instead of the one the CLI was started from (the benchmarks
    start another checkout's with `python -P -m gateway.cli` from this one)."""
    script = Path(sys.argv[0])
    if script.name == SCRIPT and script.is_file() and len(sys.orig_argv) > len(sys.argv):
        return list(sys.orig_argv)
    return [sys.executable, *(["-P"] if sys.flags.safe_path else []), "-m", "gateway.supervisor"]


def supervisor_class(drain_file: Path) -> Any:
    """Granian's supervisor that first tells the workers when the drain began."""
    from granian import Granian

    from gateway.drain import announce

    class Supervisor(Granian):  # type: ignore[misc,valid-type]
        def signal_handler_interrupt(self, *args: Any, **kwargs: Any) -> None:
            # Once only. Granian's handler sets a threading.Event, whose lock is not reentrant:
            # a second signal arriving while the first one's set() holds it (`make` passing on
            # the SIGTERM that a killpg had sent it too) ran this handler again inside that
            # set() and deadlocked the supervisor for good, SIGTERM or not. The first signal
            # stops it already (Granian's flag, set before its set()).
            if self.interrupt_signal:
                return
            announce(drain_file, time.time())
            super().signal_handler_interrupt(*args, **kwargs)

    return Supervisor


def supervise(spec: Spec) -> int:
    """Granian's supervisor with the prepared settings, until it stops; 0 when it stopped
    cleanly (Granian itself exits with 1 when a worker failed)."""
    from granian.constants import Interfaces, Loops
    from granian.http import HTTP1Settings

    Supervisor = supervisor_class(Path(spec["drain_file"]))
    try:
        if spec["metrics_port"] is not None:
            _serve_metrics(spec["host"], spec["metrics_port"])
        Supervisor(
            "gateway.app:app_from_environment",
            factory=True,
            address=spec["host"],
            port=spec["port"],
            workers=spec["workers"],
            interface=Interfaces.ASGI,
            loop=Loops.uvloop,
            log_access=False,
            # On SIGTERM Granian stops listening at once and lets open requests finish; a worker
            # still busy after the drain grace period is stopped (its streams are ended just
            # before: gateway/drain.py).
            workers_kill_timeout=spec["kill_timeout_s"],
            # Hostile clients: headers must arrive within 10 s and fit server.max_header_bytes
            # (Granian's per-connection buffer: its size is paid by every open stream); at most
            # server.max_in_flight connections per worker (an idle keep-alive one included,
            # until the header read timeout closes it), the next connections wait in the listen
            # backlog (server.listen_backlog), then are refused by the kernel.
            http1_settings=HTTP1Settings(
                header_read_timeout=10_000, max_buffer_size=spec["max_header_bytes"]
            ),
            backpressure=spec["max_in_flight"],
            backlog=spec["listen_backlog"],
        ).serve()
    finally:
        for directory in spec["remove_dirs"]:
            shutil.rmtree(directory, ignore_errors=True)
    return 0


# A metrics connection's longest wait for the client, reading its request or writing the answer
# (Granian's header read timeout on the main port is 10 s too).
METRICS_SOCKET_TIMEOUT_S = 10.0


def _serve_metrics(
    host: str, port: int, socket_timeout_s: float = METRICS_SOCKET_TIMEOUT_S
) -> WSGIServer:
    """/metrics on its own port, from this (the supervising) process: it serves no traffic and
    reads the workers' files at each scrape. prometheus_client's server gives each connection a
    thread and waits on it without a bound: a client that connected and sent nothing, or
    stopped reading, held its thread for good. Each connection's socket now has
    `socket_timeout_s`, after which it is closed: a request that never came, quietly; an answer
    whose client stopped reading, with one log line (wsgiref's error handling printed the
    timeout's traceback on stderr)."""
    from wsgiref.simple_server import ServerHandler

    from prometheus_client import start_http_server  # after the env is set (by the CLI)
    from prometheus_client.multiprocess import MultiProcessCollector
    from prometheus_client.registry import CollectorRegistry

    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    server, _ = start_http_server(port, addr=host, registry=registry)
    handler = server.RequestHandlerClass

    class CutQuietly(ServerHandler):
        request_handler: Any  # wsgiref's back pointer to the connection's handler

        def log_exception(self, exc_info: Any) -> None:
            if not isinstance(exc_info[1], TimeoutError):
                super().log_exception(exc_info)
                return
            client = self.request_handler.client_address
            log.warning(
                "metrics port: the client %s:%s stopped reading its answer for %s s: cut",
                *client[:2],
                socket_timeout_s,
            )

    class Bounded(handler):  # type: ignore[valid-type, misc]
        timeout = socket_timeout_s  # socketserver: the connection's settimeout

        def handle(self) -> None:
            """WSGIRequestHandler.handle (Python 3.11-3.13), its ServerHandler the one above."""
            try:
                self.raw_requestline = self.rfile.readline(65537)
            except TimeoutError:  # the request never came
                self.close_connection = True
                return
            if len(self.raw_requestline) > 65536:
                self.requestline = self.request_version = self.command = ""
                self.send_error(414)
                return
            if not self.parse_request():  # an error answered already
                return
            served = CutQuietly(
                self.rfile, self.wfile, self.get_stderr(), self.get_environ(), multithread=False
            )
            served.request_handler = self
            served.run(self.server.get_app())

    server.RequestHandlerClass = Bounded
    return server


if __name__ == "__main__":
    sys.exit(entry())
