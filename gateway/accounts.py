"""Account and key operations shared by the admin API and the `klawd` CLI."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Annotated

from msgspec import Meta, Struct

from gateway.auth import display_prefix, generate_key, hash_key
from gateway.billing import micros_to_usd, usd_to_micros
from gateway.errors import InvalidRequest, NotFound
from gateway.keys import KeyAttributes, apply, policy_json, spend_json
from gateway.settings import Settings
from gateway.store.base import NO_POLICY, Account, ApiKey, CustomLimits, KeySpend, Store

Name = Annotated[str, Meta(min_length=1, max_length=200)]
Credits = Annotated[float, Meta(ge=0, le=1_000_000_000)]
Limit = Annotated[int, Meta(ge=1)]


class NewAccount(Struct, forbid_unknown_fields=True):
    name: Name
    plan: str = "free"
    credits_usd: Credits | None = None


class LimitsPatch(Struct, forbid_unknown_fields=True, omit_defaults=True):
    requests_per_minute: Limit | None = None
    requests_per_day: Limit | None = None
    tokens_per_minute: Limit | None = None


class AccountPatch(Struct, forbid_unknown_fields=True):
    plan: str | None = None
    limits: LimitsPatch | None = None
    credits_usd: Credits | None = None  # added to the balance


class NewKey(KeyAttributes, forbid_unknown_fields=True):
    """A new key: its name and expiry, and the attributes of gateway/keys.py."""

    name: Name = "default"
    expires_at: int | str | None = None  # unix seconds or ISO 8601


def _check_plan(settings: Settings, plan: str) -> None:
    if plan not in settings.plans:
        raise InvalidRequest(
            f"Unknown plan '{plan[:100]}'; choose one of {sorted(settings.plans)}.", param="plan"
        )


async def create_account(store: Store, settings: Settings, new: NewAccount) -> Account:
    _check_plan(settings, new.plan)
    credits = (
        new.credits_usd
        if new.credits_usd is not None
        else settings.plans[new.plan].starting_credit_usd
    )
    return await store.create_account(new.name, new.plan, usd_to_micros(credits))


async def get_account(store: Store, account_id: str) -> Account:
    account = await store.get_account(account_id)
    if account is None:
        raise NotFound(f"No account '{account_id[:100]}'.")
    return account


async def update_account(
    store: Store, settings: Settings, account_id: str, patch: AccountPatch
) -> Account:
    if patch.plan is not None:
        _check_plan(settings, patch.plan)
    current = await get_account(store, account_id)
    limits = None
    if patch.limits is not None:
        merged = {
            "requests_per_minute": current.limits.requests_per_minute,
            "requests_per_day": current.limits.requests_per_day,
            "tokens_per_minute": current.limits.tokens_per_minute,
        }
        for field in ("requests_per_minute", "requests_per_day", "tokens_per_minute"):
            value = getattr(patch.limits, field)
            if value is not None:
                merged[field] = value
        limits = CustomLimits(**merged)
    updated = await store.update_account(
        account_id,
        plan=patch.plan,
        limits=limits,
        add_credits_micros=usd_to_micros(patch.credits_usd or 0.0),
    )
    if updated is None:
        raise NotFound(f"No account '{account_id[:100]}'.")
    return updated


def effective_limits(settings: Settings, account: Account) -> dict[str, int | None]:
    plan = settings.plans.get(account.plan) or settings.plans["free"]
    custom = account.limits
    return {
        "requests_per_minute": custom.requests_per_minute or plan.requests_per_minute,
        "requests_per_day": custom.requests_per_day or plan.requests_per_day,
        "tokens_per_minute": custom.tokens_per_minute or plan.tokens_per_minute,
    }


def account_json(settings: Settings, account: Account) -> dict[str, object]:
    plan = settings.plans.get(account.plan) or settings.plans["free"]
    return {
        "id": account.id,
        "name": account.name,
        "plan": account.plan,
        "credits_usd": micros_to_usd(account.credits_micros),
        "limits": effective_limits(settings, account),
        "images": plan.images,
        "created_at": account.created_at,
    }


def parse_expiry(value: int | str | None, now: float) -> int | None:
    if value is None:
        return None
    if isinstance(value, int):
        expires = value
    else:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as exc:
            raise InvalidRequest(
                "expires_at must be unix seconds or an ISO 8601 time.", param="expires_at"
            ) from exc
        if parsed.tzinfo is None:
            raise InvalidRequest(
                "expires_at needs a time zone (e.g. 2027-01-01T00:00:00Z).", param="expires_at"
            )
        expires = int(parsed.timestamp())
    if expires <= now:
        raise InvalidRequest("expires_at is in the past.", param="expires_at")
    return expires


async def create_key(store: Store, account_id: str, new: NewKey) -> tuple[ApiKey, str]:
    await get_account(store, account_id)
    expires_at = parse_expiry(new.expires_at, time.time())
    policy = apply(NO_POLICY, new)
    plaintext = generate_key()
    key = await store.create_key(
        account_id, new.name, display_prefix(plaintext), hash_key(plaintext), expires_at, policy
    )
    return key, plaintext


async def get_key(store: Store, key_id: str) -> ApiKey:
    key = await store.get_key(key_id)
    if key is None:
        raise NotFound(f"No key '{key_id[:100]}'.")
    return key


async def update_key(store: Store, key_id: str, attributes: KeyAttributes) -> ApiKey:
    """Changes the key's attributes; the store tells every process to drop its cached copy."""
    current = await get_key(store, key_id)
    key = await store.update_key(key_id, apply(current.policy, attributes))
    if key is None:
        raise NotFound(f"No key '{key_id[:100]}'.")
    return key


async def keys_with_spend(
    store: Store, account_id: str, keys: list[ApiKey], day: str
) -> list[dict[str, object]]:
    """The keys as the admin API shows them (never the secret), with their spend on `day`
    (UTC, YYYY-MM-DD), in its month and in total."""
    spend = await store.key_spend(account_id, [k.id for k in keys], day)
    return [key_json(k, spend=spend.get(k.id, KeySpend())) for k in keys]


def key_json(
    key: ApiKey, plaintext: str | None = None, spend: KeySpend | None = None
) -> dict[str, object]:
    out: dict[str, object] = {
        "id": key.id,
        "account_id": key.account_id,
        "name": key.name,
        "prefix": key.prefix,
        "created_at": key.created_at,
        "expires_at": key.expires_at,
        "revoked": key.revoked_at is not None,
        **policy_json(key.policy),
    }
    if spend is not None:
        out["spend_usd"] = spend_json(spend)
    if plaintext is not None:
        out["key"] = plaintext
    return out


async def revoke_key(store: Store, key_id: str) -> ApiKey:
    key = await store.revoke_key(key_id, int(time.time()))
    if key is None:
        raise NotFound(f"No key '{key_id[:100]}'.")
    return key
