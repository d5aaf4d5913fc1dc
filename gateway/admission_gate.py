"""The admission gate: the upstream call is prepared while the request's admission is in flight.

On the Redis store the admission is a round trip (`FCALL klawd_admit_v3`, 0.1-0.3 ms). A billable
route sends it (`Meter.start`), then starts its upstream call at once under the gate
(`PendingAdmission.overlapping`, gateway/metering.py): resolving the deployment, translating and
serializing the upstream request, building its HTTP head run while the reply is on its way.
Whatever would leave the process for this request first waits here for the admission:

- `HttpClient.request` before it takes or opens an upstream connection (every provider's calls,
  and the token fetches of providers that sign in);
- the retrier before a shared capacity take (a capped provider on Redis), before claiming the
  probe of a half-open circuit, before an attempt inside a trace span, and before it acts on a
  failed attempt (resting a deployment, backing off, falling back).

A refused admission (429, 402, or the store failing) raises AdmissionRefused there, which no
upstream error handler takes for an upstream failure, and the route answers with the admission's
own error. So a refused request opens no upstream connection and sends nothing, consumes nothing,
and its error is the one it had when the admission was awaited first (401, 400, 403, then 429,
then 402, then the upstream's). Decision record: docs/decisions/0003-limits-credits-billing.md.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Protocol


class AdmissionRefused(Exception):
    """The admission the upstream call waited for did not admit: nothing left the process; the
    route raises the admission's own error instead."""


class Gate(Protocol):
    @property
    def open(self) -> bool:
        """Admitted: nothing left to wait for."""
        ...

    async def passed(self) -> None:
        """Waits for the admission; AdmissionRefused if it did not admit."""
        ...


# The gate of the request being served (set by its route around the upstream call, so it
# follows the call through the retrier, the provider and the HTTP client of the same task).
GATE: ContextVar[Gate | None] = ContextVar("klawd_admission_gate", default=None)


def closed_gate() -> Gate | None:
    """The request's gate if its admission is still undecided, else None (no gate, or open)."""
    gate = GATE.get()
    return None if gate is None or gate.open else gate
