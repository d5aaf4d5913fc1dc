"""Kind `bedrock`: AWS Bedrock through the Converse API, SigV4-signed.

- `POST {base_url}/model/{modelId}/converse` (non-streamed) and `/converse-stream` (streamed;
  `application/vnd.amazon.eventstream`, decoded and reframed in Rust by the reframer "bedrock"),
  `modelId` = the model's `upstream_model` (a model id, inference profile id or ARN),
  URL-encoded as one path segment;
- every request signed with SigV4 (`gateway.providers.sigv4`, service `bedrock`, the provider's
  `region`) with credentials read at startup from `access_key_id_env`,
  `secret_access_key_env` and (optional) `session_token_env`;
- translation: `gateway.providers.bedrock_converse`.

Errors: Bedrock names the error in `x-amzn-errortype` (`ThrottlingException:…`) and puts
`{"message": …}` in the body. Throttling (and ModelNotReady, ServiceQuotaExceeded) → 429,
retried like any 429; ValidationException → 400 with Bedrock's message; credentials refused →
502; ModelTimeout → 504; InternalServer/ServiceUnavailable → 503 (retried). Inside a stream an
exception message (`throttlingException`, `modelStreamErrorException`, …) → the final error event.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar
from urllib.parse import quote

import orjson

from gateway.errors import (
    BadGateway,
    GatewayError,
    GatewayTimeout,
    InvalidRequest,
    RateLimited,
    ServiceUnavailable,
)
from gateway.providers.base import (
    ChatCall,
    Completion,
    HttpProvider,
    MissingCredentials,
    UpstreamRequest,
    retry_after_from,
    status_error,
)
from gateway.providers.bedrock_converse import SUPPORTED, translate_request, translate_response
from gateway.providers.sigv4 import AwsCredentials, sign
from gateway.routing.catalog import Secret
from gateway.settings import ProviderSettings

__all__ = ["SUPPORTED", "BedrockProvider", "build", "error_for"]

SERVICE = "bedrock"

_THROTTLED = frozenset(
    {"throttlingexception", "modelnotreadyexception", "servicequotaexceededexception"}
)
_CREDENTIALS = frozenset(
    {
        "accessdeniedexception",
        "unrecognizedclientexception",
        "invalidsignatureexception",
        "expiredtokenexception",
        "incompletesignatureexception",
        "missingauthenticationtokenexception",
    }
)
_UNAVAILABLE = frozenset(
    {"internalserverexception", "serviceunavailableexception", "modelstreamerrorexception"}
)


def error_for(
    provider: str, error_type: str, message: str | None, retry_after: float | None
) -> GatewayError | None:
    """A Bedrock exception name (any case, as headers and streams spell it) → the gateway's
    error; None for an unknown one."""
    name = error_type.lower()
    if name in _THROTTLED:
        return RateLimited(
            f"The upstream provider '{provider}' is rate limiting the gateway; retry later.",
            retry_after_s=retry_after if retry_after is not None else 1.0,
            retryable=True,
        )
    if name == "validationexception":
        return InvalidRequest(message or f"The upstream provider '{provider}' refused the request.")
    if name in _CREDENTIALS:
        return BadGateway(
            f"The upstream provider '{provider}' refused the gateway's credentials "
            "(the operator's AWS credentials, not yours)."
        )
    if name == "resourcenotfoundexception":
        return BadGateway(f"The upstream provider '{provider}' does not know the configured model.")
    if name == "modeltimeoutexception":
        return GatewayTimeout(f"The upstream provider '{provider}' timed out.", retryable=True)
    if name == "modelerrorexception":
        return BadGateway(f"The upstream provider '{provider}': the model failed.")
    if name in _UNAVAILABLE:
        return ServiceUnavailable(
            f"The upstream provider '{provider}' is unavailable ({error_type}); retry later.",
            retry_after_s=retry_after,
            retryable=True,
        )
    return None


class BedrockProvider(HttpProvider):
    reframer_kind: ClassVar[str] = "bedrock"

    def __init__(
        self,
        name: str,
        settings: ProviderSettings,
        credentials: AwsCredentials,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        super().__init__(name, settings, None)
        self.credentials = credentials
        self.clock = clock

    def build_request(self, call: ChatCall, stream: bool) -> UpstreamRequest:
        model = call.target.model.upstream_model or call.target.model.id.split("/", 1)[1]
        operation = "converse-stream" if stream else "converse"
        url = f"{self.settings.base_url.rstrip('/')}/model/{quote(model, safe='')}/{operation}"
        body = orjson.dumps(translate_request(call))
        headers = {
            "content-type": "application/json",
            "accept": "application/vnd.amazon.eventstream" if stream else "application/json",
        }
        signed = sign(
            "POST",
            url,
            headers,
            body,
            self.credentials,
            self.settings.region,
            SERVICE,
            self.clock(),
        )
        return UpstreamRequest(url=url, headers=signed, body=body)

    def parse_response(self, call: ChatCall, body: bytes) -> Completion:
        try:
            response: Any = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise BadGateway(
                f"The upstream provider '{self.name}' answered with invalid JSON."
            ) from exc
        try:
            return translate_response(call, response)
        except BadGateway as exc:
            raise BadGateway(f"The upstream provider '{self.name}': {exc.message}") from exc

    def redact(self, text: str) -> str:
        for secret in (self.credentials.secret_access_key, self.credentials.session_token):
            if secret is not None and secret.reveal():
                text = text.replace(secret.reveal(), "[redacted]")
        return text

    def map_error(self, status: int, body: bytes, headers: Mapping[str, str]) -> GatewayError:
        message: str | None = None
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict):
            found = parsed.get("message", parsed.get("Message"))
            message = self.redact(found)[:1000] if isinstance(found, str) else None
        # "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/"
        error_type = headers.get("x-amzn-errortype", "").split(":", 1)[0]
        retry_after = retry_after_from(headers)
        mapped = error_for(self.name, error_type, message, retry_after)
        return mapped or status_error(self.name, status, message, retry_after)

    def map_stream_error(self, kind: str, message: str) -> GatewayError:
        mapped = error_for(self.name, kind, self.redact(message)[:500], None)
        if mapped is None or isinstance(mapped, InvalidRequest):
            # After the first byte the client's request was accepted: this is the upstream's.
            return super().map_stream_error(kind, message)
        return mapped


def build(name: str, settings: ProviderSettings, environ: Mapping[str, str]) -> BedrockProvider:
    """Credentials from the environment, read once at startup (a name is never a value)."""
    key_id = environ.get(settings.access_key_id_env) if settings.access_key_id_env else None
    secret = environ.get(settings.secret_access_key_env) if settings.secret_access_key_env else None
    if not key_id or not secret:
        raise MissingCredentials(
            "has no AWS credentials: set the environment variables "
            f"{settings.access_key_id_env} and {settings.secret_access_key_env}"
        )
    token = environ.get(settings.session_token_env) if settings.session_token_env else None
    credentials = AwsCredentials(key_id, Secret(secret), Secret(token) if token else None)
    return BedrockProvider(name, settings, credentials)
