"""The routing policy: a table of requests and the model each one gets. No sockets."""

from __future__ import annotations

import msgspec
import pytest

from gateway.errors import InvalidRequest, NotFound, ServiceUnavailable
from gateway.routing.catalog import Catalog
from gateway.schemas.openai import ChatRequest
from gateway.settings import load_settings

SETTINGS = load_settings(None)
ALL_AVAILABLE = Catalog(SETTINGS, {})
NO_GOOGLE = Catalog(SETTINGS, {"google": "no key"})
NOTHING = Catalog(SETTINGS, {p: "no key" for p in ("google", "anthropic", "openai")})

TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}


def request(**fields: object) -> ChatRequest:
    body = {"messages": [{"role": "user", "content": "hi"}], **fields}
    return msgspec.convert(body, ChatRequest)


@pytest.mark.parametrize(
    ("catalog", "fields", "chosen"),
    [
        (ALL_AVAILABLE, {"model": "klawd/auto"}, "google/gemini-2.0-flash"),
        (NO_GOOGLE, {"model": "klawd/auto"}, "anthropic/claude-sonnet-4"),
        (
            NO_GOOGLE,
            {"model": "klawd/auto", "response_format": {"type": "json_object"}},
            "openai/gpt-4-turbo",
        ),
        (NO_GOOGLE, {"model": "klawd/auto", "tools": [TOOL]}, "anthropic/claude-sonnet-4"),
        # tools escalate past the cheapest tier even when it supports them
        (ALL_AVAILABLE, {"model": "klawd/auto", "tools": [TOOL]}, "anthropic/claude-sonnet-4"),
        # over 100K tokens escalates too: gemini fits 1M but is below sonnet's tier
        (
            ALL_AVAILABLE,
            {"model": "klawd/auto", "messages": [{"role": "user", "content": "x" * 420_000}]},
            "anthropic/claude-sonnet-4",
        ),
        # escalation target unavailable: the cheaper tier still serves
        (
            Catalog(SETTINGS, {"anthropic": "no key", "openai": "no key"}),
            {"model": "klawd/auto", "tools": [TOOL]},
            "google/gemini-2.0-flash",
        ),
        (
            ALL_AVAILABLE,
            {"model": "klawd/auto", "messages": [{"role": "user", "content": [IMAGE]}]},
            "google/gemini-2.0-flash",
        ),
        # 150K tokens of prompt no longer fit gpt-4-turbo's 128K
        (
            NO_GOOGLE,
            {
                "model": "klawd/auto",
                "messages": [{"role": "user", "content": "x" * 600_000}],
                "response_format": {"type": "json_object"},
            },
            None,
        ),
        (ALL_AVAILABLE, {"model": "klawd/standard"}, "anthropic/claude-sonnet-4"),
        (
            Catalog(SETTINGS, {"anthropic": "no key"}),
            {"model": "klawd/standard"},
            "openai/gpt-4-turbo",
        ),
        (ALL_AVAILABLE, {"model": "openai/gpt-4-turbo"}, "openai/gpt-4-turbo"),
    ],
)
def test_policy_table(catalog: Catalog, fields: dict[str, object], chosen: str | None) -> None:
    from gateway.routing.router import resolve_chat

    if chosen is None:
        with pytest.raises(InvalidRequest):
            resolve_chat(catalog, request(**fields))
        return
    assert resolve_chat(catalog, request(**fields))[0].model.id == chosen


def test_auto_lists_the_other_suitable_models_as_fallbacks_cheapest_first() -> None:
    from gateway.routing.router import resolve_chat

    chain = [e.model.id for e in resolve_chat(ALL_AVAILABLE, request(model="klawd/auto"))]
    assert chain == [
        "google/gemini-2.0-flash",
        "anthropic/claude-sonnet-4",
        "openai/gpt-4-turbo",
        "anthropic/claude-opus-4",
    ]


def test_unknown_model_is_model_not_found() -> None:
    from gateway.routing.router import resolve_chat

    with pytest.raises(NotFound) as caught:
        resolve_chat(ALL_AVAILABLE, request(model="acme/x"))
    assert caught.value.code == "model_not_found"


