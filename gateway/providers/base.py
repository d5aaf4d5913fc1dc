"""The provider interface, and the shared HTTP plumbing that names no provider.

A provider turns one OpenAI-shaped chat call into its upstream's wire format and back:

    class Provider(Protocol):
        name: str
        async def complete(self, call) -> Completion        # non-streamed
        async def stream(self, call) -> UpstreamStream      # streamed: OpenAI SSE bytes out

HTTP providers subclass `HttpProvider` and only describe their format: `build_request`,
`parse_response`, `reframer_kind` (their framing lives in the Rust reframer of that name) and
`map_error`. Sending, timeouts and the translation of HTTP failures are here, once, over the
providers' own keep-alive HTTP/1.1 client (`gateway.providers.http_client`).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn, Protocol, runtime_checkable
from urllib.parse import urljoin

import orjson
from msgspec import Struct

from gateway import _core
from gateway.billing import TokenUsage
from gateway.errors import (
    CLIENT_CLOSED_TYPE,
    BadGateway,
    GatewayError,
    GatewayTimeout,
    InvalidRequest,
    RateLimited,
    RequestTooLarge,
    ServiceUnavailable,
    cut_by_deadline,
)
from gateway.providers.http_client import ConnectFailed, HttpClient, HttpResponse, ResponseBroken
from gateway.providers.proxy import proxy_policy
from gateway.routing.catalog import CatalogEntry, Secret
from gateway.schemas.embeddings import EmbeddingRequest
from gateway.schemas.images import ImageRequest
from gateway.schemas.openai import ChatRequest
from gateway.settings import ProviderSettings, RetrySettings
from gateway.tracing import note_finish_reasons, traced_headers

if TYPE_CHECKING:
    from gateway.observer import RequestObserver
    from gateway.tracing import Tracing

log = logging.getLogger("klawd")


class RouteEvents(Struct, frozen=True):
    """A route's own events, written by the stream's Rust reframer after the OpenAI chunks in
    the same call (its second stage: `_core.Reframer(..., then=kind)`): `kind` the reframer
    of OpenAI chunks (`openai_to_responses`), `fields` its `response_fields`, `failure` the
    message of the BadGateway when that stage cannot translate the chunks. A provider whose
    stream is no `ReframedStream` ignores it (the route translates its chunks itself)."""

    kind: str
    fields: str
    failure: str


class ChatCall(Struct, frozen=True):
    request: ChatRequest
    body: bytes  # the client's raw JSON body, for pass-through of unknown fields
    target: CatalogEntry
    response_id: str
    created: int
    events: RouteEvents | None = None  # a streamed answer in a route's own events


class Completion:
    """An OpenAI chat.completion (`model` already the catalog id) and its usage: made from the
    object (`body`), or from its JSON text (`raw`: the OpenAI kinds' answer as the upstream
    wrote it, renamed by one scan in Rust), which is then parsed only if something reads
    `body` (the Messages and Responses routes, traces)."""

    __slots__ = ("_body", "_raw", "usage")

    def __init__(
        self, body: dict[str, Any] | None, usage: TokenUsage, raw: bytes | None = None
    ) -> None:
        if body is None and raw is None:
            raise ValueError("a completion needs its body or its JSON text")
        self._body = body
        self._raw = raw
        self.usage = usage

    @property
    def body(self) -> dict[str, Any]:
        body = self._body
        if body is None:
            body = self._body = orjson.loads(self._raw)  # type: ignore[arg-type]
        return body

    def json(self) -> bytes:
        """The answer as JSON text: the upstream's own, unless `body` was read (a reader may
        have changed it), then written from it."""
        raw = self._raw
        return raw if raw is not None and self._body is None else orjson.dumps(self._body)


class UpstreamStream(Protocol):
    """OpenAI SSE bytes for the client, plus what the gateway needs to bill afterwards."""

    def __aiter__(self) -> AsyncIterator[bytes]: ...
    @property
    def usage(self) -> TokenUsage | None: ...
    @property
    def content_chars(self) -> int: ...
    async def aclose(self) -> None: ...


class StreamOver:
    """A stream made from another (an `UpstreamStream`): it bills as that one does (its usage
    and relayed characters), and closing it closes that one."""

    __slots__ = ("_upstream",)

    def __init__(self, upstream: UpstreamStream) -> None:
        self._upstream = upstream

    @property
    def usage(self) -> TokenUsage | None:
        return self._upstream.usage

    @property
    def content_chars(self) -> int:
        return self._upstream.content_chars

    async def aclose(self) -> None:
        await self._upstream.aclose()


class Provider(Protocol):
    name: str

    async def complete(self, call: ChatCall) -> Completion: ...
    async def stream(self, call: ChatCall) -> UpstreamStream: ...
    async def close(self) -> None: ...


@runtime_checkable
class ObservedProvider(Protocol):
    """A provider that reports its upstream calls (latency, errors) to the observer and, with
    traces on, opens their spans."""

    observer: RequestObserver | None
    tracing: Tracing | None


# A generated image downloaded for `b64_json` larger than this is refused (memory bound).
MAX_IMAGE_BYTES = 64 * 1024 * 1024
# Redirects followed when downloading a generated image (as aiohttp did).
MAX_REDIRECTS = 10
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


class UpstreamRequest(Struct, frozen=True):
    url: str
    headers: Mapping[str, str]  # a dict, or a provider's FixedHeaders
    body: bytes
    method: str = "POST"


class MissingCredentials(Exception):
    """A provider's credentials are not in the environment (or its credentials file cannot be
    read): its models are unavailable. The message names variables and files, never values."""


class UpstreamUnreachable(ServiceUnavailable):
    """The connection to the upstream could not be made: the request provably never reached it,
    so even a non-idempotent call (image generation) may be retried."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=True, connect_failed=True)


