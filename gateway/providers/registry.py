"""The one place a provider `kind` string is looked up."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from gateway.providers import anthropic, azure, bedrock, gemini, vertex
from gateway.providers.anthropic import AnthropicProvider
from gateway.providers.base import Provider
from gateway.providers.echo import EchoProvider
from gateway.providers.gemini import GeminiProvider
from gateway.providers.openai import OpenAIProvider
from gateway.providers.replicate import ReplicateProvider
from gateway.providers.translate import first_refused
from gateway.routing.catalog import Secret
from gateway.settings import ProviderSettings

ProviderFactory = Callable[[str, ProviderSettings, Secret | None], Provider]
# The clouds read their own credentials (several variables, or a file) from the environment at
# startup, and raise MissingCredentials when they cannot.
CloudFactory = Callable[[str, ProviderSettings, Mapping[str, str]], Provider]

KINDS: dict[str, ProviderFactory] = {
    "openai": OpenAIProvider,
    "anthropic": AnthropicProvider,
    "gemini": GeminiProvider,
    "replicate": ReplicateProvider,
    "echo": lambda name, _settings, _key: EchoProvider(name),
}
# Kinds served in process, with no upstream: no timeout of theirs ever fires.
IN_PROCESS_KINDS = frozenset({"echo"})
CLOUD_KINDS: dict[str, CloudFactory] = {
    "azure": azure.build,
    "bedrock": bedrock.build,
    "vertex": vertex.build,
}


def build_provider(
    name: str,
    settings: ProviderSettings,
    api_key: Secret | None,
    environ: Mapping[str, str] | None = None,
) -> Provider | None:
    """The provider for one `[providers.NAME]` table; None for a kind this build cannot serve.
    Raises MissingCredentials for a cloud whose credentials are not in `environ`."""
    cloud = CLOUD_KINDS.get(settings.kind)
    if cloud is not None:
        return cloud(name, settings, environ or {})
    factory = KINDS.get(settings.kind)
    return factory(name, settings, api_key) if factory is not None else None


def uses_api_key(kind: str) -> bool:
    """Whether a missing `api_key_env` value makes the provider unavailable (the clouds check
    their own credentials in build_provider)."""
    return kind in KINDS and kind != "echo"


# The fields a translating kind honours beyond the ones it translates; a kind not named here
# passes the client's fields through as they are (openai) or ignores them (echo).
HONOURED_FIELDS: dict[str, frozenset[str]] = {
    "anthropic": anthropic.SUPPORTED,
    "gemini": gemini.SUPPORTED,
    "bedrock": bedrock.SUPPORTED,
    "vertex": vertex.SUPPORTED,
}


def refused_field(kind: str, fields: Mapping[str, Any], n: int | None) -> str | None:
    """The first of the request's fields a provider of `kind` would refuse with a 400."""
    honoured = HONOURED_FIELDS.get(kind)
    return None if honoured is None else first_refused(fields, honoured, n)
