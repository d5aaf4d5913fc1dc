"""gateway/providers/base.py's MessagesBody: the pass-through's body, written once a request."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.providers import base
from gateway.providers.base import MessagesBody

MESSAGES = [{"role": "user", "content": [{"type": "text", "text": 'Say "hello", ü'}]}]


@pytest.mark.parametrize(
    "fields",
    [
        {"model": "a/m", "max_tokens": 5, "messages": MESSAGES},
        {"max_tokens": 5, "model": "a/m", "messages": MESSAGES, "stream": True},
        {"max_tokens": 5, "messages": MESSAGES, "model": "a/m"},
        {"model": "a/m"},
        {"max_tokens": 5, "messages": MESSAGES},  # no model: written last
        {"models": ["b/n"], "model": "a/m", "messages": MESSAGES, "top_k": None},
        {"model": "a/m", "models": ["b/n"]},
        {"metadata": {"model": "claude-x"}, "model": "a/m", "tools": [{"model": "claude-x"}]},
        {'k"model': "claude-x", "model": "a/m", "system": '"model":"claude-x"'},
    ],
    ids=[
        "first",
        "middle",
        "last",
        "alone",
        "absent",
        "after-models",
        "before-models",
        "nested-model-of-the-same-value",
        "the-member-s-bytes-in-a-key-and-a-string",
    ],
)
def test_each_model_is_written_where_the_client_had_it(fields: dict[str, Any]) -> None:
    body = MessagesBody(fields)
    for model in ("claude-x", 'q"uo\\te', "claude-x"):
        expected = {k: v for k, v in fields.items() if k != "models"} | {"model": model}
        assert body.with_model(model) == orjson.dumps(expected)


@pytest.mark.parametrize(
    ("fields", "rewritten"),
    [
        ({"model": "a/m", "messages": MESSAGES}, 0),
        ({"model": "a/m", "metadata": {"model": "m1"}, "messages": MESSAGES}, 1),
    ],
    ids=["cut-from-the-first-try", "nested-model-of-the-same-value"],
)
def test_a_retry_sends_the_same_bytes_and_other_models_reuse_the_first_try(
    monkeypatch: pytest.MonkeyPatch, fields: dict[str, Any], rewritten: int
) -> None:
    """Other names are joined into the first try's bytes; the members are written a second
    time (once a request) only when its model's member cannot be told from a nested one."""
    splits = []
    split = base._around_model

    def counted(fields: dict[str, Any]) -> tuple[memoryview, bytes, bytes, memoryview]:
        splits.append(fields)
        return split(fields)

    monkeypatch.setattr(base, "_around_model", counted)
    body = MessagesBody(fields)
    models = ("m1", "m1", "m2", "m3", "m1")
    written = [body.with_model(model) for model in models]
    assert written[1] is written[0], "a retry under the same name: the same bytes object"
    assert len(splits) == rewritten
    assert written == [orjson.dumps(fields | {"model": model}) for model in models]
