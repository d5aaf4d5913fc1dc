"""One loop timer for many deadlines that are seldom due: open streams' keepalive checks and
upstream answers' read deadlines.

Each of those used to be a loop timer of its own, and under uvloop a timer is a `TimerHandle`,
a `UVTimer`, the libuv timer it allocates and a bound method: about 0.45 KB, held by every open
stream twice (docs/decisions/0012, seventh pass). Here a deadline is the object itself in the
set of the slot it falls in (`Slot`): slots are `resolution_s` wide, one loop timer is armed for the
earliest slot that has entries, and an entry is called (`on_due()`) once the loop's clock has
passed its slot's end: not early (by more than the loop clock's millisecond), at most
`resolution_s` late, in no particular order within a slot. Adding and removing are a set's add
and discard; nothing runs per entry until it is due.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import math
from typing import Protocol

# The context the wheel's timer runs in: it reads and sets no context variable (an entry that
# needs one keeps its own).
WHEEL_CONTEXT = contextvars.Context()
RESOLUTION_S = 0.05
EARLY_S = 0.001  # a loop timer may run this much before its time (libuv counts milliseconds)


class Due(Protocol):
    def on_due(self) -> None: ...


class Slot(set[Due]):
    """The entries due at the loop time `at`: an entry leaves with `slot.discard(entry)` (one
    C call, as cancelling a loop timer was), also while the slot is being called."""

    __slots__ = ("at",)

    def __init__(self, at: float) -> None:
        super().__init__()
        self.at = at


class TimerWheel:
    """The deadlines of one event loop's streams (not thread-safe: the loop's thread only)."""

    __slots__ = ("_armed", "_handle", "_last", "_pending", "_resolution_s", "_slots", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, resolution_s: float = RESOLUTION_S):
        self.loop = loop  # (read by the streams: the loop without a getpid() call)
        self._resolution_s = resolution_s
        self._slots: dict[int, Slot] = {}
        self._pending: list[int] = []  # the numbers of the slots in `_slots`, a heap
        self._handle: asyncio.TimerHandle | None = None
        self._armed: int | None = None  # the slot number the loop timer is armed for
        self._last = -1  # the last slot number whose entries were called: later adds go after

    def add(self, when: float, entry: Due) -> Slot:
        """`entry.on_due()` once the loop time passed `when` (within `resolution_s`), unless
        discarded from the returned slot before."""
        # The slot that ends after `when` (written without calls: this is on every upstream
        # request's path). A deadline in a slot already run goes into the next one: an entry
        # that adds itself again from its call is not called again in the same run.
        number = int(when / self._resolution_s) + 1
        if number <= self._last:
            number = self._last + 1
        slots = self._slots
        if number in slots:  # (an emptied slot stays until its turn: the next deadline reuses it)
            slot = slots[number]
        else:
            slot = slots[number] = Slot(number * self._resolution_s)
            heapq.heappush(self._pending, number)
            if self._armed is None or number < self._armed:
                self._arm(number)
        slot.add(entry)
        return slot

    def __len__(self) -> int:
        return sum(map(len, self._slots.values()))

    def _arm(self, number: int) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed = number
        self._handle = self.loop.call_at(
            number * self._resolution_s, self._run, context=WHEEL_CONTEXT
        )

    def _run(self) -> None:
        self._handle = self._armed = None
        pending = self._pending
        slots = self._slots
        # the slots whose end has passed
        last = self._last = max(
            self._last, math.floor((self.loop.time() + EARLY_S) / self._resolution_s)
        )
        while pending and pending[0] <= last:
            slot = slots.pop(heapq.heappop(pending))
            while slot:  # an entry discarded meanwhile (by another's call) is not called
                entry = slot.pop()
                try:
                    entry.on_due()
                except Exception as exc:  # one entry's failure is not the others'
                    self.loop.call_exception_handler(
                        {"message": "a timer wheel entry failed", "exception": exc}
                    )
        while pending and not slots[pending[0]]:  # emptied slots: no wake-up for them
            del slots[heapq.heappop(pending)]
        if pending:
            self._arm(pending[0])
