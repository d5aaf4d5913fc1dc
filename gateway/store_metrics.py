"""Store latency and errors: the store (and its limiter) behind a timing proxy.

Every coroutine method of the store and of its limiter is timed; the operation label is the
method's name (a fixed set: the Store and Limiter protocols), the backend label is the URL scheme.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

from gateway.limits import Admission, DecidingLimiter, Limiter
from gateway.metrics import Metrics
from gateway.store.base import Store


class _Timed:
    def __init__(self, inner: object, metrics: Metrics) -> None:
        self._inner = inner
        self._metrics = metrics

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        timed: Callable[..., Any]
        if name in _SENT:  # sent now, its reply read later: timed from sending to the reply
            timed = _timed_send(attr, _SENT[name], self._metrics)
        elif name in _DECIDED:
            timed = _timed_decide(cast(DecidingLimiter, self._inner), _DECIDED[name], self._metrics)
        elif name in _REPLIES:
            setattr(self, name, attr)  # the rest of a timed send: not timed twice
            return attr
        elif not inspect.iscoroutinefunction(attr):
            return attr
        else:
            timed = _timed(attr, name, self._metrics)
        setattr(self, name, timed)  # built once per method
        return timed


# A limiter's admission sent before it is awaited (gateway/admission_gate.py): timed as the
# operation it stands for, from sending to its reply, as an awaited one is.
_SENT = {"send_admit": "admit"}
_REPLIES = frozenset({"admission_of", "admit_leased"})


# An admission decided in process without awaiting (the embedded store's, one Rust call):
# timed as the operation it stands for, by the limiter itself (`DecidingLimiter.timed_decide`:
# no wrapper's frame around each admission). One that must read first (an int: the reads it
# needs) is not: the awaited `admit` that follows is timed, once for the admission.
_DECIDED = {"decide": "admit"}


def _timed_decide(
    limiter: DecidingLimiter, operation: str, metrics: Metrics
) -> Callable[..., Admission | int]:
    duration = metrics.store_duration.labels(metrics.store_backend, operation)
    errors = metrics.store_errors.labels(metrics.store_backend, operation)
    buffer = metrics.buffer
    # observed into directly, as `_timed` does
    return limiter.timed_decide(buffer.pending(duration).observe, lambda: buffer.inc(errors))


def _timed_send(
    send: Callable[..., tuple[asyncio.Future[Any], bool] | None], operation: str, metrics: Metrics
) -> Callable[..., tuple[asyncio.Future[Any], bool] | None]:
    duration = metrics.store_duration.labels(metrics.store_backend, operation)
    errors = metrics.store_errors.labels(metrics.store_backend, operation)
    buffer = metrics.buffer
    observe = buffer.pending(duration).observe  # observed into directly, as `_timed` does

    def timed(*args: Any, **kwargs: Any) -> tuple[asyncio.Future[Any], bool] | None:
        started = time.perf_counter()
        sent = send(*args, **kwargs)
        if sent is not None:

            def replied(done: asyncio.Future[Any]) -> None:
                try:
                    failed = isinstance(done.result(), Exception)  # an error reply
                except asyncio.CancelledError:  # the caller went away (its reply is dropped)
                    failed = False
                except Exception:  # the connection failed
                    failed = True
                if failed:
                    buffer.inc(errors)
                observe(time.perf_counter() - started)

            sent[0].add_done_callback(replied)
        return sent

    return timed


def _timed(
    call: Callable[..., Awaitable[Any]], operation: str, metrics: Metrics
) -> Callable[..., Awaitable[Any]]:
    duration = metrics.store_duration.labels(metrics.store_backend, operation)
    errors = metrics.store_errors.labels(metrics.store_backend, operation)
    buffer = metrics.buffer
    # The duration's pending observations, observed into directly (gateway/metrics_buffer.py).
    observe = buffer.pending(duration).observe

    async def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await call(*args, **kwargs)
        except Exception:
            buffer.inc(errors)
            raise
        finally:
            observe(time.perf_counter() - started)

    return timed


class _TimedStore(_Timed):
    def limiter(self) -> Limiter:
        inner = cast(Store, self._inner)
        return cast(Limiter, _Timed(inner.limiter(), self._metrics))


def timed_store(store: Store, metrics: Metrics) -> Store:
    return cast(Store, _TimedStore(store, metrics))


def store_backend(url: str) -> str:
    return "redis" if url.startswith(("redis://", "rediss://")) else "sqlite"
