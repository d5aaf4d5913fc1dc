"""Bad input gets a clear error quickly and the gateway keeps serving everyone else."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from tests.conftest import Gateway


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"model":"klawd/echo","messages":[{"role":"user","content":"\xff\xfe"}]}', "UTF-8"),
        (
            b'{"model":"klawd/echo","messages":[{"role":"user","content":"x"}],"x":'
            + b"[" * 100_000
            + b"]" * 100_000
            + b"}",
            "nested",
        ),
        (b"\x00\x01\x02", "JSON"),
        (b"", "JSON"),
    ],
    ids=["invalid-utf8", "deeply-nested", "binary", "empty"],
)
def test_undecodable_bodies_are_400(
    gateway: Gateway, api_key: str, body: bytes, message: str
) -> None:
    response = httpx.post(
        f"{gateway.base_url}/v1/chat/completions",
        headers={"authorization": f"Bearer {api_key}", "content-type": "application/json"},
        content=body,
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request"
    assert message in response.json()["error"]["message"]


def test_admin_api_rejects_undecodable_bodies(gateway: Gateway) -> None:
    with gateway.admin() as admin:
        response = admin.post(
            "/admin/accounts",
            content=b'{"name":"\xff"}',
            headers={"content-type": "application/json"},
        )
    assert response.status_code == 400


def test_oversized_headers_are_431(gateway: Gateway, api_key: str) -> None:
    response = httpx.post(
        f"{gateway.base_url}/v1/chat/completions",
        headers={"authorization": f"Bearer {api_key}", "x-padding": "a" * 100_000},
        json={},
    )
    assert response.status_code == 431


def test_a_client_that_never_finishes_its_headers_is_cut_off_and_others_are_served(
    gateway: Gateway,
) -> None:
    port = int(gateway.base_url.rsplit(":", 1)[1])
    slow = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
    try:
        for sock in slow:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        # everyone else is served meanwhile
        assert httpx.get(f"{gateway.base_url}/healthz").status_code == 200
        slow[0].settimeout(30)  # recv raises TimeoutError if the gateway never gives up
        started = time.monotonic()
        data = slow[0].recv(100)
        assert data == b"" or data.startswith(b"HTTP/1.1 408"), data
        assert time.monotonic() - started < 30
    finally:
        for sock in slow:
            sock.close()


@pytest.mark.parametrize(
    "path", ["/v1/images/generations", "/v1/embeddings", "/v1/messages", "/admin/accounts"]
)
def test_every_route_answers_undecodable_bodies_with_400(
    gateway: Gateway, api_key: str, path: str
) -> None:
    token = "test-admin-token-0123456789" if path.startswith("/admin") else api_key
    response = httpx.post(
        f"{gateway.base_url}{path}",
        headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
        content=b'{"model":"\xff\xfe"}',
    )
    assert response.status_code == 400
