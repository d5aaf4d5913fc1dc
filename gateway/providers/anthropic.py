"""Kind `anthropic`: the Anthropic Messages API (`POST {base_url}/v1/messages`).

Request translation (OpenAI chat → Messages):
- system and developer messages → the top-level `system` (joined by a blank line, in order);
- user/assistant/tool turns → `messages`, consecutive turns of one role merged into one turn
  (tool results are user turns holding `tool_result` blocks);
- text parts → `text` blocks; image parts → `image` blocks (data: URLs → a base64 source,
  http(s) URLs → a url source);
- assistant `tool_calls` → `tool_use` blocks (arguments parsed to an object);
- tools → `{name, description, input_schema}`; tool_choice auto/none/required/named →
  `{"type": auto|none|any|tool}`; `parallel_tool_calls: false` → `disable_parallel_tool_use`;
- `cache_control` (Anthropic's prompt-cache breakpoint, as LiteLLM and OpenRouter accept it) on
  a content part, a whole message (→ its last block) or a tool → the same `cache_control` on
  the block or tool; a system message with one makes `system` a list of text blocks;
- `stop` → `stop_sequences`; `max_tokens` (required upstream) → the request's, else 4096;
- temperature: Anthropic accepts 0-1, OpenAI 0-2. Values 0-1 are sent unchanged; above 1 is a
  400 naming `temperature` (docs/decisions/0004-provider-translation.md);
- `user` → `metadata.user_id`.
Anything else the Messages API cannot honour (`n` > 1, logprobs, seed, penalties, JSON response
formats, audio/file parts) is a 400 naming the parameter.

A request is translated by one scan in Rust (`_core.anthropic_chat_request`,
rust_core/src/anthropic_body/) where it can tell — text, tools, tool calls and results, images,
`cache_control`: what agents send — byte for byte what `translate_request` and orjson write;
the functions below are the reference and take the rest (and every refusal).

Streams go through the Rust reframer "anthropic".
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, ClassVar

import msgspec
import orjson

from gateway import _core
from gateway.billing import TokenUsage, count
from gateway.errors import (
    BadGateway,
    GatewayError,
    GatewayTimeout,
    InvalidRequest,
    RateLimited,
    RequestTooLarge,
    ServiceUnavailable,
)
from gateway.providers.base import (
    ChatCall,
    Completion,
    HttpProvider,
    MessagesCall,
    ReframedStream,
    UpstreamRequest,
    UpstreamStream,
    retry_after_from,
    status_error,
)
from gateway.providers.http_client import FixedHeaders
from gateway.providers.translate import (
    completion_body,
    error_message,
    is_http_url,
    parse_arguments,
    parse_data_url,
    parts_of,
    raw_fields,
    reject_unsupported,
    stop_list,
    text_of,
    tool_call,
)
from gateway.schemas.openai import (
    DEFAULT_MAX_TOKENS,
    CacheControl,
    ImagePart,
    Message,
    NamedToolChoice,
    RefusalPart,
    TextPart,
)

API_VERSION = "2023-06-01"
MAX_TEMPERATURE = 1.0
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
SUPPORTED = frozenset({"user", "parallel_tool_calls"})
# Distinct client anthropic-version / anthropic-beta pairs whose pass-through headers a provider
# keeps written out (a client's values come from its SDK's version: a few).
MAX_PASSTHROUGH_HEADERS = 32

STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def finish_reason(stop_reason: object) -> str:
    """Anthropic `stop_reason` → OpenAI `finish_reason` (the reframer's table, non-streamed); a
    reason that is not a string is no reason."""
    return STOP_REASONS.get(stop_reason, "stop") if type(stop_reason) is str else "stop"


# -- request ------------------------------------------------------------------------------------


def _image_block(part: ImagePart, param: str) -> dict[str, Any]:
    url = part.image_url.url
    if url.startswith("data:"):
        mime, data = parse_data_url(url, param)
        if mime not in IMAGE_TYPES:
            raise InvalidRequest(
                f"Anthropic models accept {', '.join(sorted(IMAGE_TYPES))} images, not {mime}.",
                param=param,
            )
        return {"type": "image", "source": {"type": "base64", "media_type": mime, "data": data}}
    if is_http_url(url):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise InvalidRequest("An image URL must be a data: URL or an http(s) URL.", param=param)


def _cached(block: dict[str, Any], cache_control: CacheControl | None) -> dict[str, Any]:
    """`block` with Anthropic's `cache_control` when the client set one."""
    if cache_control is not None:
        block["cache_control"] = msgspec.to_builtins(cache_control)
    return block


def _content_blocks(message: Message, param: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for index, part in enumerate(parts_of(message.content)):
        where = f"{param}.content[{index}]" if isinstance(message.content, list) else param
        if isinstance(part, TextPart):
            if part.text:
                blocks.append(_cached({"type": "text", "text": part.text}, part.cache_control))
        elif isinstance(part, RefusalPart):
            if part.refusal:
                blocks.append({"type": "text", "text": part.refusal})
        elif isinstance(part, ImagePart):
            blocks.append(_cached(_image_block(part, where), part.cache_control))
        else:
            raise InvalidRequest(
                f"Content parts of type '{type(part).__name__}' are not supported by "
                "Anthropic models.",
                param=where,
            )
    return blocks


def _turn(message: Message, param: str) -> tuple[str, list[dict[str, Any]]]:
    if message.role == "user":
        return "user", _content_blocks(message, param)
    if message.role == "assistant":
        blocks = _content_blocks(message, param)
        for index, call in enumerate(message.tool_calls or ()):
            blocks.append(
                {
                    "type": "tool_use",
                    "id": call.id,
                    "name": call.function.name,
                    "input": parse_arguments(
                        call.function.arguments, f"{param}.tool_calls[{index}].function.arguments"
                    ),
                }
            )
        return "assistant", blocks
    if message.role == "tool":
        if not message.tool_call_id:
            raise InvalidRequest("A tool message needs `tool_call_id`.", param=param)
        result = {
            "type": "tool_result",
            "tool_use_id": message.tool_call_id,
            "content": text_of(message.content, f"{param}.content"),
        }
        return "user", [result]
    raise InvalidRequest(
        f"Messages with role '{message.role}' are not supported by Anthropic models; "
        "use role 'tool'.",
        param=f"{param}.role",
    )


def _system_blocks(message: Message, param: str) -> list[dict[str, Any]]:
    """A system message as text blocks, keeping each part's (and the message's) breakpoint."""
    if not isinstance(message.content, list):
        text = text_of(message.content, f"{param}.content")
        return [_cached({"type": "text", "text": text}, message.cache_control)] if text else []
    blocks = []
    for index, part in enumerate(message.content):
        text = text_of([part], f"{param}.content[{index}]")
        if text:
            control = part.cache_control if isinstance(part, TextPart) else None
            blocks.append(_cached({"type": "text", "text": text}, control))
    if blocks and message.cache_control is not None:
        _cached(blocks[-1], message.cache_control)
    return blocks


def _has_cache_control(message: Message) -> bool:
    return message.cache_control is not None or (
        isinstance(message.content, list)
        and any(getattr(part, "cache_control", None) is not None for part in message.content)
    )


def translate_messages(
    messages: list[Message],
) -> tuple[str | list[dict[str, Any]] | None, list[dict[str, Any]]]:
    """(top-level system or None, alternating user/assistant turns). The system is one string,
    or text blocks when a system message carries a `cache_control` breakpoint."""
    system: list[str] = []
    system_blocks: list[dict[str, Any]] = []
    cached_system = False
    turns: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        param = f"messages[{index}]"
        if message.role in ("system", "developer"):
            text = text_of(message.content, f"{param}.content")
            if text:
                system.append(text)
            system_blocks += _system_blocks(message, param)
            cached_system = cached_system or _has_cache_control(message)
            continue
        role, blocks = _turn(message, param)
        if blocks and message.cache_control is not None:
            _cached(blocks[-1], message.cache_control)
        if not blocks:
            continue  # an empty turn carries nothing (and Anthropic rejects empty content)
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    if cached_system:
        return system_blocks, turns
    return ("\n\n".join(system) if system else None), turns


def translate_tools(call: ChatCall, fields: Mapping[str, Any]) -> dict[str, Any]:
    request = call.request
    out: dict[str, Any] = {}
    if request.tools:
        out["tools"] = [
            _cached(
                {
                    "name": tool.function.name,
                    **(
                        {"description": tool.function.description}
                        if tool.function.description
                        else {}
                    ),
                    "input_schema": tool.function.parameters
                    or {"type": "object", "properties": {}},
                },
                tool.cache_control,
            )
            for tool in request.tools
        ]
    choice: dict[str, Any] | None = None
    if isinstance(request.tool_choice, NamedToolChoice):
        choice = {"type": "tool", "name": request.tool_choice.function.name}
    elif request.tool_choice is not None:
        choice = {"type": {"auto": "auto", "none": "none", "required": "any"}[request.tool_choice]}
    if fields.get("parallel_tool_calls") is False and request.tools:
        choice = choice or {"type": "auto"}
        if choice["type"] != "none":
            choice["disable_parallel_tool_use"] = True
    if choice is not None:
        out["tool_choice"] = choice
    return out


def translate_request(call: ChatCall, stream: bool) -> dict[str, Any]:
    """The Messages API body for one chat call (pure; raises InvalidRequest)."""
    request = call.request
    fields = raw_fields(call)
    reject_unsupported(call, fields, SUPPORTED)
    if request.response_format is not None and request.response_format.type != "text":
        raise InvalidRequest(
            f"'{call.target.model.id}' cannot honour a JSON `response_format`; "
            "describe the format in the prompt or choose a model with the json capability.",
            param="response_format",
        )
    if request.temperature is not None and request.temperature > MAX_TEMPERATURE:
        raise InvalidRequest(
            f"Anthropic models accept `temperature` from 0 to {MAX_TEMPERATURE:g}; "
            f"got {request.temperature:g}.",
            param="temperature",
        )
    system, messages = translate_messages(request.messages)
    if not messages:
        raise InvalidRequest(
            "Anthropic models need at least one user or assistant message.", param="messages"
        )
    body: dict[str, Any] = {
        "model": call.target.model.upstream_model or call.target.model.id.split("/", 1)[1],
        "max_tokens": request.output_budget,
        "messages": messages,
    }
    if system is not None:
        body["system"] = system
    if (stops := stop_list(call)) is not None:
        body["stop_sequences"] = stops
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    body |= translate_tools(call, fields)
    if request.user:
        body["metadata"] = {"user_id": request.user}
    if stream:
        body["stream"] = True
    return body


# -- response -----------------------------------------------------------------------------------


def usage_of(usage: Any) -> tuple[TokenUsage, int]:
    """(usage with cache writes and reads counted in the prompt, cache reads)."""
    if not isinstance(usage, dict):
        return TokenUsage(0, 0), 0
    cached = count(usage.get("cache_read_input_tokens"))
    written = count(usage.get("cache_creation_input_tokens"))
    prompt = count(usage.get("input_tokens")) + written + cached
    return TokenUsage(prompt, count(usage.get("output_tokens")), cached, written), cached


def translate_response(call: ChatCall, message: Any) -> Completion:
    """A Messages API response → an OpenAI chat.completion (raises BadGateway on nonsense)."""
    if not isinstance(message, dict) or not isinstance(message.get("content"), list):
        raise BadGateway("The upstream provider answered without message content.")
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in message["content"]:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif block.get("type") == "tool_use":
            calls.append(
                tool_call(str(block.get("id")), str(block.get("name")), block.get("input"))
            )
        # thinking / redacted_thinking blocks are not content
    usage, cached = usage_of(message.get("usage"))
    reason = finish_reason(message.get("stop_reason"))
    body = completion_body(call, "".join(texts), calls, reason, usage, cached)
    matched = message.get("stop_sequence")
    if message.get("stop_reason") == "stop_sequence" and isinstance(matched, str):
        # OpenAI has no field for the matched string: reported as vLLM does.
        body["choices"][0]["stop_reason"] = matched
    return Completion(body, usage)


# -- errors -------------------------------------------------------------------------------------


def error_for(
    provider: str, error_type: str, message: str | None, retry_after: float | None
) -> GatewayError | None:
    """An Anthropic error `type` → the gateway's error; None for an unknown type."""
    if error_type == "invalid_request_error":
        return InvalidRequest(message or f"The upstream provider '{provider}' refused the request.")
    if error_type in ("authentication_error", "permission_error"):
        return BadGateway(
            f"The upstream provider '{provider}' refused the gateway's credentials "
            "(the operator's provider key, not yours)."
        )
    if error_type == "billing_error":
        return BadGateway(f"The upstream provider '{provider}' refused the operator's billing.")
    if error_type == "not_found_error":
        return BadGateway(f"The upstream provider '{provider}' does not know the configured model.")
    if error_type == "request_too_large":
        return RequestTooLarge(message or "The request is too large for the upstream provider.")
    if error_type == "rate_limit_error":
        return RateLimited(
            f"The upstream provider '{provider}' is rate limiting the gateway; retry later.",
            retry_after_s=retry_after if retry_after is not None else 1.0,
            retryable=True,
        )
    if error_type == "timeout_error":
        return GatewayTimeout(f"The upstream provider '{provider}' timed out.", retryable=True)
    if error_type in ("overloaded_error", "api_error"):
        return ServiceUnavailable(
            f"The upstream provider '{provider}' is "
            f"{'overloaded' if error_type == 'overloaded_error' else 'failing'}; retry later.",
            retry_after_s=retry_after,
            retryable=True,
        )
    return None


class AnthropicProvider(HttpProvider):
    reframer_kind: ClassVar[str] = "anthropic"

    # Built once per provider (settings and key are fixed for the app's life), never changed
    # (tracing copies them to add its own): a single answer's headers and a stream's.
    @functools.cached_property
    def _chat_headers(self) -> tuple[FixedHeaders, FixedHeaders]:
        def headers(accept: str) -> FixedHeaders:
            fixed = {
                "content-type": "application/json",
                "accept": accept,
                "anthropic-version": API_VERSION,
            }
            if self.api_key is not None:
                fixed["x-api-key"] = self.api_key.reveal()
            return FixedHeaders(fixed)

        return headers("application/json"), headers("text/event-stream")

    @functools.cached_property
    def _messages_url(self) -> str:
        return f"{self.settings.base_url.rstrip('/')}/v1/messages"

    def build_request(self, call: ChatCall, stream: bool) -> UpstreamRequest:
        model = call.target.model
        # One scan in Rust writes what translate_request and orjson write; a body it cannot
        # tell about (escaped keys, numbers orjson writes otherwise, ...) takes them.
        body = _core.anthropic_chat_request(
            call.body, model.upstream_model or model.id.split("/", 1)[1], DEFAULT_MAX_TOKENS, stream
        )
        if body is None:
            body = orjson.dumps(translate_request(call, stream))
        return UpstreamRequest(
            url=self._messages_url, headers=self._chat_headers[stream], body=body
        )

    # -- /v1/messages pass-through (MessagesProvider) -----------------------------------------
    def _messages_request(self, call: MessagesCall, url: str | None = None) -> UpstreamRequest:
        model = call.target.model.upstream_model or call.target.model.id.split("/", 1)[1]
        return UpstreamRequest(
            url=url or self._messages_url,
            headers=self._messages_headers(call),
            body=call.body.with_model(model),
        )

    @functools.cached_property
    def _passthrough_headers(self) -> dict[tuple[bool, str | None, str | None], FixedHeaders]:
        return {}

    def _messages_headers(self, call: MessagesCall) -> Mapping[str, str]:
        """The provider's headers and the client's `anthropic-version` / `anthropic-beta`:
        written out once per stream flag and client values (clients send a few), not per try;
        at most MAX_PASSTHROUGH_HEADERS kept, further ones made per try."""
        version = call.version
        beta = call.beta
        kept = self._passthrough_headers
        fixed = kept.get((call.stream, version, beta))
        if fixed is not None:
            return fixed
        headers = {
            "content-type": "application/json",
            "accept": "text/event-stream" if call.stream else "application/json",
            "anthropic-version": version or API_VERSION,
        }
        if beta:
            headers["anthropic-beta"] = beta
        if self.api_key is not None:
            headers["x-api-key"] = self.api_key.reveal()
        if len(kept) >= MAX_PASSTHROUGH_HEADERS:
            return headers
        try:
            fixed = FixedHeaders(headers)
        except ValueError:  # a CR or LF: the HTTP client refuses it at the send, as before
            return headers
        kept[(call.stream, version, beta)] = fixed
        return fixed

    async def messages(self, call: MessagesCall) -> Completion:
        """The client's Messages request with only `model` rewritten; the answer's `model` is
        the catalog id again."""
        message = await self._send_json(self._messages_request(call))
        if not isinstance(message, dict) or not isinstance(message.get("content"), list):
            raise BadGateway(f"The upstream provider '{self.name}' answered without content.")
        message["model"] = call.target.model.id
        usage, _cached = usage_of(message.get("usage"))
        return Completion(message, usage)

    async def messages_stream(self, call: MessagesCall) -> UpstreamStream:
        response = await self._send(self._messages_request(call), streamed=True)
        reframer = _core.Reframer(
            "anthropic_passthrough", call.target.model.id, call.message_id, 0, True
        )
        return ReframedStream(self, response, reframer)

    async def count_tokens(self, call: MessagesCall) -> int:
        """`POST {base_url}/v1/messages/count_tokens` with the client's body (model rewritten)."""
        url = f"{self._messages_url}/count_tokens"
        answer = await self._send_json(self._messages_request(call, url))
        tokens = answer.get("input_tokens") if isinstance(answer, dict) else None
        if not isinstance(tokens, int):
            raise BadGateway(f"The upstream provider '{self.name}' answered without input_tokens.")
        return tokens

    def parse_response(self, call: ChatCall, body: bytes) -> Completion:
        try:
            message = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise BadGateway(
                f"The upstream provider '{self.name}' answered with invalid JSON."
            ) from exc
        try:
            return translate_response(call, message)
        except BadGateway as exc:
            raise BadGateway(f"The upstream provider '{self.name}': {exc.message}") from exc

    def map_error(self, status: int, body: bytes, headers: Mapping[str, str]) -> GatewayError:
        error_type: str | None = None
        message: str | None = None
        try:
            parsed = orjson.loads(body)
            error_type = error_message(parsed, "error", "type")
            message = error_message(parsed, "error", "message")
        except orjson.JSONDecodeError:
            pass
        if message is not None:
            message = self.redact(message)[:1000]
        retry_after = retry_after_from(headers)
        mapped = error_for(self.name, error_type or "", message, retry_after)
        return mapped or status_error(self.name, status, message, retry_after)

    def map_stream_error(self, kind: str, message: str) -> GatewayError:
        """`event: error` mid-stream; its type is one of the HTTP error types."""
        mapped = error_for(self.name, kind, self.redact(message)[:500], None)
        if mapped is None or isinstance(mapped, InvalidRequest | RequestTooLarge):
            # After the first byte the client's request was accepted: this is the upstream's.
            return super().map_stream_error(kind, message)
        return mapped
