"""Every [webhooks], [mission_control], [responses], [cache], [telemetry] and [bounds] field is
documented in docs/configuration.md."""

from __future__ import annotations

import msgspec
import pytest

from gateway.settings import (
    BoundsSettings,
    CacheSettings,
    MissionControlSettings,
    ResponsesSettings,
    TelemetrySettings,
    WebhookSettings,
)
from tests.conftest import REPO


@pytest.mark.parametrize(
    ("table", "kind"),
    [
        ("webhooks", WebhookSettings),
        ("mission_control", MissionControlSettings),
        ("responses", ResponsesSettings),
        ("cache", CacheSettings),
        ("telemetry", TelemetrySettings),
        ("bounds", BoundsSettings),
    ],
)
def test_every_field_is_documented(table: str, kind: type[msgspec.Struct]) -> None:
    docs = (REPO / "docs" / "configuration.md").read_text()
    section = docs.split(f"## `[{table}]`", 1)[1].split("\n## ", 1)[0]
    for field in msgspec.structs.fields(kind):
        assert f"| `{field.name}` |" in section, f"{table}.{field.name} is not documented"
