"""Store latency and errors: the store (and its limiter) behind a timing proxy.

Every coroutine method of the store and of its limiter is timed; the operation label is the
method's name (a fixed set: the Store and Limiter protocols), the backend label is the URL scheme.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

from gateway.limits import Limiter
from gateway.metrics import Metrics
from gateway.store.base import Store


class _Timed:
    def __init__(self, inner: object, metrics: Metrics) -> None:
        self._inner = inner
        self._metrics = metrics

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not inspect.iscoroutinefunction(attr):
            return attr
        timed = _timed(attr, name, self._metrics)
        setattr(self, name, timed)  # built once per method
        return timed


def _timed(
    call: Callable[..., Awaitable[Any]], operation: str, metrics: Metrics
) -> Callable[..., Awaitable[Any]]:
    duration = metrics.store_duration.labels(metrics.store_backend, operation)
    errors = metrics.store_errors.labels(metrics.store_backend, operation)
    buffer = metrics.buffer

    async def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await call(*args, **kwargs)
        except Exception:
            buffer.inc(errors)
            raise
        finally:
            buffer.observe(duration, time.perf_counter() - started)

    return timed


class _TimedStore(_Timed):
    def limiter(self) -> Limiter:
        inner = cast(Store, self._inner)
        return cast(Limiter, _Timed(inner.limiter(), self._metrics))


def timed_store(store: Store, metrics: Metrics) -> Store:
    return cast(Store, _TimedStore(store, metrics))


def store_backend(url: str) -> str:
    return "redis" if url.startswith(("redis://", "rediss://")) else "sqlite"