class ImageCall(Struct, frozen=True):
    request: ImageRequest
    body: bytes  # the client's raw JSON body, for pass-through to OpenAI-shaped upstreams
    target: CatalogEntry
    created: int


class GeneratedImage(Struct, frozen=True, omit_defaults=True):
    """One item of the OpenAI Images `data` array: exactly one of url / b64_json is set."""

    url: str | None = None
    b64_json: str | None = None
    revised_prompt: str | None = None


class ImageResult(Struct, frozen=True):
    images: list[GeneratedImage]


@runtime_checkable
class ImageProvider(Protocol):
    """A provider that can generate images (kind replicate; image models of kind openai)."""

    name: str

    async def generate_images(self, call: ImageCall) -> ImageResult: ...


class MessagesBody:
    """The client's Messages request as every Messages API upstream gets it: `model` rewritten
    to the target's, the gateway's own `models` (fallbacks) left out. The first try's is
    written whole; a try under the same model name (a retry, or another deployment of the same
    upstream model) sends those bytes again; another name is joined into the rest of the body
    around `model`: the first try's bytes cut at its model's value, or (when that value cannot
    be told from a nested `model` of the same value) the rest written once a request. Either
    way the bytes `orjson.dumps` writes for the whole body with that model, `model` where the
    client had it."""

    __slots__ = ("_around", "_model", "_written", "fields")

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields  # the client's body, parsed
        self._model: str | None = None  # the last try's, written as `_written`
        self._written = b""
        self._around: tuple[memoryview, bytes, bytes, memoryview] | None = None

    def with_model(self, model: str) -> bytes:
        if model == self._model:
            return self._written
        if self._model is None:  # the first try (most requests' only one): one orjson call
            fields = self.fields
            if "models" in fields:
                fields = {k: v for k, v in fields.items() if k != "models"}
            written = orjson.dumps(fields | {"model": model})
        else:
            around = self._around
            if around is None:
                around = _around_written(self._written, self._model)
                if around is None:
                    around = _around_model(self.fields)
                self._around = around
            head, key, comma, tail = around
            written = b"".join((head, key, orjson.dumps(model), comma, tail))
        self._model = model
        self._written = written
        return written


def _around_written(
    written: bytes, model: str
) -> tuple[memoryview, bytes, bytes, memoryview] | None:
    """`written` (a body as `with_model(model)` wrote it) around its model's value, as
    `_around_model` gives it (the key and comma here stay in the views), or None when the
    bytes `"model":<value>` occur more than once: the top-level member is always among them,
    so a single occurrence is it (a nested `model` of the same value would be a second)."""
    member = b'"model":' + orjson.dumps(model)
    at = written.find(member)
    if at < 0 or written.find(member, at + 1) >= 0:
        return None
    view = memoryview(written)
    return view[: at + len(b'"model":')], b"", b"", view[at + len(member) :]


def _around_model(fields: dict[str, Any]) -> tuple[memoryview, bytes, bytes, memoryview]:
    """The body's JSON around the model's value, `models` left out: `{` and the members before
    `model`, the key (after a comma if any came before), a comma if any member follows, and
    those members with the closing `}` (`model` goes last if the body has none). The members
    are views of orjson's output (not copied)."""
    before: dict[str, Any] = {}
    after: dict[str, Any] = {}
    side = before
    for key, value in fields.items():
        if key == "model":
            side = after
        elif key != "models":
            side[key] = value
    return (
        memoryview(orjson.dumps(before))[:-1],
        b',"model":' if before else b'"model":',
        b"," if after else b"",
        memoryview(orjson.dumps(after))[1:],
    )


