"""The gateway config that points the built-in anthropic, google and replicate providers at the
fakes, plus the test models each fake understands (see each fake's docstring)."""

from __future__ import annotations

ANTHROPIC_KEY = "sk-ant-upstream-SECRET-never-leak-7"
GEMINI_KEY = "AIza-upstream-SECRET-never-leak-8"
REPLICATE_TOKEN = "r8_upstream-SECRET-never-leak-9"
PROVIDER_ENV = {
    "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
    "GEMINI_API_KEY": GEMINI_KEY,
    "REPLICATE_API_TOKEN": REPLICATE_TOKEN,
}

ANTHROPIC_MODELS = [
    "claude-fake",
    "claude-tools",
    "claude-length",
    "claude-stop-seq",
    "claude-refusal",
    "claude-error-event",
    "claude-cut",
    "claude-overloaded",
    "claude-rate-limit",
    "claude-invalid",
    "claude-auth",
    "claude-permission",
    "claude-not-found",
    "claude-too-large",
    "claude-api-error",
]
GEMINI_MODELS = [
    "gemini-fake",
    "gemini-tools",
    "gemini-length",
    "gemini-safety",
    "gemini-blocked",
    "gemini-error-event",
    "gemini-cut",
    "gemini-exhausted",
    "gemini-invalid",
    "gemini-bad-key",
    "gemini-permission",
    "gemini-not-found",
    "gemini-internal",
    "gemini-unavailable",
]
# Failing models get one catalog id per test that calls them (suffix ~stream, ~retry): the
# gateway's per-model circuit breaker opens after a few failures, and a test must see the
# upstream's error, not an open circuit.
# ~again: a second test of one failing model (a 429 rests its deployment until its Retry-After,
# so a second call would be answered by the gateway without asking the upstream).
# ~bytes, ~bytesstream: the first target of a fallback chain whose upstream bodies are compared
# byte for byte (tests/integration/test_messages_api.py).
FAILING_SUFFIXES = [
    "",
    "~stream",
    "~retry",
    "~msg",
    "~msgstream",
    "~again",
    "~bytes",
    "~bytesstream",
]
ANTHROPIC_FAILING = [m for m in ANTHROPIC_MODELS if m not in ("claude-fake", "claude-tools")]
GEMINI_FAILING = [m for m in GEMINI_MODELS if m not in ("gemini-fake", "gemini-tools")]
REPLICATE_MODELS = [
    "instant",
    "single",
    "inline",
    "empty",
    "slow",
    "fails",
    "canceled",
    "rate-limited",
    "invalid",
]
IMAGE_PRICE_USD = 0.02


def _chat_model(model_id: str, provider: str, upstream: str) -> str:
    return (
        f'[[models]]\nid = "{model_id}"\nprovider = "{provider}"\nupstream_model = "{upstream}"\n'
        "context_length = 100000\ninput_usd_per_mtok = 1.0\noutput_usd_per_mtok = 2.0\n"
        'capabilities = ["tools", "vision", "json"]\n'
    )


def _image_model(model_id: str, provider: str, upstream: str, price: float) -> str:
    return (
        f'[[models]]\nid = "{model_id}"\nprovider = "{provider}"\nupstream_model = "{upstream}"\n'
        f'kind = "image"\nusd_per_image = {price}\ncapabilities = ["images"]\n'
    )


def _embedding_model(model_id: str, provider: str, upstream: str, price: float) -> str:
    return (
        f'[[models]]\nid = "{model_id}"\nprovider = "{provider}"\nupstream_model = "{upstream}"\n'
        f'kind = "embedding"\ninput_usd_per_mtok = {price}\n'
    )


EMBEDDING_PRICE_USD = 0.5  # per million input tokens
# Cache prices (per million tokens) of the `*-cache-priced` models: input 1.0, output 2.0 as
# every test chat model, cache reads 0.1, cache writes 1.25.
CACHE_PRICES = "cache_read_usd_per_mtok = 0.1\ncache_write_usd_per_mtok = 1.25\n"


