"""Kind `openai`: OpenAI itself and every OpenAI-compatible server (vLLM, Ollama, Groq, …).

The client's body is passed through with only `model` rewritten to the upstream's name, the seed's
max_tokens default made explicit (so the credit reservation bounds the cost), and, on streams,
`stream_options.include_usage` forced on so that every stream can be billed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import orjson

from gateway.billing import TokenUsage
from gateway.errors import BadGateway, GatewayError, InvalidRequest
from gateway.providers.base import (
    ChatCall,
    Completion,
    HttpProvider,
    UpstreamRequest,
    retry_after_from,
    status_error,
)
from gateway.schemas.openai import DEFAULT_MAX_TOKENS


class OpenAIProvider(HttpProvider):
    reframer_kind: ClassVar[str] = "openai"

    def build_request(self, call: ChatCall, stream: bool) -> UpstreamRequest:
        try:
            payload: dict[str, Any] = orjson.loads(call.body)
        except orjson.JSONDecodeError as exc:  # already validated by msgspec; kept for safety
            raise InvalidRequest("The request body is not valid JSON.") from exc
        payload["model"] = call.target.model.upstream_model or call.target.model.id.split("/", 1)[1]
        if "max_tokens" not in payload and "max_completion_tokens" not in payload:
            payload["max_tokens"] = DEFAULT_MAX_TOKENS
        if stream:
            options = payload.get("stream_options")
            payload["stream_options"] = {
                **(options if isinstance(options, dict) else {}),
                "include_usage": True,
            }
        headers = {"content-type": "application/json", "accept": "application/json"}
        if self.api_key is not None:
            headers["authorization"] = f"Bearer {self.api_key.reveal()}"
        return UpstreamRequest(
            url=f"{self.settings.base_url.rstrip('/')}/chat/completions",
            headers=headers,
            body=orjson.dumps(payload),
        )

    def parse_response(self, call: ChatCall, body: bytes) -> Completion:
        try:
            completion = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise BadGateway(
                f"The upstream provider '{self.name}' answered with invalid JSON."
            ) from exc
        if not isinstance(completion, dict) or not isinstance(completion.get("choices"), list):
            raise BadGateway(f"The upstream provider '{self.name}' answered without choices.")
        completion["model"] = call.target.model.id
        usage = completion.get("usage")
        if isinstance(usage, dict):
            tokens = TokenUsage(
                int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
            )
        else:
            tokens = TokenUsage(0, 0)
        return Completion(completion, tokens)

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
