"""Bad input gets a clear error quickly and the gateway keeps serving everyone else."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import orjson
import pytest

from tests.conftest import Gateway, free_port, gateway_config, start_gateway, stop
from tests.fakes.openai_upstream import FakeOpenAI


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


IMPATIENT_IN_FLIGHT = 4


@pytest.fixture(scope="module")
def impatient_gateway(
    fake_openai: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """A gateway that ends a request whose body is silent for a second, and serves at most
    four requests at once (the next connections wait in the listen backlog)."""
    directory = tmp_path_factory.mktemp("impatient")
    port = free_port()
    config = directory / "klawd.toml"
    gateway_config(config, port, fake_openai.base_url)
    settings = f"body_idle_timeout_s = 1\nmax_in_flight = {IMPATIENT_IN_FLIGHT}\n"
    config.write_text(config.read_text().replace("port = ", settings + "port = ", 1))
    running = start_gateway(config, port)
    yield running
    stop(running.process)


def _post_head(gateway: Gateway, key: str, length: int) -> socket.socket:
    port = int(gateway.base_url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
        + f"authorization: Bearer {key}\r\ncontent-length: {length}\r\n\r\n".encode()
    )
    return sock


def _answer(sock: socket.socket) -> tuple[bytes, bytes]:
    """The head and body of one answer (its content-length)."""
    sock.settimeout(20)  # recv raises TimeoutError if the gateway never answers
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.lower().split(b"\r\n")
        if line.startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, (head, body)
        body += chunk
    return head, body


@pytest.mark.parametrize("sent", [b"", b'{"model":"openai/gpt-fake",'], ids=["none", "part"])
def test_a_body_that_stops_arriving_gets_408_and_frees_its_place(
    impatient_gateway: Gateway, sent: bytes
) -> None:
    """Clients (with a valid key) that send their headers and then nothing, or part of their
    body, as many as the worker serves at once: each gets a 408 after the idle deadline, and
    the next request is served. Before, each held its place for good (a crashed client's
    half-open connection never ends), and the next request waited in the backlog."""
    key = impatient_gateway.new_key(credits_usd=1.0)
    stalled = [_post_head(impatient_gateway, key, 200) for _ in range(IMPATIENT_IN_FLIGHT)]
    try:
        for sock in stalled:
            sock.sendall(sent)
        answers = [_answer(sock) for sock in stalled]
    finally:
        for sock in stalled:
            sock.close()
    for head, body in answers:
        assert head.startswith(b"HTTP/1.1 408"), head
        assert b"connection: close" in head.lower(), head
        error = orjson.loads(body)["error"]
        assert error["type"] == "request_timeout"
        assert "body_idle_timeout_s" in error["message"]
    body = {"model": "openai/gpt-fake", "messages": [{"role": "user", "content": "hi"}]}
    served = httpx.post(
        f"{impatient_gateway.base_url}/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {key}"},
        timeout=10,
    )
    assert served.status_code == 200, served.text


def test_a_slow_body_that_keeps_arriving_is_served(impatient_gateway: Gateway) -> None:
    """The deadline is the silence between two pieces, not the whole upload: a body sent a
    piece every 0.4 s for about 2 s (longer than the 1 s deadline) is served."""
    key = impatient_gateway.new_key(credits_usd=1.0)
    body = orjson.dumps(
        {"model": "openai/gpt-fake", "messages": [{"role": "user", "content": "hi"}]}
    )
    sock = _post_head(impatient_gateway, key, len(body))
    try:
        pieces = [body[i : i + 12] for i in range(0, len(body), 12)][:6]
        for piece in pieces:
            sock.sendall(piece)
            time.sleep(0.4)
        sock.sendall(body[sum(map(len, pieces)) :])
        sock.settimeout(20)
        head = sock.recv(65536)
    finally:
        sock.close()
    assert head.startswith(b"HTTP/1.1 200"), head
