"""RequestObserver: the one object the request path reports to, for metrics and the request log.

Hooks (each a few dictionary lookups and additions, never I/O: counters and histograms go
through the metrics buffer, flushed once a second):

- GatewayMiddleware: `stream_opened` / `stream_closed`, and `http_finished` for every HTTP
  request (route template, status, duration, time to first byte), which also queues the JSON
  log line;
- Meter.admit: `admitted_or_refused` (by plan);
- Meter.settle: `settled`, once per billable request (served model, tokens, cost);
- ResponseCache: `cache_consulted` (hit, miss or bypass) and `cache_saved`;
- HttpProvider._send: `upstream_finished`, once per upstream call (latency or error type);
- the retry/fallback loop (gateway/routing/retry.py): `retried` / `fell_back`;
- a once-a-second task of the app: `circuits` (from gateway/routing/health.py).
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.billing import TokenUsage, micros_to_usd
from gateway.metrics import CIRCUIT_STATES, Metrics, status_class
from gateway.requestlog import RequestLog, RequestRecord, current_request
from gateway.routing.catalog import CatalogEntry

HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RequestObserver:
    def __init__(self, metrics: Metrics, request_log: RequestLog) -> None:
        self.metrics = metrics
        self.request_log = request_log

    # -- every HTTP request (middleware) ----------------------------------------------------------
    # Buffered like the counters (gateway/metrics_buffer.py): two locked mmap writes per stream
    # become two dictionary additions; the gauge moves by its net change at the next flush.
    def stream_opened(self, route: str) -> None:
        m = self.metrics
        m.buffer.inc(m.child(m.open_streams, route), 1.0)

    def stream_closed(self, route: str) -> None:
        m = self.metrics
        m.buffer.inc(m.child(m.open_streams, route), -1.0)

    def http_finished(self, record: RequestRecord, arrived: float, ended: float) -> None:
        """`arrived`, `ended`: time.perf_counter() at the request's arrival and response's end."""
        m = self.metrics
        duration_s = ended - arrived
        ttfb_s = None if record.first_byte_at is None else record.first_byte_at - arrived
        method = record.method if record.method in HTTP_METHODS else "other"
        m.buffer.inc(m.child(m.http_requests, record.route, method, status_class(record.status)))
        streamed = "true" if record.stream_open else "false"
        m.buffer.observe(m.child(m.http_duration, record.route, streamed), duration_s)
        if ttfb_s is not None:
            m.buffer.observe(m.child(m.http_ttfb, record.route), ttfb_s)
        self.request_log.write(record, duration_s * 1000, None if ttfb_s is None else ttfb_s * 1000)

    # -- admission and billing (Meter) ------------------------------------------------------------
    def admitted_or_refused(self, account_id: str, plan: str, outcome: str) -> None:
        """`outcome`: admitted | rate_limited | insufficient_credits (gateway/limits.py)."""
        m = self.metrics
        if outcome == "admitted":
            m.buffer.inc(m.child(m.admitted, m.plan(plan)))
        else:
            m.buffer.inc(m.child(m.limited, m.plan(plan), outcome))
        record = current_request.get()
        if record is not None:
            record.account_id = account_id
            record.plan = plan

    def settled(
        self,
        served: CatalogEntry | None,
        usage: TokenUsage,
        status: int,
        stream: bool,
        cost_micros: int,
    ) -> None:
        m = self.metrics
        model = m.model(served.model.id if served else None)
        provider = m.provider(served.model.provider if served else None)
        kind = served.model.kind if served else "none"
        streamed = "true" if stream else "false"
        m.buffer.inc(m.child(m.requests, model, provider, kind, streamed, status_class(status)))
        if usage.prompt_tokens:
            m.buffer.inc(m.child(m.tokens, model, provider, "prompt"), usage.prompt_tokens)
        if usage.completion_tokens:
            m.buffer.inc(m.child(m.tokens, model, provider, "completion"), usage.completion_tokens)
        if cost_micros:
            m.buffer.inc(m.child(m.cost, model, provider), micros_to_usd(cost_micros))
        record = current_request.get()
        if record is not None:
            record.model = served.model.id if served else None
            record.provider = served.model.provider if served else None
            record.provider_kind = served.provider.kind if served else None
            record.stream = stream
            record.prompt_tokens = usage.prompt_tokens
            record.completion_tokens = usage.completion_tokens
            record.cost_usd = micros_to_usd(cost_micros)

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
        m = self.metrics
        label = m.provider(provider)
        if error_type is None:
            m.buffer.observe(m.child(m.upstream_duration, label), duration_s)
        else:
            m.buffer.inc(m.child(m.upstream_errors, label, error_type))
        record = current_request.get()
        if record is not None:
            record.upstream_attempts += 1

    def retried(self, provider: str) -> None:
        m = self.metrics
        m.buffer.inc(m.child(m.upstream_retries, m.provider(provider)))

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
