"""Every Prometheus collector of the gateway, defined once, with fixed label sets.

Label values come only from bounded sets: catalog model ids (anything else is "unknown"),
configured provider and plan names, route templates, error types of gateway/errors.py and status
classes ("2xx", "4xx", ...). Never an account id, a key, a request id or user text.

One `Metrics` per app, built in the lifespan on its own registry. With several Granian workers,
`klawd serve` sets PROMETHEUS_MULTIPROC_DIR before the workers start: prometheus-client then
keeps every value in a per-process file of that directory, and `exposition()` sums the files of
every worker (gauges as documented per collector).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from gateway import __version__
from gateway.metrics_buffer import MetricBuffer

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# LLM latencies: from a cached 5 ms answer to a two-minute generation.
LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
)  # fmt: skip
STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

UNKNOWN = "unknown"
NONE = "none"  # no target served the request (it failed before any upstream answered)
TOKEN_TYPES = ("prompt", "completion")
CIRCUIT_STATES = {"closed": 0, "half_open": 1, "open": 2}
WEBHOOK_EVENTS = ("usage.updated", "billing.invoice.paid")
WEBHOOK_OUTCOMES = ("delivered", "failed", "gave_up")
LIMIT_OUTCOMES = ("rate_limited", "insufficient_credits")
CACHE_ROUTES = ("chat", "messages", "responses", "embeddings")
CACHE_RESULTS = ("hit", "miss", "bypass")
CACHE_SAVES = ("stored", "too_large", "failed")
# Why a served answer's tokens were never charged to its account's token limit
# (gateway/token_charges.py): the worker's keep of them full, kept past its life, or still kept
# when the worker stopped.
NOT_CHARGED_REASONS = ("full", "expired", "shutdown")


Collector = TypeVar("Collector", Counter, Gauge, Histogram)


def status_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status < 600 else UNKNOWN


class Metrics:
    """The collectors; `models`, `providers` and `plans` are the bounded label values."""

    def __init__(
        self,
        models: Iterable[str],
        providers: Iterable[str],
        plans: Iterable[str],
        store_backend: str,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.models = frozenset(models)
        self.providers = frozenset(providers)
        self.plans = frozenset(plans)
        self.store_backend = store_backend
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        # Counter and histogram updates of the hot path go through here (gateway/metrics_buffer.py).
        self.buffer = MetricBuffer()
        r = self.registry
        self.http_requests = Counter(
            "klawd_http_requests_total",
            "HTTP requests by route template, method and status class.",
            ["route", "method", "status_class"],
            registry=r,
        )
        self.http_duration = Histogram(
            "klawd_http_request_duration_seconds",
            'From the request\'s arrival to the last byte of the response; stream="true" for SSE '
            "responses (their duration is the stream's length: use TTFB for their latency).",
            ["route", "stream"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.http_ttfb = Histogram(
            "klawd_http_time_to_first_byte_seconds",
            "From the request's arrival to the first byte of the response body.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.open_streams = Gauge(
            "klawd_open_streams",
            "SSE responses being streamed now (summed over live workers).",
            ["route"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.send_timeouts = Counter(
            "klawd_stream_send_timeouts_total",
            "Streams ended because their client took nothing for server.streams.send_timeout_s "
            "(it stopped reading; billed as a client gone, status 499).",
            registry=r,
        )
        self.unsettled_usage = Gauge(
            "klawd_usage_unsettled_entries",
            "Ledger entries a worker keeps because writing them to the store failed (retried "
            "with backoff; 0 once a write succeeds again), summed over live workers.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.tokens_not_charged = Counter(
            "klawd_tokens_not_charged_total",
            "Tokens of served answers never charged to their account's tokens_per_minute, by "
            "reason: full (too many accounts owed charges kept while the store failed them), "
            "expired (kept longer than the store remembers a charge's id) or shutdown (still "
            "kept when the worker stopped). Failed charges are kept and sent again, with their "
            "ids, when the store answers: not counted here.",
            ["reason"],
            registry=r,
        )
        self.requests = Counter(
            "klawd_requests_total",
            "Billable requests (chat, images) by served model, provider and status class.",
            ["model", "provider", "kind", "stream", "status_class"],
            registry=r,
        )
        self.tokens = Counter(
            "klawd_tokens_total",
            "Tokens billed, by model and type (prompt, completion).",
            ["model", "provider", "type"],
            registry=r,
        )
        self.cost = Counter(
            "klawd_cost_usd_total",
            "US dollars billed, by model.",
            ["model", "provider"],
            registry=r,
        )
        self.limited = Counter(
            "klawd_rate_limited_total",
            "Requests refused at admission, by plan and outcome "
            "(rate_limited: 429; insufficient_credits: 402).",
            ["plan", "outcome"],
            registry=r,
        )
        self.admitted = Counter(
            "klawd_admitted_total",
            "Requests admitted (limits and credits allowed them), by plan.",
            ["plan"],
            registry=r,
        )
        self.upstream_duration = Histogram(
            "klawd_upstream_request_duration_seconds",
            "From sending an upstream request to its response headers, by provider.",
            ["provider"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            "klawd_upstream_errors_total",
            "Upstream calls that failed, by provider and the gateway error type they became.",
            ["provider", "type"],
            registry=r,
        )
        self.upstream_body_errors = Counter(
            "klawd_upstream_body_errors_total",
            "Upstream calls whose headers came (in klawd_upstream_request_duration_seconds) and "
            "whose answer then failed (a non-streamed body, a generated image's download, or a "
            "stream the upstream broke), by provider and the gateway error type they became.",
            ["provider", "type"],
            registry=r,
        )
        self.upstream_images_lost = Counter(
            "klawd_upstream_images_lost_total",
            "Images an upstream generated (and bills) that no client got: the download of the "
            "generation's answer failed, or the request's deadline or the client's leaving cut "
            "it (the client is not charged), by provider and the gateway error type the request "
            "became (client_closed: the client left).",
            ["provider", "type"],
            registry=r,
        )
        self.upstream_retries = Counter(
            "klawd_upstream_retries_total",
            "Retries of the same target, by provider; kind: request (the retrier's, of a request's "
            "upstream call) or poll (a Replicate prediction's poll polled again after a transient "
            "failure).",
            ["provider", "kind"],
            registry=r,
        )
        self.fallbacks = Counter(
            "klawd_fallbacks_total",
            "Requests moved on to the next target, by the provider that failed.",
            ["provider"],
            registry=r,
        )
        self.circuit_state = Gauge(
            "klawd_circuit_state",
            "Worst circuit of the provider's models: 0 closed, 1 half-open, 2 open "
            "(max over live workers).",
            ["provider"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.store_duration = Histogram(
            "klawd_store_operation_duration_seconds",
            "Store (SQLite or Redis) operations, by backend and operation.",
            ["backend", "operation"],
            buckets=STORE_BUCKETS,
            registry=r,
        )
        self.store_errors = Counter(
            "klawd_store_errors_total",
            "Store operations that failed, by backend and operation.",
            ["backend", "operation"],
            registry=r,
        )
        self.holds_released = Counter(
            "klawd_reservation_holds_released_total",
            "Reservations of credit given back because their hold expired unsettled (Redis "
            "store: a worker killed with requests in flight, a reply lost, or a request longer "
            "than [store] reservation_hold_s).",
            registry=r,
        )
        self.webhook_deliveries = Counter(
            "klawd_webhook_deliveries_total",
            "Webhook delivery attempts, by event type and outcome.",
            ["event", "outcome"],
            registry=r,
        )
        self.cache_lookups = Counter(
            "klawd_cache_requests_total",
            "Requests that asked for the response cache (x-klawd-cache), by API and result "
            "(hit, miss, bypass).",
            ["api", "result"],
            registry=r,
        )
        self.cache_saves = Counter(
            "klawd_cache_saves_total",
            "Answers of cache misses offered to the cache, by API and outcome "
            "(stored, too_large, failed).",
            ["api", "outcome"],
            registry=r,
        )
        self.build_info = Gauge(
            "klawd_build_info",
            "Always 1; the gateway's version as a label.",
            ["version"],
            registry=r,
            multiprocess_mode="max",
        )
        self._initialise()

    def _initialise(self) -> None:
        """Create the children of bounded label sets up front, so that alerts see 0, not nothing."""
        self.build_info.labels(__version__).set(1)
        for provider in self.providers:
            self.upstream_errors.labels(provider, "service_unavailable")
            self.upstream_body_errors.labels(provider, "gateway_timeout")
            self.upstream_images_lost.labels(provider, "gateway_timeout")
            self.upstream_retries.labels(provider, "request")
            self.fallbacks.labels(provider)
            self.circuit_state.labels(provider).set(0)
            self.upstream_duration.labels(provider)
        for plan in self.plans:
            self.admitted.labels(plan)
            for outcome in LIMIT_OUTCOMES:
                self.limited.labels(plan, outcome)
        for event in WEBHOOK_EVENTS:
            for outcome in WEBHOOK_OUTCOMES:
                self.webhook_deliveries.labels(event, outcome)
        self.store_errors.labels(self.store_backend, "admit")
        for route in CACHE_ROUTES:
            for result in CACHE_RESULTS:
                self.cache_lookups.labels(route, result)
            for outcome in CACHE_SAVES:
                self.cache_saves.labels(route, outcome)
        self.store_duration.labels(self.store_backend, "admit")
        for reason in NOT_CHARGED_REASONS:
            self.tokens_not_charged.labels(reason)

    def tokens_not_charged_by_reason(self, reason: str, tokens: int) -> None:
        self.tokens_not_charged.labels(reason).inc(tokens)

    def child(self, collector: Collector, *labels: str) -> Collector:
        """`collector.labels(*labels)`, memoised: the label sets are bounded, and labels() costs
        a lock and a few allocations on every call of the hot path."""
        key = (id(collector), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = collector.labels(*labels)
        child: Collector = found
        return child

    # -- bounded label values -------------------------------------------------------------------
    def model(self, model_id: str | None) -> str:
        if model_id is None:
            return NONE
        return model_id if model_id in self.models else UNKNOWN

    def provider(self, name: str | None) -> str:
        if name is None:
            return NONE
        return name if name in self.providers else UNKNOWN

    def plan(self, name: str) -> str:
        return name if name in self.plans else UNKNOWN

    # -- exposition -----------------------------------------------------------------------------
    def exposition(self) -> bytes:
        """The text format: every worker's values when in multiprocess mode, else this app's
        (this worker's buffered updates first)."""
        self.buffer.flush()
        return exposition(self.registry)


def exposition(registry: CollectorRegistry | None = None) -> bytes:
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=directory)  # type: ignore[no-untyped-call]
        return generate_latest(merged)
    return generate_latest(registry if registry is not None else CollectorRegistry())


def worker_exited(pid: int) -> None:
    """Drop the live gauges (open streams, circuits) of a worker that is stopping; its counters
    and histograms stay summed in."""
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