class MessagesCall(Struct, frozen=True):
    """`POST /v1/messages` passed through to an upstream that speaks the Messages API."""

    body: MessagesBody  # the client's Anthropic request (model rewritten by the provider)
    version: str | None  # the client's anthropic-version header, if it sent one
    beta: str | None  # the client's anthropic-beta header, if it sent one
    target: CatalogEntry
    message_id: str
    stream: bool


@runtime_checkable
class MessagesProvider(Protocol):
    """A provider whose upstream speaks the Anthropic Messages API natively: `/v1/messages`
    is passed through (event for event) instead of translated."""

    name: str

    async def messages(self, call: MessagesCall) -> Completion: ...  # body: Anthropic message
    async def messages_stream(self, call: MessagesCall) -> UpstreamStream: ...  # Anthropic events
    async def count_tokens(self, call: MessagesCall) -> int: ...  # the upstream's input_tokens


class EmbeddingCall(Struct, frozen=True):
    request: EmbeddingRequest
    body: bytes  # the client's raw JSON body, for pass-through to OpenAI-shaped upstreams
    target: CatalogEntry


class EmbeddingResult(Struct, frozen=True):
    """OpenAI `data` items (`{"object":"embedding","index","embedding"}`, the embedding in the
    encoding the client asked for) and the prompt tokens to bill."""

    data: list[dict[str, Any]]
    prompt_tokens: int


@runtime_checkable
class EmbeddingProvider(Protocol):
    """A provider that can embed text (kinds openai and gemini)."""

    name: str

    async def embed(self, call: EmbeddingCall) -> EmbeddingResult: ...


def retry_after_from(headers: Mapping[str, str]) -> float | None:
    """`retry-after-ms` (OpenAI) or `retry-after` in seconds; HTTP dates are ignored. Without
    them, OpenAI's `x-ratelimit-reset-requests` / `-tokens` (durations such as `1s`, `6m0s`,
    `20ms`): the reset of the limit that is spent (remaining 0), else the sooner one."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    seconds = headers.get("retry-after")
    if seconds:
        try:
            return max(0.0, float(seconds))
        except ValueError:
            pass
    return _ratelimit_reset(headers)


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_DURATION_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_duration(text: str) -> float | None:
    """OpenAI's reset durations (Go's time.Duration format): `6m0s`, `1.5s`, `20ms`, `1h2m`."""
    text = text.strip()
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        return None
    return sum(float(number) * _DURATION_UNIT_S[unit] for number, unit in parts)


def _ratelimit_reset(headers: Mapping[str, str]) -> float | None:
    resets: dict[str, float] = {}
    for limit in ("requests", "tokens"):
        value = headers.get(f"x-ratelimit-reset-{limit}")
        parsed = parse_duration(value) if value else None
        if parsed is not None:
            resets[limit] = parsed
    if not resets:
        return None
    spent = [
        reset
        for limit, reset in resets.items()
        if headers.get(f"x-ratelimit-remaining-{limit}", "").strip() == "0"
    ]
    return max(spent) if spent else min(resets.values())


RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


def status_error(
    provider: str, status: int, message: str | None, retry_after: float | None
) -> GatewayError:
    """The default mapping of an upstream HTTP error status to the gateway's tree."""
    if status in (400, 422):
        return InvalidRequest(message or f"The upstream provider '{provider}' refused the request.")
    if status in (401, 403):
        return BadGateway(
            f"The upstream provider '{provider}' refused the gateway's credentials "
            "(the operator's provider key, not yours)."
        )
    if status == 404:
        return BadGateway(f"The upstream provider '{provider}' does not know the configured model.")
    if status == 408:
        return GatewayTimeout(f"The upstream provider '{provider}' timed out.", retryable=True)
    if status == 413:
        return RequestTooLarge(message or "The request is too large for the upstream provider.")
    if status == 429:
        return RateLimited(
            f"The upstream provider '{provider}' is rate limiting the gateway; retry later.",
            retry_after_s=retry_after if retry_after is not None else 1.0,
            retryable=True,
        )
    if status >= 500:
        return ServiceUnavailable(
            f"The upstream provider '{provider}' is unavailable (HTTP {status}).",
            retry_after_s=retry_after,
            retryable=status in RETRYABLE_STATUSES,
        )
    return BadGateway(f"The upstream provider '{provider}' answered HTTP {status}.")


