"""The Anthropic Messages API in front of every model: request, answer and error translation.

`POST /v1/messages` keeps ONE request path (gateway/api/messages.py): the Anthropic request is
translated to the gateway's OpenAI-shaped `ChatRequest` for routing, admission and — on
non-Anthropic targets — the provider call; `anthropic/…` targets get the client's own body
(pass-through). This module is pure: no I/O.

Request (Anthropic → OpenAI chat):
- `system` (string or text blocks) → one system message;
- user turns: `tool_result` blocks → `tool` messages first (OpenAI wants them right after the
  assistant's calls), the other blocks → one user message (text parts, image parts: base64 →
  data: URL, url → the URL);
- assistant turns: text → content, `tool_use` → `tool_calls` (input as compact JSON),
  thinking blocks dropped (not content);
- tools → function tools (`input_schema` → `parameters`); tool_choice auto/any/tool/none →
  auto/required/named/none; `disable_parallel_tool_use` → `parallel_tool_calls: false`;
- stop_sequences → stop; metadata.user_id → user; max_tokens, temperature, top_p as they are;
  top_k is forwarded as an extra field (OpenAI-compatible servers such as vLLM honour it; the
  Gemini translation refuses it under the parameter rule);
- document blocks, server tools (no input_schema) and unknown top-level fields → 400.

Answer (OpenAI chat.completion → Anthropic message): content → a text block, tool calls →
tool_use blocks, finish_reason → stop_reason (stop → end_turn, length → max_tokens,
tool_calls → tool_use, content_filter → refusal; stop with vLLM's `stop_reason` string →
stop_sequence and that string), usage → input/output tokens (cached prompt tokens as
cache_read_input_tokens, cache writes as cache_creation_input_tokens). Streams: the Rust
reframer `openai_to_anthropic`.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson

from gateway.billing import TokenUsage, count
from gateway.errors import BadGateway, GatewayError, InvalidRequest
from gateway.schemas.anthropic import (
    KNOWN_FIELDS,
    Base64Source,
    DocumentBlock,
    ImageBlock,
    InputMessage,
    MessagesRequest,
    RedactedThinkingBlock,
    TextBlock,
    ThinkingBlock,
    ToolResultBlock,
    ToolUseBlock,
    UnknownBlock,
)
from gateway.schemas.openai import (
    ChatRequest,
    ContentPart,
    FunctionCall,
    FunctionDef,
    ImagePart,
    ImageUrl,
    Message,
    NamedFunction,
    NamedToolChoice,
    StreamOptions,
    TextPart,
    Tool,
    ToolCall,
    chat_body,
)

# -- errors -------------------------------------------------------------------------------------

# The gateway's error types (DESIGN) → Anthropic's names; statuses and Retry-After unchanged.
ERROR_TYPES = {
    "invalid_request": "invalid_request_error",
    "authentication_error": "authentication_error",
    "insufficient_credits": "billing_error",
    "permission_denied": "permission_error",
    "not_found": "not_found_error",
    "request_too_large": "request_too_large",
    "request_timeout": "timeout_error",  # 408: Anthropic has no name of its own for it
    "rate_limit_exceeded": "rate_limit_error",
    "internal_error": "api_error",
    "bad_gateway": "api_error",
    "service_unavailable": "overloaded_error",
    "gateway_timeout": "timeout_error",
}


def error_body(error: GatewayError) -> dict[str, Any]:
    """`{"type": "error", "error": {"type": …, "message": …}}`."""
    return {
        "type": "error",
        "error": {"type": ERROR_TYPES.get(error.type, "api_error"), "message": error.message},
    }


def error_event(error: GatewayError) -> bytes:
    """The final event of a Messages stream that failed after its first byte."""
    return b"event: error\ndata: " + orjson.dumps(error_body(error)) + b"\n\n"


PING_EVENT = b'event: ping\ndata: {"type":"ping"}\n\n'

# -- request ------------------------------------------------------------------------------------


def _image_part(block: ImageBlock) -> ImagePart:
    source = block.source
    if isinstance(source, Base64Source):
        return ImagePart(image_url=ImageUrl(url=f"data:{source.media_type};base64,{source.data}"))
    return ImagePart(image_url=ImageUrl(url=source.url))


class _Refusals:
    """What the translation cannot express. Raised only when a translated target is tried, so
    that the same request still passes through to an Anthropic target untouched."""

    def __init__(self) -> None:
        self.first: InvalidRequest | None = None

    def add(self, message: str, param: str) -> None:
        if self.first is None:
            self.first = InvalidRequest(message, param=param)


def _tool_result_text(block: ToolResultBlock, param: str, refusals: _Refusals) -> str:
    if block.content is None or isinstance(block.content, str):
        text = block.content or ""
    else:
        texts: list[str] = []
        for index, item in enumerate(block.content):
            if item.get("type") == "text" and isinstance(item.get("text"), str):
                texts.append(item["text"])
            else:
                refusals.add(
                    f"Blocks of type '{item.get('type')}' inside tool results can only be sent "
                    "to Anthropic models (anthropic/…).",
                    f"{param}.content[{index}]",
                )
        text = "\n".join(texts)
    return f"Error: {text}" if block.is_error else text


def _user_turn(message: InputMessage, param: str, refusals: _Refusals) -> list[Message]:
    if isinstance(message.content, str):
        return [Message(role="user", content=message.content)]
    tools: list[Message] = []
    parts: list[ContentPart] = []
    for index, block in enumerate(message.blocks(param)):
        where = f"{param}.content[{index}]"
        if isinstance(block, TextBlock):
            parts.append(TextPart(text=block.text))
        elif isinstance(block, ImageBlock):
            parts.append(_image_part(block))
        elif isinstance(block, ToolResultBlock):
            tools.append(
                Message(
                    role="tool",
                    tool_call_id=block.tool_use_id,
                    content=_tool_result_text(block, where, refusals),
                )
            )
        elif isinstance(block, (ThinkingBlock, RedactedThinkingBlock)):
            continue
        else:
            _untranslatable(block, where, refusals)
    return tools + ([Message(role="user", content=parts)] if parts else [])


def _assistant_turn(message: InputMessage, param: str, refusals: _Refusals) -> Message:
    if isinstance(message.content, str):
        return Message(role="assistant", content=message.content)
    texts: list[str] = []
    calls: list[ToolCall] = []
    for index, block in enumerate(message.blocks(param)):
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ToolUseBlock):
            arguments = orjson.dumps(block.input).decode()
            function = FunctionCall(name=block.name, arguments=arguments)
            calls.append(ToolCall(id=block.id, function=function))
        elif isinstance(block, (ThinkingBlock, RedactedThinkingBlock)):
            continue
        else:
            _untranslatable(block, f"{param}.content[{index}]", refusals)
    return Message(role="assistant", content="".join(texts) or None, tool_calls=calls or None)


def _untranslatable(block: object, param: str, refusals: _Refusals) -> None:
    if isinstance(block, UnknownBlock):
        kind = block.type
    elif isinstance(block, DocumentBlock):
        kind = "document"
    else:
        kind = type(block).__name__
    refusals.add(
        f"Content blocks of type '{kind}' in this position can only be sent to Anthropic "
        "models (anthropic/…).",
        param,
    )


def _tools(request: MessagesRequest, refusals: _Refusals) -> list[Tool] | None:
    if not request.tools:
        return None
    tools: list[Tool] = []
    for index, tool in enumerate(request.tools):
        if tool.input_schema is None:
            refusals.add(
                f"The server tool '{tool.name}' can only be used with Anthropic models.",
                f"tools[{index}]",
            )
            continue
        function = FunctionDef(
            name=tool.name,
            description=tool.description or None,
            parameters=tool.input_schema or None,
        )
        tools.append(Tool(function=function))
    return tools or None


def _tool_choice(
    request: MessagesRequest,
) -> Literal["none", "auto", "required"] | NamedToolChoice | None:
    choice = request.tool_choice
    if choice is None:
        return None
    if choice.type == "tool":
        if not choice.name:
            raise InvalidRequest("tool_choice of type 'tool' needs a name.", param="tool_choice")
        return NamedToolChoice(function=NamedFunction(name=choice.name))
    if choice.type == "any":
        return "required"
    return choice.type


class Translation:
    """`chat`: routing, admission, and the call of translated targets; `body`: what those
    targets' providers read as the client's raw body, written when one first asks (a
    pass-through to an Anthropic target never does); `fields`: the client's body parsed (what
    a pass-through sends, `model` rewritten); `refusal`: raised when a translated target is
    tried."""

    __slots__ = ("_body", "_extra", "chat", "fields", "refusal")

    def __init__(
        self,
        chat: ChatRequest,
        extra: dict[str, Any],
        fields: dict[str, Any],
        refusal: InvalidRequest | None,
    ) -> None:
        self.chat = chat
        self._extra = extra  # members of the chat body that ChatRequest does not declare
        self.fields = fields
        self.refusal = refusal
        self._body: bytes | None = None

    @property
    def body(self) -> bytes:
        body = self._body
        if body is None:
            body = self._body = orjson.dumps(chat_body(self.chat) | self._extra)
        return body


# Values of Anthropic-only fields that ask for the default behaviour: accepted by translation
# (as 0004's neutral values), since clients such as Claude Code send them routinely.
NEUTRAL: dict[str, object] = {"thinking": {"type": "disabled"}, "service_tier": "auto"}


def to_chat_request(request: MessagesRequest, raw: bytes) -> Translation:
    """The OpenAI-shaped request for the Anthropic one (pure)."""
    try:
        fields = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:  # decoded by msgspec already; kept for safety
        raise InvalidRequest("The request body is not valid JSON.") from exc
    refusals = _Refusals()
    messages: list[Message] = []
    if request.system:
        system = (
            request.system
            if isinstance(request.system, str)
            else "\n\n".join(b.text for b in request.system)
        )
        messages.append(Message(role="system", content=system))
    for index, message in enumerate(request.messages):
        param = f"messages[{index}]"
        if message.role == "user":
            messages.extend(_user_turn(message, param, refusals))
        else:
            messages.append(_assistant_turn(message, param, refusals))
    chat = ChatRequest(
        model=request.model,
        messages=messages or [Message(role="user", content="")],
        max_tokens=request.max_tokens,
        temperature=request.temperature,
        top_p=request.top_p,
        stop=request.stop_sequences or None,
        stream=request.stream,
        stream_options=StreamOptions(include_usage=True) if request.stream else None,
        tools=_tools(request, refusals),
        tool_choice=_tool_choice(request),
        user=request.metadata.user_id if request.metadata else None,
        models=request.models,
    )
    extra: dict[str, Any] = {}
    if request.top_k is not None:
        extra["top_k"] = request.top_k
    if request.tool_choice is not None and request.tool_choice.disable_parallel_tool_use:
        extra["parallel_tool_calls"] = False
    for key, value in fields.items():
        if key not in KNOWN_FIELDS and value is not None and NEUTRAL.get(key) != value:
            refusals.add(f"`{key}` can only be sent to Anthropic models (anthropic/…).", key)
    return Translation(chat, extra, fields, refusals.first)


# -- answer -------------------------------------------------------------------------------------

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def usage_body(usage: TokenUsage, cached: int, written: int = 0) -> dict[str, int]:
    body = {"input_tokens": max(0, usage.prompt_tokens - cached - written)}
    if written:
        body["cache_creation_input_tokens"] = written
    if cached:
        body["cache_read_input_tokens"] = cached
    body["output_tokens"] = usage.completion_tokens
    return body


def to_message(completion: dict[str, Any], model: str, message_id: str) -> dict[str, Any]:
    """An OpenAI chat.completion (as the providers return it) → an Anthropic message."""
    choices = completion.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else None
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(choice, dict) or not isinstance(message, dict):
        raise BadGateway("The upstream provider answered without a message.")
    content: list[dict[str, Any]] = []
    if isinstance(message.get("content"), str) and message["content"]:
        content.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        try:
            arguments = orjson.loads(function.get("arguments") or "{}")
        except orjson.JSONDecodeError:
            arguments = None
        if not isinstance(arguments, dict):
            raise BadGateway(
                "The upstream model called a tool with arguments that are not a JSON object."
            )
        content.append(
            {
                "type": "tool_use",
                "id": str(call.get("id") or ""),
                "name": str(function.get("name") or ""),
                "input": arguments,
            }
        )
    usage = completion.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    details = usage.get("prompt_tokens_details")
    cached = count(details.get("cached_tokens")) if isinstance(details, dict) else 0
    written = count(usage.get("cache_creation_input_tokens"))
    tokens = TokenUsage(count(usage.get("prompt_tokens")), count(usage.get("completion_tokens")))
    stop_reason = STOP_REASONS.get(str(choice.get("finish_reason")), "end_turn")
    # vLLM names the stop string that ended the text in the choice's `stop_reason` (a number
    # there is a stop token id, not a sequence); OpenAI and Gemini never say.
    matched = choice.get("stop_reason")
    stop_sequence = matched if stop_reason == "end_turn" and isinstance(matched, str) else None
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": "stop_sequence" if stop_sequence is not None else stop_reason,
        "stop_sequence": stop_sequence,
        "usage": usage_body(tokens, cached, written),
    }
