"""Metrics label bounding and the request log line, without sockets."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from typing import Any

import orjson
import pytest
from prometheus_client import generate_latest

from gateway import requestlog
from gateway.billing import TokenUsage
from gateway.metrics import Metrics, status_class
from gateway.observer import RequestObserver
from gateway.requestlog import MAX_BATCH, RequestLog, RequestRecord, current_request
from gateway.routing.catalog import Catalog
from gateway.settings import load_settings
from gateway.store.resp import RespConnectionError, RespReplyError
from gateway.store_metrics import _Timed
from tests.live_bound import polls_async, running_deadline, within
from tests.scrape import parse, total


def observer(stream: io.StringIO | None = None) -> RequestObserver:
    metrics = Metrics(["openai/gpt-4-turbo"], ["openai"], ["free", "pro"], "sqlite")
    return RequestObserver(metrics, RequestLog(stream or io.StringIO()))


def test_unknown_model_provider_and_plan_become_unknown() -> None:
    metrics = observer().metrics
    assert metrics.model("openai/gpt-4-turbo") == "openai/gpt-4-turbo"
    assert metrics.model("user typed this") == "unknown"
    assert metrics.model(None) == "none"
    assert metrics.provider("elsewhere") == "unknown"
    assert metrics.plan("gold") == "unknown"


def test_status_classes() -> None:
    assert [status_class(s) for s in (200, 404, 429, 503, 99, 700)] == [
        "2xx", "4xx", "4xx", "5xx", "unknown", "unknown"
    ]  # fmt: skip


def test_bounded_children_exist_before_any_traffic() -> None:
    samples = parse(generate_latest(observer().metrics.registry).decode())
    assert ("klawd_rate_limited_total", (("outcome", "rate_limited"), ("plan", "free"))) in samples
    assert ("klawd_circuit_state", (("provider", "openai"),)) in samples
    assert total(samples, "klawd_webhook_deliveries_total", outcome="failed") == 0


def test_settle_counts_tokens_and_cost_of_the_catalog_model() -> None:
    watcher = observer()
    entry = Catalog(load_settings(None), {}).get("openai/gpt-4-turbo")
    assert entry is not None
    watcher.settled(entry, TokenUsage(10, 5), 200, False, 1_500_000)
    samples = parse(watcher.metrics.exposition().decode())  # flushes the buffer first
    assert total(samples, "klawd_tokens_total", model="openai/gpt-4-turbo", type="prompt") == 10
    assert total(samples, "klawd_tokens_total", model="openai/gpt-4-turbo", type="completion") == 5
    assert total(samples, "klawd_cost_usd_total", model="openai/gpt-4-turbo") == 1.5
    assert total(samples, "klawd_requests_total", status_class="2xx", stream="false") == 1


def test_request_record_filled_in_context_becomes_one_json_line() -> None:
    stream = io.StringIO()
    watcher = observer(stream)
    watcher.request_log.start()
    record = RequestRecord("req_1", "POST")
    record.route = "/v1/chat/completions"
    record.status = 200
    record.first_byte_at = 10.002
    token = current_request.set(record)
    try:
        watcher.admitted_or_refused("acct_1", "pro", "admitted")
        watcher.upstream_finished("openai", 0.001, "service_unavailable")
        watcher.upstream_finished("openai", 0.001, None)
        watcher.settled(None, TokenUsage(3, 4), 200, True, 0)
    finally:
        current_request.reset(token)
    watcher.http_finished(record, arrived=10.0, ended=10.5)
    watcher.request_log.close()
    line = orjson.loads(stream.getvalue().strip())
    assert line["request_id"] == "req_1"
    assert line["account_id"] == "acct_1"
    assert line["plan"] == "pro"
    assert line["retries"] == 1
    assert line["prompt_tokens"] == 3 and line["completion_tokens"] == 4
    assert line["latency_ms"] == 500.0
    assert line["ttfb_ms"] == 2.0


def settled_line(watcher: RequestObserver, request_id: str, sent: int, settled: int) -> Any:
    """The log line of a request whose status line was `sent` (0: none) and that settled as
    `settled`."""
    record = RequestRecord(request_id, "POST")
    record.status = sent
    token = current_request.set(record)
    try:
        watcher.settled(None, TokenUsage(0, 0), settled, False, 0)
    finally:
        current_request.reset(token)
    return orjson.loads(record.line(1.0, None))


def test_a_line_says_how_the_request_ended_its_failed_upstream_body_and_lost_images() -> None:
    """`status` is the ledger's (what `settled` was told), `http_status` the status line's
    when it differs; the type of an upstream answer that failed after its headers, and the
    images lost, are named. A request that ended as its status line said carries none of
    these three fields."""
    watcher = observer()
    record = RequestRecord("req_2", "POST")
    record.status = 200  # the stream's head went out
    token = current_request.set(record)
    try:
        watcher.upstream_body_failed("openai", "bad_gateway")
        watcher.upstream_images_lost("openai", 2, "client_closed")
        watcher.settled(None, TokenUsage(0, 0), 502, True, 0)
    finally:
        current_request.reset(token)
    line = orjson.loads(record.line(1.0, None))
    assert (line["status"], line["http_status"]) == (502, 200)
    assert (line["upstream_body_error"], line["images_lost"]) == ("bad_gateway", 2)

    assert "upstream_body_errors" not in line  # one body error: its type says it

    line = settled_line(watcher, "req_3", sent=200, settled=200)
    assert line["status"] == 200
    assert not {"http_status", "upstream_body_error", "images_lost"} & line.keys()

    line = settled_line(watcher, "req_4", sent=0, settled=499)  # the client left before any answer
    assert line["status"] == 499 and "http_status" not in line


def without_created(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = parse(generate_latest(metrics.registry).decode())
    return {key: value for key, value in samples.items() if not key[0].endswith("_created")}


def test_a_flushed_buffer_reads_exactly_as_direct_updates() -> None:
    direct, buffered = observer().metrics, observer().metrics
    values = [0.0001, 0.005, 0.0051, 0.3, 7.0, 119.0, 500.0]
    for value in values:
        direct.child(direct.http_duration, "/v1/chat/completions", "false").observe(value)
        direct.child(direct.http_requests, "/v1/chat/completions", "POST", "2xx").inc()
        buffered.buffer.observe(
            buffered.child(buffered.http_duration, "/v1/chat/completions", "false"), value
        )
        buffered.buffer.inc(
            buffered.child(buffered.http_requests, "/v1/chat/completions", "POST", "2xx")
        )
    unflushed = parse(generate_latest(buffered.registry).decode())
    assert total(unflushed, "klawd_http_request_duration_seconds_count") == 0
    buffered.buffer.flush()
    assert without_created(buffered) == without_created(direct)
    buffered.buffer.flush()  # nothing pending: flushing again changes nothing
    assert total(
        parse(generate_latest(buffered.registry).decode()), "klawd_http_requests_total"
    ) == len(values)


def test_the_hooks_running_totals_flush_as_direct_updates_and_are_zeroed() -> None:
    """The observer's hooks add into the buffer's running totals (tally, pending), which stay
    the same lists for the app's life: each flush adds what came since the last one."""
    direct, watcher = observer().metrics, observer()
    buffered = watcher.metrics
    route = "/v1/chat/completions"
    entry = Catalog(load_settings(None), {}).get("openai/gpt-4-turbo")
    assert entry is not None
    for round_number in range(2):
        for value in (0.004, 0.3, 7.0):
            record = RequestRecord("req_x", "POST")
            record.route, record.status, record.first_byte_at = route, 200, 10.0 + value / 2
            watcher.http_finished(record, 10.0, 10.0 + value)
            direct.child(direct.http_requests, route, "POST", "2xx").inc()
            direct.child(direct.http_duration, route, "false").observe(value)
            direct.child(direct.http_ttfb, route).observe(record.first_byte_at - 10.0)
            watcher.upstream_finished("openai", value, None)
            direct.child(direct.upstream_duration, "openai").observe(value)
        watcher.upstream_finished("openai", 1.0, "timeout")
        direct.child(direct.upstream_errors, "openai", "timeout").inc()
        watcher.admitted_or_refused("acct_1", "free", "admitted")
        direct.child(direct.admitted, "free").inc()
        watcher.settled(entry, TokenUsage(12, 7), 200, False, 26)
        direct.child(direct.requests, "openai/gpt-4-turbo", "openai", "chat", "false", "2xx").inc()
        direct.child(direct.tokens, "openai/gpt-4-turbo", "openai", "prompt").inc(12)
        direct.child(direct.tokens, "openai/gpt-4-turbo", "openai", "completion").inc(7)
        direct.child(direct.cost, "openai/gpt-4-turbo", "openai").inc(26 / 1_000_000)
        watcher.stream_opened(route)
        gauge = direct.child(direct.open_streams, route)
        if round_number == 0:
            watcher.stream_closed(route)  # back where it was: nothing written
        else:
            gauge.inc()
        buffered.buffer.flush()
        assert without_created(buffered) == without_created(direct)
    buffered.buffer.flush()  # nothing since: changes nothing
    assert without_created(buffered) == without_created(direct)


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def test_request_lines_reach_the_writer_in_batches_not_one_wake_up_per_line() -> None:
    stream = CountingStream()
    log = RequestLog(stream)
    log.start()
    lines = MAX_BATCH + 1

    async def write_all() -> None:
        for i in range(lines):
            record = RequestRecord(f"req_{i}", "GET")
            log.add(record.entry(1.0, None))
        async for _ in polls_async(5, 0.01):  # the timer hands over the last partial batch
            if stream.getvalue().count("\n") == lines:
                return

    asyncio.run(within(write_all(), 10))
    log.close()
    written = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["request_id"] for line in written] == [f"req_{i}" for i in range(lines)]
    assert stream.writes == 2


