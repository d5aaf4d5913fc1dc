"""The gateway's one exception tree, and the one place that turns it into the JSON envelope.

    GatewayError (500 internal_error)
    ├── InvalidRequest        400 invalid_request
    ├── AuthenticationError   401 authentication_error
    ├── InsufficientCredits   402 insufficient_credits
    ├── PermissionDenied      403 permission_denied
    ├── NotFound              404 not_found            (unknown model: code "model_not_found")
    ├── RequestTooLarge       413 request_too_large
    ├── RateLimited           429 rate_limit_exceeded  (+ Retry-After, whole seconds)
    ├── InternalError         500 internal_error
    ├── BadGateway            502 bad_gateway          (upstream nonsense, or it refused our key)
    ├── ServiceUnavailable    503 service_unavailable  (+ Retry-After when known)
    │   └── ShuttingDown      503 service_unavailable  (a stream ended by a shutdown)
    └── GatewayTimeout        504 gateway_timeout

Foreign errors (the HTTP client's, msgspec, sqlite, redis) are translated at the edge with
``raise … from exc``; their text never reaches a client unless it is known to be safe
(validation messages).
"""

from __future__ import annotations

import asyncio
import math
from typing import ClassVar

import orjson

from gateway.store.base import StoreError


class GatewayError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after_s: float | None = None,
        retryable: bool = False,
        connect_failed: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.retry_after_s = retry_after_s
        # An upstream failure worth another try of the same target (429, 5xx, connect errors,
        # timeouts before the first byte); see gateway/routing/retry.py.
        self.retryable = retryable
        # The request provably never reached the upstream (safe to retry even non-idempotent
        # calls such as image generation).
        self.connect_failed = connect_failed
        # Headers that belong on the error response too (e.g. x-ratelimit-* after admission).
        self.extra_headers: dict[str, str] = {}

    def envelope(self) -> dict[str, object]:
        error: dict[str, object] = {"type": self.type, "message": self.message}
        if self.param is not None:
            error["param"] = self.param
        if self.code is not None:
            error["code"] = self.code
        return {"error": error}

    def body(self) -> bytes:
        return orjson.dumps(self.envelope())

    def headers(self) -> dict[str, str]:
        if self.retry_after_s is None:
            return dict(self.extra_headers)
        return {**self.extra_headers, "retry-after": str(retry_after_header(self.retry_after_s))}

    def sse_event(self) -> bytes:
        """The final event of a stream that failed after its first byte."""
        return b"data: " + self.body() + b"\n\n"


def retry_after_header(seconds: float) -> int:
    """Retry-After in whole seconds: rounded up, at least 1."""
    return max(1, math.ceil(seconds))


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request"


class AuthenticationError(GatewayError):
    status = 401
    type = "authentication_error"


class InsufficientCredits(GatewayError):
    status = 402
    type = "insufficient_credits"


class PermissionDenied(GatewayError):
    status = 403
    type = "permission_denied"


class NotFound(GatewayError):
    status = 404
    type = "not_found"


class RequestTimeout(GatewayError):
    """The request's body stopped arriving (`server.body_idle_timeout_s`): the connection is
    closed with the answer (the rest of the body, if it ever comes, is not read)."""

    status = 408
    type = "request_timeout"

    def headers(self) -> dict[str, str]:
        return {**super().headers(), "connection": "close"}


class RequestTooLarge(GatewayError):
    status = 413
    type = "request_too_large"


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_exceeded"


class InternalError(GatewayError):
    status = 500
    type = "internal_error"


class BadGateway(GatewayError):
    status = 502
    type = "bad_gateway"


class ServiceUnavailable(GatewayError):
    status = 503
    type = "service_unavailable"


class LedgerUnwritable(ServiceUnavailable):
    """The usage ledger has kept too many entries it could not write (gateway/usage.py)."""

    def __init__(self) -> None:
        super().__init__(
            "The gateway cannot record usage right now; retry shortly.", retry_after_s=5
        )


class ShuttingDown(ServiceUnavailable):
    """The last event of a stream that a shutdown's deadline ended (gateway/drain.py)."""

    def __init__(self) -> None:
        super().__init__(
            "The gateway is restarting and ended this stream; retry the request.",
            retry_after_s=1,
        )


class GatewayTimeout(GatewayError):
    status = 504
    type = "gateway_timeout"


# The code of the 504 that ends a request whose deadline (`[retry] deadline_s`) passed, and
# the text of the cancellation by which the deadline cuts a try (gateway/routing/retry.py).
DEADLINE_EXCEEDED = "deadline_exceeded"


# The `type` label of what a request lost to its client's leaving (images generated and not
# fetched: `klawd_upstream_images_lost_total`): no error of the gateway's, the ledger's 499
# (nginx's "client closed request", gateway.pending_admission.CLIENT_CLOSED).
CLIENT_CLOSED_TYPE = "client_closed"


class DeadlineCut(str):
    """The message of the cancellation by which the request's deadline cuts a try: the text
    DEADLINE_EXCEEDED, carrying `before`, the cancellations of the request's task asked for
    and not taken back when the try began (someone else's, not the cut's). Made only when a
    cut fires."""

    before: int

    def __new__(cls, before: int) -> DeadlineCut:
        cut = super().__new__(cls, DEADLINE_EXCEEDED)
        cut.before = before
        return cut


def cut_by_deadline(exc: asyncio.CancelledError) -> bool:
    """Whether the request's deadline alone cancelled the call that sees `exc`: the cut's
    cancellation, and no other asked of the request's task since its try began (the rule of
    `Retrier._before_deadline`, which then answers the deadline's 504). Another cancellation in
    the cut's own loop turn, asked before or after it, makes the request a client gone: the call
    is then counted as one (not at all). A cancellation asked before the try and never taken
    back is in the cut's `before`: it neither hides the cut nor is read as it."""
    message = exc.args[0] if exc.args else None
    if not isinstance(message, DeadlineCut):
        return False
    task = asyncio.current_task()
    return task is None or task.cancelling() <= message.before + 1


def model_not_found(model: str, param: str = "model") -> NotFound:
    return NotFound(
        f"The model '{model[:200]}' does not exist.", param=param, code="model_not_found"
    )


INTERNAL_ERROR_MESSAGE = "The gateway failed to process the request. It has been logged."
STORE_UNAVAILABLE_MESSAGE = "The gateway's store is unavailable; retry shortly."


def as_gateway_error(exc: BaseException) -> GatewayError | None:
    """The one mapping of an exception to the error a client is answered with (the envelope,
    api/middleware.py's `envelope_error`) and the ledger settles (`SettleOnFailure`, a
    stream's failure): None for an unexpected one, a 500."""
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, StoreError):
        error = ServiceUnavailable(STORE_UNAVAILABLE_MESSAGE, retry_after_s=1)
        error.extra_headers.update(exc.extra_headers)  # an admitted request's rate headers
        return error
    return None
