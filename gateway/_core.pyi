"""Stub of the Rust extension built from `rust_core/` (checked by `mypy.stubtest`)."""

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Self, final

__all__ = [
    "AdmitPlan",
    "ClientSpan",
    "CreditBook",
    "Dechunker",
    "Decision",
    "EventStreamError",
    "IdSource",
    "Limiter",
    "PendingHistogram",
    "Reframer",
    "RunningTotals",
    "ServerSpan",
    "SpanRecorder",
    "SseError",
    "TranslationError",
    "UpstreamStreamError",
    "Usage",
    "__version__",
    "anthropic_chat_request",
    "chat_request_messages",
    "gemini_chat_request",
    "head_fields",
    "json_nesting_depth",
    "openai_chat_answer",
    "openai_chat_request",
    "read_head",
]
__version__: str

def read_head(data: bytes) -> tuple[int, int, int, bool] | None:
    """An upstream answer's head at the start of `data`, when whole and plain (HTTP/1.1, a final
    status with a body, one Content-Length or an event stream's chunked body, no
    Content-Encoding, nothing httptools might read otherwise): (status, where the head ends,
    the body's length or -1 for the chunked event stream, keep-alive). None: httptools reads it
    (rust_core/src/head.rs)."""

def head_fields(head: bytes) -> list[bytes]:
    """The header fields of a head `read_head` read, as httptools gives them: name, value,
    name, value, ... (ValueError for one it would not read)."""

def json_nesting_depth(body: bytes, limit: int) -> int:
    """How deep the objects and arrays of `body` (valid JSON) nest, outside its strings,
    counted up to `limit + 1`: past that the walk stops (rust_core/src/json_depth.rs)."""

def chat_request_messages(
    body: bytes,
) -> tuple[int, int, int, int, int, int, int | None] | None:
    """Where the chat body's `messages` array is and the prompt's counts over its messages:
    `(start, end, characters, image parts, content parts, messages, the tools' characters)`
    (the last None when the scan cannot tell them as `prompt_counts` counts them; the tools
    are msgspec's to validate either way), when msgspec surely
    takes the messages as `ChatRequest` declares them and the whole body is valid JSON nested
    at most 64 deep; None when the scan cannot tell (any refusal, an escaped or repeated key,
    a part whose `type` is not first, ...): the caller decodes the whole body then
    (rust_core/src/chat_request.rs)."""

def openai_chat_request(
    body: bytes, model: str, default_max_tokens: int, stream: bool
) -> bytes | None:
    """The client's chat body for an OpenAI-shaped upstream, rewritten by one scan: `model`
    renamed, `models` dropped, `max_tokens` added unless it or `max_completion_tokens` is given,
    on a stream `stream_options: {"include_usage": true}` added. None when the scan cannot tell
    (an escaped or repeated key, invalid JSON, a stream's own `stream_options`, ...): the
    caller parses the body then (rust_core/src/openai_body.rs)."""

def anthropic_chat_request(
    body: bytes, model: str, default_max_tokens: int, stream: bool
) -> bytes | None:
    """The client's chat body translated to an Anthropic Messages body by one scan, byte for
    byte what `orjson.dumps(translate_request(...))` writes; None when the scan cannot tell
    (tools, images, tool results, cache_control, a temperature above 1, an escaped or repeated
    key, ...): the caller translates it in Python then (rust_core/src/anthropic_body/)."""

def gemini_chat_request(body: bytes, default_max_tokens: int) -> bytes | None:
    """The client's chat body translated to a Gemini GenerateContentRequest by one scan, byte
    for byte what `orjson.dumps(translate_request(...))` writes; None when the scan cannot tell
    (an http(s) image URL, an escaped or repeated key, any refusal, ...): the caller translates
    it in Python then (rust_core/src/gemini_body/)."""

def openai_chat_answer(body: bytes, model: str) -> tuple[bytes, int, int, int, int] | None:
    """The upstream's chat.completion with `model` renamed, and its prompt, completion, cached
    and cache-write token counts; None when the scan cannot tell (invalid JSON, no `choices`
    array, a count that is not an integer, ...): the caller parses the body then."""

class SseError(ValueError):
    """Malformed or oversized upstream stream (an event larger than max_event_bytes)."""

class EventStreamError(SseError):
    """Corrupted AWS event stream (Bedrock): a CRC mismatch, bad lengths or headers."""

class TranslationError(SseError):
    """A chained reframer's second stage could not translate the first one's output."""

