"""The fake Anthropic API's `count_tokens`, proven with the official SDK before the gateway's
pass-through test trusts it."""

from __future__ import annotations

import anthropic
import pytest

from tests.fakes.anthropic_upstream import COUNTED_TOKENS, FakeAnthropic


def test_anthropic_sdk_counts_tokens_with_the_fake(fake_anthropic: FakeAnthropic) -> None:
    with anthropic.Anthropic(
        api_key="sk-ant-test", base_url=fake_anthropic.base_url, max_retries=0
    ) as sdk:
        counted = sdk.messages.count_tokens(
            model="claude-fake", messages=[{"role": "user", "content": "Hi"}]
        )
        assert counted.input_tokens == COUNTED_TOKENS
        with pytest.raises(anthropic.RateLimitError):
            sdk.messages.count_tokens(
                model="claude-rate-limit", messages=[{"role": "user", "content": "Hi"}]
            )
