"""Decoding a JSON request body into a Struct: every route translates msgspec's errors here, once.

A validation error becomes 400 `invalid_request` with `param` naming the field (msgspec says
"... - at `$.messages[0].role`"); malformed JSON, invalid UTF-8 and nesting too deep are 400
too — never a 500.

Nesting: a body whose objects and arrays nest deeper than MAX_JSON_DEPTH is refused, wherever
the nesting is (tool schemas, tool inputs, unknown fields that are forwarded as they are): the
gateway writes such values again with orjson (254 levels at most) and walks them in its
translators, and no API it fronts needs more. The check reads the raw bytes in C-speed passes
(the text outside strings, its brackets as +1 and -1, the deepest running sum); bodies with fewer
opening brackets than the limit cannot be too deep and skip it.
"""

from __future__ import annotations

from array import array
from itertools import accumulate
from typing import Final, TypeVar

import msgspec

from gateway.errors import InvalidRequest

T = TypeVar("T")

MAX_JSON_DEPTH: Final = 64
_NOT_BRACKETS: Final = bytes(set(range(256)) - set(b"[]{}"))
_STEPS: Final = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # +1 and -1 as signed bytes


def nesting_depth(body: bytes) -> int:
    """How deep the objects and arrays of a valid JSON document nest."""
    if b"\\" in body:  # escapes cannot hide a quote from the split below
        body = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    # Valid JSON: every other piece between quotes is a string's inside.
    outside = b"".join(body.split(b'"')[::2]) if b'"' in body else body
    shape = outside.translate(_STEPS, _NOT_BRACKETS)
    return max(accumulate(array("b", shape)), default=0)


def decode_json(decoder: msgspec.json.Decoder[T], body: bytes) -> T:
    try:
        decoded = decoder.decode(body)
    except msgspec.ValidationError as exc:
        message, param = split_validation_message(str(exc))
        raise InvalidRequest(message, param=param) from exc
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise InvalidRequest("The request body is not valid UTF-8.") from exc
    except RecursionError as exc:
        raise InvalidRequest("The request body is nested too deeply.") from exc
    if body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH and (
        nesting_depth(body) > MAX_JSON_DEPTH
    ):
        raise InvalidRequest(
            f"The request body nests objects and arrays deeper than {MAX_JSON_DEPTH} levels."
        )
    return decoded


def split_validation_message(text: str) -> tuple[str, str | None]:
    """msgspec's "Expected `float` <= 2.0, got `3` - at `$.temperature`" → (message, param)."""
    message, _, location = text.partition(" - at `$")
    param = location.rstrip("`").lstrip(".") or None
    if message.startswith(("Object missing required field `", "Object contains unknown field `")):
        field = message.split("`")[1]
        param = f"{param}.{field}" if param else field
    return (f"{message} (at {param})" if param else message), param
