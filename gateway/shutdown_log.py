"""The shutdown's log lines, written by a thread of their own.

A log stream that takes nothing (stderr a full pipe nobody reads: a log collector stalled, a
terminal paused) blocks every write to it, and Python's logging writes on the caller's thread:
the event loop's, for the shutdown's lines (the ledger's cut, the closes' cuts). One stuck
stream held the whole shutdown until the kill, the store's close and the webhooks' lease
among it. So for the shutdown the root logger's handlers that write to a file descriptor
(stderr, a file) give their lines, formatted as they would, to a daemon thread that writes
them with `os.write`: a write stuck there holds no lock that the loop, or the interpreter's
exit, waits for. The lifespan waits for that thread in the last sixteenth of its budget
(`end`): with a stream that takes lines, every line is written before the worker exits, those
logged while it waits included.
Under `klawd serve` the thread takes the lines from the drain's start on (the signal: the drain
deadline's `ended N open stream(s)` comes while Granian still waits for the streams), else
from the lifespan's shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import threading
from typing import Any

from gateway.threads import ended_within


class ShutdownLog(logging.Handler):
    """In place of the root logger's handlers that write to a file descriptor, from `begin`
    until `end`."""

    def __init__(self, handlers: list[tuple[logging.StreamHandler[Any], int]]) -> None:
        super().__init__()
        self._handlers = handlers
        # Lines; a mark (`end`'s: set once the lines before it are written); None: stop.
        self._lines: queue.SimpleQueue[tuple[int, bytes] | threading.Event | None] = (
            queue.SimpleQueue()
        )
        self._writer = threading.Thread(target=self._write, name="klawd-shutdown-log", daemon=True)

    @classmethod
    def begin(cls) -> ShutdownLog:
        root = logging.getLogger()
        handlers = [found for h in root.handlers if (found := _with_descriptor(h)) is not None]
        self = cls(handlers)
        if handlers:
            swapped = {id(h) for h, _ in handlers}
            # One assignment: a thread logging meanwhile goes through the old list or the new.
            root.handlers = [h for h in root.handlers if id(h) not in swapped] + [self]
            self._writer.start()
        return self

    def emit(self, record: logging.LogRecord) -> None:
        for handler, fd in self._handlers:
            if record.levelno >= handler.level and handler.filter(record):
                try:
                    line = handler.format(record) + handler.terminator
                    encoding = getattr(handler.stream, "encoding", None) or "utf-8"
                    self._lines.put((fd, line.encode(encoding, "backslashreplace")))
                except Exception:
                    handler.handleError(record)

    def _write(self) -> None:
        while (line := self._lines.get()) is not None:
            if isinstance(line, threading.Event):
                line.set()
                continue
            fd, data = line
            view = memoryview(data)
            with contextlib.suppress(OSError):  # (a closed stream: the line is lost)
                while view:
                    view = view[os.write(fd, view) :]

    async def end(self, within_s: float) -> bool:
        """The handlers back in place, once the lines given so far are written, or after
        `within_s`: whether they were. Cut, the thread goes on writing while the process
        lives."""
        if not self._handlers:
            return True
        loop = asyncio.get_running_loop()
        by = loop.time() + within_s
        # The writer is told to stop only once the handlers are back: the loop runs while this
        # waits, and a line it logs meanwhile comes after the mark (stopped first, the writer
        # left such a line in its queue for good).
        written = threading.Event()
        self._lines.put(written)

        def reached() -> None:
            written.wait()

        try:
            if not await ended_within(reached, within_s, "klawd-shutdown-log-end"):
                return False
        finally:
            root = logging.getLogger()
            at = next((i for i, h in enumerate(root.handlers) if h is self), len(root.handlers))
            kept = [h for h in root.handlers if h is not self]
            self.acquire()  # (a line being given now goes before the stop)
            try:
                root.handlers = kept[:at] + [h for h, _ in self._handlers] + kept[at:]
                self._lines.put(None)
            finally:
                self.release()
        # the lines logged while it waited, behind the mark
        return await ended_within(
            self._writer.join, max(0.0, by - loop.time()), "klawd-shutdown-log-end"
        )


def _with_descriptor(handler: logging.Handler) -> tuple[logging.StreamHandler[Any], int] | None:
    """A stream handler and the file descriptor it writes to, if any (not a StringIO: a
    test's capture)."""
    if not isinstance(handler, logging.StreamHandler):
        return None
    try:
        return handler, int(handler.stream.fileno())
    except (AttributeError, OSError, ValueError):  # (io.UnsupportedOperation is an OSError)
        return None
