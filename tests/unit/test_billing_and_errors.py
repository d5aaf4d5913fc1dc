"""Money math in integer micro-dollars, ledger days, and the error envelope. No sockets."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.billing import TokenUsage, format_usd, token_cost_micros, usd_to_micros
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
