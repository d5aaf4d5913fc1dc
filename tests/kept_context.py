"""Whether anything outlives a request holding its context: a connection it opened, a timer it
armed. Both event loops run a callback (a transport's, a timer's) in the context current when it
was made, so what a request's call leaves behind keeps that request's context variables (its log
record, its admission's gate) unless it was made in a context of its own."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import weakref
from collections.abc import Awaitable, Callable


class _Held:
    """What the request's context holds (a weak reference tells whether anything still does)."""


_HELD: contextvars.ContextVar[_Held | None] = contextvars.ContextVar("test_held", default=None)


async def context_kept_after(call: Callable[[], Awaitable[None]]) -> bool:
    """Runs `call` as a request would, in a task (a context) of its own that holds an object in
    a context variable; once the task is gone, whether anything still keeps that object."""

    async def request() -> weakref.ref[_Held]:
        held = _Held()
        _HELD.set(held)
        await call()
        return weakref.ref(held)

    task = asyncio.create_task(request())
    held = await task
    del task  # (a task keeps its context, and so does the loop's handle that woke us: a turn)
    await asyncio.sleep(0)
    gc.collect()
    return held() is not None
