"""Kind `replicate`: image models on Replicate's predictions API.

`POST {base_url}/v1/models/{owner}/{name}/predictions` with `Prefer: wait=N` creates the
prediction and holds the connection while it runs (N below the first-byte timeout). If the answer
is not yet terminal, `urls.get` is polled (0.25 s doubling to 2 s) until `succeeded`, `failed` or
`canceled`, within the provider's `timeout_s` (each poll too: it may not outlast what is left of
it); past it the prediction is cancelled (`urls.cancel`, best effort, waited for at most
`cancel_timeout_s`) and the client gets 504.
A poll that fails transiently (408, 429, 5xx, a connection refused, reset or timed out, a body
broken off) is retried up to the retry policy's `poll_retries` times in a row, after the
policy's backoff (full jitter: U(0, min(max_delay_s, base_delay_s * 2^n, time left)), as the
request's retrier) or its Retry-After when longer, when that wait ends before the deadline
(each retry in `klawd_upstream_retries_total`, each failure where any upstream failure is
counted). A call cancelled while it polls (the request's `retry.deadline_s` cut it, or its
client went away), or whose poll fails for good (the client gets that error), cancels the
prediction too, in a task of its own that `close` waits for: it would otherwise run on,
billed by Replicate.

Input mapping (OpenAI Images → the model's input) follows each model's published schema for the
models in `INPUT_MAPPINGS` (bytedance/seedream-4 and -4.5: their size rules, and `n` > 1 as
group generation, `max_images: n`); any other model gets the generic mapping: `prompt`;
`size` "WxH" → `width` and `height`; `n` > 1 → `num_outputs`. A request a model cannot
honour is a 400 naming the parameter. The output (a URL or a list of URLs, none empty: an empty
output is a 502) becomes `data[].url`; `response_format: b64_json` makes the gateway download
each image and base64-encode it (an inline `data:…;base64,` output is its own base64).

Image generation is not idempotent: the create call is never retried here; the caller retries
only `UpstreamUnreachable` from it (the request never reached Replicate). A poll is a GET of a
prediction that exists (idempotent), hence its retries; a connect failure while polling that
is not retried is a plain 503, never `UpstreamUnreachable`.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import orjson

from gateway.errors import (
    BadGateway,
    GatewayError,
    GatewayTimeout,
    InvalidRequest,
    ServiceUnavailable,
)
from gateway.providers.base import (
    ChatCall,
    Completion,
    GeneratedImage,
    HttpProvider,
    ImageCall,
    ImageResult,
    UpstreamRequest,
    UpstreamStream,
    UpstreamUnreachable,
    retry_after_from,
    status_error,
)
from gateway.providers.http_client import ResponseBroken
from gateway.providers.translate import error_message
from gateway.routing.catalog import Secret
from gateway.routing.retry import backoff_delay
from gateway.schemas.images import ImageRequest
from gateway.settings import ProviderSettings

TERMINAL = frozenset({"succeeded", "failed", "canceled"})
POLL_FIRST_S = 0.25
POLL_MAX_S = 2.0
MAX_WAIT_S = 60


def transient(exc: GatewayError) -> bool:
    """A poll's failure another poll may not meet: an error status Replicate gives when busy or
    briefly down (408, 429, 500, 502-504: `retryable`), a connection refused, reset or timed
    out, a body broken off. Not an answer that is no prediction (invalid JSON, no status), nor
    another error status (401, 404)."""
    return exc.retryable or isinstance(exc.__cause__, (ResponseBroken, TimeoutError))


def generic_input(request: ImageRequest) -> dict[str, Any]:
    """The common Replicate image-model inputs (SDXL-style): prompt, width/height, num_outputs."""
    model_input: dict[str, Any] = {"prompt": request.prompt}
    dimensions = request.dimensions()
    if dimensions is not None:
        model_input["width"], model_input["height"] = dimensions
    if request.n > 1:
        model_input["num_outputs"] = request.n
    return model_input


def seedream_group(request: ImageRequest) -> dict[str, Any]:
    """Seedream's group generation: `n` > 1 → `sequential_image_generation: auto` and
    `max_images: n` (its schema: 1-15, "the model decides" how many up to that maximum)."""
    if request.n == 1:
        return {}
    return {"sequential_image_generation": "auto", "max_images": request.n}


def seedream_4_input(request: ImageRequest) -> dict[str, Any]:
    """bytedance/seedream-4: `size: custom` + width/height, each 1024-4096."""
    model_input: dict[str, Any] = {"prompt": request.prompt}
    dimensions = request.dimensions()
    if dimensions is not None:
        if not all(1024 <= side <= 4096 for side in dimensions):
            raise InvalidRequest(
                "bytedance/seedream-4 takes sizes from 1024x1024 to 4096x4096.", param="size"
            )
        model_input |= {"size": "custom", "width": dimensions[0], "height": dimensions[1]}
    return model_input | seedream_group(request)


def seedream_45_input(request: ImageRequest) -> dict[str, Any]:
    """bytedance/seedream-4.5 (beta): 2K at 1:1 only, so `size` may only be 2048x2048."""
    model_input: dict[str, Any] = {"prompt": request.prompt}
    dimensions = request.dimensions()
    if dimensions is not None:
        if dimensions != (2048, 2048):
            raise InvalidRequest(
                "bytedance/seedream-4.5 only generates 2048x2048 images for now.", param="size"
            )
        model_input |= {"size": "2K", "aspect_ratio": "1:1"}
    return model_input | seedream_group(request)


# Each model on Replicate has its own input schema: the ones the catalog knows are mapped
# exactly (from their published schemas); any other model gets the generic mapping.
INPUT_MAPPINGS: dict[str, Callable[[ImageRequest], dict[str, Any]]] = {
    "bytedance/seedream-4": seedream_4_input,
    "bytedance/seedream-4.5": seedream_45_input,
}


def prediction_input(model: str, request: ImageRequest) -> dict[str, Any]:
    """The OpenAI Images request as the input of the Replicate model `owner/name` (pure)."""
    return INPUT_MAPPINGS.get(model, generic_input)(request)


def output_urls(output: Any) -> list[str]:
    """A prediction's output (one URL or a list of URLs; in sync mode Replicate has answered
    `data:` URIs too) as a list of URLs: at least one, none empty."""
    urls = [output] if isinstance(output, str) else output
    if isinstance(urls, list) and urls and all(isinstance(u, str) and u for u in urls):
        return list(urls)
    raise BadGateway("The image model answered without image URLs.")


class ReplicateProvider(HttpProvider):
    reframer_kind: ClassVar[str] = ""  # serves no chat streams

    def __init__(self, name: str, settings: ProviderSettings, api_key: Secret | None) -> None:
        super().__init__(name, settings, api_key)
        self._cancels: set[asyncio.Task[None]] = set()  # predictions left by cancelled calls
        self.rng = random.Random()  # noqa: S311 (the polls' jitter, not secrets)

    async def close(self) -> None:
        if self._cancels:
            await asyncio.gather(*self._cancels, return_exceptions=True)
        await super().close()

    async def complete(self, call: ChatCall) -> Completion:
        raise InvalidRequest(
            f"'{call.target.model.id}' is served by Replicate, which serves image models only.",
            param="model",
        )

    async def stream(self, call: ChatCall) -> UpstreamStream:
        raise InvalidRequest(
            f"'{call.target.model.id}' is served by Replicate, which serves image models only.",
            param="model",
        )

    def _headers(self) -> dict[str, str]:
        headers = {"accept": "application/json"}
        if self.api_key is not None:
            headers["authorization"] = f"Bearer {self.api_key.reveal()}"
        return headers

    def create_request(self, call: ImageCall) -> UpstreamRequest:
        model = call.target.model.upstream_model or call.target.model.id.split("/", 1)[1]
        owner, slash, name = model.partition("/")
        if not slash or not owner or not name:
            raise BadGateway(
                f"The model '{call.target.model.id}' is misconfigured: its upstream_model must "
                "look like owner/name."
            )
        wait = max(1, min(MAX_WAIT_S, int(self.settings.headers_timeout_s(streamed=False)) - 1))
        return UpstreamRequest(
            url=f"{self.settings.base_url.rstrip('/')}/v1/models/{owner}/{name}/predictions",
            headers=self._headers()
            | {"content-type": "application/json", "prefer": f"wait={wait}"},
            body=orjson.dumps({"input": prediction_input(model, call.request)}),
        )

    async def generate_images(self, call: ImageCall) -> ImageResult:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.timeout_s
        prediction = self._prediction(await self._send_json(self.create_request(call)))
        interval = wait = POLL_FIRST_S
        failures = 0  # polls failed in a row
        try:
            while prediction.get("status") not in TERMINAL:
                if loop.time() + wait > deadline:
                    await self._cancel(prediction, self.settings.cancel_timeout_s)
                    break
                await asyncio.sleep(wait)
                try:
                    # Each poll within what is left of the deadline (its own `timeout_s` would
                    # let a hung poll keep the client up to twice the deadline).
                    prediction = await self._poll(prediction, deadline - loop.time())
                except GatewayError as exc:
                    left_s = deadline - loop.time()
                    if left_s <= 0:  # cut at the deadline: as the deadline passing between polls
                        await self._cancel(prediction, self.settings.cancel_timeout_s)
                        break
                    failures += 1
                    again_in = self._poll_again_in(exc, failures, left_s)
                    if again_in is None:
                        raise
                    wait = again_in
                    continue
                failures = 0
                interval = wait = min(POLL_MAX_S, interval * 2)
        except (asyncio.CancelledError, GatewayError):
            # The call was cancelled, or a poll failed for good (an error status, timed out,
            # broken off, not transient or retried enough): the prediction would run on,
            # billed, for an answer nobody reads. Cancelled in a task of its own, the error the
            # client's at once.
            cancel = loop.create_task(self._cancel(prediction))
            self._cancels.add(cancel)
            cancel.add_done_callback(self._cancels.discard)
            raise
        status = prediction["status"]
        if status not in TERMINAL:  # cancelled above
            raise GatewayTimeout(
                f"The upstream provider '{self.name}' did not finish the image in time."
            )
        if status == "failed":
            detail = prediction.get("error")
            raise BadGateway(
                f"The image model failed: {self.redact(str(detail))[:500]}"
                if detail
                else "The image model failed."
            )
        if status == "canceled":
            raise ServiceUnavailable(
                f"The upstream provider '{self.name}' canceled the prediction; retry later."
            )
        # Never more than asked for: the answer, and so the bill, holds at most `n` images.
        urls = output_urls(prediction.get("output"))[: call.request.n]
        if call.request.wants_b64:
            return ImageResult(
                [GeneratedImage(b64_json=await self.download_generated(u, len(urls))) for u in urls]
            )
        return ImageResult([GeneratedImage(url=u) for u in urls])

    def _prediction(self, parsed: Any) -> dict[str, Any]:
        if not isinstance(parsed, dict) or not isinstance(parsed.get("status"), str):
            raise BadGateway(f"The upstream provider '{self.name}' answered without a prediction.")
        return parsed

    def _url(self, prediction: Mapping[str, Any], which: str) -> str | None:
        urls = prediction.get("urls")
        url = urls.get(which) if isinstance(urls, dict) else None
        return url if isinstance(url, str) and url.startswith(("http://", "https://")) else None

    async def _poll(self, prediction: Mapping[str, Any], within_s: float) -> dict[str, Any]:
        url = self._url(prediction, "get")
        if url is None:
            raise BadGateway(f"The upstream provider '{self.name}' gave no URL to poll.")
        try:
            parsed = await self._send_json(
                UpstreamRequest(url, self._headers(), b"", "GET"), within_s
            )
        except UpstreamUnreachable as exc:
            # The prediction exists: this must never look like "never reached the upstream"
            # (so no `connect_failed`, which would let the caller create another one).
            raise ServiceUnavailable(exc.message, retryable=True) from exc
        return self._prediction(parsed)

    def _poll_again_in(self, exc: GatewayError, failures: int, left_s: float) -> float | None:
        """After the failed poll `exc`, the `failures`-th in a row, with `left_s` left before
        the deadline: how long to wait before polling again (the retry policy's backoff, full
        jitter within `left_s`, or the failure's Retry-After when longer: as the request's
        retrier), counted as a retry; None to give up (not transient, past the retry policy's
        `poll_retries` (3 by default: the official SDK retries its GETs on 429, 503 and 504 up
        to 10 times, replicate/client.py RetryTransport; fewer, as a client waits behind each),
        a Retry-After past the policy's `max_retry_after_s`, or the wait not within the
        deadline)."""
        policy = self.retry_policy
        if failures > policy.poll_retries or not transient(exc):
            return None
        retry_after = exc.retry_after_s
        if retry_after is not None and retry_after > policy.max_retry_after_s:
            return None  # longer than the retry policy waits: as the retrier
        wait = backoff_delay(failures - 1, policy, self.rng, left_s)
        if retry_after is not None:
            wait = max(wait, retry_after)
        if wait >= left_s:
            return None
        if self.observer is not None:
            self.observer.retried(self.name, "poll")
        return wait

    async def _cancel(self, prediction: Mapping[str, Any], within_s: float | None = None) -> None:
        """`within_s`: a cancel the client waits for (at the deadline, before its 504) is bounded
        by the provider's `cancel_timeout_s`, not the whole `timeout_s`: a cancel that hangs
        must not keep the client that long past the deadline."""
        url = self._url(prediction, "cancel")
        if url is None:
            return
        try:
            await self._send_json(UpstreamRequest(url, self._headers(), b"", "POST"), within_s)
        except GatewayError:
            pass  # best effort: the client gets the timeout either way

    def map_error(self, status: int, body: bytes, headers: Mapping[str, str]) -> GatewayError:
        """Replicate errors are RFC 7807 problem details: {"title", "detail", "status"}."""
        detail: str | None = None
        try:
            parsed = orjson.loads(body)
            detail = error_message(parsed, "detail") or error_message(parsed, "title")
        except orjson.JSONDecodeError:
            pass
        if detail is not None:
            detail = self.redact(detail)[:1000]
        return status_error(self.name, status, detail, retry_after_from(headers))
