"""Decoding a JSON request body into a Struct: every route translates msgspec's errors here, once.

A validation error becomes 400 `invalid_request` with `param` naming the field (msgspec says
"... - at `$.messages[0].role`"); malformed JSON, invalid UTF-8 and nesting too deep are 400
too — never a 500.

Nesting: a body whose objects and arrays nest deeper than MAX_JSON_DEPTH is refused, wherever
the nesting is (tool schemas, tool inputs, unknown fields that are forwarded as they are): the
gateway writes such values again with orjson (254 levels at most) and walks them in its
translators, and no API it fronts needs more. The check reads the raw bytes in one Rust pass
that skips strings to their closing quote (rust_core/src/json_depth.rs; its pure-Python
reference, in loadtests/bench/pyref.py, took ~1 ms for a 100-message conversation of 120 KB,
most of that body's decoding); bodies too short to hold more than the limit's brackets (each
level opens and closes: 2 bytes) cannot be too deep and skip it. (Counting the brackets for
that gate, `bytes.count` twice, cost more than the check itself on long bodies: 34 against 20
µs on the 52.6 KB agent request of loadtests/bench.)
"""

from __future__ import annotations

from typing import Final, TypeVar

import msgspec

from gateway._core import json_nesting_depth
from gateway.errors import InvalidRequest

T = TypeVar("T")

MAX_JSON_DEPTH: Final = 64


def decode_json(decoder: msgspec.json.Decoder[T], body: bytes, *, nesting_read: bool = False) -> T:
    """`body` decoded, or InvalidRequest. `nesting_read`: the body's nesting is known to be
    within the bound (the chat route's scan read it), so it is not read again."""
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
    if (
        not nesting_read
        and len(body) > 2 * MAX_JSON_DEPTH
        and json_nesting_depth(body, MAX_JSON_DEPTH) > MAX_JSON_DEPTH
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
