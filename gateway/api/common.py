"""Small helpers shared by the handlers: state access, JSON responses, body decoding, auth."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, TypeVar

import msgspec
import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.auth import AuthContext, bearer_token, secrets_equal
from gateway.errors import AuthenticationError, PermissionDenied
from gateway.schemas.decoding import decode_json
from gateway.state import AppState

T = TypeVar("T")


def app_state(request: Request) -> AppState:
    state: AppState = request.state.klawd
    return state


def json_response(
    content: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(orjson.dumps(content), status, headers, media_type="application/json")


def decode_body(body: bytes, kind: type[T]) -> T:
    """Admin and web bodies: an empty body is an empty object."""
    decoder: msgspec.json.Decoder[T] = msgspec.json.Decoder(kind)
    return decode_json(decoder, body or b"{}")


async def authenticate(request: Request) -> AuthContext:
    state = app_state(request)
    return await state.keys.authenticate(request.headers.get("authorization"), time.time())


def require_admin(request: Request) -> None:
    state = app_state(request)
    token = bearer_token(request.headers.get("authorization"))
    if state.admin_token is None:
        raise PermissionDenied(
            "The admin API is disabled: the operator has not set "
            f"{state.settings.server.admin_token_env}."
        )
    if token is None or not secrets_equal(token, state.admin_token.reveal()):
        raise AuthenticationError("Invalid admin token.")


# -- plain ASGI (hot routes served without Starlette's request/response objects) ------------------
def scope_state(scope: Scope) -> AppState:
    state: AppState = scope["state"]["klawd"]
    return state


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of a request header (`name` in lower case)."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def two_headers(scope: Scope, first: bytes, second: bytes) -> tuple[str | None, str | None]:
    """`header` of two names (lower case) in one pass over the request's headers."""
    found_first = found_second = None
    for key, value in scope["headers"]:
        if key == first:
            if found_first is None:
                found_first = str(value.decode("latin-1"))
        elif key == second and found_second is None:
            found_second = str(value.decode("latin-1"))
    return found_first, found_second


async def read_body(receive: Receive) -> bytes:
    """The whole request body (the middleware enforces its size limit)."""
    parts: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        body: bytes = message.get("body", b"")
        if not message.get("more_body", False):
            if not parts:  # in one message, as a small body comes
                return body
            parts.append(body)
            return b"".join(parts)
        parts.append(body)


def encode_headers(headers: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


async def send_json_bytes(send: Send, status: int, body: bytes, headers: Mapping[str, str]) -> None:
    """A whole JSON answer in two ASGI messages."""
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *encode_headers(headers),
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


async def send_json_raw(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    """`send_json_bytes` with the headers already in the message's form (bytes pairs)."""
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
        *headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


async def send_json(
    send: Send, content: Any, headers: Mapping[str, str], status: int = 200
) -> None:
    await send_json_bytes(send, status, orjson.dumps(content), headers)
