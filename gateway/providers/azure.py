"""Kind `azure`: Azure OpenAI, composed from kind `openai` (same bodies, chunks and errors).

What differs is only where and how a call is sent:
- URL: `{base_url}/openai/deployments/{upstream_model}/{operation}?api-version={api_version}`,
  where `upstream_model` names the operator's Azure *deployment* and `operation` is
  `chat/completions`, `embeddings` or `images/generations`;
- auth: the `api-key` header from `api_key_env`, or, when `entra_token_env` is set and holds a
  value, `Authorization: Bearer <Microsoft Entra ID token>` instead.
Azure's error bodies are OpenAI-shaped (`{"error": {"code", "message"}}`), its 429s carry
`Retry-After` (and `retry-after-ms`), so kind openai's error mapping is reused as it is; the
`prompt_filter_results` chunk Azure streams first carries no choice and is not relayed.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import quote

from gateway.providers.base import MissingCredentials, UpstreamRequest
from gateway.providers.openai import OpenAIProvider
from gateway.routing.catalog import Secret
from gateway.settings import ProviderSettings


class AzureOpenAIProvider(OpenAIProvider):
    def __init__(
        self,
        name: str,
        settings: ProviderSettings,
        api_key: Secret | None,
        entra_token: Secret | None = None,
    ) -> None:
        super().__init__(name, settings, api_key)
        self.entra_token = entra_token

    def _post_json(self, path: str, model: object, body: bytes) -> UpstreamRequest:
        # kind openai names the upstream model in the body; Azure names it in the URL (the
        # deployment) and ignores the body's `model`.
        deployment = quote(str(model or ""), safe="")
        headers = {"content-type": "application/json", "accept": "application/json"}
        if self.entra_token is not None:
            headers["authorization"] = f"Bearer {self.entra_token.reveal()}"
        elif self.api_key is not None:
            headers["api-key"] = self.api_key.reveal()
        version = quote(self.settings.api_version, safe="")
        return UpstreamRequest(
            url=f"{self.settings.base_url.rstrip('/')}/openai/deployments/{deployment}{path}"
            f"?api-version={version}",
            headers=headers,
            body=body,
        )

    def redact(self, text: str) -> str:
        text = super().redact(text)
        if self.entra_token is not None and self.entra_token.reveal():
            text = text.replace(self.entra_token.reveal(), "[redacted]")
        return text


def build(name: str, settings: ProviderSettings, environ: Mapping[str, str]) -> AzureOpenAIProvider:
    key = environ.get(settings.api_key_env) if settings.api_key_env else None
    token = environ.get(settings.entra_token_env) if settings.entra_token_env else None
    if not key and not token:
        variables = " or ".join(v for v in (settings.api_key_env, settings.entra_token_env) if v)
        raise MissingCredentials(
            f"has no Azure credentials: set the environment variable {variables}"
            if variables
            else "has no Azure credentials: set `api_key_env` or `entra_token_env` in its table"
        )
    return AzureOpenAIProvider(
        name, settings, Secret(key) if key else None, Secret(token) if token else None
    )
