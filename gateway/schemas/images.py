"""msgspec Struct for the OpenAI Images-shaped request body (`POST /v1/images/generations`)."""

from __future__ import annotations

import re
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from gateway.errors import InvalidRequest
from gateway.schemas.decoding import decode_json

_SIZE = re.compile(r"^[1-9][0-9]{1,4}x[1-9][0-9]{1,4}$")


class ImageRequest(Struct, kw_only=True, omit_defaults=True):
    """Unknown fields are ignored (and kept in the raw body for OpenAI-shaped upstreams)."""

    model: Annotated[str, Meta(min_length=1, max_length=256)]
    prompt: Annotated[str, Meta(min_length=1, max_length=32000)]
    n: Annotated[int, Meta(ge=1, le=10)] = 1
    size: str | None = None
    response_format: Literal["url", "b64_json"] | None = None
    user: str | None = None

    @property
    def wants_b64(self) -> bool:
        return self.response_format == "b64_json"

    def dimensions(self) -> tuple[int, int] | None:
        """`size` as (width, height); None when unset or "auto"."""
        if self.size is None or self.size == "auto":
            return None
        width, _, height = self.size.partition("x")
        return int(width), int(height)


_image_decoder = msgspec.json.Decoder(ImageRequest)


def decode_image_request(body: bytes) -> ImageRequest:
    request = decode_json(_image_decoder, body)
    if request.size is not None and request.size != "auto" and not _SIZE.match(request.size):
        raise InvalidRequest(
            "`size` must look like WIDTHxHEIGHT (e.g. 1024x1024) or be 'auto'.", param="size"
        )
    return request
