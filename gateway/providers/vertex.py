"""Kind `vertex`: Google Vertex AI, serving Gemini and Anthropic models, composed from kinds
`gemini` and `anthropic` (their translation, error mapping and Rust reframers, unchanged).

Which publisher serves a model is decided by one rule: an `upstream_model` starting with
`claude-` is Anthropic's (`publishers/anthropic`), every other model is Google's
(`publishers/google`). URLs, with
`{base}` = `{base_url}/v1/projects/{project}/locations/{location}`:
- Gemini: `{base}/publishers/google/models/{m}:generateContent`, and
  `:streamGenerateContent?alt=sse` for streams (reframer "gemini");
- Anthropic: `{base}/publishers/anthropic/models/{m}:rawPredict`, and `:streamRawPredict` for
  streams (reframer "anthropic"); the Messages body carries `anthropic_version:
  "vertex-2023-10-16"` and no `model` (the model is in the URL).
Auth: `Authorization: Bearer <access token>` from the service account named by
`credentials_file_env` (`gateway.providers.google_auth`), shared by both publishers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import quote

import msgspec
import orjson

from gateway.providers import anthropic, gemini
from gateway.providers.anthropic import AnthropicProvider
from gateway.providers.base import (
    ChatCall,
    Completion,
    HttpProvider,
    MissingCredentials,
    UpstreamRequest,
    UpstreamStream,
)
from gateway.providers.gemini import GeminiProvider
from gateway.providers.google_auth import AccessTokens, load_service_account
from gateway.providers.http_client import HttpClient, HttpResponse
from gateway.providers.proxy import proxy_policy
from gateway.settings import ProviderSettings

if TYPE_CHECKING:
    from gateway.observer import RequestObserver
    from gateway.tracing import Tracing

ANTHROPIC_VERSION = "vertex-2023-10-16"
ANTHROPIC_PREFIX = "claude-"
# The router's pre-check (registry.refused_field) knows only the kind: a field either publisher
# honours passes it; the publisher's own translation still refuses what it cannot honour.
SUPPORTED = gemini.SUPPORTED | anthropic.SUPPORTED


def upstream_model(call: ChatCall) -> str:
    return call.target.model.upstream_model or call.target.model.id.split("/", 1)[1]


def is_anthropic(model: str) -> bool:
    """The one publisher rule (documented in docs/configuration.md)."""
    return model.startswith(ANTHROPIC_PREFIX)


class _Authorized(HttpProvider):
    """Adds the service account's bearer token to every call (after build_request, which is
    synchronous, and before sending)."""

    tokens: AccessTokens

    def publisher_url(self, publisher: str, model: str, method: str) -> str:
        s = self.settings
        return (
            f"{s.base_url.rstrip('/')}/v1/projects/{quote(s.project, safe='')}/locations/"
            f"{quote(s.location, safe='')}/publishers/{publisher}/models/"
            f"{quote(model, safe='')}:{method}"
        )

    async def _send(
        self, upstream: UpstreamRequest, streamed: bool = False, within_s: float | None = None
    ) -> HttpResponse:
        token = await self.tokens.token()
        headers = {**upstream.headers, "authorization": f"Bearer {token.reveal()}"}
        return await super()._send(
            msgspec.structs.replace(upstream, headers=headers), streamed, within_s
        )

    def redact(self, text: str) -> str:
        return self.tokens.redact(super().redact(text))


class VertexGemini(_Authorized, GeminiProvider):
    def __init__(self, name: str, settings: ProviderSettings, tokens: AccessTokens) -> None:
        GeminiProvider.__init__(self, name, settings, None)
        self.tokens = tokens

    def build_request(self, call: ChatCall, stream: bool) -> UpstreamRequest:
        request = super().build_request(call, stream)
        method = "streamGenerateContent?alt=sse" if stream else "generateContent"
        url = self.publisher_url("google", upstream_model(call), method)
        return msgspec.structs.replace(request, url=url)


class VertexAnthropic(_Authorized, AnthropicProvider):
    def __init__(self, name: str, settings: ProviderSettings, tokens: AccessTokens) -> None:
        AnthropicProvider.__init__(self, name, settings, None)
        self.tokens = tokens

    def build_request(self, call: ChatCall, stream: bool) -> UpstreamRequest:
        body = anthropic.translate_request(call, stream)
        del body["model"]
        body["anthropic_version"] = ANTHROPIC_VERSION
        method = "streamRawPredict" if stream else "rawPredict"
        return UpstreamRequest(
            url=self.publisher_url("anthropic", upstream_model(call), method),
            headers={
                "content-type": "application/json",
                "accept": "text/event-stream" if stream else "application/json",
            },
            body=orjson.dumps(body),
        )


class VertexProvider:
    """Dispatches each call to the publisher of its model."""

    def __init__(
        self,
        name: str,
        settings: ProviderSettings,
        tokens: AccessTokens,
        token_client: HttpClient | None = None,
    ) -> None:
        self.name = name
        self.tokens = tokens
        self._token_client = token_client  # closed with the provider
        self.google = VertexGemini(name, settings, tokens)
        self.anthropic = VertexAnthropic(name, settings, tokens)

    @property
    def observer(self) -> RequestObserver | None:
        return self.google.observer

    @observer.setter
    def observer(self, observer: RequestObserver | None) -> None:
        self.google.observer = observer
        self.anthropic.observer = observer

    @property
    def tracing(self) -> Tracing | None:
        return self.google.tracing

    @tracing.setter
    def tracing(self, tracing: Tracing | None) -> None:
        self.google.tracing = tracing
        self.anthropic.tracing = tracing

    def _publisher(self, call: ChatCall) -> HttpProvider:
        return self.anthropic if is_anthropic(upstream_model(call)) else self.google

    async def complete(self, call: ChatCall) -> Completion:
        return await self._publisher(call).complete(call)

    async def stream(self, call: ChatCall) -> UpstreamStream:
        return await self._publisher(call).stream(call)

    async def close(self) -> None:
        await self.google.close()
        await self.anthropic.close()
        if self._token_client is not None:
            await self._token_client.close()


def build(name: str, settings: ProviderSettings, environ: Mapping[str, str]) -> VertexProvider:
    """The service account is read once at startup; its token on first use."""
    path = environ.get(settings.credentials_file_env) if settings.credentials_file_env else None
    if not path:
        raise MissingCredentials(
            "has no Google credentials: set the environment variable "
            f"{settings.credentials_file_env or 'credentials_file_env'} to a service-account "
            "JSON file"
        )
    account = load_service_account(path)
    client = HttpClient(
        pool_size=2,
        connect_timeout_s=settings.connect_timeout_s,
        read_timeout_s=settings.stream_idle_timeout_s,
        # the token exchange goes out the same way as the provider's calls
        proxies=proxy_policy(settings.proxy_url, settings.proxy_url_env, environ),
    )
    tokens = AccessTokens(name, account, client, settings.token_refresh_margin_s)
    return VertexProvider(name, settings, tokens, client)
