"""Time and peak memory of refusing absurd request bodies, in process (no server, no network).

    .venv/bin/python -m loadtests.bench.bounds_bench

Each body is about 10 MB (the default `server.max_body_bytes`): what the gateway does with it
before any upstream call (decode with msgspec, the nesting check, translation for /v1/messages,
the shape bounds). Peak memory is what tracemalloc saw allocated beyond the body itself; times
are the best of a few runs (tracemalloc off). Numbers go into docs/decisions/0013.
"""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable

from gateway.errors import GatewayError
from gateway.messages import to_chat_request
from gateway.routing.bounds import check_messages_shape, check_shape
from gateway.schemas.anthropic import decode_messages_request
from gateway.schemas.openai import decode_chat_request
from gateway.settings import BoundsSettings

SIZE = 10 * 1024 * 1024 - 1024
BOUNDS = BoundsSettings()


def _fill(head: bytes, one: bytes, tail: bytes) -> bytes:
    count = (SIZE - len(head) - len(tail)) // len(one)
    return head + one * count + one[:-1] + tail


BODIES: dict[str, bytes] = {
    "chat: tiny messages": _fill(
        b'{"model":"m","messages":[', b'{"role":"user","content":"a"},', b"]}"
    ),
    "chat: tiny content parts": _fill(
        b'{"model":"m","messages":[{"role":"user","content":[',
        b'{"type":"text","text":"a"},',
        b"]}]}",
    ),
    "chat: empty tools": _fill(
        b'{"model":"m","messages":[{"role":"user","content":"a"}],"tools":[',
        b'{"type":"function","function":{"name":"f"}},',
        b"]}",
    ),
    "chat: many short strings in an unknown field": _fill(
        b'{"model":"m","messages":[{"role":"user","content":"a"}],"x":[', b'"",', b"]}"
    ),
    "chat: nesting 60 deep, repeated": _fill(
        b'{"model":"m","messages":[{"role":"user","content":"a"}],"x":[',
        b"[" * 60 + b"]" * 60 + b",",
        b"]}",
    ),
    "messages: tiny messages": _fill(
        b'{"model":"m","max_tokens":1,"messages":[', b'{"role":"user","content":"a"},', b"]}"
    ),
    "messages: many stop sequences": _fill(
        b'{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"a"}],'
        b'"stop_sequences":[',
        b'"s",',
        b"]}",
    ),
}


def admit_chat(body: bytes) -> None:
    check_shape(decode_chat_request(body), BOUNDS)


def admit_messages(body: bytes) -> None:
    request = decode_messages_request(body)
    check_messages_shape(request, BOUNDS)  # as the route: before the translation
    check_shape(to_chat_request(request, body).chat, BOUNDS)


def refused(admit: Callable[[bytes], None], body: bytes) -> str:
    try:
        admit(body)
    except GatewayError as exc:
        return f"{exc.status} {exc.message[:70]}"
    return "admitted"


def main() -> None:
    print(f"{'body (about 10 MB)':45} {'best s':>7} {'peak MB':>8}  answer")
    for name, body in BODIES.items():
        admit = admit_messages if name.startswith("messages") else admit_chat
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            answer = refused(admit, body)
            best = min(best, time.perf_counter() - started)
        tracemalloc.start()
        refused(admit, body)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print(f"{name:45} {best:7.3f} {peak / 2**20:8.1f}  {answer}")


if __name__ == "__main__":
    main()
