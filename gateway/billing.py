"""Money as integer micro-dollars, and the price math (per million tokens, per image)."""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any

from msgspec import Struct

if TYPE_CHECKING:
    from gateway.settings import ModelSettings

MICROS_PER_USD = 1_000_000
CHARS_PER_TOKEN = 4  # the documented estimate when no tokenizer count is available


# A token count an upstream reports is a whole number from 0 to this (a billion: a hundred times
# the largest context window). Anything else is not a count: 0. The bound keeps costs and ledger
# rows within the stores' 64-bit integers (SQLite's INTEGER, Redis's INCRBY): one answer that said
# 2**63 tokens made every later settlement of its worker fail with it, retried for good.
MAX_TOKEN_COUNT = 1_000_000_000


def count(value: Any) -> int:
    """An upstream's token count (an integer, or a float with no fraction), 0 if not one."""
    if type(value) is float and value.is_integer():
        value = int(value)
    return value if type(value) is int and 0 <= value <= MAX_TOKEN_COUNT else 0


class TokenUsage(Struct, frozen=True):
    """`prompt_tokens` includes the cached ones: `cached_tokens` read from the upstream's prompt
    cache, `cache_write_tokens` written to it (Anthropic's cache_creation_input_tokens)."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    cache_write_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def in_bounds(self) -> bool:
        """Every count a count (`count`): what the ledger and the limiters may take."""
        bound = MAX_TOKEN_COUNT
        return (
            0 <= self.prompt_tokens <= bound
            and 0 <= self.completion_tokens <= bound
            and 0 <= self.cached_tokens <= bound
            and 0 <= self.cache_write_tokens <= bound
        )

    def bounded(self) -> TokenUsage:
        """This usage with each count that is not one made 0."""
        return TokenUsage(
            count(self.prompt_tokens),
            count(self.completion_tokens),
            count(self.cached_tokens),
            count(self.cache_write_tokens),
        )

    @classmethod
    def from_openai(cls, usage: Any) -> TokenUsage:
        """An OpenAI-shaped `usage` object (`prompt_tokens_details.cached_tokens`, and the
        `cache_creation_input_tokens` extension the gateway and LiteLLM write)."""
        if not isinstance(usage, dict):
            return cls(0, 0)
        details = usage.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if isinstance(details, dict) else None
        prompt = usage.get("prompt_tokens")
        completion = usage.get("completion_tokens")
        written = usage.get("cache_creation_input_tokens")
        # An int itself (one past the bounds is said and made 0 where it is billed: `counted`),
        # anything else read by `count` (a float with no fraction is a count, true is not one)
        return cls(
            prompt if type(prompt) is int and prompt >= 0 else count(prompt),
            completion if type(completion) is int and completion >= 0 else count(completion),
            cached if type(cached) is int and cached >= 0 else count(cached),
            written if type(written) is int and written >= 0 else count(written),
        )


def usd_to_micros(usd: float) -> int:
    return round(usd * MICROS_PER_USD)


def micros_to_usd(micros: int) -> float:
    return micros / MICROS_PER_USD


def estimate_tokens(chars: int) -> int:
    return math.ceil(chars / CHARS_PER_TOKEN)


def token_cost_micros(
    usage: TokenUsage,
    input_usd_per_mtok: float,
    output_usd_per_mtok: float,
    cache_read_usd_per_mtok: float | None = None,
    cache_write_usd_per_mtok: float | None = None,
) -> int:
    """Exact integer math: prices become micro-dollars per million tokens, and the total is rounded
    up to the next whole micro-dollar (never bill less than was used). Cached prompt tokens are
    priced at the cache prices when the model has them, else at the input price."""
    return _cost_micros(
        usage,
        *_prices_micros(
            input_usd_per_mtok,
            output_usd_per_mtok,
            cache_read_usd_per_mtok,
            cache_write_usd_per_mtok,
        ),
    )


@functools.lru_cache(maxsize=4096)
def _prices_micros(
    input_usd_per_mtok: float,
    output_usd_per_mtok: float,
    cache_read_usd_per_mtok: float | None,
    cache_write_usd_per_mtok: float | None,
) -> tuple[int, int, int, int]:
    """Micro-dollars per million tokens: input, cache read, cache write, output. Remembered
    per set of prices (a catalog has a few), so a request does not convert them again."""
    input_price = usd_to_micros(input_usd_per_mtok)
    read_price = (
        input_price if cache_read_usd_per_mtok is None else usd_to_micros(cache_read_usd_per_mtok)
    )
    write_price = (
        input_price if cache_write_usd_per_mtok is None else usd_to_micros(cache_write_usd_per_mtok)
    )
    return input_price, read_price, write_price, usd_to_micros(output_usd_per_mtok)


def _cost_micros(
    usage: TokenUsage, input_price: int, read_price: int, write_price: int, output_price: int
) -> int:
    # Counts from an upstream are not trusted to add up: the cached parts never exceed the prompt.
    # (Compared inline, not by min(): a builtin call with its argument parsing is ~1K
    # instructions, and this runs at every admission and settlement.)
    prompt, read, written = usage.prompt_tokens, usage.cached_tokens, usage.cache_write_tokens
    if read > prompt:
        read = prompt
    if written > prompt - read:
        written = prompt - read
    uncached = prompt - read - written
    scaled = (
        uncached * input_price
        + read * read_price
        + written * write_price
        + usage.completion_tokens * output_price
    )
    return -(-scaled // 1_000_000)


def model_cost_micros(usage: TokenUsage, model: ModelSettings) -> int:
    """The cost of `usage` at a catalog model's token prices."""
    return _cost_micros(
        usage,
        *_prices_micros(
            model.input_usd_per_mtok,
            model.output_usd_per_mtok,
            model.cache_read_usd_per_mtok,
            model.cache_write_usd_per_mtok,
        ),
    )


def prompt_price_ceiling(model: ModelSettings) -> float:
    """The dearest price a prompt token of this model may cost (a cache write can cost more
    than plain input): what a worst-case reservation must assume."""
    return _price_ceiling(model.input_usd_per_mtok, model.cache_write_usd_per_mtok)


def _price_ceiling(input_usd_per_mtok: float, cache_write_usd_per_mtok: float | None) -> float:
    write = cache_write_usd_per_mtok or 0.0
    return write if write > input_usd_per_mtok else input_usd_per_mtok


@functools.lru_cache(maxsize=1024)
def worst_prices_micros(
    input_usd_per_mtok: float, cache_write_usd_per_mtok: float | None, output_usd_per_mtok: float
) -> tuple[int, int]:
    """A model's worst-case prices, micro-dollars per million tokens: a prompt token at
    `prompt_price_ceiling`, an output token at the output price. Remembered per set of prices
    (a catalog has a few): a reservation does not convert them again."""
    return (
        usd_to_micros(_price_ceiling(input_usd_per_mtok, cache_write_usd_per_mtok)),
        usd_to_micros(output_usd_per_mtok),
    )


def format_usd(micros: int) -> str:
    return f"{micros / MICROS_PER_USD:.6f}"
