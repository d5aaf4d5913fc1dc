"""msgspec Structs for the OpenAI-shaped request bodies, decoded and validated once per request.

Only the fields the gateway reads or must check are declared; every other field is accepted and,
for OpenAI-shaped upstreams, passed through from the raw body untouched.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Annotated, Any, Generic, Literal, TypeVar, overload

import msgspec
import orjson
from msgspec import Meta, Struct

from gateway._core import chat_request_messages
from gateway.schemas.decoding import decode_json

DEFAULT_TEMPERATURE = 1.0
DEFAULT_TOP_P = 1.0
DEFAULT_MAX_TOKENS = 4096


class _Open(Struct, kw_only=True, omit_defaults=True):
    """Unknown fields are ignored by the Struct (and kept in the raw body)."""


class CacheControl(_Open):
    """Anthropic's prompt-cache breakpoint, as LiteLLM and OpenRouter accept it in OpenAI
    bodies: `{"type": "ephemeral", "ttl"?: "5m" | "1h"}`."""

    type: Literal["ephemeral"]
    ttl: Literal["5m", "1h"] | None = None


class TextPart(_Open, tag="text", tag_field="type"):
    text: str
    cache_control: CacheControl | None = None


class ImageUrl(_Open):
    url: Annotated[str, Meta(min_length=1)]
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Open, tag="image_url", tag_field="type"):
    image_url: ImageUrl
    cache_control: CacheControl | None = None


class InputAudioPart(_Open, tag="input_audio", tag_field="type"):
    input_audio: dict[str, Any]


class FilePart(_Open, tag="file", tag_field="type"):
    file: dict[str, Any]


class RefusalPart(_Open, tag="refusal", tag_field="type"):
    refusal: str


ContentPart = TextPart | ImagePart | InputAudioPart | FilePart | RefusalPart


class FunctionCall(_Open):
    name: str
    arguments: str


class ToolCall(_Open):
    id: str
    function: FunctionCall
    type: Literal["function"] = "function"


class Message(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    # On a whole message: the breakpoint goes on its last content block (LiteLLM's rule).
    cache_control: CacheControl | None = None


class FunctionDef(_Open):
    name: Annotated[str, Meta(min_length=1, max_length=64)]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Open):
    function: FunctionDef
    type: Literal["function"] = "function"
    cache_control: CacheControl | None = None


class NamedFunction(_Open):
    name: str


class NamedToolChoice(_Open):
    function: NamedFunction
    type: Literal["function"] = "function"


class StreamOptions(_Open):
    include_usage: bool = False


class ResponseFormat(_Open):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


MAX_REQUEST_FALLBACKS = 8
ModelId = Annotated[str, Meta(min_length=1, max_length=256)]


_T = TypeVar("_T")


class _Remembered(Generic[_T]):
    """`functools.cached_property` without its lock: the first read computes the value and
    keeps it in the instance's `__dict__`, where every later read finds it first. CPython
    3.11's takes an RLock around each first read (60 opcodes of Python in its `__get__`, as
    many as the counting itself: loadtests/bench/opcodes.py); 3.12 dropped that lock. A
    request is read on one thread."""

    def __init__(self, compute: Callable[[Any], _T]) -> None:
        self.compute = compute
        self.name = compute.__name__
        self.__doc__ = compute.__doc__

    @overload
    def __get__(self, instance: None, owner: type) -> _Remembered[_T]: ...
    @overload
    def __get__(self, instance: object, owner: type) -> _T: ...
    def __get__(self, instance: object, owner: type) -> _T | _Remembered[_T]:
        if instance is None:
            return self
        value = instance.__dict__[self.name] = self.compute(instance)
        return value


class ChatRequest(_Open, dict=True):
    """`dict=True` only to hold the prompt's counts, computed once per request (the bounds, the
    routing policy, the reservation and the upstream token estimate all read them)."""

    model: Annotated[str, Meta(min_length=1, max_length=256)]
    messages: Annotated[list[Message], Meta(min_length=1)]
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    max_tokens: Annotated[int, Meta(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Meta(ge=1)] | None = None
    stop: str | Annotated[list[str], Meta(max_length=4)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    response_format: ResponseFormat | None = None
    user: str | None = None
    n: Annotated[int, Meta(ge=1, le=128)] | None = None
    seed: int | None = None
    # Fallbacks of this request (as OpenRouter takes them): tried in order after `model`.
    models: Annotated[list[ModelId], Meta(max_length=MAX_REQUEST_FALLBACKS)] | None = None

    @property
    def output_budget(self) -> int:
        """The most tokens this request may generate (the seed's default when unset)."""
        return self.max_completion_tokens or self.max_tokens or DEFAULT_MAX_TOKENS

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def needs(self) -> set[str]:
        """Capabilities the target model must have to serve this request."""
        needed: set[str] = set()
        if self.tools:
            needed.add("tools")
        if self.response_format is not None and self.response_format.type != "text":
            needed.add("json")
        if self.image_parts():
            needed.add("vision")
        return needed

    def prompt_chars(self) -> int:
        """Characters of the prompt's text, tool calls and tool definitions."""
        return self.prompt_counts[0]

    def image_parts(self) -> int:
        return self.prompt_counts[1]

    def content_parts(self) -> int:
        """Content parts of all messages together (a string content counts none)."""
        return self.prompt_counts[2]

    @_Remembered
    def prompt_counts(self) -> tuple[int, int, int, int]:
        """(characters, image parts, content parts, messages), counted in one pass over the
        messages (the request path reads the tuple: no method call per count)."""
        total = images = parts = count = 0
        for message in self.messages:
            count += 1  # (not len(): no call)
            content = message.content
            if isinstance(content, str):
                total += len(content)
            elif content:
                parts += len(content)
                for part in content:
                    if isinstance(part, TextPart):
                        total += len(part.text)
                    elif isinstance(part, ImagePart):
                        images += 1
            for call in message.tool_calls or ():
                total += len(call.function.arguments) + len(call.function.name)
        for tool in self.tools or ():
            total += len(tool.function.name) + len(msgspec.json.encode(tool.function.parameters))
        return total, images, parts, count


class _ScannedChatRequest(ChatRequest):
    """A ChatRequest whose messages were read by the Rust scan and are decoded when a route
    first reads them (the field holds the body's bytes of them until then, see
    `decode_chat_request`): most upstreams take the body's own bytes, so an agent's long
    conversation is not built as Python objects only to be counted."""


class _Unread(types.SimpleNamespace):
    """A scanned request's messages as the body's bytes (`view`), until first read. No encoder
    takes it (msgspec raises TypeError): a request is never written with its messages unread
    (a memoryview in the slot would be written as base64 text). (A namespace: made and compared
    without a Python call.)"""

    __slots__ = ()


_MESSAGES = ChatRequest.__dict__["messages"]  # the field's slot
_messages_decoder = msgspec.json.Decoder(list[Message])


def _messages(chat: ChatRequest) -> list[Message]:
    messages = _MESSAGES.__get__(chat, ChatRequest)
    if type(messages) is _Unread:
        messages = _messages_decoder.decode(messages.view)
        _MESSAGES.__set__(chat, messages)
    return messages  # type: ignore[no-any-return]


# After the class is made: in its body msgspec would take the property for the field's default.
setattr(_ScannedChatRequest, "messages", property(_messages))  # noqa: B010

_chat_decoder = msgspec.json.Decoder(ChatRequest)
_scanned_decoder = msgspec.json.Decoder(_ScannedChatRequest)

# Smaller bodies are decoded whole: the scan and the decode of the rest cost more than they
# save there (one message of 98 bytes: 1.43 against 1.34 µs; two of 226 bytes: 1.62 against
# 1.76; the agent request of loadtests/bench, 52.6 KB: 54 against 128).
SCAN_ABOVE = 256
_ONE_MESSAGE = b'[{"role":"user"}]'


def decode_chat_request(body: bytes) -> ChatRequest:
    """The body decoded and validated, refused as msgspec refuses it (decoding.py); a long
    body's messages read by the Rust scan and decoded when first read (`scanned_chat_request`)."""
    if len(body) > SCAN_ABOVE and (chat := scanned_chat_request(body)) is not None:
        return chat
    return decode_json(_chat_decoder, body)


def scanned_chat_request(body: bytes) -> ChatRequest | None:
    """The body's messages read by one Rust scan (`_core.chat_request_messages`), which
    validates them as msgspec would, checks the whole body's JSON and nesting, and counts the
    prompt; the rest of the body decoded by msgspec with one message in their place (its
    refusals are msgspec's own); the messages decoded when first read. None when the scan
    cannot tell (every refusal of a message among that): the caller decodes the whole body."""
    scanned = chat_request_messages(body)
    if scanned is None:
        return None
    start, end, chars, images, parts, count, tool_chars = scanned
    chat = decode_json(
        _scanned_decoder, body[:start] + _ONE_MESSAGE + body[end:], nesting_read=True
    )
    _MESSAGES.__set__(chat, _Unread(view=memoryview(body)[start:end]))
    if tool_chars is not None:
        chars += tool_chars
    else:  # counted as prompt_counts counts them
        for tool in chat.tools or ():
            chars += len(tool.function.name) + len(msgspec.json.encode(tool.function.parameters))
    chat.__dict__["prompt_counts"] = (chars, images, parts, count)
    return chat


def chat_body(chat: ChatRequest) -> dict[str, Any]:
    """A built ChatRequest as the JSON object an OpenAI-shaped upstream takes.

    `type: "function"` is a default of the Structs, so encoding leaves it out; OpenAI requires it
    on tools, assistant tool calls and a named tool_choice, so it is put back here.
    """
    chat.messages  # noqa: B018 (a scanned request's messages decoded, if still unread)
    body: dict[str, Any] = orjson.loads(msgspec.json.encode(chat))
    for tool in body.get("tools", ()):
        tool["type"] = "function"
    for message_body in body["messages"]:
        for call in message_body.get("tool_calls", ()):
            call["type"] = "function"
    if isinstance(body.get("tool_choice"), dict):
        body["tool_choice"]["type"] = "function"
    return body
