"""RequestObserver: the one object the request path reports to, for metrics and the request log.

Hooks (each a few dictionary lookups and additions, never I/O: counters and histograms go
through the metrics buffer, flushed once a second):

- GatewayMiddleware: `stream_opened` / `stream_closed`, and `http_finished` for every HTTP
  request (route template, status, duration, time to first byte), which also queues the JSON
  log line;
- Meter.admit: `admitted_or_refused` (by plan);
- Meter.settle: `settled`, once per billable request (served model, tokens, cost): counted with
  the request's end (`http_finished`), or at once when there is none to come;
- ResponseCache: `cache_consulted` (hit, miss or bypass) and `cache_saved`;
- HttpProvider._send: `upstream_finished`, once per upstream call (latency or error type; a
  call cut by the request's deadline is a `gateway_timeout`, a client gone is not counted);
  a non-streamed answer's body that then fails (HttpProvider.complete, _send_json), a
  generated image's download (HttpProvider.download_generated), and a stream the upstream
  broke after its headers (Meter.settle): `upstream_body_failed`; the images such a download
  loses, or a client gone during it: `upstream_images_lost` (both also on the request's log
  line);
- the retry/fallback loop (gateway/routing/retry.py): `retried` / `fell_back`;
- a once-a-second task of the app: `circuits` (from gateway/routing/health.py).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any

from gateway.billing import MICROS_PER_USD, TokenUsage
from gateway.metrics import CIRCUIT_STATES, Metrics, status_class
from gateway.requestlog import ENDED, NOT_SETTLED, RequestLog, RequestRecord, current_request
from gateway.routing.catalog import CatalogEntry

HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Bound of each memo of label children below (its keys are bounded already: route templates,
# catalog entries, statuses the gateway writes; this only guards against a surprise).
MAX_MEMO = 4096


def _remember(memo: dict[Hashable, Any], key: Hashable, children: Any) -> Any:
    if len(memo) >= MAX_MEMO:
        memo.clear()
    memo[key] = children
    return children


class RequestObserver:
    """Each hook finds the label children it updates with one dictionary lookup, keyed by what
    the request reports (route, method, status; served deployment, status), built on first use:
    the label normalisation and `labels()` lookups run once per key, not per request. What it
    finds are the buffer's running totals of those children (`MetricBuffer.tally` and
    `pending`), which the hook adds into directly, or their slots in the buffer's
    `RunningTotals` (`requests`, `counters`): what a request's end counts (its HTTP request,
    duration and time to first byte, and its settlement) is one call there, `http_finished`'s
    (decision 0011, issue 19zzzzi)."""

    def __init__(self, metrics: Metrics, request_log: RequestLog) -> None:
        self.metrics = metrics
        self.request_log = request_log
        self._totals = metrics.buffer.totals
        self._http: dict[Hashable, Any] = {}
        self._settled: dict[Hashable, Any] = {}
        self._admitted: dict[Hashable, Any] = {}
        self._upstream: dict[Hashable, Any] = {}
        self._streams: dict[Hashable, Any] = {}

    # -- every HTTP request (middleware) ----------------------------------------------------------
    # Buffered like the counters (gateway/metrics_buffer.py): two locked mmap writes per stream
    # become two additions into a running total; the gauge moves by its net change at the flush.
    def stream_opened(self, route: str) -> None:
        (self._streams.get(route) or self._open_streams(route))[0] += 1.0

    def stream_closed(self, route: str) -> None:
        (self._streams.get(route) or self._open_streams(route))[0] -= 1.0

    def _open_streams(self, route: str) -> list[float]:
        """The gauge's running total for `route`, made on its first stream."""
        m = self.metrics
        tally = m.buffer.tally((m.child(m.open_streams, route),))
        return _remember(self._streams, route, tally)  # type: ignore[no-any-return]

    def http_finished(self, record: RequestRecord, arrived: float, ended: float) -> None:
        """`arrived`, `ended`: time.perf_counter() at the request's arrival and response's end.
        One call into the running totals for the whole request: its request counter and
        histograms, and its settlement's counters if it settled meanwhile (`settled`)."""
        first_byte_at = record.first_byte_at
        method = record.method if record.method in HTTP_METHODS else "other"
        key = (record.route, method, record.status, record.stream_open)
        requests = self._http.get(key)
        if requests is None:
            requests = _remember(self._http, key, self._http_slot(*key))
        settled, record.settled_counters = record.settled_counters, ENDED
        latency_ms, ttfb_ms = self._totals.end(
            requests,
            ended - arrived,
            None if first_byte_at is None else first_byte_at - arrived,
            settled,
            record.prompt_tokens,
            record.completion_tokens,
            record.cost_usd,
        )  # (the line's milliseconds, to the microsecond)
        if record.held is None:
            self.request_log.add(record.rounded_entry(latency_ms, ttfb_ms))
        else:  # its status is on its way: written by `RequestLog.release`
            record.held = (latency_ms, ttfb_ms)

    def _http_slot(self, route: str, method: str, status: int, streamed: bool) -> int:
        m = self.metrics
        return m.buffer.requests(
            m.child(m.http_requests, route, method, status_class(status)),
            m.child(m.http_duration, route, "true" if streamed else "false"),
            m.child(m.http_ttfb, route),
        )

    # -- admission and billing (Meter) ------------------------------------------------------------
    def admitted_or_refused(self, account_id: str, plan: str, outcome: str) -> None:
        """`outcome`: admitted | rate_limited | insufficient_credits (gateway/limits.py)."""
        key = (plan, outcome)
        tally = self._admitted.get(key)
        if tally is None:
            tally = _remember(self._admitted, key, self._admitted_child(plan, outcome))
        tally[0] += 1.0
        record = current_request.get()
        if record is not None:
            record.account_id = account_id
            record.plan = plan

    def _admitted_child(self, plan: str, outcome: str) -> Any:
        m = self.metrics
        if outcome == "admitted":
            return m.buffer.tally((m.child(m.admitted, m.plan(plan)),))
        return m.buffer.tally((m.child(m.limited, m.plan(plan), outcome),))

    def settled(
        self,
        served: CatalogEntry | None,
        usage: TokenUsage,
        status: int,
        stream: bool,
        cost_micros: int,
    ) -> None:
        model_id = served.model.id if served else None
        provider_name = served.model.provider if served else None
        key = (model_id, provider_name, served.model.kind if served else "none", stream, status)
        counters = self._settled.get(key)
        if counters is None:
            counters = _remember(self._settled, key, self._settled_counters(*key))
        # requests, prompt tokens, completion tokens, cost: running totals (a zero adds nothing
        # at the flush, as a skipped update did)
        cost_usd = cost_micros / MICROS_PER_USD  # micros_to_usd, without the call
        record = current_request.get()
        if record is None:
            self._totals.settle(counters, usage.prompt_tokens, usage.completion_tokens, cost_usd)
        else:
            # Counted with the request's end (`http_finished`: one call), which always follows
            # while the request runs (its middleware's `finally`, a failure's or a cancellation's
            # too); after it (a held line's late settlement), or a request's second one, now.
            pending = record.settled_counters
            if pending == ENDED:
                self._totals.settle(
                    counters, usage.prompt_tokens, usage.completion_tokens, cost_usd
                )
            else:
                if pending != NOT_SETTLED:  # the earlier one, with what it put on the record
                    self._totals.settle(
                        pending, record.prompt_tokens, record.completion_tokens, record.cost_usd
                    )
                record.settled_counters = counters
            record.settled_status = status
            record.model = model_id
            record.provider = provider_name
            record.provider_kind = served.provider.kind if served else None
            record.stream = stream
            record.prompt_tokens = usage.prompt_tokens
            record.completion_tokens = usage.completion_tokens
            record.cost_usd = cost_usd

    def _settled_counters(
        self, model_id: str | None, provider_name: str | None, kind: str, stream: bool, status: int
    ) -> int:
        m = self.metrics
        model, provider = m.model(model_id), m.provider(provider_name)
        return m.buffer.counters((
            m.child(m.requests, model, provider, kind, "true" if stream else "false",
                    status_class(status)),
            m.child(m.tokens, model, provider, "prompt"),
            m.child(m.tokens, model, provider, "completion"),
            m.child(m.cost, model, provider),
        ))  # fmt: skip

    # -- the response cache (gateway/cache/) -------------------------------------------------------
    def cache_consulted(self, route: str, result: str) -> None:
        m = self.metrics
        m.buffer.inc(m.child(m.cache_lookups, route, result))
        record = current_request.get()
        if record is not None:
            record.cache = result

    def cache_saved(self, route: str, outcome: str) -> None:
        m = self.metrics
        m.buffer.inc(m.child(m.cache_saves, route, outcome))

    # -- upstream calls (providers, retry loop) ---------------------------------------------------
    def upstream_finished(self, provider: str, duration_s: float, error_type: str | None) -> None:
        key = (provider, error_type)
        child = self._upstream.get(key)
        if child is None:
            child = _remember(self._upstream, key, self._upstream_child(provider, error_type))
        if error_type is None:
            child.observe(duration_s)
        else:
            child[0] += 1.0
        record = current_request.get()
        if record is not None:
            record.upstream_attempts += 1

    def _upstream_child(self, provider: str, error_type: str | None) -> Any:
        m = self.metrics
        label = m.provider(provider)
        if error_type is None:
            return m.buffer.pending(m.child(m.upstream_duration, label))
        return m.buffer.tally((m.child(m.upstream_errors, label, error_type),))

    def upstream_body_failed(self, provider: str, error_type: str) -> None:
        """A call reported answered (its headers came: `upstream_finished`) whose answer then
        failed: a non-streamed body cut by the request's deadline, timed out or broken off, or
        a stream the upstream broke. Not a second upstream call (the request log's
        `upstream_attempts` stays)."""
        m = self.metrics
        m.buffer.inc(m.child(m.upstream_body_errors, m.provider(provider), error_type))
        record = current_request.get()
        if record is not None:
            record.body_error = error_type
            record.body_errors += 1

    def upstream_images_lost(self, provider: str, images: int, error_type: str) -> None:
        """`images` a generation answered (made, and billed upstream) that the client will not
        get: their download failed, or was cut by the request's deadline or by the client's
        leaving (`error_type` "client_closed")."""
        m = self.metrics
        m.buffer.inc(m.child(m.upstream_images_lost, m.provider(provider), error_type), images)
        record = current_request.get()
        if record is not None:
            record.images_lost += images

    def retried(self, provider: str, kind: str = "request") -> None:
        """`kind`: request (a request's upstream call tried again: gateway/routing/retry.py) or
        poll (a Replicate prediction's poll polled again after a transient failure)."""
        m = self.metrics
        m.buffer.inc(m.child(m.upstream_retries, m.provider(provider), kind))

    def fell_back(self, provider: str) -> None:
        m = self.metrics
        m.buffer.inc(m.child(m.fallbacks, m.provider(provider)))

    def circuits(self, states: Iterable[tuple[str, str]]) -> None:
        """(provider, circuit state of one of its models) pairs -> per provider, the worst:
        0 closed, 1 half-open, 2 open. Providers not named are closed."""
        worst = dict.fromkeys(self.metrics.providers, 0)
        for provider, state in states:
            if provider in worst:
                worst[provider] = max(worst[provider], CIRCUIT_STATES.get(state, 0))
        for provider, value in worst.items():
            self.metrics.child(self.metrics.circuit_state, provider).set(value)
