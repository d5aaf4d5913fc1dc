"""The model catalog as served: configured models plus whether each one can be used right now."""

from __future__ import annotations

from collections.abc import Mapping

from msgspec import Struct

from gateway.settings import ModelSettings, ProviderSettings, Settings


class Secret:
    """A secret value read from the environment; its repr never shows it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__


class CatalogEntry(Struct, frozen=True):
    model: ModelSettings
    provider: ProviderSettings
    # None when usable; else why not (e.g. the environment variable that holds no key).
    unavailable_reason: str | None

    @property
    def available(self) -> bool:
        return self.unavailable_reason is None

    def describe(self) -> dict[str, object]:
        """The public /v1/models object."""
        model = self.model
        pricing: dict[str, float] = (
            {"per_image": model.usd_per_image}
            if model.kind == "image"
            else {"input": model.input_usd_per_mtok, "output": model.output_usd_per_mtok}
        )
        if model.cache_read_usd_per_mtok is not None:
            pricing["cache_read"] = model.cache_read_usd_per_mtok
        if model.cache_write_usd_per_mtok is not None:
            pricing["cache_write"] = model.cache_write_usd_per_mtok
        owner = model.id.split("/", 1)[0]
        return {
            "id": model.id,
            "object": "model",
            "created": 0,
            "owned_by": owner,
            "kind": model.kind,
            "context_length": model.context_length,
            "pricing": {
                "currency": "USD",
                "unit": "image" if model.kind == "image" else "1M tokens",
            }
            | pricing,
            "capabilities": list(model.capabilities),
            "available": self.available,
            **({"unavailable_reason": self.unavailable_reason} if self.unavailable_reason else {}),
        }


class Catalog:
    def __init__(self, settings: Settings, unavailable: Mapping[str, str]) -> None:
        """`unavailable`: provider name -> why its models cannot be served now."""
        self.routes = settings.routes
        self.entries: dict[str, CatalogEntry] = {
            model.id: CatalogEntry(
                model, settings.providers[model.provider], unavailable.get(model.provider)
            )
            for model in settings.models
        }

    def get(self, model_id: str) -> CatalogEntry | None:
        return self.entries.get(model_id)

    def describe_route(self, name: str) -> dict[str, object]:
        route = self.routes[name]
        return {
            "id": name,
            "object": "model",
            "created": 0,
            "owned_by": "klawd",
            "kind": "route",
            "policy": route.policy,
            "targets": list(route.targets),
            "available": any(self.entries[t].available for t in route.targets),
        }


def resolve_provider_keys(
    settings: Settings, environ: Mapping[str, str]
) -> dict[str, Secret | None]:
    keys: dict[str, Secret | None] = {}
    for name, provider in settings.providers.items():
        value = environ.get(provider.api_key_env) if provider.api_key_env else None
        keys[name] = Secret(value) if value else None
    return keys