class UpstreamStreamError(Exception):
    """The upstream stream ended without its terminator (cut off)."""

@final
class Usage:
    """Token usage in OpenAI's vocabulary (frozen)."""

    # Anthropic: input_tokens + cache_creation_input_tokens + cache_read_input_tokens.
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def completion_tokens(self) -> int: ...
    @property
    def total_tokens(self) -> int: ...
    # Cache reads (OpenAI prompt_tokens_details.cached_tokens, Anthropic
    # cache_read_input_tokens, Gemini cachedContentTokenCount), 0 if none.
    @property
    def cached_tokens(self) -> int: ...
    # Cache writes (Anthropic cache_creation_input_tokens, also read from an OpenAI-shaped
    # usage that carries it), 0 if none; included in prompt_tokens.
    @property
    def cache_write_tokens(self) -> int: ...

@final
class Dechunker:
    """An HTTP/1.1 chunked body read incrementally (bare LF line ends and spaces after a chunk
    size accepted, as the client's httptools parser accepts them; extensions and trailer fields
    read past). feed() takes the wire bytes after the head, split anywhere, and returns the
    body bytes among them (one `bytes` for any number of HTTP chunks); ValueError for malformed
    framing (not to be fed again)."""

    def __new__(cls) -> Self: ...
    def feed(self, data: bytes) -> bytes: ...
    # The last chunk and the trailer section have been read.
    @property
    def done(self) -> bool: ...
    # Bytes of the last feed() that came after the body's end (0 until done).
    @property
    def leftover(self) -> int: ...

@final
class Reframer:
    """One upstream stream ("openai" | "anthropic" | "gemini") reframed to OpenAI chunk events.

    feed() takes one upstream network chunk (any boundary) and returns zero or more complete
    `data: <one-line JSON>\\n\\n` events, and `data: [DONE]\\n\\n` after the terminator. After an
    upstream error event or the terminator, further input is ignored (returns b""). SseError is
    sticky: once raised, every later feed()/finish() raises it again.
    """

    # Constructed by __new__ (a PyO3 #[new]): Reframer(kind, model, response_id, created, ...).
    # kind: "openai" | "anthropic" | "gemini"; unknown kind -> ValueError. model: the gateway's
    # catalog id written into every chunk. response_id / created: of every emitted chunk
    # (anthropic/gemini; the openai kind keeps the upstream's and only rewrites "model").
    # Two kinds emit Anthropic Messages events (`event: <name>\ndata: <json>\n\n`) instead:
    # "openai_to_anthropic" reads the gateway's own OpenAI chunks (response_id = message id),
    # "anthropic_passthrough" relays an Anthropic stream with message.model rewritten; for both,
    # done is set by message_stop / [DONE] and finish_reason stays in OpenAI vocabulary.
    # "openai_to_responses" reads the gateway's own OpenAI chunks and emits OpenAI Responses API
    # events (`event: response.…\ndata: <json>\n\n`, each with its sequence_number; response_id
    # = the response's id, created = its created_at; response_fields: a JSON object whose
    # members every response object carries, "{}" when None; ValueError if not an object).
    # then: a chained reframer: `kind` (an upstream kind) writes OpenAI chunks that `then`
    # ("openai_to_responses" or "openai_to_anthropic") translates in the same call; its state,
    # usage and errors are the first stage's, a failure of the second's is TranslationError
    # (none of that call's events are before_error()'s); ValueError for other pairs.
    def __new__(
        cls,
        kind: str,
        model: str,
        response_id: str,
        created: int,
        include_usage: bool,
        max_event_bytes: int = 1048576,
        response_fields: str | None = None,
        then: str | None = None,
    ) -> Self: ...
    # A chained reframer's opening events (its second stage's, before any input: the
    # stream's first piece); b"" for any other, and after any other call.
    def opening(self) -> bytes: ...
    # Raises SseError for malformed data or an event larger than max_event_bytes (the buffer
    # stays bounded); the whole events of that same chunk that preceded the error are then
    # before_error()'s. `start`: where the stream's bytes begin in `data` (a read that holds
    # the HTTP head before them); ValueError when past its end.
    def feed(self, data: bytes, start: int = 0) -> bytes: ...
    # feed() of the body bytes `dechunker` reads out of `data` (a read of an HTTP chunked
    # body), in one call, and after it: 2 when the body has ended (`dechunker.done`), else 1
    # when the reframer is closed (`done`, or an `upstream_error` read), else 0; a malformed
    # chunked body is Dechunker.feed()'s ValueError (then not fed), the reframer's errors
    # are feed()'s (SseError: a subclass of ValueError).
    def feed_chunked(self, dechunker: Dechunker, data: bytes) -> tuple[bytes, int]: ...
    # At upstream EOF: final events (gemini: usage chunk + [DONE]). Raises UpstreamStreamError
    # when the stream was cut off (no terminator) and no upstream_error was seen.
    def finish(self) -> bytes: ...
    # The whole events that the feed(), feed_chunked() or finish() which just raised made
    # before its failure (b"" after a call that did not raise): to go out before the error.
    def before_error(self) -> bytes: ...
    @property
    def done(self) -> bool: ...
    # done, no upstream_error and no failure (a chained reframer's translation): ended whole.
    def finished(self) -> bool: ...
    @property
    def usage(self) -> Usage | None: ...
    @property
    def finish_reason(self) -> str | None: ...
    # (upstream error type or status, message) of an in-stream error event; the reframer emits
    # no error event itself.
    @property
    def upstream_error(self) -> tuple[str, str] | None: ...
    # Characters of content + tool-call arguments relayed so far (thinking is not counted).
    @property
    def content_chars(self) -> int: ...
    # Responses API events in the output returned so far (openai_to_responses, alone or as a
    # chain's second stage: the next sequence_number); None for other kinds.
    @property
    def events(self) -> int | None: ...
    # The response object (JSON) of response.completed / response.incomplete once written;
    # None before, and for other kinds.
    @property
    def final_response(self) -> bytes | None: ...

