"""Money math in integer micro-dollars, ledger days, and the error envelope. No sockets."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.billing import (
    MAX_TOKEN_COUNT,
    TokenUsage,
    count,
    format_usd,
    token_cost_micros,
    usd_to_micros,
)
from gateway.errors import NotFound, RateLimited, model_not_found, retry_after_header
from gateway.metering import utc_day


@pytest.mark.parametrize(
    ("prompt", "completion", "input_price", "output_price", "micros"),
    [
        (1_000_000, 1_000_000, 3.0, 15.0, 18_000_000),
        (1000, 1000, 0.075, 0.30, 375),
        (1, 0, 0.075, 0.30, 1),  # 0.075 micro-dollars rounds up to 1
        (0, 0, 15.0, 75.0, 0),
        (333, 777, 10.0, 30.0, 26_640),
    ],
)
def test_token_cost_is_exact_and_rounds_up(
    prompt: int, completion: int, input_price: float, output_price: float, micros: int
) -> None:
    assert token_cost_micros(TokenUsage(prompt, completion), input_price, output_price) == micros


def test_usd_conversions() -> None:
    assert usd_to_micros(5.0) == 5_000_000
    assert usd_to_micros(0.1 + 0.2) == 300_000
    assert format_usd(20) == "0.000020"


def test_envelope_shape_and_optional_fields() -> None:
    error = model_not_found("acme/x")
    assert orjson.loads(error.body()) == {
        "error": {
            "type": "not_found",
            "message": "The model 'acme/x' does not exist.",
            "param": "model",
            "code": "model_not_found",
        }
    }
    assert orjson.loads(NotFound("gone").body()) == {
        "error": {"type": "not_found", "message": "gone"}
    }


@pytest.mark.parametrize(
    ("seconds", "header"), [(0.0, 1), (0.2, 1), (1.0, 1), (1.01, 2), (59.5, 60)]
)
def test_retry_after_is_whole_seconds_rounded_up_at_least_one(seconds: float, header: int) -> None:
    assert retry_after_header(seconds) == header
    assert RateLimited("slow down", retry_after_s=seconds).headers() == {"retry-after": str(header)}


def test_stream_error_event_is_one_line() -> None:
    event = RateLimited("slow down").sse_event()
    assert event.startswith(b"data: {") and event.endswith(b"\n\n") and event.count(b"\n") == 2


@given(st.integers(min_value=0, max_value=5_000_000_000), st.integers(0, 999_999))
def test_utc_day_is_the_calendar_day_of_the_unix_time(seconds: int, micros: int) -> None:
    ts = seconds + micros / 1_000_000
    assert utc_day(ts) == datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def test_utc_day_changes_exactly_at_midnight() -> None:
    midnight = datetime(2026, 11, 27, tzinfo=UTC).timestamp()
    assert utc_day(midnight - 0.001) == "2026-11-26"
    assert utc_day(midnight) == "2026-11-27"


@pytest.mark.parametrize(
    ("usage", "prices", "micros"),
    [
        # Anthropic: 10 input + 5 written + 20 read, 7 output at $1 / $2, reads $0.1, writes $1.25
        (TokenUsage(35, 7, 20, 5), (1.0, 2.0, 0.1, 1.25), 33),
        # no cache prices: cached tokens cost the input price
        (TokenUsage(35, 7, 20, 5), (1.0, 2.0, None, None), 49),
        # OpenAI: 1920 of 2006 read from the cache
        (TokenUsage(2006, 4, 1920), (1.0, 2.0, 0.1, None), 286),
        # Sonnet 4 prices, a million of each kind
        (
            TokenUsage(3_000_000, 1_000_000, 1_000_000, 1_000_000),
            (3.0, 15.0, 0.3, 3.75),
            22_050_000,
        ),
        # counts that do not add up never bill more than the prompt at the dearer prices
        (TokenUsage(10, 0, 50, 50), (1.0, 2.0, 0.1, 1.25), 1),
    ],
)
def test_cached_prompt_tokens_are_billed_at_cache_prices(
    usage: TokenUsage, prices: tuple[float, float, float | None, float | None], micros: int
) -> None:
    assert token_cost_micros(usage, *prices) == micros


def test_openai_usage_with_cache_details_and_write_extension() -> None:
    usage = TokenUsage.from_openai(
        {
            "prompt_tokens": 120,
            "completion_tokens": 4,
            "prompt_tokens_details": {"cached_tokens": 100, "audio_tokens": 0},
            "cache_creation_input_tokens": 15,
        }
    )
    assert usage == TokenUsage(120, 4, 100, 15)
    assert TokenUsage.from_openai({"prompt_tokens": None, "prompt_tokens_details": None}) == (
        TokenUsage(0, 0)
    )
    assert TokenUsage.from_openai("nonsense") == TokenUsage(0, 0)


def test_openai_usage_reads_each_count_as_billing_count_does() -> None:
    """A float with no fraction is a count, as `count` reads one (the Anthropic and Gemini
    answers, and the Rust usage of every stream); true, fractions and negatives are not. An
    integer past the bound is kept, for `counted` to say and make 0 where it is billed."""
    usage = TokenUsage.from_openai(
        {
            "prompt_tokens": 12.0,
            "completion_tokens": True,
            "prompt_tokens_details": {"cached_tokens": 2.5},
            "cache_creation_input_tokens": -4,
        }
    )
    assert usage == TokenUsage(12, 0, 0, 0)
    assert type(usage.prompt_tokens) is int
    huge = TokenUsage.from_openai({"prompt_tokens": MAX_TOKEN_COUNT + 1, "completion_tokens": 1})
    assert huge.prompt_tokens == MAX_TOKEN_COUNT + 1 and not huge.in_bounds()


def test_reservation_assumes_the_dearer_cache_write_price() -> None:
    from gateway.billing import prompt_price_ceiling
    from gateway.settings import ModelSettings

    model = ModelSettings(
        id="a/b", provider="a", input_usd_per_mtok=3.0, cache_write_usd_per_mtok=3.75
    )
    assert prompt_price_ceiling(model) == 3.75
    cheaper_writes = ModelSettings(
        id="a/c", provider="a", input_usd_per_mtok=3.0, cache_write_usd_per_mtok=1.0
    )
    assert prompt_price_ceiling(cheaper_writes) == 3.0


def test_a_token_count_is_a_whole_number_up_to_the_bound() -> None:
    assert [count(v) for v in (0, 7, 7.0, MAX_TOKEN_COUNT)] == [0, 7, 7, MAX_TOKEN_COUNT]
    not_counts = (-1, MAX_TOKEN_COUNT + 1, 2**63, 7.5, "7", None, True, [], {}, float("inf"))
    assert [count(v) for v in not_counts] == [0] * len(not_counts)
    usage = TokenUsage(2**63, 5, -1, 2)
    assert not usage.in_bounds()
    assert usage.bounded() == TokenUsage(0, 5, 0, 2)
    assert TokenUsage(3, 5, 1, 2).in_bounds()
