"""The cycle collector's runs in a served gateway, logged for a bench (`side_by_side --gc-log`).

Put on a gateway's PYTHONPATH with KLAWD_BENCH_GC_LOG naming a file: every process of the tree
(the supervisor, and the worker forked from it, which inherits the callback) appends one line
per collection, "pid generation start duration collected" (start in CLOCK_MONOTONIC seconds, the
clock every process shares; duration in seconds), with one O_APPEND write after it ends.
Self-contained (the standard library only), so that another tree's gateway (`--before`) loads it
too. Without the variable it does nothing.
"""

from __future__ import annotations

import gc
import os
import time
from typing import Any


class _Log:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self.started = time.monotonic()
            return
        line = (
            f"{os.getpid()} {info['generation']} {self.started:.6f} "
            f"{time.monotonic() - self.started:.6f} {info['collected']}\n"
        )
        os.write(self.fd, line.encode())


def _install() -> None:
    path = os.environ.get("KLAWD_BENCH_GC_LOG")
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        gc.callbacks.append(_Log(fd))


_install()
