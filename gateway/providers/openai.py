"""Kind `openai`: OpenAI itself and every OpenAI-compatible server (vLLM, Ollama, Groq, …).

The client's body is passed through with only `model` rewritten to the upstream's name, the seed's
max_tokens default made explicit (so the credit reservation bounds the cost), and, on streams,
`stream_options.include_usage` forced on so that every stream can be billed.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, ClassVar

import orjson

from gateway import _core
from gateway.billing import TokenUsage, count
from gateway.errors import BadGateway, GatewayError, InvalidRequest
from gateway.providers.base import (
    ChatCall,
    Completion,
    EmbeddingCall,
    EmbeddingResult,
    GeneratedImage,
    HttpProvider,
    ImageCall,
    ImageResult,
    UpstreamRequest,
    retry_after_from,
    status_error,
)
from gateway.providers.http_client import FixedHeaders
from gateway.routing.catalog import CatalogEntry
from gateway.schemas.openai import DEFAULT_MAX_TOKENS


def _client_payload(body: bytes, target: CatalogEntry) -> dict[str, Any]:
    """The client's JSON body with `model` rewritten to the upstream's name."""
    try:
        payload: dict[str, Any] = orjson.loads(body)
    except orjson.JSONDecodeError as exc:  # already validated by msgspec; kept for safety
        raise InvalidRequest("The request body is not valid JSON.") from exc
    payload["model"] = target.model.upstream_model or target.model.id.split("/", 1)[1]
    payload.pop("models", None)  # the request's fallbacks are the gateway's
    return payload


class OpenAIProvider(HttpProvider):
    reframer_kind: ClassVar[str] = "openai"

    def _post(self, path: str, payload: dict[str, Any]) -> UpstreamRequest:
        return self._post_json(path, payload.get("model"), orjson.dumps(payload))

    def _post_json(self, path: str, model: object, body: bytes) -> UpstreamRequest:
        """`body`: the JSON text; `model`: the upstream model it names (Azure's URL needs it)."""
        return UpstreamRequest(url=self._base_url + path, headers=self._json_headers, body=body)

    # Built once per provider (settings and key are fixed for the app's life); the headers are
    # shared by every request, never changed (tracing copies them to add its own).
    @functools.cached_property
    def _base_url(self) -> str:
        return self.settings.base_url.rstrip("/")

    @functools.cached_property
    def _json_headers(self) -> FixedHeaders:
        headers = {"content-type": "application/json", "accept": "application/json"}
        if self.api_key is not None:
            headers["authorization"] = f"Bearer {self.api_key.reveal()}"
        return FixedHeaders(headers)

    def build_request(self, call: ChatCall, stream: bool) -> UpstreamRequest:
        model = call.target.model
        name = model.upstream_model or model.id.split("/", 1)[1]
        # One scan in Rust writes what the lines below write; a body it cannot tell about (an
        # escaped or repeated key, a stream's own stream_options, ...) takes them.
        body = _core.openai_chat_request(call.body, name, DEFAULT_MAX_TOKENS, stream)
        if body is not None:
            return self._post_json("/chat/completions", name, body)
        payload = _client_payload(call.body, call.target)
        if "max_tokens" not in payload and "max_completion_tokens" not in payload:
            payload["max_tokens"] = DEFAULT_MAX_TOKENS
        if stream:
            options = payload.get("stream_options")
            payload["stream_options"] = {
                **(options if isinstance(options, dict) else {}),
                "include_usage": True,
            }
        return self._post("/chat/completions", payload)

    async def generate_images(self, call: ImageCall) -> ImageResult:
        """`POST {base_url}/images/generations`: the client's body passes through with `model`
        rewritten; a `url` answer is downloaded when the client asked for b64_json."""
        answer = await self._send_json(
            self._post("/images/generations", _client_payload(call.body, call.target))
        )
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, list) or not data:
            raise BadGateway(f"The upstream provider '{self.name}' answered without images.")
        images: list[GeneratedImage] = []
        # Never more than asked for: the answer, and so the bill, holds at most `n` images
        # (their reservation covers `n`).
        items = data[: call.request.n]
        for item in items:
            url = item.get("url") if isinstance(item, dict) else None
            b64 = item.get("b64_json") if isinstance(item, dict) else None
            revised = item.get("revised_prompt") if isinstance(item, dict) else None
            revised = revised if isinstance(revised, str) else None
            if isinstance(b64, str):
                images.append(GeneratedImage(b64_json=b64, revised_prompt=revised))
            elif isinstance(url, str) and call.request.wants_b64:
                b64 = await self.download_generated(url, len(items))
                images.append(GeneratedImage(b64_json=b64, revised_prompt=revised))
            elif isinstance(url, str):
                images.append(GeneratedImage(url=url, revised_prompt=revised))
            else:
                raise BadGateway(f"The upstream provider '{self.name}' answered a malformed image.")
        return ImageResult(images)

    async def embed(self, call: EmbeddingCall) -> EmbeddingResult:
        """`POST {base_url}/embeddings`: the client's body with `model` rewritten; the answer's
        items are relayed as they are (float or base64, as the client asked)."""
        answer = await self._send_json(
            self._post("/embeddings", _client_payload(call.body, call.target))
        )
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, list) or len(data) != call.request.count:
            raise BadGateway(
                f"The upstream provider '{self.name}' answered without one embedding per input."
            )
        usage = answer.get("usage")
        tokens = count(usage.get("prompt_tokens")) if isinstance(usage, dict) else 0
        return EmbeddingResult(
            [
                {"object": "embedding", "index": i, "embedding": item.get("embedding")}
                for i, item in enumerate(data)
                if isinstance(item, dict)
            ],
            tokens,
        )

    def parse_response(self, call: ChatCall, body: bytes) -> Completion:
        # One scan in Rust: the answer's text with `model` renamed, and its usage; what it cannot
        # tell about (invalid JSON, no choices, a count that is not an integer, ...) is parsed.
        read = _core.openai_chat_answer(body, call.target.model.id)
        if read is not None:
            raw, prompt, completion_tokens, cached, written = read
            return Completion(None, TokenUsage(prompt, completion_tokens, cached, written), raw)
        try:
            completion = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise BadGateway(
                f"The upstream provider '{self.name}' answered with invalid JSON."
            ) from exc
        if not isinstance(completion, dict) or not isinstance(completion.get("choices"), list):
            raise BadGateway(f"The upstream provider '{self.name}' answered without choices.")
        completion["model"] = call.target.model.id
        return Completion(completion, TokenUsage.from_openai(completion.get("usage")))

    def map_error(self, status: int, body: bytes, headers: Mapping[str, str]) -> GatewayError:
        message = None
        try:
            parsed = orjson.loads(body)
            if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
                upstream_message = parsed["error"].get("message")
                if isinstance(upstream_message, str):
                    message = self.redact(upstream_message)[:1000]
        except orjson.JSONDecodeError:
            pass
        return status_error(self.name, status, message, retry_after_from(headers))
