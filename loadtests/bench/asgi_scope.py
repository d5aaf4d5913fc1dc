"""The ASGI scope of an HTTP request made in process (the in-process drivers' and tests' one)."""

from __future__ import annotations

from typing import Any


def http_scope(
    method: str,
    path: str,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    state: dict[str, Any],
) -> dict[str, Any]:
    """A loopback HTTP/1.1 request's scope: `headers` and the body's content-length, a copy of
    the app's lifespan `state`."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [*headers, (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8080),
        "state": dict(state),
    }
