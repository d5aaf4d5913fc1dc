"""Service-account access tokens (gateway/providers/google_auth.py) against the fake Vertex token
endpoint, which verifies the JWT with the account's public key: one token request, then the
cached token until `refresh_margin_s` before expiry (an injected clock), one refresh shared by
concurrent callers, and refusals that name no secret."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from gateway.errors import BadGateway
from gateway.providers.base import MissingCredentials
from gateway.providers.google_auth import (
    AccessTokens,
    ServiceAccount,
    load_service_account,
    signed_jwt,
)
from gateway.providers.http_client import HttpClient
from tests.fakes.vertex_upstream import CLIENT_EMAIL, TOKEN_PREFIX, FakeVertex


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def account_file(tmp_path: Path, info: dict[str, str]) -> Path:
    path = tmp_path / "sa.json"
    path.write_bytes(orjson.dumps(info))
    return path


@pytest.fixture
async def client() -> HttpClient:
    http = HttpClient(pool_size=4, connect_timeout_s=5, read_timeout_s=10)
    yield http  # type: ignore[misc]
    await http.close()


def tokens_for(account: ServiceAccount, http: HttpClient, clock: Clock) -> AccessTokens:
    return AccessTokens("vertex", account, http, refresh_margin_s=300, clock=clock)


async def test_one_token_request_then_the_cached_token_until_the_margin(
    fake_vertex: FakeVertex, client: HttpClient, tmp_path: Path
) -> None:
    account = load_service_account(str(account_file(tmp_path, fake_vertex.service_account_info())))
    clock = Clock()
    tokens = tokens_for(account, client, clock)
    first = await tokens.token()
    assert first.reveal().startswith(TOKEN_PREFIX)
    clock.now += 3600 - 301  # still more than the margin left
    assert (await tokens.token()).reveal() == first.reveal()
    assert tokens.refreshes == 1
    clock.now += 2  # now within 5 minutes of expiry: renewed before it expires
    renewed = await tokens.token()
    assert renewed.reveal() != first.reveal()
    assert tokens.refreshes == 2


async def test_concurrent_callers_share_one_refresh(
    fake_vertex: FakeVertex, client: HttpClient, tmp_path: Path
) -> None:
    account = load_service_account(str(account_file(tmp_path, fake_vertex.service_account_info())))
    tokens = tokens_for(account, client, Clock())
    before = fake_vertex.token_requests
    got = await asyncio.gather(*(tokens.token() for _ in range(20)))
    assert len({t.reveal() for t in got}) == 1
    assert tokens.refreshes == 1
    assert fake_vertex.token_requests - before == 1


async def test_a_key_the_token_endpoint_refuses_is_502_naming_no_secret(
    fake_vertex: FakeVertex, client: HttpClient, tmp_path: Path
) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    info = fake_vertex.service_account_info() | {"private_key": pem}
    tokens = tokens_for(load_service_account(str(account_file(tmp_path, info))), client, Clock())
    with pytest.raises(BadGateway) as caught:
        await tokens.token()
    assert "PRIVATE KEY" not in caught.value.message
    assert "credentials" in caught.value.message


def test_the_jwt_is_rs256_signed_with_the_account_key_and_names_the_account(
    fake_vertex: FakeVertex, tmp_path: Path
) -> None:
    account = load_service_account(str(account_file(tmp_path, fake_vertex.service_account_info())))
    assertion = signed_jwt(account, 1_800_000_000.0)
    head, claims, signature = assertion.split(".")

    def decode(part: str) -> bytes:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))

    fake_vertex.key.public_key().verify(
        decode(signature), f"{head}.{claims}".encode(), padding.PKCS1v15(), hashes.SHA256()
    )
    assert orjson.loads(decode(head)) == {"alg": "RS256", "typ": "JWT", "kid": "fake-key-id-1"}
    body = orjson.loads(decode(claims))
    assert body["iss"] == CLIENT_EMAIL
    assert body["exp"] - body["iat"] == 3600
    assert body["scope"] == "https://www.googleapis.com/auth/cloud-platform"
    assert "PRIVATE" not in repr(account)


@pytest.mark.parametrize(
    "content",
    [b"not json", b'{"type": "authorized_user"}', b'{"type": "service_account"}'],
)
def test_an_unusable_credentials_file_makes_the_provider_unavailable(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(MissingCredentials):
        load_service_account(str(path))
    with pytest.raises(MissingCredentials):
        load_service_account(str(tmp_path / "missing.json"))