def provider_config(anthropic_url: str, gemini_url: str, replicate_url: str) -> str:
    """TOML appended to the gateway's test config."""
    tables = [
        f'[providers.anthropic]\nbase_url = "{anthropic_url}"\n',
        f'[providers.google]\nbase_url = "{gemini_url}"\n',
        f'[providers.replicate]\nbase_url = "{replicate_url}"\n',
        # A provider whose key variable is never set: its models are unavailable.
        '[providers.keyless]\nkind = "anthropic"\nbase_url = "http://127.0.0.1:9"\n'
        'api_key_env = "KLAWD_TEST_UNSET_PROVIDER_KEY"\n',
        # The replicate fake behind a short whole-request deadline.
        f'[providers.replicate-deadline]\nkind = "replicate"\nbase_url = "{replicate_url}"\n'
        'api_key_env = "REPLICATE_API_TOKEN"\ntimeout_s = 1.5\n',
        _chat_model("keyless/claude", "keyless", "claude-fake"),
        _image_model("replicate-deadline/never", "replicate-deadline", "fake-owner/never", 0.02),
        _image_model("openai/img-fake", "openai", "img-fake", 0.04),
        _image_model("openai/img-single", "openai", "img-fake", 0.04)
        + "max_images_per_request = 1\n",
        _chat_model("replicate/not-chat", "replicate", "fake-owner/instant"),
        _chat_model("anthropic/claude-cache-priced", "anthropic", "claude-fake") + CACHE_PRICES,
        _chat_model("openai/cached-priced", "openai", "cached-fake") + CACHE_PRICES,
        _chat_model("google/gemini-cache-priced", "google", "gemini-fake") + CACHE_PRICES,
        _embedding_model("openai/embed-fake", "openai", "embed-fake", EMBEDDING_PRICE_USD),
        _embedding_model("openai/embed-429", "openai", "fail-429", EMBEDDING_PRICE_USD),
        _embedding_model("google/gemini-embed", "google", "gemini-embed", EMBEDDING_PRICE_USD),
        _embedding_model("google/embed-invalid", "google", "gemini-invalid", EMBEDDING_PRICE_USD),
        # Models on a provider that cannot serve their kind (Anthropic cannot embed, Gemini
        # cannot make images): alone, and falling back to one that can.
        _embedding_model("anthropic/embed-none", "anthropic", "embed-none", EMBEDDING_PRICE_USD),
        _embedding_model("anthropic/embed-falls", "anthropic", "embed-none", EMBEDDING_PRICE_USD)
        + 'fallbacks = ["openai/embed-fake"]\n',
        _image_model("google/img-none", "google", "img-none", IMAGE_PRICE_USD),
        _image_model("google/img-falls", "google", "img-none", IMAGE_PRICE_USD)
        + 'fallbacks = ["openai/img-fake"]\n',
    ]
    tables += [_chat_model(f"anthropic/{m}", "anthropic", m) for m in ANTHROPIC_MODELS]
    tables += [_chat_model(f"google/{m}", "google", m) for m in GEMINI_MODELS]
    for suffix in FAILING_SUFFIXES[1:]:
        tables += [_chat_model(f"anthropic/{m}{suffix}", "anthropic", m) for m in ANTHROPIC_FAILING]
        tables += [_chat_model(f"google/{m}{suffix}", "google", m) for m in GEMINI_FAILING]
    tables += [
        _image_model(f"replicate/{m}", "replicate", f"fake-owner/{m}", IMAGE_PRICE_USD)
        for m in REPLICATE_MODELS
    ]
    tables.append(
        _image_model(
            "replicate/rate-limited~again", "replicate", "fake-owner/rate-limited", IMAGE_PRICE_USD
        )
    )
    return "\n".join(tables)
