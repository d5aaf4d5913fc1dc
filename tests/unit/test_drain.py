"""gateway/drain.py: the deadline, and the watcher that ends open streams at it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from gateway.drain import DRAIN_MARGIN_S, OpenStreams, announce, drain_deadline, is_drain


def test_the_deadline_keeps_a_margin_before_the_kill() -> None:
    assert drain_deadline(100.0, 30.0) == 100.0 + 30.0 - DRAIN_MARGIN_S
    assert drain_deadline(100.0, 1.0) == 100.5, "at most half of a short grace"
    assert drain_deadline(100.0, 0.0) == 100.0


def test_the_watcher_ends_open_streams_once_the_supervisor_announced_the_drain(
    tmp_path: Path,
) -> None:
    from gateway import drain

    async def main() -> tuple[bool, bool]:
        streams = OpenStreams()
        stream = asyncio.ensure_future(asyncio.Event().wait())
        streams.add(stream)  # type: ignore[arg-type]
        signal_file = tmp_path / "signalled"
        watcher = asyncio.ensure_future(drain.watch(streams, 0.2, signal_file))
        await asyncio.sleep(0.3)
        untouched = not stream.done()  # nothing announced yet
        announce(signal_file, time.time())
        try:
            await asyncio.wait_for(stream, 5)
        except asyncio.CancelledError as exc:
            ended_by_drain = is_drain(exc)
        else:
            ended_by_drain = False
        watcher.cancel()
        return untouched, ended_by_drain

    untouched, ended_by_drain = asyncio.run(main())
    assert untouched
    assert ended_by_drain
