"""The model catalog as served: configured models plus whether each one can be used right now."""

from __future__ import annotations

from collections.abc import Mapping

import msgspec
from msgspec import Struct

from gateway.settings import DeploymentSettings, ModelSettings, ProviderSettings, Settings


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
    """A model as clients name it, or one deployment of it.

    A model's entry lists its `deployments`: each an entry of its own whose `model` carries that
    deployment's `provider` and `upstream_model` (what providers read), with the deployment's
    `key` (circuits, rests and caps), `weight` and `priority`. A model configured with
    `provider` + `upstream_model` has one deployment, keyed by the model id. The model's own
    `model` and `provider` are those of its first deployment."""

    model: ModelSettings
    provider: ProviderSettings
    # None when usable; else why not (e.g. the environment variable that holds no key).
    unavailable_reason: str | None
    key: str = ""
    weight: int = 1
    priority: int = 0
    deployments: tuple[CatalogEntry, ...] = ()
    all_available: bool = True  # every deployment has what it needs (a key)

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
        self.bounds = settings.bounds
        self.entries: dict[str, CatalogEntry] = {
            model.id: _model_entry(model, settings, unavailable) for model in settings.models
        }
        # every deployment of every model, by key
        self.deployments: dict[str, CatalogEntry] = {
            d.key: d for entry in self.entries.values() for d in entry.deployments
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


def _model_entry(
    model: ModelSettings, settings: Settings, unavailable: Mapping[str, str]
) -> CatalogEntry:
    specs = model.deployments or [
        DeploymentSettings(provider=model.provider, upstream_model=model.upstream_model)
    ]
    deployments = tuple(
        CatalogEntry(
            msgspec.structs.replace(
                model, provider=spec.provider, upstream_model=spec.upstream_model, deployments=[]
            ),
            settings.providers[spec.provider],
            unavailable.get(spec.provider),
            key=model.id if len(specs) == 1 else f"{model.id}@{spec.provider}",
            weight=spec.weight,
            priority=spec.priority,
        )
        for spec in specs
    )
    reasons = [d.unavailable_reason for d in deployments if d.unavailable_reason is not None]
    first = deployments[0]
    return CatalogEntry(
        first.model,
        first.provider,
        "; ".join(reasons) if len(reasons) == len(deployments) else None,
        key=model.id,
        deployments=deployments,
        all_available=not reasons,
    )


def resolve_provider_keys(
    settings: Settings, environ: Mapping[str, str]
) -> dict[str, Secret | None]:
    keys: dict[str, Secret | None] = {}
    for name, provider in settings.providers.items():
        value = environ.get(provider.api_key_env) if provider.api_key_env else None
        keys[name] = Secret(value) if value else None
    return keys
