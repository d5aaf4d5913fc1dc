"""Keys for teams: what one API key may do (budgets, limits, allowed models, tags).

    policy = policy_from(attributes)        # the admin API's / CLI's fields, validated (400)
    allowed_targets(policy, requested, targets)   # the allowlist, before any upstream call

`models` holds catalog ids (`openai/gpt-4o`), globs where `*` stands for any characters
(`openai/*`, `*-mini`) and route names (`klawd/standard`, `klawd/auto`). Naming a route allows
every target it resolves to; otherwise each target must match on its own. A target outside the
list is skipped when the request named a route or fallbacks and another target is allowed; a
request that names a model outside the list directly, or whose targets are all outside, is 403
`permission_denied` code `model_not_allowed`.
"""

from __future__ import annotations

import functools
import re
from typing import Annotated

from msgspec import UNSET, Meta, Struct, UnsetType

from gateway.billing import micros_to_usd, usd_to_micros
from gateway.errors import InvalidRequest, PermissionDenied
from gateway.routing.catalog import CatalogEntry
from gateway.store.base import KeyBudget, KeyLimits, KeyPolicy, KeySpend

Usd = Annotated[float, Meta(ge=0, le=1_000_000_000)]
Limit = Annotated[int, Meta(ge=1, le=1_000_000_000)]
TagName = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")]
TagValue = Annotated[str, Meta(max_length=200)]

MAX_MODELS = 200
MAX_TAGS = 50
# A pattern is an id with optional `*` wildcards: no other glob syntax, no spaces.
_PATTERN = re.compile(r"^[A-Za-z0-9._:@/\-*]{1,200}$")


class BudgetIn(Struct, forbid_unknown_fields=True):
    """US dollars; null removes that cap."""

    usd_per_day: Usd | UnsetType | None = UNSET
    usd_per_month: Usd | UnsetType | None = UNSET
    usd_total: Usd | UnsetType | None = UNSET


class KeyLimitsIn(Struct, forbid_unknown_fields=True):
    requests_per_minute: Limit | UnsetType | None = UNSET
    requests_per_day: Limit | UnsetType | None = UNSET


class KeyAttributes(Struct, forbid_unknown_fields=True):
    """The attributes a key is created with (`POST /admin/accounts/{id}/keys`) or changed by
    (`PATCH /admin/keys/{key_id}`): a field left out keeps its value, inside `budget` and
    `limits` too; `models` and `tags` are replaced whole."""

    budget: BudgetIn | UnsetType = UNSET
    limits: KeyLimitsIn | UnsetType = UNSET
    models: list[str] | UnsetType = UNSET
    tags: dict[TagName, TagValue] | UnsetType = UNSET


def _merged(old: int | None, new: float | int | UnsetType | None, usd: bool) -> int | None:
    if isinstance(new, UnsetType):
        return old
    if new is None:
        return None
    return usd_to_micros(float(new)) if usd else int(new)


def check_models(models: list[str]) -> tuple[str, ...]:
    if len(models) > MAX_MODELS:
        raise InvalidRequest(f"`models` holds at most {MAX_MODELS} entries.", param="models")
    for index, pattern in enumerate(models):
        if not _PATTERN.match(pattern) or "**" in pattern:
            raise InvalidRequest(
                f"`models[{index}]` is not a model id, route or glob ('openai/*'): "
                f"{pattern[:100]!r}.",
                param=f"models[{index}]",
            )
    return tuple(dict.fromkeys(models))


def apply(policy: KeyPolicy, attributes: KeyAttributes) -> KeyPolicy:
    """The policy with the attributes applied (validated: 400 naming the field)."""
    budget, limits = policy.budget, policy.limits
    if not isinstance(attributes.budget, UnsetType):
        b = attributes.budget
        budget = KeyBudget(
            _merged(budget.day_micros, b.usd_per_day, usd=True),
            _merged(budget.month_micros, b.usd_per_month, usd=True),
            _merged(budget.total_micros, b.usd_total, usd=True),
        )
    if not isinstance(attributes.limits, UnsetType):
        lim = attributes.limits
        limits = KeyLimits(
            _merged(limits.requests_per_minute, lim.requests_per_minute, usd=False),
            _merged(limits.requests_per_day, lim.requests_per_day, usd=False),
        )
    models = policy.models
    if not isinstance(attributes.models, UnsetType):
        models = check_models(attributes.models)
    tags = policy.tags
    if not isinstance(attributes.tags, UnsetType):
        if len(attributes.tags) > MAX_TAGS:
            raise InvalidRequest(f"`tags` holds at most {MAX_TAGS} pairs.", param="tags")
        tags = dict(attributes.tags)
    return KeyPolicy(budget, limits, models, tags)


def policy_json(policy: KeyPolicy) -> dict[str, object]:
    def usd(micros: int | None) -> float | None:
        return None if micros is None else micros_to_usd(micros)

    return {
        "budget": {
            "usd_per_day": usd(policy.budget.day_micros),
            "usd_per_month": usd(policy.budget.month_micros),
            "usd_total": usd(policy.budget.total_micros),
        },
        "limits": {
            "requests_per_minute": policy.limits.requests_per_minute,
            "requests_per_day": policy.limits.requests_per_day,
        },
        "models": list(policy.models),
        "tags": dict(policy.tags),
    }


def spend_json(spend: KeySpend) -> dict[str, float]:
    return {
        "today": micros_to_usd(spend.today),
        "month": micros_to_usd(spend.month),
        "total": micros_to_usd(spend.total),
    }


# -- the allowlist ---------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4096)
def _matcher(models: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile("|".join(re.escape(p).replace(r"\*", ".*") for p in models))


def model_allowed(models: tuple[str, ...], model_id: str) -> bool:
    return not models or _matcher(models).fullmatch(model_id) is not None


def allowed_targets(
    models: tuple[str, ...], requested: str, targets: list[CatalogEntry], is_route: bool
) -> list[CatalogEntry]:
    """The targets this key may use, in their order. `requested`: the model id the request
    named; `is_route`: whether that is a route (whose naming allows all its targets)."""
    if not models or (is_route and model_allowed(models, requested)):
        return targets
    if not is_route and not model_allowed(models, requested):
        raise model_not_allowed(requested)
    kept = [t for t in targets if model_allowed(models, t.model.id)]
    if not kept:
        raise model_not_allowed(requested)
    return kept


def model_not_allowed(model: str) -> PermissionDenied:
    return PermissionDenied(
        f"This API key may not use the model '{model[:200]}'.",
        param="model",
        code="model_not_allowed",
    )
