"""gateway/shutdown_log.py: the shutdown's log lines, written by a thread of their own."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from gateway.shutdown_log import ShutdownLog


async def test_a_line_logged_while_the_end_waits_for_the_writer_is_written(
    tmp_path: Path,
) -> None:
    """`end` waits for the writer off the loop's thread, so the loop runs meanwhile and may log
    (a late ledger answer, a request settled after the flush: its `unsettled usage entry`
    line). Such a line is written, before the handlers are back in place. Before, the writer
    had been told to stop first: the line went into its queue behind the stop and was lost."""
    path = tmp_path / "stderr"
    log = logging.getLogger("klawd.test_shutdown_log")
    root = logging.getLogger()
    with path.open("w") as stream:
        handler = logging.StreamHandler(stream)  # a stream with a file descriptor
        root.addHandler(handler)
        try:
            lines = ShutdownLog.begin()
            log.error("before the end")
            asyncio.get_running_loop().call_soon(log.error, "while the end waits")
            assert await lines.end(10)
            log.error("after the end")
        finally:
            root.removeHandler(handler)
    assert path.read_text().splitlines() == [
        "before the end",
        "while the end waits",
        "after the end",
    ]
