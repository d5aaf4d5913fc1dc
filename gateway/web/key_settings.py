"""Mission Control's key attributes: the fields that set a key's budgets, limits, allowed models
and tags, in the create-key form and in each key's settings form alike (one Jinja macro,
templates/_key_fields.html; validated by the admin API's rules, gateway/keys.py), and the spend
per key and per tag shown beside them."""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.errors import InvalidRequest
from gateway.keys import KeyAttributes
from gateway.schemas.decoding import decode_json
from gateway.store.base import ApiKey, KeyPolicy, KeySpend
from gateway.web.context import Form

_decoder = msgspec.json.Decoder(KeyAttributes)
BUDGET_FIELDS = ("usd_per_day", "usd_per_month", "usd_total")
LIMIT_FIELDS = ("requests_per_minute", "requests_per_day")
FIELDS = (*BUDGET_FIELDS, *LIMIT_FIELDS, "models", "tags")


def _usd_box(micros: int | None) -> str:
    """Exact to the micro-dollar, without trailing zeros ("2.5", "0.000024")."""
    if micros is None:
        return ""
    return f"{micros / 1_000_000:.6f}".rstrip("0").rstrip(".")


def form_values(policy: KeyPolicy) -> dict[str, str]:
    """What the boxes of a key's settings form hold for its current policy."""
    budget, limits = policy.budget, policy.limits
    return {
        "usd_per_day": _usd_box(budget.day_micros),
        "usd_per_month": _usd_box(budget.month_micros),
        "usd_total": _usd_box(budget.total_micros),
        "requests_per_minute": str(limits.requests_per_minute or ""),
        "requests_per_day": str(limits.requests_per_day or ""),
        "models": ", ".join(policy.models),
        "tags": "".join(f"{name}={value}\n" for name, value in policy.tags.items()),
    }


def submitted_values(form: Form) -> dict[str, str]:
    """The boxes as the user filled them, to show again beside the error they caused."""
    return {name: form.get(name) for name in FIELDS}


def _number(form: Form, name: str) -> float | None:
    text = form.get(name)
    if not text:
        return None
    try:
        return float(text)
    except ValueError as exc:
        raise InvalidRequest(f"`{name}` must be a number (or empty).", param=name) from exc


def attributes_from(form: Form) -> KeyAttributes:
    """Every field of the form is the key's whole setting: an empty box removes that cap."""
    limits: dict[str, Any] = {}
    for name in LIMIT_FIELDS:
        number = _number(form, name)
        limits[name] = None if number is None else int(number)
    tags: dict[str, str] = {}
    for line in form.get("tags").splitlines():
        if line.strip():
            name, sep, value = line.partition("=")
            if not sep:
                raise InvalidRequest("Tags are one NAME=VALUE per line.", param="tags")
            tags[name.strip()] = value.strip()
    body = {
        "budget": {name: _number(form, name) for name in BUDGET_FIELDS},
        "limits": limits,
        "models": [
            m.strip() for m in form.get("models").replace("\n", ",").split(",") if m.strip()
        ],
        "tags": tags,
    }
    return decode_json(_decoder, msgspec.json.encode(body))


def spend_by_tag(keys: list[ApiKey], spend: dict[str, KeySpend]) -> list[dict[str, object]]:
    """(tag, value) -> the summed spend of the keys carrying it, largest this month first."""
    sums: dict[tuple[str, str], list[int]] = {}
    for key in keys:
        key_spend = spend.get(key.id, KeySpend())
        for pair in key.policy.tags.items():
            total = sums.setdefault(pair, [0, 0, 0])
            total[0] += key_spend.today
            total[1] += key_spend.month
            total[2] += key_spend.total
    rows = [
        {"tag": tag, "value": value, "today": s[0], "month": s[1], "total": s[2]}
        for (tag, value), s in sums.items()
    ]
    return sorted(rows, key=lambda r: (-int(str(r["month"])), str(r["tag"]), str(r["value"])))
