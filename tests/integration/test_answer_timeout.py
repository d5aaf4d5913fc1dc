"""`answer_timeout_s` bounds a non-streamed answer's headers apart from a stream's first byte: a
non-streamed answer's headers come with the whole answer, so a long answer needs longer than a
stream's first event. Unset, `first_byte_timeout_s` bounds both (the contract's reading). The
fake upstream holds the headers of `slow-headers` back for 3 s, and those of `hang-headers` until
the gateway lets go, streamed or not."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import uvloop

from tests.conftest import free_port, gateway_config
from tests.fakes.openai_upstream import FakeOpenAI
from tests.integration.test_streams_freed import started
from tests.live_bound import within

PROVIDERS = """
[providers.patient]
kind = "openai"
base_url = "{url}"
api_key_env = "OPENAI_API_KEY"
first_byte_timeout_s = 1
answer_timeout_s = 10
stream_idle_timeout_s = 1
timeout_s = 10
retry = {{ attempts = 1 }}

[providers.hasty]
kind = "openai"
base_url = "{url}"
api_key_env = "OPENAI_API_KEY"
first_byte_timeout_s = 1
timeout_s = 10
retry = {{ attempts = 1 }}

[[models]]
id = "patient/hang-headers"
provider = "patient"
upstream_model = "hang-headers"

[[models]]
id = "patient/slow-headers"
provider = "patient"
upstream_model = "slow-headers"

[[models]]
id = "hasty/hang-headers"
provider = "hasty"
upstream_model = "hang-headers"
"""


@pytest.fixture
def config(tmp_path: Path, fake_openai: FakeOpenAI) -> Iterator[Path]:
    path = tmp_path / "klawd.toml"
    extra = PROVIDERS.format(url=fake_openai.base_url)
    gateway_config(path, free_port(), fake_openai.base_url, extra=extra)
    yield path


# A stop of the machine spends the gateway's (wall-clock) timers, not the fake's pace: a run it
# came in and failed proves nothing and is asked again (tests/asked_again.py).
@pytest.mark.asked_again_if_stopped
@pytest.mark.parametrize(
    ("model", "stream", "status"),
    [
        ("patient/slow-headers", False, 200),  # 3 s < answer_timeout_s
        ("patient/hang-headers", True, 504),  # a stream's headers: first_byte_timeout_s
        ("hasty/hang-headers", False, 504),  # unset: first_byte_timeout_s bounds both
    ],
)
def test_a_non_streamed_answer_waits_answer_timeout_s(
    config: Path, model: str, stream: bool, status: int
) -> None:
    async def main() -> None:
        async with started(config) as app:
            body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
            if stream:
                body["stream"] = True
            found, answer = await app.request("/v1/chat/completions", orjson.dumps(body), app.key)
            assert found == status, answer
            if status == 504:
                assert orjson.loads(answer)["error"]["type"] == "gateway_timeout"
            else:
                assert orjson.loads(answer)["choices"][0]["message"]["content"]

    uvloop.run(within(main(), 30))
