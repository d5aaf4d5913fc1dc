"""The Response object: from a chat.completion (non-streamed), and the stream's failure events.

Shapes as the official `openai` SDK's `openai.types.responses` declare them. Item ids derive
from the response id (`resp_X` → `msg_X_<output index>`, `fc_X_<index>`), exactly as the Rust
reframer `openai_to_responses` names them in streams. A finish reason of `length` or
`content_filter` makes the response `incomplete` with that reason.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.billing import TokenUsage, count
from gateway.errors import BadGateway, GatewayError
from gateway.responses.translate import text_format_body
from gateway.schemas.responses import ResponsesRequest


def response_fields(request: ResponsesRequest) -> dict[str, Any]:
    """The request's settings as every response object echoes them."""
    return {
        "instructions": request.instructions,
        "max_output_tokens": request.max_output_tokens,
        "metadata": request.metadata or {},
        "parallel_tool_calls": (
            True if request.parallel_tool_calls is None else request.parallel_tool_calls
        ),
        "previous_response_id": request.previous_response_id,
        "reasoning": {"effort": None, "summary": None},
        "store": request.store,
        "temperature": 1.0 if request.temperature is None else request.temperature,
        "text": {"format": text_format_body(request.text.format if request.text else None)},
        "tool_choice": request.tool_choice or "auto",
        "tools": [
            {
                "type": "function",
                "name": tool.name,
                "description": tool.description,
                "parameters": tool.parameters,
                "strict": tool.strict,
            }
            for tool in request.function_tools()
        ],
        "top_p": 1.0 if request.top_p is None else request.top_p,
        "truncation": "disabled",
        "user": request.user,
        "background": False,
    }


def item_stem(response_id: str) -> str:
    return response_id.split("_", 1)[1] if "_" in response_id else response_id


def usage_body(usage: TokenUsage, cached: int, written: int) -> dict[str, Any]:
    """Cache reads and writes (Anthropic's, reported by the gateway's chat answers as
    `cache_creation_input_tokens`) are part of input_tokens, as OpenAI counts them."""
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": written},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def response_object(
    response_id: str,
    created_at: int,
    model: str,
    fields: dict[str, Any],
    *,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None,
    incomplete: str | None = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "model": model,
        "status": status,
        "error": error,
        "incomplete_details": {"reason": incomplete} if incomplete else None,
        "output": output,
        "usage": usage,
        **fields,
    }


def to_response(
    completion: dict[str, Any],
    response_id: str,
    created_at: int,
    model: str,
    fields: dict[str, Any],
) -> dict[str, Any]:
    """An OpenAI chat.completion (as the providers return it) → a Response object."""
    choices = completion.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else None
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(choice, dict) or not isinstance(message, dict):
        raise BadGateway("The upstream provider answered without a message.")
    stem = item_stem(response_id)
    output: list[dict[str, Any]] = []
    text = message.get("content")
    if isinstance(text, str) and text:
        output.append(
            {
                "id": f"msg_{stem}_{len(output)}",
                "type": "message",
                "status": "completed",
                "content": [
                    {"type": "output_text", "annotations": [], "logprobs": [], "text": text}
                ],
                "role": "assistant",
            }
        )
    for call in message.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            raise BadGateway("The upstream model answered with a malformed tool call.")
        index = len(output)
        output.append(
            {
                "id": f"fc_{stem}_{index}",
                "type": "function_call",
                "status": "completed",
                "arguments": str(function.get("arguments") or ""),
                "call_id": str(call.get("id") or f"call_{stem}_{index}"),
                "name": str(function.get("name") or ""),
            }
        )
    usage = completion.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    details = usage.get("prompt_tokens_details")
    cached = count(details.get("cached_tokens")) if isinstance(details, dict) else 0
    written = count(usage.get("cache_creation_input_tokens"))
    tokens = TokenUsage(count(usage.get("prompt_tokens")), count(usage.get("completion_tokens")))
    incomplete = INCOMPLETE.get(str(choice.get("finish_reason")))
    return response_object(
        response_id,
        created_at,
        model,
        fields,
        status="incomplete" if incomplete else "completed",
        output=output,
        usage=usage_body(tokens, cached, written),
        incomplete=incomplete,
    )


# The gateway's error types → the codes a Response's `error` may carry (openai.types.responses
# ResponseError); the gateway's own type is in the `error` event before it.
FAILURE_CODES = {"rate_limit_exceeded": "rate_limit_exceeded"}


def failure_events(
    error: GatewayError,
    sequence_number: int,
    response_id: str,
    created_at: int,
    model: str,
    fields: dict[str, Any],
) -> bytes:
    """What ends a stream that failed after its first byte: an `error` event (the gateway's
    error type as `code`), then `response.failed` (the response, status failed)."""
    failed = response_object(
        response_id,
        created_at,
        model,
        fields,
        status="failed",
        output=[],
        usage=None,
        error={"code": FAILURE_CODES.get(error.type, "server_error"), "message": error.message},
    )
    error_data = {
        "type": "error",
        "sequence_number": sequence_number,
        "code": error.type,
        "message": error.message,
        "param": error.param,
    }
    failed_data = {
        "type": "response.failed",
        "sequence_number": sequence_number + 1,
        "response": failed,
    }
    return (
        b"event: error\ndata: "
        + orjson.dumps(error_data)
        + b"\n\nevent: response.failed\ndata: "
        + orjson.dumps(failed_data)
        + b"\n\n"
    )