class _SendingLimiter:
    """A limiter whose admissions are sent and answered by the test (as the Redis one's are)."""

    def __init__(self) -> None:
        self.sent: list[asyncio.Future[object]] = []

    def send_admit(self, *args: object) -> tuple[asyncio.Future[object], bool]:
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self.sent.append(future)
        return future, False

    def admission_of(self, reply: object) -> object:
        return reply


def test_a_sent_admission_is_timed_as_admit_from_sending_to_its_reply_errors_counted() -> None:
    """The store proxy times an admission sent before it is awaited as `operation="admit"`:
    once its reply comes (an error reply and a lost connection counted as errors), and once
    cancelled (its caller went away: a duration, not an error)."""
    metrics = Metrics([], [], ["free"], "redis")
    limiter = _Timed(_SendingLimiter(), metrics)

    async def main() -> None:
        inner = limiter._inner
        assert isinstance(inner, _SendingLimiter)
        answers: list[object] = [[0], RespReplyError("ERR no"), RespConnectionError("lost")]
        for answer in [*answers, None]:
            sent = limiter.send_admit("acct", 0)
            assert sent is not None and sent[0] is inner.sent[-1]
            if answer is None:
                sent[0].cancel()
            elif isinstance(answer, RespConnectionError):
                sent[0].set_exception(answer)
            else:
                sent[0].set_result(answer)
            await asyncio.sleep(0)  # the done callbacks run
        assert limiter.admission_of == inner.admission_of  # the rest of a timed send: not timed

    asyncio.run(main())
    metrics.buffer.flush()
    samples = parse(generate_latest(metrics.registry).decode())
    timed = "klawd_store_operation_duration_seconds_count"
    assert total(samples, timed, backend="redis", operation="admit") == 4
    assert total(samples, "klawd_store_errors_total", backend="redis", operation="admit") == 2
    assert total(samples, timed, operation="send_admit") == 0