@final
class Decision:
    """The answer of Limiter.acquire / Limiter.peek (frozen)."""

    @property
    def allowed(self) -> bool: ...
    # 0.0 when allowed; else the wait until every denying limit would admit this cost.
    # math.inf when one never will (cost above a capacity or a daily limit, or refill 0).
    @property
    def retry_after_s(self) -> float: ...
    # Per limit, in the order given (buckets then quotas), after this decision, floored at 0.
    @property
    def remaining(self) -> list[int]: ...
    # Per limit: bucket -> seconds until full again; quota -> seconds until next 00:00 UTC.
    @property
    def reset_s(self) -> list[float]: ...

@final
class Limiter:
    """Token buckets and daily quotas, keyed, thread-safe, memory bounded by max_keys.

    Time is passed in (now_s: unix seconds). Buckets start full and refill continuously; a
    bucket allows when level >= cost (cost 0: when not in debt). Quotas reset at 00:00 UTC.
    acquire admits only if every limit allows, then consumes from all; a denial consumes
    nothing. Costs of limits sharing a key in one call add up. Non-finite or negative
    capacity/rate/cost, or a non-finite now_s, raise ValueError.
    """

    def __new__(cls, max_keys: int = 1000000) -> Self: ...
    # buckets: (key, capacity, refill_per_second, cost); quotas: (key, limit_per_utc_day, cost).
    def acquire(
        self,
        buckets: list[tuple[str, float, float, float]],
        quotas: list[tuple[str, int, int]],
        now_s: float,
    ) -> Decision: ...
    def peek(
        self,
        buckets: list[tuple[str, float, float, float]],
        quotas: list[tuple[str, int, int]],
        now_s: float,
    ) -> Decision: ...
    # After-the-fact charge (tokens/minute from actual usage): may drive the level negative
    # (debt). A negative amount refunds, up to the capacity.
    def charge(
        self, key: str, capacity: float, refill_per_s: float, amount: float, now_s: float
    ) -> None: ...
    # The embedded store's admission in one call (rust_core/src/admission.rs): the plan's
    # limits, the book's credit (reserve_micros > 0) and the key's budgets decided and taken
    # together under the limiter's lock. Returns the plan's admission type made with the
    # answer (gateway.limits.Admission), or an int of the reads needed first (1: the balance,
    # never read or short and not read just now; 2: the key's spend, never read), nothing
    # taken. fresh: those read just now (a short balance then refuses).
    def admit(
        self,
        plan: AdmitPlan,
        book: CreditBook,
        reserve_micros: int,
        now_s: float,
        fresh: int = 0,
    ) -> Any: ...
    # What an admission on the plan's limits alone would answer now, nothing taken (an
    # Admission of the plan's type: admitted or rate limited, the headers of what is left).
    def peek_admission(self, plan: AdmitPlan, now_s: float) -> Any: ...
    def __len__(self) -> int: ...

