"""Keepalive for SSE relays: a comment while the upstream is silent, without a task per event.

One pump task per stream moves pieces from the upstream into a small queue; a timer, re-armed on
every piece, puts `: keepalive` into the queue after `keepalive_s` of silence. The client side
only ever awaits the queue. When the client goes away, the generator is cancelled and so is the
pump, which closes the upstream response at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

KEEPALIVE = b": keepalive\n\n"
_END = object()


async def with_keepalive(
    source: AsyncIterator[bytes], keepalive_s: float, keepalive: bytes = KEEPALIVE
) -> AsyncIterator[bytes]:
    """`keepalive` is what a silent stream gets (the Messages API route sends `event: ping`)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue(maxsize=64)
    timer: asyncio.TimerHandle | None = None

    def ping() -> None:
        if queue.empty():
            queue.put_nowait(keepalive)
        arm()

    def arm() -> None:
        nonlocal timer
        timer = loop.call_later(keepalive_s, ping)

    async def pump() -> None:
        try:
            async for piece in source:
                if timer is not None:
                    timer.cancel()
                await queue.put(piece)
                arm()
            await queue.put(_END)
        except Exception as exc:  # handed over to the client side, which raises it
            await queue.put(exc)

    arm()
    task = loop.create_task(pump())
    try:
        while True:
            item = await queue.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, bytes)  # noqa: S101 (only bytes, _END and errors are queued)
            yield item
    finally:
        if timer is not None:
            timer.cancel()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.shield(task)