class StuckStream(io.StringIO):
    """A stream whose writes block until `release` is set (a stalled log collector), for
    `wait_s` at the most."""

    def __init__(self, wait_s: float = 10) -> None:
        super().__init__()
        self.release = threading.Event()
        self.wait_s = wait_s

    def write(self, text: str) -> int:
        self.release.wait(self.wait_s)
        return super().write(text)


def test_lines_a_stuck_stream_does_not_take_are_bounded_then_dropped_and_said(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the stream stuck, lines handed to the writer stop at MAX_BACKLOG; the rest are
    dropped, not kept in memory, and once the stream takes lines again it is told how many."""
    monkeypatch.setattr(requestlog, "MAX_BACKLOG", 100)
    stream = StuckStream()
    log = RequestLog(stream)
    log.start()
    sent = 1000

    async def write_all() -> None:
        for i in range(sent):
            log.add(RequestRecord(f"req_{i}", "GET").entry(1.0, None))
            if i % 50 == 49:
                await asyncio.sleep(0.06)  # the timer hands over each 50

    asyncio.run(within(write_all(), 10))
    assert log._handed <= 100 + MAX_BATCH, "the backlog grew past its bound"
    stream.release.set()
    passed = running_deadline(10)
    while log._written < log._handed and not passed():
        time.sleep(0.01)
    log.add(RequestRecord("req_after", "GET").entry(1.0, None))  # (no loop: handed over at once)
    log.close()
    written = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    notices = [line for line in written if line["event"] == "request_log_dropped"]
    requests = [line["request_id"] for line in written if line["event"] == "request"]
    assert len(notices) == 1
    assert requests[-1] == "req_after"
    assert len(requests) - 1 + notices[0]["lines"] == sent, "every line written or counted"


def test_the_shutdown_s_close_waits_for_the_writer_off_the_event_loop() -> None:
    """The lifespan's close of the request log (gateway/app.py) waits for its writer, stuck
    here on a stream that takes nothing, up to its bound: the event loop goes on meanwhile (a
    task ticks), and the close says the writer did not end. Before, it was a thread join on
    the loop's thread: nothing else ran until it returned (up to CLOSE_WAIT_S, 10 s)."""
    stream = StuckStream()
    log = RequestLog(stream)
    log.start()
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    async def close() -> tuple[bool, int]:
        ticking = asyncio.ensure_future(tick())
        log.add(RequestRecord("req_stuck", "GET").entry(1.0, None))
        ended = await log.aclose(0.3)
        seen = ticks  # (read before anything else runs)
        ticking.cancel()
        return ended, seen

    try:
        ended, seen = asyncio.run(within(close(), 10))
        assert not ended
        assert seen > 0
        assert log.unwritten == 1
    finally:
        stream.release.set()
    assert log.close(10)  # released, the writer ends


def test_a_line_counts_the_upstream_bodies_that_failed_and_names_the_last() -> None:
    """A request retried or fell back over several upstream answers that failed after their
    headers: `upstream_body_error` is the last one's type (the one nearest how the request
    ended), `upstream_body_errors` how many there were (only when more than one)."""
    watcher = observer()
    record = RequestRecord("req_5", "POST")
    token = current_request.set(record)
    try:
        watcher.upstream_body_failed("openai", "bad_gateway")
        watcher.upstream_body_failed("openai", "upstream_timeout")
        watcher.upstream_body_failed("anthropic", "gateway_timeout")
        watcher.settled(None, TokenUsage(0, 0), 504, False, 0)
    finally:
        current_request.reset(token)
    line = orjson.loads(record.line(1.0, None))
    assert (line["upstream_body_error"], line["upstream_body_errors"]) == ("gateway_timeout", 3)


def billed(watcher: RequestObserver) -> tuple[float, float, float]:
    """klawd_requests_total, klawd_tokens_total and klawd_cost_usd_total as /metrics says now."""
    samples = parse(watcher.metrics.exposition().decode())  # flushes the buffer first
    return (
        total(samples, "klawd_requests_total"),
        total(samples, "klawd_tokens_total"),
        total(samples, "klawd_cost_usd_total"),
    )


def test_a_request_s_settlement_is_counted_with_its_end_in_one_call() -> None:
    """Settled while its request runs, a request's billing counters move with its end
    (`http_finished`: one call into the running totals for the request, its settlement with
    it), and count it once, as they did at the settlement itself before."""
    watcher = observer()
    entry = Catalog(load_settings(None), {}).get("openai/gpt-4-turbo")
    assert entry is not None
    record = RequestRecord("req_6", "POST")
    record.route, record.status = "/v1/chat/completions", 200
    token = current_request.set(record)
    try:
        watcher.settled(entry, TokenUsage(10, 5), 200, False, 1_500_000)
    finally:
        current_request.reset(token)
    assert billed(watcher) == (0, 0, 0)  # not yet: with the end
    watcher.http_finished(record, 10.0, 10.5)
    assert billed(watcher) == (1, 15, 1.5)
    watcher.http_finished(RequestRecord("req_7", "GET"), 10.0, 10.5)  # nothing settled
    assert billed(watcher) == (1, 15, 1.5)


def test_a_settlement_after_its_request_s_end_or_a_second_one_is_counted() -> None:
    """A settlement that comes after the request's end (a held line's late ledger status), and
    a request settled twice: each counted, with its own tokens and cost."""
    watcher = observer()
    entry = Catalog(load_settings(None), {}).get("openai/gpt-4-turbo")
    assert entry is not None
    record = RequestRecord("req_8", "POST")
    token = current_request.set(record)
    try:
        watcher.settled(entry, TokenUsage(1, 2), 200, False, 1_000_000)
        watcher.settled(entry, TokenUsage(3, 4), 200, False, 2_000_000)  # the last one's line
    finally:
        current_request.reset(token)
    watcher.http_finished(record, 10.0, 10.5)
    assert billed(watcher) == (2, 10, 3.0)
    token = current_request.set(record)  # (as PendingAdmission.dropped sets it)
    try:
        watcher.settled(None, TokenUsage(0, 0), 499, False, 0)
    finally:
        current_request.reset(token)
    assert billed(watcher) == (3, 10, 3.0)
    assert record.settled_status == 499