@final
class AdmitPlan:
    """One account's (and key's) admission arguments for Limiter.admit, made once per distinct
    limits (frozen): the limits as acquire takes them (buckets [rpm, key rpm?, tpm?], quotas
    [rpd, key rpd?]), the key's own limits (the rate headers show the tighter), the key's
    budget periods' names in the book and their caps (None: no budget), and the type the
    answer is made as (called with outcome, retry_after_s, limit_requests, remaining_requests,
    reset_requests_s, limit_requests_day, remaining_requests_day, reserved_micros,
    limited_by_key, key_reserved_micros)."""

    def __new__(
        cls,
        account_id: str,
        buckets: list[tuple[str, float, float, float]],
        quotas: list[tuple[str, int, int]],
        requests_per_minute: int,
        requests_per_day: int,
        key_requests_per_minute: int | None,
        key_requests_per_day: int | None,
        budget_names: tuple[str, str, str] | None,
        budget_caps: tuple[int | None, int | None, int | None] | None,
        admission: Callable[..., Any],
    ) -> Self: ...

@final
class CreditBook:
    """The embedded store's credit balances and key spend held in memory (thread-safe), with
    the reservations of requests in flight: per account the stored balance as last read or
    written; per key period (`key|d:YYYY-MM-DD`, `key|m:YYYY-MM`, `key|t`) the settled spend."""

    def __new__(cls) -> Self: ...
    # The stored balance as just read; returns what requests in flight reserve of it.
    def load_balance(self, account_id: str, balance: int) -> int: ...
    # None: the balance was never read; else whether the reservation was made.
    def reserve_credits(self, account_id: str, micros: int) -> bool | None: ...
    def release_credits(self, account_id: str, micros: int) -> None: ...
    def reserved_credits(self, account_id: str) -> int: ...
    # A settled batch: reservations given back, balances as now stored.
    def settled_credits(self, released: dict[str, int], balances: dict[str, int]) -> None: ...
    def forget_balances(self) -> None: ...
    def load_spend(self, names: tuple[str, str, str], spent: tuple[int, int, int]) -> None: ...
    # A settled batch: reservations given back per period name, the totals as now stored.
    def settled_spend(self, released: dict[str, int], totals: dict[str, int]) -> None: ...
    def forget_spend(self) -> None: ...

@final
class ServerSpan:
    """The request's server span being recorded (frozen; gateway/tracing/otel.py): ids, W3C
    flags, its parent (None: a root), the trace state header, the start time (ns). A root is
    made by `SpanRecorder.start`; a span under a remote parent with this constructor."""

    def __new__(
        cls,
        trace_id: bytes,
        span_id: bytes,
        flags: int,
        parent_id: bytes | None,
        parent_remote: bool,
        parent_flags: int,
        state: str | None,
        spare: bytes | None,
    ) -> Self: ...
    @property
    def trace_hex(self) -> str: ...
    @property
    def trace_id(self) -> bytes: ...
    @property
    def span_id(self) -> bytes: ...
    @property
    def parent_id(self) -> bytes | None: ...
    @property
    def parent_remote(self) -> bool: ...
    @property
    def parent_flags(self) -> int: ...
    @property
    def state(self) -> str | None: ...
    @property
    def flags(self) -> int: ...
    @property
    def sampled(self) -> bool: ...
    @property
    def start_ns(self) -> int: ...
    # `00-<trace id>-<span id>-<01|00>`
    @property
    def traceparent(self) -> str: ...

@final
class ClientSpan:
    """One upstream attempt's span being recorded (frozen), a child of its server span."""

    @property
    def trace_id(self) -> bytes: ...
    @property
    def span_id(self) -> bytes: ...
    @property
    def server(self) -> ServerSpan: ...
    @property
    def sampled(self) -> bool: ...
    @property
    def start_ns(self) -> int: ...
    @property
    def traceparent(self) -> str: ...
    @property
    def target(self) -> Any: ...
    @property
    def attempt(self) -> int: ...

