"""Provider health: one circuit breaker per deployment (keyed as routing/catalog.py keys them: a
model with one deployment by its id), from its recent calls.

closed → open when, among the last `window` calls, at least `min_failures` failed and the
failure rate is at least `failure_rate`; open → half-open after `cool_down_s`, when one probe is
let through; the probe's success closes the circuit, its failure opens it again. Latency is kept
as an exponentially weighted mean for /status. The circuits are per process; when one opens, the
retrier also rests the deployment for `cooldown_s` in routing/capacity.py, which on Redis every
replica sees.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Literal

from msgspec import Struct

State = Literal["closed", "open", "half_open"]


class CircuitView(Struct, frozen=True):
    model: str
    state: State
    calls: int
    error_rate: float
    latency_ms: float | None


class _Circuit:
    __slots__ = ("latency_s", "opened_at", "outcomes", "probing", "state")

    def __init__(self, window: int) -> None:
        self.outcomes: deque[bool] = deque(maxlen=window)
        self.state: State = "closed"
        self.opened_at = 0.0
        self.probing = False
        self.latency_s: float | None = None


class Health:
    def __init__(
        self,
        window: int = 20,
        min_failures: int = 5,
        failure_rate: float = 0.5,
        cool_down_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._window = window
        self._min_failures = min_failures
        self._failure_rate = failure_rate
        self._cool_down_s = cool_down_s
        self._clock = clock
        self._circuits: dict[str, _Circuit] = {}
        self._not_closed: set[str] = set()
        # Every circuit is closed (no circuit open or half-open): an attribute kept with
        # `_not_closed`, read on every upstream call (a property was a call each time).
        self.all_closed = True

    def allows(self, model: str) -> bool:
        """can_serve, and claims the probe of a half-open circuit."""
        if not self.can_serve(model):
            return False
        self.claim(model)
        return True

    def can_serve(self, model: str) -> bool:
        """Whether a call may go to it now (no probe claimed: a balancer asks of every
        deployment before it chooses one)."""
        circuit = self._circuits.get(model)
        if circuit is None or circuit.state == "closed":
            return True
        if circuit.state == "open":
            if self._clock() - circuit.opened_at < self._cool_down_s:
                return False
            circuit.state = "half_open"
            circuit.probing = False
        return not circuit.probing

    def claim(self, model: str) -> None:
        """The call is made: a half-open circuit lets exactly one probe through at a time."""
        circuit = self._circuits.get(model)
        if circuit is not None and circuit.state == "half_open":
            circuit.probing = True

    def broke_off(self, model: str) -> bool:
        """A call counted served (its stream started) that the upstream then broke off: that
        call failed after all. The latest success in the window becomes a failure, and the
        circuit opens if the failures now reach the threshold. Whether it opened it."""
        circuit = self._circuits.get(model)
        if circuit is None or circuit.state != "closed":
            return False  # opened meanwhile, or its probe's stream: the next probe tells
        outcomes = circuit.outcomes
        for index in range(len(outcomes) - 1, -1, -1):
            if outcomes[index]:
                outcomes[index] = False
                break
        if self._failing(outcomes):
            self._open(model, circuit)
            return True
        return False

    def release(self, model: str) -> None:
        """The claimed probe ended with no outcome for the deployment (the upstream refused the
        request itself, or the client went away): the next call probes instead."""
        circuit = self._circuits.get(model)
        if circuit is not None and circuit.state == "half_open":
            circuit.probing = False

    def reopens_in(self, model: str) -> float:
        circuit = self._circuits.get(model)
        if circuit is None or circuit.state != "open":
            return 0.0
        return max(0.0, self._cool_down_s - (self._clock() - circuit.opened_at))

    def record(self, model: str, ok: bool, latency_s: float) -> bool:
        """Returns whether this outcome opened the circuit (the caller rests the deployment on
        every replica)."""
        circuit = self._circuits.get(model)
        if circuit is None:
            circuit = self._circuits[model] = _Circuit(self._window)
        circuit.outcomes.append(ok)
        if ok:
            circuit.latency_s = (
                latency_s
                if circuit.latency_s is None
                else 0.8 * circuit.latency_s + 0.2 * latency_s
            )
        if circuit.state == "half_open":
            circuit.probing = False
            if ok:
                circuit.state = "closed"
                self._not_closed.discard(model)
                self.all_closed = not self._not_closed
                circuit.outcomes.clear()
                circuit.outcomes.append(True)
            else:
                self._open(model, circuit)
            return not ok
        if ok:  # a success never opens a closed circuit: its failure rate can only fall
            return False
        if circuit.state == "closed" and self._failing(circuit.outcomes):
            self._open(model, circuit)
            return True
        return False

    def _failing(self, outcomes: deque[bool]) -> bool:
        """Whether the window's failures reach the threshold that opens a circuit."""
        failures = outcomes.count(False)
        return failures >= self._min_failures and failures / len(outcomes) >= self._failure_rate

    def _open(self, model: str, circuit: _Circuit) -> None:
        self._not_closed.add(model)
        self.all_closed = False
        circuit.state = "open"
        circuit.opened_at = self._clock()
        circuit.probing = False

    def view(self) -> list[CircuitView]:
        out = []
        for model, circuit in sorted(self._circuits.items()):
            if circuit.state == "open" and self._clock() - circuit.opened_at >= self._cool_down_s:
                state: State = "half_open"
            else:
                state = circuit.state
            calls = len(circuit.outcomes)
            out.append(
                CircuitView(
                    model=model,
                    state=state,
                    calls=calls,
                    error_rate=circuit.outcomes.count(False) / calls if calls else 0.0,
                    latency_ms=None if circuit.latency_s is None else circuit.latency_s * 1000,
                )
            )
        return out