class HttpProvider:
    """Shared sending for providers that speak HTTP + JSON + SSE."""

    reframer_kind: ClassVar[str]
    # Upstream latency and errors for metrics and the request log; set by create_app.
    observer: RequestObserver | None = None
    # Traces on: the trace context goes upstream, finish reasons to the span; set by create_app.
    tracing: Tracing | None = None
    # The provider's retry policy (`[retry]`, or its own `[providers.X.retry]`), for what a
    # provider retries itself (Replicate's polls: how many, their backoff, the longest
    # Retry-After); set by build_state.
    retry_policy: RetrySettings = RetrySettings()

    def __init__(self, name: str, settings: ProviderSettings, api_key: Secret | None) -> None:
        self.name = name
        self.settings = settings
        self.api_key = api_key
        self._client = HttpClient(
            pool_size=settings.pool_size,
            connect_timeout_s=settings.connect_timeout_s,
            read_timeout_s=settings.stream_idle_timeout_s,
            # The process's environment, as any HTTP client reads it (checked at start-up by
            # load_settings, which names a variable that holds an unusable proxy URL).
            proxies=proxy_policy(settings.proxy_url, settings.proxy_url_env, os.environ),
        )

    # -- what each provider describes -----------------------------------------------------------
    def build_request(self, call: ChatCall, stream: bool) -> UpstreamRequest:
        raise NotImplementedError

    def parse_response(self, call: ChatCall, body: bytes) -> Completion:
        raise NotImplementedError

    def map_error(self, status: int, body: bytes, headers: Mapping[str, str]) -> GatewayError:
        raise NotImplementedError

    def map_stream_error(self, kind: str, message: str) -> GatewayError:
        """An error event inside a stream that had already started (type or status, message)."""
        lowered = kind.lower()
        if "overloaded" in lowered or "unavailable" in lowered or "server" in lowered:
            return ServiceUnavailable(
                f"The upstream provider '{self.name}' failed mid-stream: "
                f"{self.redact(message)[:500]}"
            )
        if "rate" in lowered or "exhausted" in lowered:
            return RateLimited(f"The upstream provider '{self.name}' is rate limiting the gateway.")
        return BadGateway(
            f"The upstream provider '{self.name}' failed mid-stream: {self.redact(message)[:500]}"
        )

    # -- shared ---------------------------------------------------------------------------------
    async def close(self) -> None:
        await self._client.close()

    def redact(self, text: str) -> str:
        if self.api_key is not None and self.api_key.reveal():
            text = text.replace(self.api_key.reveal(), "[redacted]")
        return text

    async def _send(
        self, upstream: UpstreamRequest, streamed: bool = False, within_s: float | None = None
    ) -> HttpResponse:
        """One upstream call up to its response headers (within `first_byte_timeout_s` for a
        stream, `answer_timeout_s` when set for a non-streamed answer; the whole call, body
        included, within `timeout_s`: the response expires then, its reader gets
        TimeoutError), reported to the observer; with traces on, it carries the trace context
        (`traceparent`) of the attempt's span. `within_s`: the caller's own, nearer bound on
        both (a Replicate poll: what is left of its prediction's). One coroutine (the observed
        and the unobserved call were two, one awaiting the other)."""
        headers = upstream.headers
        if self.tracing is not None:  # a copy with the traceparent (no new UpstreamRequest)
            headers = traced_headers(headers)
        observer = self.observer
        started = time.perf_counter() if observer is not None else 0.0
        settings = self.settings
        timeout_s = settings.timeout_s
        first_byte_s = settings.headers_timeout_s(streamed)
        if within_s is not None:  # (compared inline: min() is ~1K instructions, decision 0011)
            if within_s < timeout_s:
                timeout_s = within_s
            if within_s < first_byte_s:
                first_byte_s = within_s
        try:
            try:
                response = await self._client.request(
                    upstream.method,
                    upstream.url,
                    headers,
                    upstream.body or None,
                    first_byte_s,
                    timeout_s,
                    streamed,
                )
            except TimeoutError as exc:
                raise GatewayTimeout(
                    f"The upstream provider '{self.name}' did not answer in time.", retryable=True
                ) from exc
            except ConnectFailed as exc:
                # Why (refused, TLS, the proxy's answer): host:port only, never a credential.
                log.warning("provider %s unreachable: %s", self.name, exc)
                raise UpstreamUnreachable(
                    f"The upstream provider '{self.name}' is unreachable."
                ) from exc
            except (ResponseBroken, ValueError) as exc:
                raise BadGateway(
                    f"The upstream provider '{self.name}' failed: {type(exc).__name__}."
                ) from exc
            if response.status >= 400:
                try:
                    body = await response.read()
                except (ResponseBroken, TimeoutError):
                    body = b""
                finally:
                    response.release()
                raise self.map_error(response.status, body, response.headers)
        except GatewayError as exc:
            if observer is not None:
                observer.upstream_finished(self.name, time.perf_counter() - started, exc.type)
            raise
        except asyncio.CancelledError as exc:
            # The request's deadline cut the call (its cancellation is named): a failure, as
            # the 504 it becomes. Any other cancellation (the client gone, also in the cut's
            # own loop turn: the request is then a client gone) is not counted.
            if observer is not None and cut_by_deadline(exc):
                duration = time.perf_counter() - started
                observer.upstream_finished(self.name, duration, GatewayTimeout.type)
            raise
        if observer is not None:
            observer.upstream_finished(self.name, time.perf_counter() - started, None)
        return response

    async def _read_body(self, response: HttpResponse) -> bytes:
        """A non-streamed answer's whole body (released once read, closed if it failed), its
        failures mapped to the error envelope's. One reported answered by `_send` at its
        headers whose body then failed (cut by the request's deadline, timed out, broken off)
        is counted apart (`klawd_upstream_body_errors_total`): it is no answer the client got."""
        try:
            return await response.read()
        except TimeoutError as exc:
            self._body_failed(GatewayTimeout.type)
            raise GatewayTimeout(f"The upstream provider '{self.name}' timed out.") from exc
        except ResponseBroken as exc:
            self._body_failed(BadGateway.type)
            raise BadGateway(
                f"The upstream provider '{self.name}' broke off its answer: {exc}."
            ) from exc
        except asyncio.CancelledError as exc:
            if cut_by_deadline(exc):
                self._body_failed(GatewayTimeout.type)
            raise

    def _body_failed(self, error_type: str) -> None:
        if self.observer is not None:
            self.observer.upstream_body_failed(self.name, error_type)

    async def _send_json(self, upstream: UpstreamRequest, within_s: float | None = None) -> Any:
        """Sends, reads the whole answer and parses it as JSON (errors mapped by map_error);
        `within_s` as `_send`'s."""
        response = await self._send(upstream, False, within_s)
        body = response.whole()  # an answer that came whole with its headers: no coroutine
        if body is None:
            body = await self._read_body(response)
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise BadGateway(
                f"The upstream provider '{self.name}' answered with invalid JSON."
            ) from exc

    def _inline_image_b64(self, url: str) -> str:
        from gateway.providers.translate import parse_data_url  # (translate imports this module)

        try:
            _, data = parse_data_url(url, "")
        except InvalidRequest:  # the client's error there; the upstream's here
            data = ""
        if data and len(data) <= MAX_IMAGE_BYTES * 4 // 3 + 4:
            return data
        raise BadGateway(
            f"The upstream provider '{self.name}' answered an inline image that is not "
            f"base64 of at most {MAX_IMAGE_BYTES} bytes."
        )

    async def download_generated(self, url: str, made: int) -> str:
        """`download_b64` of one of the `made` images a generation answered as URLs (the client
        asked for b64_json). The generation was counted answered; a download that fails (or
        that the request's deadline cuts) loses its answer: counted once as its body error, and
        its `made` images, billed upstream and charged to nobody, as lost (an inline image
        came whole with the answer, and is no body). A download cut by the client's leaving
        loses them too (`CLIENT_CLOSED_TYPE`), but is no failure of the upstream's."""
        if url.startswith("data:"):
            return self._inline_image_b64(url)
        try:
            return await self.download_b64(url)
        except GatewayError as exc:
            self._images_lost(made, exc.type)
            raise
        except asyncio.CancelledError as exc:
            if cut_by_deadline(exc):
                self._images_lost(made, GatewayTimeout.type)
            elif self.observer is not None:
                self.observer.upstream_images_lost(self.name, made, CLIENT_CLOSED_TYPE)
            raise

    def _images_lost(self, made: int, error_type: str) -> None:
        self._body_failed(error_type)
        if self.observer is not None:
            self.observer.upstream_images_lost(self.name, made, error_type)

    async def download_b64(self, url: str) -> str:
        """Fetches a generated image (an upstream output URL, redirects followed) and
        base64-encodes its bytes. An image given inline (`data:<mime>;base64,<data>`, as
        Replicate's sync mode can answer) is its own base64, checked."""
        if url.startswith("data:"):
            return self._inline_image_b64(url)
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                response = await self._get_following_redirects(url)
                try:
                    if response.status >= 400:
                        raise BadGateway(
                            f"The upstream provider '{self.name}' could not serve a generated "
                            f"image (HTTP {response.status})."
                        )
                    data = bytearray()
                    async for chunk in response.chunks():
                        data += chunk
                        if len(data) > MAX_IMAGE_BYTES:
                            raise BadGateway(
                                f"The upstream provider '{self.name}' served an image larger "
                                f"than {MAX_IMAGE_BYTES} bytes."
                            )
                finally:
                    response.release()
        except TimeoutError as exc:
            raise GatewayTimeout(
                f"The upstream provider '{self.name}' timed out serving an image."
            ) from exc
        except (ConnectFailed, ResponseBroken, ValueError) as exc:
            raise BadGateway(
                f"The upstream provider '{self.name}' failed serving an image: "
                f"{type(exc).__name__}."
            ) from exc
        return base64.b64encode(data).decode("ascii")

    async def _get_following_redirects(self, url: str) -> HttpResponse:
        for _ in range(MAX_REDIRECTS + 1):
            response = await self._client.request("GET", url, {}, None)
            location = response.headers.get("location")
            if response.status not in REDIRECT_STATUSES or not location:
                return response
            response.release()
            url = urljoin(url, location)
        raise BadGateway(
            f"The upstream provider '{self.name}' failed serving an image: too many redirects."
        )

    async def complete(self, call: ChatCall) -> Completion:
        response = await self._send(self.build_request(call, stream=False))
        body = response.whole()  # an answer that came whole with its headers: no coroutine
        if body is None:
            body = await self._read_body(response)
        completion = self.parse_response(call, body)
        if self.tracing is not None:
            note_finish_reasons(
                [c.get("finish_reason") for c in completion.body.get("choices") or []]
            )
        return completion

    async def stream(self, call: ChatCall) -> UpstreamStream:
        response = await self._send(self.build_request(call, stream=True), streamed=True)
        events = call.events
        if events is None:
            reframer = _core.Reframer(
                self.reframer_kind,
                call.target.model.id,
                call.response_id,
                call.created,
                call.request.include_usage,
            )
            return ReframedStream(self, response, reframer)
        reframer = _core.Reframer(
            self.reframer_kind,
            call.target.model.id,
            call.response_id,
            call.created,
            call.request.include_usage,
            response_fields=events.fields,
            then=events.kind,
        )
        return ReframedStream(self, response, reframer, events.failure)


