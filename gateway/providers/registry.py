"""The one place a provider `kind` string is looked up."""

from __future__ import annotations

from collections.abc import Callable

from gateway.providers.anthropic import AnthropicProvider
from gateway.providers.base import Provider
from gateway.providers.echo import EchoProvider
from gateway.providers.gemini import GeminiProvider
from gateway.providers.openai import OpenAIProvider
from gateway.providers.replicate import ReplicateProvider
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
