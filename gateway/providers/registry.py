"""The one place a provider `kind` string is looked up."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from gateway.providers import anthropic, gemini
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

KINDS: dict[str, ProviderFactory] = {
    "openai": OpenAIProvider,
    "anthropic": AnthropicProvider,
    "gemini": GeminiProvider,
    "replicate": ReplicateProvider,
    "echo": lambda name, _settings, _key: EchoProvider(name),
}


def build_provider(
    name: str, settings: ProviderSettings, api_key: Secret | None
) -> Provider | None:
    """The provider for one `[providers.NAME]` table; None for a kind this build cannot serve."""
    factory = KINDS.get(settings.kind)
    return factory(name, settings, api_key) if factory is not None else None


# The fields a translating kind honours beyond the ones it translates; a kind not named here
# passes the client's fields through as they are (openai) or ignores them (echo).
HONOURED_FIELDS: dict[str, frozenset[str]] = {
    "anthropic": anthropic.SUPPORTED,
    "gemini": gemini.SUPPORTED,
}


def refused_field(kind: str, fields: Mapping[str, Any], n: int | None) -> str | None:
    """The first of the request's fields a provider of `kind` would refuse with a 400."""
    honoured = HONOURED_FIELDS.get(kind)
    return None if honoured is None else first_refused(fields, honoured, n)
