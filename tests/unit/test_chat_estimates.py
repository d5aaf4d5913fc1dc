"""A chat request's reservation and upstream token estimate worked out in one pass
(`metering.chat_estimates`, decision 0011's twenty-ninth pass), each model's worst-case prices
remembered: the same amounts as the rule of decision 0003 (the estimated prompt at the dearest
price a prompt token may cost, plus the output budget at the output price, times `n`, the
dearest target's, rounded up to a whole micro-dollar)."""

from __future__ import annotations

import math

from gateway.billing import worst_prices_micros
from gateway.metering import chat_estimates, reserve_for_chat, upstream_tokens_for_chat
from gateway.routing.catalog import CatalogEntry
from gateway.schemas.openai import decode_chat_request
from gateway.settings import ModelSettings, ProviderSettings

PROVIDER = ProviderSettings(kind="openai")


def target(
    model_id: str, input_usd: float, output_usd: float, cache_write_usd: float | None = None
) -> CatalogEntry:
    model = ModelSettings(
        id=model_id,
        provider="p",
        input_usd_per_mtok=input_usd,
        output_usd_per_mtok=output_usd,
        cache_write_usd_per_mtok=cache_write_usd,
    )
    return CatalogEntry(model, PROVIDER, None)


def by_hand(
    chars: int, messages: int, images: int, n: int, output: int, targets: list[CatalogEntry]
) -> tuple[int, int]:
    prompt = (math.ceil(chars / 3) + 4 * messages + 1600 * images) * n
    costs = []
    for t in targets:
        m = t.model
        prompt_price = max(m.input_usd_per_mtok, m.cache_write_usd_per_mtok or 0.0)
        scaled = prompt * round(prompt_price * 1e6) + output * n * round(
            m.output_usd_per_mtok * 1e6
        )
        costs.append(math.ceil(scaled / 1_000_000))
    return max(costs, default=0), math.ceil(chars / 4) + output * n


def test_the_reservation_is_the_dearest_targets_worst_case_the_tokens_prompt_and_output() -> None:
    body = (
        b'{"model":"p/a","n":2,"max_completion_tokens":300,"max_tokens":9,"messages":['
        b'{"role":"system","content":"Be brief."},'
        b'{"role":"user","content":[{"type":"text","text":"What is in this picture?"},'
        b'{"type":"image_url","image_url":{"url":"https://example.com/a.png"}}]}]}'
    )
    chat = decode_chat_request(body)
    targets = [
        target("p/a", 3.0, 15.0, cache_write_usd=3.75),  # a cache write dearer than input
        target("p/b", 5.0, 10.0),
        target("p/c", 0.1, 0.2, cache_write_usd=0.05),
    ]
    chars = len("Be brief.") + len("What is in this picture?")
    expected = by_hand(chars, messages=2, images=1, n=2, output=300, targets=targets)
    assert chat_estimates(chat, targets) == expected
    assert expected[0] > 0 and expected[1] == 9 + 600
    assert reserve_for_chat(chat, targets) == expected[0]
    assert upstream_tokens_for_chat(chat) == expected[1]
    # each target alone: its own worst case (the dearest of them is the first here)
    for one in targets:
        assert chat_estimates(chat, [one]) == by_hand(chars, 2, 1, 2, 300, [one])


def test_no_target_reserves_nothing_and_the_default_output_budget_counts() -> None:
    chat = decode_chat_request(b'{"model":"p/a","messages":[{"role":"user","content":"hi"}]}')
    reserve, tokens = chat_estimates(chat, [])
    assert reserve == 0 and tokens == 1 + 4096  # ceil(2 / 4), the seed's max_tokens


def test_a_fraction_of_a_micro_dollar_is_reserved_whole() -> None:
    chat = decode_chat_request(
        b'{"model":"p/a","max_tokens":1,"messages":[{"role":"user","content":"x"}]}'
    )
    # 1 + 4 prompt tokens at $0.000001/M and 1 output token at $0.000001/M: 6 millionths of a
    # micro-dollar, reserved as one
    assert chat_estimates(chat, [target("p/a", 0.000001, 0.000001)])[0] == 1


def test_a_models_worst_prices_are_the_dearer_prompt_price_and_the_output_price() -> None:
    assert worst_prices_micros(3.0, 3.75, 15.0) == (3_750_000, 15_000_000)
    assert worst_prices_micros(3.0, 1.0, 15.0) == (3_000_000, 15_000_000)
    assert worst_prices_micros(0.25, None, 1.25) == (250_000, 1_250_000)
