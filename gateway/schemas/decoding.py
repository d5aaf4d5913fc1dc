"""Decoding a JSON request body into a Struct: every route translates msgspec's errors here, once.

A validation error becomes 400 `invalid_request` with `param` naming the field (msgspec says
"... - at `$.messages[0].role`"); malformed JSON, invalid UTF-8 and nesting too deep for the
decoder are 400 too — never a 500.
"""

from __future__ import annotations

from typing import TypeVar

import msgspec

from gateway.errors import InvalidRequest

T = TypeVar("T")


def decode_json(decoder: msgspec.json.Decoder[T], body: bytes) -> T:
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        message, param = split_validation_message(str(exc))
        raise InvalidRequest(message, param=param) from exc
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise InvalidRequest("The request body is not valid UTF-8.") from exc
    except RecursionError as exc:
        raise InvalidRequest("The request body is nested too deeply.") from exc


def split_validation_message(text: str) -> tuple[str, str | None]:
    """msgspec's "Expected `float` <= 2.0, got `3` - at `$.temperature`" → (message, param)."""
    message, _, location = text.partition(" - at `$")
    param = location.rstrip("`").lstrip(".") or None
    if message.startswith(("Object missing required field `", "Object contains unknown field `")):
        field = message.split("`")[1]
        param = f"{param}.{field}" if param else field
    return (f"{message} (at {param})" if param else message), param
