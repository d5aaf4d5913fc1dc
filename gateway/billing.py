"""Money as integer micro-dollars, and the price math (per million tokens, per image)."""

from __future__ import annotations

import math

from msgspec import Struct

MICROS_PER_USD = 1_000_000
CHARS_PER_TOKEN = 4  # the documented estimate when no tokenizer count is available


class TokenUsage(Struct, frozen=True):
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def usd_to_micros(usd: float) -> int:
    return round(usd * MICROS_PER_USD)


def micros_to_usd(micros: int) -> float:
    return micros / MICROS_PER_USD


def estimate_tokens(chars: int) -> int:
    return math.ceil(chars / CHARS_PER_TOKEN)


def token_cost_micros(
    usage: TokenUsage, input_usd_per_mtok: float, output_usd_per_mtok: float
) -> int:
    """Exact integer math: prices become micro-dollars per million tokens, and the total is rounded
    up to the next whole micro-dollar (never bill less than was used)."""
    input_price = usd_to_micros(input_usd_per_mtok)
    output_price = usd_to_micros(output_usd_per_mtok)
    scaled = usage.prompt_tokens * input_price + usage.completion_tokens * output_price
    return -(-scaled // 1_000_000)


def format_usd(micros: int) -> str:
    return f"{micros / MICROS_PER_USD:.6f}"
