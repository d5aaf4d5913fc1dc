"""The /v1/messages pass-through's upstream request: AnthropicProvider's `_messages_request`
(the URL and headers it sends) and the app's providers that take it."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.providers import anthropic
from gateway.providers.anthropic import API_VERSION, AnthropicProvider
from gateway.providers.base import MessagesBody, MessagesCall
from gateway.providers.http_client import FixedHeaders
from gateway.routing.catalog import CatalogEntry, Secret
from gateway.settings import ModelSettings, ProviderSettings, load_settings
from gateway.state import build_state

SETTINGS = ProviderSettings(kind="anthropic", base_url="http://127.0.0.1:9/anth/")
TARGET = CatalogEntry(ModelSettings(id="anthropic/claude-x", provider="anthropic"), SETTINGS, None)


def provider(key: str | None = "sk-ant-1") -> AnthropicProvider:
    return AnthropicProvider("anthropic", SETTINGS, None if key is None else Secret(key))


def call(forwarded: dict[str, str], stream: bool) -> MessagesCall:
    body = MessagesBody({"model": "anthropic/claude-x"})
    version, beta = forwarded.get("anthropic-version"), forwarded.get("anthropic-beta")
    return MessagesCall(body, version, beta, TARGET, "", stream)


def written_per_try(forwarded: dict[str, str], stream: bool, key: str | None) -> dict[str, str]:
    """The headers as every try wrote them before they were kept (30cf807)."""
    headers = {
        "content-type": "application/json",
        "accept": "text/event-stream" if stream else "application/json",
        "anthropic-version": forwarded.get("anthropic-version") or API_VERSION,
    }
    if beta := forwarded.get("anthropic-beta"):
        headers["anthropic-beta"] = beta
    if key is not None:
        headers["x-api-key"] = key
    return headers


@pytest.mark.parametrize("stream", [False, True], ids=["answer", "stream"])
@pytest.mark.parametrize("key", ["sk-ant-1", None], ids=["key", "no-key"])
@pytest.mark.parametrize(
    "forwarded",
    [
        {},
        {"anthropic-version": "2024-01-01"},
        {"anthropic-beta": "b1,b2"},
        {"anthropic-version": "2024-01-01", "anthropic-beta": "b1"},
    ],
    ids=["none", "version", "beta", "both"],
)
def test_each_try_sends_the_provider_and_client_headers_in_order(
    forwarded: dict[str, str], key: str | None, stream: bool
) -> None:
    sent = provider(key)._messages_request(call(forwarded, stream))
    assert list(sent.headers.items()) == list(written_per_try(forwarded, stream, key).items())
    assert sent.url == "http://127.0.0.1:9/anth/v1/messages"
    assert sent.body == b'{"model":"claude-x"}'


def test_the_headers_are_written_out_once_per_client_values() -> None:
    made = provider()
    first = made._messages_request(call({"anthropic-beta": "b1"}, True)).headers
    assert type(first) is FixedHeaders
    assert made._messages_request(call({"anthropic-beta": "b1"}, True)).headers is first
    other = made._messages_request(call({"anthropic-beta": "b2"}, True)).headers
    answer = made._messages_request(call({"anthropic-beta": "b1"}, False)).headers
    assert len({id(first), id(other), id(answer)}) == 3
    assert provider()._messages_request(call({"anthropic-beta": "b1"}, True)).headers is not first


def test_no_more_header_sets_are_kept_than_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(anthropic, "MAX_PASSTHROUGH_HEADERS", 2)
    made = provider()
    for beta in ("b1", "b2", "b3", "b3"):
        sent = made._messages_request(call({"anthropic-beta": beta}, True)).headers
        assert dict(sent) == written_per_try({"anthropic-beta": beta}, True, "sk-ant-1")
    assert type(sent) is dict, "past the bound: made per try, as before"
    assert len(made._passthrough_headers) == 2


def test_a_header_value_with_a_line_break_is_left_for_the_client_to_refuse() -> None:
    forwarded = {"anthropic-beta": "b1\r\nx-evil: 1"}
    made = provider()
    sent = made._messages_request(call(forwarded, False)).headers
    assert sent == written_per_try(forwarded, False, "sk-ant-1")
    assert type(sent) is dict and not made._passthrough_headers


def test_count_tokens_goes_to_the_messages_url_count_tokens() -> None:
    made = provider()
    url = f"{made._messages_url}/count_tokens"
    assert made._messages_request(call({}, False), url).url == (
        "http://127.0.0.1:9/anth/v1/messages/count_tokens"
    )


async def test_the_providers_that_speak_the_messages_api_are_found_once_per_app(
    tmp_path: Path,
) -> None:
    config = tmp_path / "klawd.toml"
    config.write_text(f'[store]\nurl = "sqlite:///{tmp_path / "klawd.db"}"\n')
    environ = {"ANTHROPIC_API_KEY": "sk-ant-1", "OPENAI_API_KEY": "sk-1"}
    state = await build_state(load_settings(config, environ), environ)
    try:
        assert {"anthropic", "openai"} <= set(state.providers)
        found = state.messages_providers
        assert found == {"anthropic": state.providers["anthropic"]}
        assert state.messages_providers is found
    finally:
        await state.close()
