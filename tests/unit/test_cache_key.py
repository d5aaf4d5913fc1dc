"""The cache key's canonical form: what changes the key and what does not."""

from __future__ import annotations

import orjson

from gateway.cache.key import cache_key, repeatable, request_meaning


def meaning(route: str, body: bytes) -> bytes:
    return request_meaning(route, orjson.loads(body))


def test_field_order_whitespace_and_delivery_fields_do_not_change_the_meaning() -> None:
    one = b'{"model":"a/b","messages":[{"role":"user","content":"hi"}],"temperature":0}'
    two = (
        b'{\n  "stream": true, "stream_options": {"include_usage": true}, "user": "u-1",\n'
        b'  "temperature": 0.0, "messages": [ {"content": "hi", "role": "user"} ], "model": "x/y"}'
    )
    assert meaning("chat", one) == meaning("chat", two)


def test_documented_defaults_equal_absent_fields() -> None:
    bare = b'{"messages":[],"seed":1}'
    explicit = b'{"messages":[],"seed":1,"temperature":1,"top_p":1.0,"n":1}'
    assert meaning("chat", bare) == meaning("chat", explicit)


def test_content_and_sampling_fields_change_the_meaning() -> None:
    base = meaning("chat", b'{"messages":[{"role":"user","content":"hi"}],"temperature":0}')
    for other in (
        b'{"messages":[{"role":"user","content":"hi!"}],"temperature":0}',
        b'{"messages":[{"role":"user","content":"hi"}],"temperature":0.1}',
        b'{"messages":[{"role":"user","content":"hi"}],"temperature":0,"max_tokens":5}',
        b'{"messages":[{"role":"user","content":"hi"}],"temperature":0,"tools":[]}',
    ):
        assert meaning("chat", other) != base


def test_key_separates_accounts_routes_and_models_and_holds_no_prompt() -> None:
    body = meaning("chat", b'{"messages":[{"role":"user","content":"secret prompt"}]}')
    keys = {
        cache_key("acct_a", "chat", ["m/1"], body),
        cache_key("acct_b", "chat", ["m/1"], body),
        cache_key("acct_a", "messages", ["m/1"], body),
        cache_key("acct_a", "chat", ["m/2"], body),
        cache_key("acct_a", "chat", ["m/1", "m/2"], body),
    }
    assert len(keys) == 5
    assert all("secret" not in key for key in keys)
    assert cache_key("acct_a", "chat", ["m/1"], body).startswith("acct_a:")


def test_repeatable_requests() -> None:
    assert repeatable("chat", {"temperature": 0})
    assert repeatable("chat", {"temperature": 0.9, "seed": 3})
    assert not repeatable("chat", {})  # the default temperature is 1
    assert not repeatable("chat", {"temperature": 0.2})
    assert not repeatable("chat", {"temperature": 0, "n": 2})
    assert repeatable("messages", {"temperature": 0})
    assert not repeatable("messages", {"temperature": 0.5, "seed": 3})  # no seed in Anthropic's API
    assert repeatable("embeddings", {})
