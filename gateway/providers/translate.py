"""Helpers shared by the providers that translate OpenAI chat calls to a foreign format.

Nothing here knows a provider: each provider module declares what it can honour and calls these.
The rule they enforce: a parameter the target cannot honour is a 400 naming it, never dropped.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Collection, Mapping
from typing import Any

import orjson

from gateway.billing import TokenUsage
from gateway.errors import InvalidRequest
from gateway.providers.base import ChatCall
from gateway.schemas.openai import ContentPart, RefusalPart, TextPart

# Fields every translating provider handles itself (or that only steer the gateway).
TRANSLATED = frozenset(
    {
        "model",
        "models",  # the request's own fallbacks: the gateway's, never sent upstream
        "messages",
        "stream",
        "stream_options",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "tools",
        "tool_choice",
        "response_format",
        "n",
    }
)

# Values that ask for the upstream's default behaviour: sending them is not a request for a
# feature, so they are accepted even where the feature does not exist.
NEUTRAL: dict[str, object] = {
    "n": 1,
    "logprobs": False,
    "top_logprobs": 0,
    "frequency_penalty": 0,
    "presence_penalty": 0,
    "parallel_tool_calls": True,
}


def raw_fields(call: ChatCall) -> dict[str, Any]:
    """The client's body as a dict (already validated by msgspec)."""
    try:
        fields = orjson.loads(call.body)
    except orjson.JSONDecodeError as exc:  # validated before; kept for safety
        raise InvalidRequest("The request body is not valid JSON.") from exc
    if not isinstance(fields, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return fields


def first_refused(
    fields: Mapping[str, Any], supported: Collection[str], n: int | None
) -> str | None:
    """The first field a target that honours `supported` (besides TRANSLATED) cannot honour;
    nulls and neutral values pass, and such a target makes one choice per request."""
    for key, value in fields.items():
        if key in TRANSLATED or key in supported or value is None:
            continue
        if key in NEUTRAL and value == NEUTRAL[key]:
            continue
        return key
    if n is not None and n > 1:
        return "n"
    return None


def reject_unsupported(call: ChatCall, fields: dict[str, Any], supported: Collection[str]) -> None:
    """400 naming the first field that the target cannot honour."""
    refused = first_refused(fields, supported, call.request.n)
    if refused == "n":
        raise InvalidRequest(
            f"'{call.target.model.id}' generates one choice per request: `n` must be 1.",
            param="n",
        )
    if refused is not None:
        raise InvalidRequest(
            f"`{refused}` is not supported by '{call.target.model.id}' "
            f"(provider kind {call.target.provider.kind}); remove it or choose another model.",
            param=refused,
        )


def parse_data_url(url: str, param: str) -> tuple[str, str]:
    """`data:<mime>;base64,<data>` -> (mime, base64 data); 400 naming `param` otherwise."""
    header, comma, data = url.partition(",")
    if not comma or not header.startswith("data:") or not header.endswith(";base64"):
        raise InvalidRequest(
            "An image data URL must look like data:<mime type>;base64,<data>.", param=param
        )
    mime = header[len("data:") : -len(";base64")].lower()
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest("An image data URL does not hold valid base64.", param=param) from exc
    return mime, data


def is_http_url(url: str) -> bool:
    return url.startswith(("http://", "https://"))


def parts_of(content: str | list[ContentPart] | None) -> list[ContentPart]:
    if content is None:
        return []
    if isinstance(content, str):
        return [TextPart(text=content)]
    return list(content)


def text_of(content: str | list[ContentPart] | None, param: str) -> str:
    """The text of a message that may only hold text (system, tool results)."""
    texts: list[str] = []
    for index, part in enumerate(parts_of(content)):
        if isinstance(part, TextPart):
            texts.append(part.text)
        elif isinstance(part, RefusalPart):
            texts.append(part.refusal)
        else:
            raise InvalidRequest(
                "Only text content is supported in this message.", param=f"{param}[{index}]"
            )
    return "\n\n".join(texts) if len(texts) > 1 else "".join(texts)


def parse_arguments(arguments: str, param: str) -> dict[str, Any]:
    """A tool call's JSON-string arguments as the object the foreign format wants."""
    if not arguments.strip():
        return {}
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest("Tool call arguments must be a JSON object.", param=param) from exc
    if not isinstance(parsed, dict):
        raise InvalidRequest("Tool call arguments must be a JSON object.", param=param)
    return parsed


def stop_list(call: ChatCall) -> list[str] | None:
    stop = call.request.stop
    if stop is None:
        return None
    return [stop] if isinstance(stop, str) else list(stop)


def completion_body(
    call: ChatCall,
    text: str,
    tool_calls: list[dict[str, Any]],
    finish_reason: str,
    usage: TokenUsage,
    cached_tokens: int,
) -> dict[str, Any]:
    """An OpenAI chat.completion object with the gateway's id, created and catalog model."""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": text if text or not tool_calls else None,
        "refusal": None,
    }
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": call.response_id,
        "object": "chat.completion",
        "created": call.created,
        "model": call.target.model.id,
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
        ],
        "usage": usage_body(usage, cached_tokens),
    }


def usage_body(usage: TokenUsage, cached_tokens: int) -> dict[str, Any]:
    """OpenAI's usage object; cache writes (no OpenAI field) as `cache_creation_input_tokens`,
    the name Anthropic and LiteLLM give them, only when there were some."""
    body: dict[str, Any] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }
    if usage.cache_write_tokens:
        body["cache_creation_input_tokens"] = usage.cache_write_tokens
    return body


def tool_call(call_id: str, name: str, arguments: Any) -> dict[str, Any]:
    """One OpenAI tool call; `arguments` becomes compact JSON text."""
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": orjson.dumps(arguments).decode()},
    }


def error_message(parsed: Any, *path: str) -> str | None:
    """A string found at `path` inside a parsed error body, else None."""
    node = parsed
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node if isinstance(node, str) else None
