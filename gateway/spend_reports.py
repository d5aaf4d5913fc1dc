"""Usage grouped over a range of days: by API key, by model, or by a key tag's value.

`group_by=key` and `tag:<name>` read the per-key totals the store keeps with every settled
ledger entry; a tag report groups each key's totals under the key's current value of that tag
(`null`: keys without it), so retagging a key moves its history with it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from gateway.billing import micros_to_usd
from gateway.errors import InvalidRequest
from gateway.store.base import ApiKey, Store

MEASURES = ("requests", "prompt_tokens", "completion_tokens", "images", "cost_micros")


class _Row(Protocol):
    @property
    def requests(self) -> int: ...
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def completion_tokens(self) -> int: ...
    @property
    def images(self) -> int: ...
    @property
    def cost_micros(self) -> int: ...


def parse_group_by(value: str) -> tuple[str, str]:
    """("key" | "model" | "tag", tag name or "")."""
    if value in ("key", "model"):
        return value, ""
    if value.startswith("tag:") and 0 < len(value) - 4 <= 64:
        return "tag", value[4:]
    raise InvalidRequest("`group_by` must be key, model or tag:<name>.", param="group_by")


def totals_json(rows: Iterable[_Row]) -> dict[str, object]:
    sums = dict.fromkeys(MEASURES, 0)
    for row in rows:
        for measure in MEASURES:
            sums[measure] += getattr(row, measure)
    cost = sums.pop("cost_micros")
    return {**sums, "cost_usd": micros_to_usd(cost)}


def _grouped(pairs: Iterable[tuple[str | None, _Row]]) -> dict[str | None, list[_Row]]:
    groups: dict[str | None, list[_Row]] = {}
    for name, row in pairs:
        groups.setdefault(name, []).append(row)
    return groups


async def grouped_usage(
    store: Store, account_id: str, since: str, until: str, group_by: str
) -> list[dict[str, object]]:
    kind, tag = parse_group_by(group_by)
    if kind == "model":
        groups = _grouped((r.model, r) for r in await store.usage(account_id, since, until))
        return [{"model": m, **totals_json(rows)} for m, rows in sorted(groups.items(), key=_by)]
    keys = {k.id: k for k in await store.list_keys(account_id)}
    by_key = await store.usage_by_key(account_id, since, until)
    if kind == "key":
        groups = _grouped((r.key_id, r) for r in by_key)
        return [
            {"key_id": k, "name": _name(keys, k), **totals_json(rows)}
            for k, rows in sorted(groups.items(), key=_by)
        ]
    groups = _grouped((_tag(keys, r.key_id, tag), r) for r in by_key)
    return [
        {"tag": tag, "value": value, **totals_json(rows)}
        for value, rows in sorted(groups.items(), key=_by)
    ]


def _by(item: tuple[str | None, list[_Row]]) -> tuple[bool, str]:
    return item[0] is None, item[0] or ""


def _name(keys: dict[str, ApiKey], key_id: str | None) -> str | None:
    key = keys.get(key_id or "")
    return key.name if key is not None else None


def _tag(keys: dict[str, ApiKey], key_id: str, tag: str) -> str | None:
    key = keys.get(key_id)
    return key.policy.tags.get(tag) if key is not None else None