# How long a whole stream's connection waits for the HTTP answer's end before it is closed.
LINGER_S = 1.0


def _finished_and_taken(response: HttpResponse, reframer: _core.Reframer) -> bool:
    """`ReframedStream.finished` of a body reframed as it is read: the reframer's end, once
    nothing it made is left to take."""
    return not response._chunks and reframer.finished()


class ReframedStream:
    """Moves upstream bytes through the provider's Rust reframer; knows no provider format.

    A plain async iterator (no generator frame per stream, one `feed` per read: every
    upstream chunk that arrived together crosses into Rust once; an event stream's chunked
    body is fed by the answer as it is read, and wakes the reader only when it completes an
    event). Each piece it returns is zero or more whole OpenAI events; an upstream error event
    is raised after the events before it were returned, and the answer is released (kept alive
    if whole) when the stream ends."""

    __slots__ = (
        "_ended",
        "_held",
        "_noted",
        "_provider",
        "_reframer",
        "_released",
        "_response",
        "_sunk",
        "_untranslatable",
        "arrival",
        "finished",
    )

    def __init__(
        self,
        provider: HttpProvider,
        response: HttpResponse,
        reframer: _core.Reframer,
        untranslatable: str = "",
    ) -> None:
        """`untranslatable`: for a chained reframer (a route's events: `RouteEvents`), the
        message of the BadGateway its second stage's failure becomes; its opening events are
        the first piece, before the upstream's first byte."""
        self._provider = provider
        self._untranslatable = untranslatable
        self._held = reframer.opening() if untranslatable else b""
        # Nothing reads the answer's headers once the status said it streams: not kept for the
        # stream's life (about 0.6 KB per open stream).
        response.headers = {}
        self._response = response
        self._reframer = reframer
        # What a reader of `step()` awaits when it answers None: the HTTP answer's next news
        # (its own method: no Python frame of this object's per wait).
        self.arrival: Callable[[], asyncio.Future[None]] = response.arrival
        # An event stream's chunked body is reframed as it is read (by the connection's
        # callback: a read that completes no event wakes nobody); any other body is fed to
        # the reframer by `step()`, piece by piece.
        self._sunk = response.reframe_into(reframer)
        # Whether the piece last returned was the stream's last: the upstream's end was read
        # ([DONE] or its equivalent) and no error follows it, so the next step only ends. The
        # reframer's own method (no Python frame: the relay asks after every piece), but for a
        # body reframed as it is read: that reframer reads ahead of the pieces taken (its end
        # may be read while the relay awaits between a step and this question), so its end
        # counts once nothing it made is left to take.
        # (A partial over the answer and the reframer: a method of this object's kept on it
        # would make the stream a reference cycle.)
        self.finished: Callable[[], bool] = (
            functools.partial(_finished_and_taken, response, reframer)
            if self._sunk
            else reframer.finished
        )
        self._ended = False
        self._released = False
        self._noted = False

    @property
    def usage(self) -> TokenUsage | None:
        usage = self._reframer.usage
        if usage is None:
            return None
        return TokenUsage(
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.cached_tokens,
            usage.cache_write_tokens,
        )

    @property
    def content_chars(self) -> int:
        return self._reframer.content_chars

    async def aclose(self) -> None:
        if self._released:
            return  # ended already (the answer released, or dropped if it failed)
        # Closing (not releasing) drops the connection: the upstream stops generating at once.
        self._response.close()
        self._end()

    def __aiter__(self) -> ReframedStream:
        return self

    async def __anext__(self) -> bytes:
        while True:
            piece = self.step()
            if piece:
                return piece
            if piece is not None:  # b"": the end
                raise StopAsyncIteration
            try:
                await self.arrival()
            except BaseException:
                self._end()  # (cancelled) not whole: the connection is dropped
                raise

    def deliver_to(self, deliver: Callable[[bytes, asyncio.Future[None]], bool] | None) -> None:
        """A body reframed as it is read hands `deliver` each piece that arrives while the
        reader waits (nothing pending, not the last piece, no failure): sent there, it wakes
        nobody (`deliver` answers whether it took it). None: every piece is the step's."""
        if self._sunk:
            self._response._direct = deliver

    def step(self) -> bytes | None:
        """`__anext__` without a coroutine, for a relay that waits itself (gateway/api/chat.py):
        the next piece if what has arrived makes one; None when it must wait (`await
        arrival()`, then step again); b"" at the end. Raises what `__anext__` raises.

        A body the answer reframes as it arrives (`reframe_into`) is taken here: its pieces are
        whole events already. The reframer runs ahead of them, so its state (ended, an upstream
        error, a failure) counts only once nothing it made is left to take. (The answer's
        fields are read here, not through its methods: this runs twice per wake.)"""
        held = self._held
        if held:  # a chained reframer's opening events
            self._held = b""
            return held
        if not self._sunk:
            return self._reframe_next()
        reframer = self._reframer
        response = self._response
        try:
            while not self._ended:
                if not response._chunks:
                    failed = response._sink_error
                    if failed is not None:
                        response._sink_error = None
                        raise failed
                    if reframer.upstream_error is not None:
                        raise self._provider.map_stream_error(*reframer.upstream_error)
                    if reframer.done:
                        break
                    if not response._complete and response._error is None:
                        response._waiter = None  # (`next_piece()`'s answer: wait)
                        return None
                piece = response.next_piece()
                if piece:
                    if response._complete and reframer.upstream_error is None and not reframer.done:
                        # The body's end came with these events (`at_end()`: nothing is left
                        # to take): its closing events go out with them, as in `_reframe_next`.
                        return self._with_closing(piece)
                    return piece
                if piece is None:
                    return None
                self._ended = True  # b"": the body's end
                out = self._finish()
                if out:
                    return out
                break
            if response._sink_error is not None:
                self._raise_kept()
            if reframer.upstream_error is not None:
                raise self._provider.map_stream_error(*reframer.upstream_error)
        except BaseException as exc:
            self._failed(exc)
        self._end(whole=True)
        return b""

    def _reframe_next(self) -> bytes | None:
        """`step()` of any other body: each piece read is fed to the reframer here."""
        reframer = self._reframer
        response = self._response
        try:
            while not self._ended:
                if response._sink_error is not None:  # (`_keep`'s, after the events before it)
                    self._raise_kept()
                if reframer.upstream_error is not None:
                    raise self._provider.map_stream_error(*reframer.upstream_error)
                if reframer.done:
                    break
                # The body's first bytes that came in the head's read: that read fed from its
                # body on, not sliced off it (`_skip`: a copy of the body less; the head's
                # bytes are at the front of the piece `next_piece()` answers).
                start = response._skip
                response._skip = 0
                data = response.next_piece()
                if data is None:
                    return None
                if not data:  # the body's end
                    self._ended = True  # finish() once; the end step follows after its events
                    out = self._finish()
                    if out:
                        return out
                    break
                try:
                    out = reframer.feed(data, start)
                except Exception as exc:
                    out = self._keep(exc)  # its events before the failure go out first
                if out:
                    if response.at_end() and reframer.upstream_error is None and not reframer.done:
                        # The body's end came with these bytes (a stream that ends there, as
                        # Gemini's, with no terminator event): its closing events go out with
                        # this piece, not in a send of their own. A failure at the end is kept
                        # by the reframer and raised by the next step, after this piece.
                        return self._with_closing(out)
                    return out
            if response._sink_error is not None:
                self._raise_kept()
            if reframer.upstream_error is not None:
                # an error event that the body's end dispatched (finish() keeps it, after the
                # events before it, without raising)
                raise self._provider.map_stream_error(*reframer.upstream_error)
        except BaseException as exc:
            self._failed(exc)
        # The stream is whole: the connection is kept alive, also when its last event came
        # before the HTTP answer's end (the terminating chunk is usually a read behind).
        self._end(whole=True)
        return b""

    def _with_closing(self, piece: bytes) -> bytes:
        """`piece`, the body's last, with the reframer's closing events; a failure of `finish()`
        is kept and raised by the next step, after `piece` and the events before it."""
        reframer = self._reframer
        try:
            piece += reframer.finish()
        except Exception as exc:
            self._response._sink_error = exc.with_traceback(None)
            return piece + reframer.before_error()
        self._ended = True
        return piece

    def _finish(self) -> bytes:
        """`finish()` at the body's end; one that fails after whole events returns them, its
        failure kept for the next step."""
        try:
            return self._reframer.finish()
        except Exception as exc:
            return self._keep(exc)

    def _keep(self, exc: Exception) -> bytes:
        """A failure of the reframer's: the whole events the failing call made before it, the
        failure kept for the next step to raise (the answer's `_sink_error`, without its
        traceback, whose frames hold this stream); raised at once when there were none."""
        events = self._reframer.before_error()
        if not events:
            raise exc
        self._response._sink_error = exc.with_traceback(None)
        return events

    def _raise_kept(self) -> None:
        """Raises a failure `_keep` kept (once)."""
        failed = self._response._sink_error
        if failed is not None:
            self._response._sink_error = None
            raise failed

    def _failed(self, exc: BaseException) -> NoReturn:
        """A step's failure: the answer dropped (not whole), `exc` raised as the gateway's."""
        self._end()  # not whole: the connection is dropped
        translated = self._translated(exc)
        try:
            if translated is exc:
                raise exc
            raise translated from exc
        finally:
            # The error's traceback holds this frame: were the frame to hold the error, the
            # stream would be a reference cycle, freed only by a full collection.
            del translated, exc

    def _end(self, whole: bool = False) -> None:
        """Once, however the stream ends: the answer released (kept alive only if whole) and
        the finish reason noted for the trace."""
        self._ended = True
        if self._released:
            return
        self._released = True
        if whole:
            self._response.release_when_whole(LINGER_S)
        else:
            self._response.release()
        if self._provider.tracing is not None and not self._noted:
            self._noted = True
            note_finish_reasons([self._reframer.finish_reason])

    def route_reframer(self) -> _core.Reframer | None:
        """The reframer, if it is chained (it writes a route's events: `RouteEvents`)."""
        return self._reframer if self._untranslatable else None

    def untaken_events(self) -> int:
        """Events the reframer wrote that no step has taken yet (the opening, and a body
        reframed as it is read: its pieces waiting): counted only when a route numbers the
        events it sent (a failure's or the drain's)."""
        waiting = self._response._chunks if self._sunk else ()
        return self._held.count(b"\n\n") + sum(piece.count(b"\n\n") for piece in waiting)

    def _translated(self, exc: BaseException) -> BaseException:
        name = self._provider.name
        if isinstance(exc, _core.TranslationError):  # (an SseError: asked first)
            return BadGateway(self._untranslatable)
        if isinstance(exc, _core.UpstreamStreamError):
            return BadGateway(f"The upstream provider '{name}' ended the stream early.")
        if isinstance(exc, _core.EventStreamError):  # a CRC mismatch: bytes corrupted in transit
            return BadGateway(f"The upstream provider '{name}' sent a corrupted event stream.")
        if isinstance(exc, _core.SseError):
            return BadGateway(f"The upstream provider '{name}' sent a malformed stream.")
        if isinstance(exc, TimeoutError):
            return GatewayTimeout(f"The upstream provider '{name}' went silent mid-stream.")
        if isinstance(exc, ResponseBroken):
            return BadGateway(f"The upstream provider '{name}' broke off the stream.")
        return exc