def test_route_with_nothing_available_is_503() -> None:
    from gateway.routing.router import resolve_chat

    with pytest.raises(ServiceUnavailable):
        resolve_chat(NOTHING, request(model="klawd/auto"))


def test_image_model_is_not_a_chat_model() -> None:
    from gateway.routing.router import resolve_chat

    with pytest.raises(InvalidRequest):
        resolve_chat(ALL_AVAILABLE, request(model="replicate/seedream-4.5"))


def body(**fields: object) -> bytes:
    import orjson

    return orjson.dumps({"messages": [{"role": "user", "content": "hi"}], **fields})


@pytest.mark.parametrize(
    ("catalog", "fields", "chosen"),
    [
        # gemini honours seed: the cheapest still serves it
        (ALL_AVAILABLE, {"model": "klawd/auto", "seed": 7}, "google/gemini-2.0-flash"),
        # neither gemini nor anthropic returns logprobs: the OpenAI model does
        (ALL_AVAILABLE, {"model": "klawd/auto", "logprobs": True}, "openai/gpt-4-turbo"),
        # a neutral value asks for nothing: the cheapest serves it
        (ALL_AVAILABLE, {"model": "klawd/auto", "logprobs": False}, "google/gemini-2.0-flash"),
        # tools escalate to sonnet's tier, where anthropic cannot take a seed
        (ALL_AVAILABLE, {"model": "klawd/auto", "tools": [TOOL], "seed": 7}, "openai/gpt-4-turbo"),
        (ALL_AVAILABLE, {"model": "klawd/auto", "n": 2}, "openai/gpt-4-turbo"),
        # a catalog model named directly is not re-routed: its provider answers the 400
        (
            ALL_AVAILABLE,
            {"model": "anthropic/claude-sonnet-4", "seed": 7},
            "anthropic/claude-sonnet-4",
        ),
    ],
)
def test_auto_picks_a_target_that_honours_every_field(
    catalog: Catalog, fields: dict[str, object], chosen: str
) -> None:
    from gateway.providers.registry import refused_field
    from gateway.routing.router import resolve_chat

    chat = request(**fields)
    targets = resolve_chat(catalog, chat, body(**fields))
    assert targets[0].model.id == chosen
    if fields["model"] == "klawd/auto":  # the fallbacks honour every field too
        assert all(refused_field(t.provider.kind, fields, chat.n) is None for t in targets)


def test_auto_names_a_field_no_target_honours() -> None:
    from gateway.routing.router import resolve_chat

    no_openai = Catalog(SETTINGS, {"openai": "no key"})
    fields = {"model": "klawd/auto", "logprobs": True}
    with pytest.raises(InvalidRequest) as caught:
        resolve_chat(no_openai, request(**fields), body(**fields))
    assert caught.value.param == "logprobs"


def image_catalog() -> Catalog:
    from gateway.settings import ModelSettings

    single = ModelSettings(
        id="openai/one",
        provider="openai",
        kind="image",
        max_images_per_request=1,
        fallbacks=["openai/many"],
    )
    many = ModelSettings(id="openai/many", provider="openai", kind="image")
    strict = ModelSettings(
        id="openai/strict", provider="openai", kind="image", max_images_per_request=2
    )
    settings = msgspec.structs.replace(SETTINGS, models=[*SETTINGS.models, single, many, strict])
    return Catalog(settings, {})


def test_image_model_within_its_limit_is_served_and_one_past_it_falls_back() -> None:
    from gateway.routing.router import resolve_image

    catalog = image_catalog()
    assert [e.model.id for e in resolve_image(catalog, "openai/one", 1)] == [
        "openai/one",
        "openai/many",
    ]
    assert [e.model.id for e in resolve_image(catalog, "openai/one", 4)] == ["openai/many"]


def test_image_model_that_cannot_make_n_images_is_400_naming_n() -> None:
    from gateway.routing.router import resolve_image

    with pytest.raises(InvalidRequest) as caught:
        resolve_image(image_catalog(), "openai/strict", 3)
    assert caught.value.param == "n"
    assert "at most 2 images per request" in caught.value.message
