"""The built-in catalog, plans and providers (the seed's): plain tables merged under klawd.toml."""

from typing import Any

BUILTIN: dict[str, Any] = {
    "plans": {
        "free": {
            "requests_per_minute": 10,
            "requests_per_day": 100,
            "starting_credit_usd": 5.0,
            "images": False,
        },
        "pro": {
            "requests_per_minute": 100,
            "requests_per_day": 10_000,
            "starting_credit_usd": 0.0,
            "images": True,
        },
        "enterprise": {
            "requests_per_minute": 1_000,
            "requests_per_day": 1_000_000,
            "starting_credit_usd": 0.0,
            "images": True,
        },
    },
    "providers": {
        "openai": {
            "kind": "openai",
            "base_url": "https://api.openai.com/v1",
            "api_key_env": "OPENAI_API_KEY",
        },
        "anthropic": {
            "kind": "anthropic",
            "base_url": "https://api.anthropic.com",
            "api_key_env": "ANTHROPIC_API_KEY",
        },
        "google": {
            "kind": "gemini",
            "base_url": "https://generativelanguage.googleapis.com",
            "api_key_env": "GEMINI_API_KEY",
        },
        "replicate": {
            "kind": "replicate",
            "base_url": "https://api.replicate.com",
            "api_key_env": "REPLICATE_API_TOKEN",
        },
        # The gateway's own local model: needs no key and no network.
        "klawd": {"kind": "echo"},
    },
    "models": [
        {
            "id": "anthropic/claude-opus-4",
            "provider": "anthropic",
            "upstream_model": "claude-opus-4-20250514",
            "context_length": 200_000,
            "input_usd_per_mtok": 15.0,
            "cache_read_usd_per_mtok": 1.5,  # Anthropic: cache reads 0.1x input
            "cache_write_usd_per_mtok": 18.75,  # 5-minute cache writes 1.25x input
            "output_usd_per_mtok": 75.0,
            "capabilities": ["tools", "vision"],
        },
        {
            "id": "anthropic/claude-sonnet-4",
            "provider": "anthropic",
            "upstream_model": "claude-sonnet-4-20250514",
            "context_length": 200_000,
            "input_usd_per_mtok": 3.0,
            "cache_read_usd_per_mtok": 0.3,  # Anthropic: cache reads 0.1x input
            "cache_write_usd_per_mtok": 3.75,  # 5-minute cache writes 1.25x input
            "output_usd_per_mtok": 15.0,
            "capabilities": ["tools", "vision"],
        },
        {
            "id": "openai/gpt-4-turbo",
            "provider": "openai",
            "upstream_model": "gpt-4-turbo",
            "context_length": 128_000,
            "input_usd_per_mtok": 10.0,
            "output_usd_per_mtok": 30.0,
            "capabilities": ["tools", "vision", "json"],
        },
        {
            "id": "google/gemini-2.0-flash",
            "provider": "google",
            "upstream_model": "gemini-2.0-flash",
            "context_length": 1_048_576,
            "input_usd_per_mtok": 0.075,
            "output_usd_per_mtok": 0.30,
            "capabilities": ["tools", "vision", "json"],
        },
        # Embeddings (POST /v1/embeddings): priced per million input tokens.
        {
            "id": "openai/text-embedding-3-small",
            "provider": "openai",
            "upstream_model": "text-embedding-3-small",
            "kind": "embedding",
            "context_length": 8191,
            "input_usd_per_mtok": 0.02,
        },
        {
            "id": "google/gemini-embedding-001",
            "provider": "google",
            "upstream_model": "gemini-embedding-001",
            "kind": "embedding",
            "context_length": 2048,
            "input_usd_per_mtok": 0.15,
        },
        {
            "id": "replicate/seedream-4.5",
            "provider": "replicate",
            "upstream_model": "bytedance/seedream-4.5",
            "kind": "image",
            "usd_per_image": 0.02,
            "capabilities": ["images"],
        },
        {
            "id": "klawd/echo",
            "provider": "klawd",
            "upstream_model": "echo",
            "context_length": 1_000_000,
            "capabilities": ["tools", "vision", "json"],
        },
    ],
    "routes": {
        "klawd/standard": {"targets": ["anthropic/claude-sonnet-4", "openai/gpt-4-turbo"]},
        "klawd/auto": {
            "policy": "cheapest",
            "escalate_to": "anthropic/claude-sonnet-4",
            "escalate_above_tokens": 100_000,
            "escalate_for_tools": True,
            "targets": [
                "google/gemini-2.0-flash",
                "anthropic/claude-sonnet-4",
                "openai/gpt-4-turbo",
                "anthropic/claude-opus-4",
            ],
        },
    },
}
