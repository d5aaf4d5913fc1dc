"""Google service-account credentials for Vertex AI: an RS256-signed JWT exchanged at the
account's `token_uri` for an access token (OAuth 2.0 JWT bearer grant, RFC 7523), cached and
renewed `refresh_margin_s` before it expires, one renewal at a time (callers that need a token
during a renewal wait for that renewal instead of starting their own).

The JWT: header `{"alg": "RS256", "typ": "JWT", "kid": private_key_id}`, claims `iss` =
`client_email`, `scope` = cloud-platform, `aud` = Google's token endpoint URL, `iat`,
`exp` = iat + 1 h, signed with the account's private key (RSASSA-PKCS1-v1_5 with SHA-256,
`cryptography`). The private key and the access token are held as `Secret`s; neither appears in
an error message.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import orjson

from gateway.errors import BadGateway, GatewayError, GatewayTimeout, ServiceUnavailable
from gateway.providers.base import MissingCredentials, UpstreamUnreachable
from gateway.providers.http_client import ConnectFailed, HttpClient, ResponseBroken
from gateway.routing.catalog import Secret

if TYPE_CHECKING:
    # `cryptography` (about 13 MB of a worker's memory) is imported where a key is read or
    # signed with: a gateway without a Vertex provider never loads it.
    from cryptography.hazmat.primitives.asymmetric import rsa

SCOPE = "https://www.googleapis.com/auth/cloud-platform"
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# Google's token endpoint checks `aud` against its own URL, whatever token_uri the key file names
# (google-auth sends the same).
TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"  # noqa: S105 (a URL, not a secret)
JWT_LIFETIME_S = 3600
TOKEN_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class ServiceAccount:
    client_email: str
    token_uri: str
    private_key_id: str
    private_key: rsa.RSAPrivateKey

    def __repr__(self) -> str:
        return f"ServiceAccount({self.client_email!r}, private key redacted)"


def load_service_account(path: str) -> ServiceAccount:
    """Reads a service-account JSON key file; MissingCredentials names what is wrong (never a
    value from the file)."""
    try:
        info: Any = orjson.loads(Path(path).read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise MissingCredentials(
            f"cannot read its service-account file {path!r}: {type(exc).__name__}"
        ) from exc
    if not isinstance(info, dict) or info.get("type") != "service_account":
        raise MissingCredentials(f"has a credentials file {path!r} that is not a service account")
    fields = ("client_email", "token_uri", "private_key")
    if not all(isinstance(info.get(f), str) and info[f] for f in fields):
        raise MissingCredentials(
            f"has a service-account file {path!r} without client_email, token_uri or private_key"
        )
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    try:
        key = serialization.load_pem_private_key(info["private_key"].encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise MissingCredentials(
            f"has a service-account file {path!r} whose private_key is not a PEM key"
        ) from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise MissingCredentials(f"has a service-account file {path!r} whose key is not RSA")
    return ServiceAccount(
        info["client_email"], info["token_uri"], str(info.get("private_key_id") or ""), key
    )


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def signed_jwt(account: ServiceAccount, now: float) -> str:
    """The assertion for the token request (RS256)."""
    header = {"alg": "RS256", "typ": "JWT"}
    if account.private_key_id:
        header["kid"] = account.private_key_id
    issued = int(now)
    claims = {
        "iss": account.client_email,
        "scope": SCOPE,
        "aud": TOKEN_AUDIENCE,
        "iat": issued,
        "exp": issued + JWT_LIFETIME_S,
    }
    signing_input = f"{_b64url(orjson.dumps(header))}.{_b64url(orjson.dumps(claims))}"
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    signature = account.private_key.sign(
        signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256()
    )
    return f"{signing_input}.{_b64url(signature)}"


class AccessTokens:
    """The cached access token of one service account (one per provider)."""

    def __init__(
        self,
        provider: str,
        account: ServiceAccount,
        client: HttpClient,
        refresh_margin_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._provider = provider
        self._account = account
        self._client = client
        self._margin = refresh_margin_s
        self._clock = clock
        self._token: Secret | None = None
        self._expires_at = 0.0
        self._lock = asyncio.Lock()
        self.refreshes = 0  # token requests made (for tests and debugging)

    def _fresh(self) -> Secret | None:
        if self._token is not None and self._clock() < self._expires_at - self._margin:
            return self._token
        return None

    async def token(self) -> Secret:
        token = self._fresh()
        if token is not None:
            return token
        async with self._lock:
            token = self._fresh()  # renewed while this caller waited
            if token is None:
                token = await self._refresh()
            return token

    def redact(self, text: str) -> str:
        if self._token is not None and self._token.reveal():
            text = text.replace(self._token.reveal(), "[redacted]")
        return text

    async def _refresh(self) -> Secret:
        now = self._clock()
        body = urlencode(
            {"grant_type": GRANT_TYPE, "assertion": signed_jwt(self._account, now)}
        ).encode()
        headers = {
            "content-type": "application/x-www-form-urlencoded",
            "accept": "application/json",
        }
        self.refreshes += 1
        try:
            async with asyncio.timeout(TOKEN_TIMEOUT_S):
                response = await self._client.request(
                    "POST", self._account.token_uri, headers, body
                )
                try:
                    answer = await response.read()
                finally:
                    response.release()
        except TimeoutError as exc:
            raise GatewayTimeout(
                f"The upstream provider '{self._provider}': its token endpoint did not answer.",
                retryable=True,
            ) from exc
        except ConnectFailed as exc:
            raise UpstreamUnreachable(
                f"The upstream provider '{self._provider}': its token endpoint is unreachable."
            ) from exc
        except (ResponseBroken, ValueError) as exc:
            raise BadGateway(
                f"The upstream provider '{self._provider}': its token endpoint failed."
            ) from exc
        if response.status != 200:
            raise self._token_error(response.status)
        try:
            parsed: Any = orjson.loads(answer)
        except orjson.JSONDecodeError:
            parsed = None
        token = parsed.get("access_token") if isinstance(parsed, dict) else None
        lifetime = parsed.get("expires_in") if isinstance(parsed, dict) else None
        if not isinstance(token, str) or not token or not isinstance(lifetime, int | float):
            raise BadGateway(
                f"The upstream provider '{self._provider}': its token endpoint answered "
                "without an access token."
            )
        self._token = Secret(token)
        self._expires_at = now + float(lifetime)
        return self._token

    def _token_error(self, status: int) -> GatewayError:
        if status >= 500 or status == 429:
            return ServiceUnavailable(
                f"The upstream provider '{self._provider}': its token endpoint is unavailable "
                f"(HTTP {status}).",
                retryable=True,
            )
        return BadGateway(
            f"The upstream provider '{self._provider}' refused the gateway's service-account "
            f"credentials (token endpoint HTTP {status}; the operator's credentials, not yours)."
        )
