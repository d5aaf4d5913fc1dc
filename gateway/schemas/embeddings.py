"""msgspec Struct for the OpenAI Embeddings request (`POST /v1/embeddings`)."""

from __future__ import annotations

import base64
import math
import struct
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from gateway.errors import InvalidRequest
from gateway.schemas.decoding import decode_json

MAX_INPUTS = 2048  # OpenAI's limit on one request's array of inputs

# msgspec allows one array type per union: a list's items are checked to be all strings, all
# tokens or all token arrays after decoding (`_check_input`).
Token = Annotated[int, Meta(ge=0)]
Item = Annotated[str, Meta(min_length=1)] | Token | Annotated[list[Token], Meta(min_length=1)]
Input = Annotated[str, Meta(min_length=1)] | Annotated[list[Item], Meta(min_length=1)]


class EmbeddingRequest(Struct, kw_only=True, omit_defaults=True):
    """Unknown fields are ignored here and passed through to OpenAI-shaped upstreams."""

    model: Annotated[str, Meta(min_length=1, max_length=256)]
    input: Input
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Meta(ge=1)] | None = None
    user: str | None = None

    @property
    def texts(self) -> list[str] | None:
        """The inputs as strings, or None when they are token arrays."""
        if isinstance(self.input, str):
            return [self.input]
        if isinstance(self.input[0], str):
            return [item for item in self.input if isinstance(item, str)]
        return None

    @property
    def count(self) -> int:
        if isinstance(self.input, str) or isinstance(self.input[0], int):
            return 1
        return len(self.input)

    def reserve_tokens(self, chars_per_token: int) -> int:
        """Worst-case prompt tokens for the credit reservation."""
        texts = self.texts
        if texts is not None:
            return sum(math.ceil(len(t) / chars_per_token) + 1 for t in texts)
        if isinstance(self.input[0], int):
            return len(self.input)
        return sum(len(item) for item in self.input if isinstance(item, list))


_decoder = msgspec.json.Decoder(EmbeddingRequest)


def _check_input(request: EmbeddingRequest) -> EmbeddingRequest:
    items = request.input
    if isinstance(items, str):
        return request
    if isinstance(items[0], int) or not all(type(i) is type(items[0]) for i in items):
        # One token array (all ints) is one input; anything else must be homogeneous.
        if not all(isinstance(i, int) for i in items):
            raise InvalidRequest(
                "`input` must be a string, an array of strings, an array of tokens or an array "
                "of token arrays.",
                param="input",
            )
    if len(items) > MAX_INPUTS and not isinstance(items[0], int):
        raise InvalidRequest(f"`input` holds more than {MAX_INPUTS} inputs.", param="input")
    return request


def decode_embedding_request(body: bytes) -> EmbeddingRequest:
    return _check_input(decode_json(_decoder, body))


def encode_embedding(values: list[float], request: EmbeddingRequest) -> list[float] | str:
    """As OpenAI encodes: a list of floats, or base64 of little-endian float32s."""
    if request.encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode("ascii")
    return values
