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
    ],
    ids=["first", "middle", "last", "alone", "absent", "after-models", "before-models"],
)
def test_each_model_is_written_where_the_client_had_it(fields: dict[str, Any]) -> None:
    body = MessagesBody(fields)
    for model in ("claude-x", 'q"uo\\te', "claude-x"):
        expected = {k: v for k, v in fields.items() if k != "models"} | {"model": model}
        assert body.with_model(model) == orjson.dumps(expected)


def test_a_retry_sends_the_same_bytes_and_other_models_split_the_body_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    splits = []
    split = base._around_model

    def counted(fields: dict[str, Any]) -> tuple[memoryview, bytes, bytes, memoryview]:
        splits.append(fields)
        return split(fields)

    monkeypatch.setattr(base, "_around_model", counted)
    body = MessagesBody({"model": "a/m", "messages": MESSAGES})
    written = [body.with_model(model) for model in ("m1", "m1", "m2", "m3", "m1")]
    assert written[1] is written[0], "a retry under the same name: the same bytes object"
    assert len(splits) == 1, "written whole at the first try, split once for the others"
    assert [orjson.loads(w)["model"] for w in written] == ["m1", "m1", "m2", "m3", "m1"]
