"""gateway/timer_wheel.py: many deadlines on one loop timer, called once each, never early."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.timer_wheel import Slot, TimerWheel


class Handle:
    def __init__(self, when: float, callback: Any) -> None:
        self.when, self.callback, self.cancelled = when, callback, False

    def cancel(self) -> None:
        self.cancelled = True


class Loop:
    """The loop's clock and timers, moved by hand."""

    def __init__(self) -> None:
        self.now = 100.0
        self.handles: list[Handle] = []
        self.errors: list[dict[str, Any]] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Any, *, context: Any = None) -> Handle:
        handle = Handle(when, callback)
        self.handles.append(handle)
        return handle

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        self.errors.append(context)

    def armed(self) -> list[float]:
        return [h.when for h in self.handles if not h.cancelled]

    def advance(self, to: float) -> None:
        """Runs the timers due by `to`, in order, with the clock at their time."""
        while True:
            due = [h for h in self.handles if not h.cancelled and h.when <= to]
            if not due:
                break
            handle = min(due, key=lambda h: h.when)
            self.handles.remove(handle)
            self.now = max(self.now, handle.when)
            handle.callback()
        self.now = to


class Entry:
    def __init__(self, log: list[tuple[str, float]], name: str, loop: Loop) -> None:
        self.log, self.name, self.loop = log, name, loop

    def on_due(self) -> None:
        self.log.append((self.name, self.loop.now))


def test_each_entry_is_called_once_after_its_time_and_not_once_removed() -> None:
    loop = Loop()
    wheel = TimerWheel(loop, resolution_s=0.05)  # type: ignore[arg-type]
    log: list[tuple[str, float]] = []
    a, b, c = (Entry(log, name, loop) for name in "abc")
    wheel.add(100.51, a)
    slot_b = wheel.add(100.52, b)
    wheel.add(100.21, c)
    assert loop.armed() == pytest.approx([100.25])  # one loop timer, for the earliest slot
    slot_b.discard(b)
    loop.advance(100.51)
    assert log == [("c", pytest.approx(100.25))]  # a is not due before its time
    loop.advance(101.0)
    assert log == [("c", pytest.approx(100.25)), ("a", pytest.approx(100.55))]
    assert len(wheel) == 0
    assert loop.armed() == []  # nothing left: no wake-up


def test_an_entry_that_adds_itself_again_for_now_runs_in_the_next_slot() -> None:
    loop = Loop()
    wheel = TimerWheel(loop, resolution_s=0.05)  # type: ignore[arg-type]
    calls: list[float] = []

    class Again:
        def on_due(self) -> None:
            calls.append(loop.now)
            if len(calls) < 3:
                wheel.add(loop.now, self)  # a deadline already reached: not again in this run

    wheel.add(100.11, Again())
    loop.advance(100.16)
    assert calls == pytest.approx([100.15])
    loop.advance(101.0)
    assert calls == pytest.approx([100.15, 100.2, 100.25])


def test_an_entry_removed_by_another_in_the_same_slot_is_not_called() -> None:
    loop = Loop()
    wheel = TimerWheel(loop, resolution_s=0.05)  # type: ignore[arg-type]
    called: list[str] = []
    slots: dict[str, Slot] = {}

    class Remover:
        def __init__(self, name: str, other: str) -> None:
            self.name, self.other = name, other

        def on_due(self) -> None:
            called.append(self.name)
            slots[self.other].discard(entries[self.other])

    entries = {"x": Remover("x", "y"), "y": Remover("y", "x")}
    for name, entry in entries.items():
        slots[name] = wheel.add(100.3, entry)
    loop.advance(100.31)
    assert len(called) == 1  # whichever ran first removed the other


def test_a_failing_entry_is_reported_and_the_others_still_run() -> None:
    loop = Loop()
    wheel = TimerWheel(loop, resolution_s=0.05)  # type: ignore[arg-type]
    log: list[tuple[str, float]] = []

    class Failing:
        def on_due(self) -> None:
            raise RuntimeError("boom")

    wheel.add(100.1, Failing())
    wheel.add(100.1, Entry(log, "ok", loop))
    wheel.add(100.4, Entry(log, "later", loop))
    loop.advance(101.0)
    assert [name for name, _ in log] == ["ok", "later"]
    assert [str(error["exception"]) for error in loop.errors] == ["boom"]


def test_the_timer_follows_the_earliest_slot() -> None:
    loop = Loop()
    wheel = TimerWheel(loop, resolution_s=0.05)  # type: ignore[arg-type]
    log: list[tuple[str, float]] = []
    late = wheel.add(105.01, Entry(log, "late", loop))
    assert loop.armed() == pytest.approx([105.05])
    wheel.add(101.01, Entry(log, "early", loop))
    assert loop.armed() == pytest.approx([101.05])
    loop.advance(101.06)
    assert loop.armed() == pytest.approx([105.05])
    assert late.at == pytest.approx(105.05)
    loop.advance(106.0)
    assert [name for name, _ in log] == ["early", "late"]
