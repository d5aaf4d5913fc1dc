"""msgspec Structs for the Anthropic Messages request (`POST /v1/messages`), decoded once.

Declared as Anthropic documents it: model, max_tokens (required), messages of text / image /
tool_use / tool_result (and document / thinking) blocks, system as a string or text blocks,
stop_sequences, temperature (0-1), top_p, top_k, tools with input_schema, tool_choice, metadata,
stream. Unknown fields are ignored by the Structs and kept in the raw body: pass-through to an
Anthropic upstream forwards them; translation refuses them (gateway/messages.py).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta, Struct

from gateway.errors import InvalidRequest
from gateway.schemas.decoding import decode_json
from gateway.schemas.openai import MAX_REQUEST_FALLBACKS, ModelId

T = TypeVar("T")


class _Open(Struct, kw_only=True, omit_defaults=True):
    """Unknown fields (cache_control, citations, …) are ignored by the Struct."""


class TextBlock(_Open, tag="text", tag_field="type"):
    text: str


class Base64Source(_Open, tag="base64", tag_field="type"):
    media_type: str
    data: str


class UrlSource(_Open, tag="url", tag_field="type"):
    url: Annotated[str, Meta(min_length=1)]


class ImageBlock(_Open, tag="image", tag_field="type"):
    source: Base64Source | UrlSource


class ToolUseBlock(_Open, tag="tool_use", tag_field="type"):
    id: str
    name: str
    input: dict[str, Any]


class ToolResultBlock(_Open, tag="tool_result", tag_field="type"):
    tool_use_id: str
    # text, image, and block types the translation does not know (search_result, document, …)
    content: str | list[dict[str, Any]] | None = None
    is_error: bool | None = None


class DocumentBlock(_Open, tag="document", tag_field="type"):
    source: dict[str, Any]


class ThinkingBlock(_Open, tag="thinking", tag_field="type"):
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(_Open, tag="redacted_thinking", tag_field="type"):
    data: str


Block = (
    TextBlock
    | ImageBlock
    | ToolUseBlock
    | ToolResultBlock
    | DocumentBlock
    | ThinkingBlock
    | RedactedThinkingBlock
)


class UnknownBlock(Struct, frozen=True):
    """A block type this gateway does not declare (server_tool_use, search_result, …): kept as
    is by pass-through, refused by translation."""

    type: str


KNOWN_BLOCKS = frozenset(
    {"text", "image", "tool_use", "tool_result", "document", "thinking", "redacted_thinking"}
)


class InputMessage(_Open):
    role: Literal["user", "assistant"]
    # Blocks stay dicts here so that unknown block types pass through; `blocks()` validates.
    content: str | list[dict[str, Any]]

    def blocks(self, param: str) -> list[Block | UnknownBlock]:
        """The content blocks, each known type validated (InvalidRequest naming the block)."""
        if isinstance(self.content, str):
            return [TextBlock(text=self.content)]
        out: list[Block | UnknownBlock] = []
        for index, raw in enumerate(self.content):
            kind = raw.get("type")
            where = f"{param}.content[{index}]"
            if not isinstance(kind, str):
                raise InvalidRequest("A content block needs a string `type`.", param=where)
            if kind not in KNOWN_BLOCKS:
                out.append(UnknownBlock(kind))
                continue
            try:
                out.append(msgspec.convert(raw, type=Block))
            except msgspec.ValidationError as exc:
                message, _, location = str(exc).partition(" - at `$")
                inner = location.rstrip("`").lstrip(".")
                full = f"{where}.{inner}" if inner else where
                raise InvalidRequest(f"{message} (at {full})", param=full) from exc
        return out


class ToolDef(_Open):
    name: Annotated[str, Meta(min_length=1, max_length=128)]
    description: str | None = None
    # Absent on Anthropic's server tools (which carry a versioned `type`): pass-through only.
    input_schema: dict[str, Any] | None = None
    type: str | None = None


class ToolChoice(_Open):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class Metadata(_Open):
    user_id: str | None = None


class MessagesRequest(_Open):
    model: Annotated[str, Meta(min_length=1, max_length=256)]
    max_tokens: Annotated[int, Meta(ge=1)]
    messages: Annotated[list[InputMessage], Meta(min_length=1)]
    system: str | list[TextBlock] | None = None
    stop_sequences: list[str] | None = None
    temperature: Annotated[float, Meta(ge=0, le=1)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    top_k: Annotated[int, Meta(ge=0)] | None = None
    tools: list[ToolDef] | None = None
    tool_choice: ToolChoice | None = None
    metadata: Metadata | None = None
    stream: bool = False
    # the gateway's extension, as on chat: fallbacks tried in order after `model`
    models: Annotated[list[ModelId], Meta(max_length=MAX_REQUEST_FALLBACKS)] | None = None


class CountTokensRequest(_Open):
    """`POST /v1/messages/count_tokens`: a Messages request without the generation fields."""

    model: Annotated[str, Meta(min_length=1, max_length=256)]
    messages: Annotated[list[InputMessage], Meta(min_length=1)]
    system: str | list[TextBlock] | None = None
    tools: list[ToolDef] | None = None
    tool_choice: ToolChoice | None = None

    def as_messages_request(self) -> MessagesRequest:
        return MessagesRequest(
            model=self.model,
            max_tokens=1,
            messages=self.messages,
            system=self.system,
            tools=self.tools,
            tool_choice=self.tool_choice,
        )


# Top-level fields the translation honours; others (thinking, service_tier, mcp_servers, …) are
# forwarded by pass-through and refused (400 naming them) by translation.
KNOWN_FIELDS = frozenset(MessagesRequest.__struct_fields__)

_decoder = msgspec.json.Decoder(MessagesRequest)
_count_decoder = msgspec.json.Decoder(CountTokensRequest)


def decode_count_tokens_request(body: bytes) -> CountTokensRequest:
    return decode_json(_count_decoder, body)


def decode_messages_request(body: bytes) -> MessagesRequest:
    return decode_json(_decoder, body)
