"""The status a failed request is settled with in the ledger is the status its client is
answered with: one mapping (`gateway.errors.as_gateway_error`) for the envelope
(api/middleware.py's `envelope_error`), `SettleOnFailure` (a failure before the answer) and a
stream's failure after its first byte (api/chat.py's `_failure`). Before, a `StoreError` was
answered 503 and settled 500. An admitted request's answer carries its admission's rate headers
whatever the failure (before, a `StoreError`'s 503 carried none)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.api.chat import _failure
from gateway.api.middleware import envelope_error
from gateway.errors import BadGateway, GatewayTimeout, ServiceUnavailable
from gateway.metering import SettleOnFailure
from gateway.store.base import StoreError


class Ledger:
    """The meter's `settle`, as SettleOnFailure calls it: the statuses settled."""

    def __init__(self) -> None:
        self.statuses: list[int] = []

    def settle(
        self, ticket: Any, served: Any, usage: Any, images: int, status: int, *_: Any
    ) -> None:
        self.statuses.append(status)


RATE_HEADERS = {
    "x-ratelimit-limit-requests": "10",
    "x-ratelimit-remaining-requests": "7",
    "x-ratelimit-reset-requests": "18s",
}


class Admission:
    def headers(self) -> dict[str, str]:
        return dict(RATE_HEADERS)


class Ticket:
    admission = Admission()


FAILURES = [
    StoreError("redis store failed: ConnectionError"),
    BadGateway("broken"),
    GatewayTimeout("late"),
    ServiceUnavailable("busy"),
    ValueError("a bug"),
]


@pytest.mark.parametrize("exc", FAILURES, ids=lambda exc: type(exc).__name__)
def test_the_ledger_settles_a_failure_with_the_status_the_client_is_answered(
    exc: Exception,
) -> None:
    error = envelope_error(exc)
    answered = 500 if error is None else error.status
    ledger = Ledger()
    SettleOnFailure(ledger, Ticket(), False).__exit__(type(exc), exc, None)  # type: ignore[arg-type]
    streamed, _ = _failure(exc, lambda error: error.type.encode())
    assert (ledger.statuses, streamed) == ([answered], answered)
    if isinstance(exc, StoreError):
        assert answered == 503


@pytest.mark.parametrize("exc", FAILURES[:4], ids=lambda exc: type(exc).__name__)
def test_an_admitted_request_s_failure_is_answered_with_its_rate_headers(
    exc: Exception,
) -> None:
    """Settled by `SettleOnFailure` (the request was admitted), then answered by the envelope:
    the admission's rate headers are on the answer, a `StoreError`'s 503 as any other."""
    SettleOnFailure(Ledger(), Ticket(), False).__exit__(type(exc), exc, None)  # type: ignore[arg-type]
    error = envelope_error(exc)
    assert error is not None
    assert RATE_HEADERS.items() <= error.headers().items()


def test_a_store_error_outside_an_admitted_request_carries_no_rate_headers() -> None:
    """Not admitted (the admission itself failed on the store): nothing is known of the limits,
    so the 503 says nothing of them; only its Retry-After."""
    error = envelope_error(StoreError("redis store failed: ConnectionError"))
    assert error is not None
    assert error.headers() == {"retry-after": "1"}