@final
class IdSource:
    """Non-secret ids cut from random bytes `urandom(n)` gives (rust_core/src/ids.rs): a
    `SLOT_BYTES` slot an id, `SLOTS` slots a read. Thread-safe; `forget()` after a fork."""

    SLOT_BYTES: int
    SLOTS: int
    def __new__(cls, urandom: Callable[[int], bytes]) -> Self: ...
    def new_id(self, prefix: str, nbytes: int) -> str:
        """`prefix` then `nbytes` (1 to SLOT_BYTES) random bytes in hex (ValueError else)."""
    def token_hex(self, nbytes: int) -> str:
        """`nbytes` (1 to SLOT_BYTES) random bytes as hex, as `secrets.token_hex(nbytes)`."""
    def forget(self) -> None: ...

@final
class PendingHistogram:
    """A histogram child's observations since the last `take` (gateway/metrics_buffer.py,
    rust_core/src/histogram.rs): `observe(value)` counts it in the first bucket whose upper
    bound is not below it (`bisect_left`) and adds it to the sum; `take()` gives the counts
    per bucket and the sum, zeroed (None when nothing was observed). ValueError without
    bounds."""

    def __new__(cls, bounds: Sequence[float]) -> Self: ...
    def observe(self, value: float) -> None: ...
    def take(self) -> tuple[list[int], float] | None: ...

@final
class RunningTotals:
    """The request path's counters and histograms between two flushes, by slot
    (gateway/metrics_buffer.py, rust_core/src/totals.rs): each counter adds as a float `+=`
    does, each histogram as `PendingHistogram`. IndexError for a slot it did not give out."""

    def __new__(cls) -> Self: ...
    def counters(self, n: int) -> int:
        """`n` new counters: the first one's slot (the others follow it)."""
    def histogram(self, bounds: Sequence[float]) -> int:
        """A new histogram with these upper bounds (ValueError without any): its slot."""
    def requests(self, counter: int, duration: int, ttfb: int) -> int:
        """An HTTP label set's request counter and duration and TTFB histograms: its slot."""
    def add(self, counter: int, amount: float) -> None: ...
    def observe(self, histogram: int, value: float) -> None: ...
    def settle(
        self, counters: int, prompt_tokens: float, completion_tokens: float, cost_usd: float
    ) -> None:
        """A settlement: its four counters (from `counters`) get 1, the tokens and the cost."""
    def end(
        self,
        requests: int,
        duration_s: float,
        ttfb_s: float | None,
        settled: int,
        prompt_tokens: float,
        completion_tokens: float,
        cost_usd: float,
    ) -> tuple[float, float | None]:
        """A request's end: its request counted, its times observed and, when `settled` is a
        slot (not negative), its settlement as `settle`. Returns its duration and time to
        first byte in ms to the microsecond (`round(ms * 1000) / 1000`), for its log line."""
    def take_counters(self) -> list[tuple[int, float]]:
        """Each counter not at zero: its slot and amount since the last take, zeroed."""
    def take_histograms(self) -> list[tuple[int, list[int], float]]:
        """Each histogram observed into: its slot, counts per bucket and sum, zeroed."""

@final
class SpanRecorder:
    """Random ids, root spans and the msgpack frame of ended spans' rows (thread-safe).

    urandom(n) gives random bytes; root_bound is the SDK TraceIdRatioBased sampler's bound;
    end_server / end_client / push answer True when the frame is full (`batch` rows) or the
    process forked since the last row. A value with no msgpack form here (or an int beyond
    64 bits) raises TypeError / OverflowError with nothing written.
    """

    def __new__(cls, urandom: Callable[[int], bytes], root_bound: int, batch: int) -> Self: ...
    @property
    def batch(self) -> int: ...
    def ids(self) -> bytes: ...
    def start(self, headers: Iterable[Sequence[bytes]]) -> ServerSpan | None: ...
    def client(self, server: ServerSpan, target: Any, attempt: int) -> ClientSpan: ...
    def end_server(
        self,
        span: ServerSpan,
        method: Any,
        route: Any,
        status: Any,
        operation: Any,
        request_model: Any,
        model: Any,
        provider_kind: Any,
        provider: Any,
        account_id: Any,
        cache: Any,
        prompt_tokens: Any,
        completion_tokens: Any,
        cost_usd: Any,
        finish_reasons: Any,
    ) -> bool: ...
    def end_client(
        self,
        span: ClientSpan,
        operation: Any,
        provider_kind: Any,
        upstream_model: Any,
        model_id: Any,
        deployment: Any,
        error: Any,
    ) -> bool: ...
    def push(self, row: bytes) -> bool: ...
    def take(self) -> tuple[int, bytes] | None: ...
    def forget(self) -> None: ...
    def __len__(self) -> int: ...
