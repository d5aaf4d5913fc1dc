"""Locust scenarios against a running gateway (`make loadtest` starts one on fake upstreams).

    KLAWD_LOAD_KEYS=keys.json locust -f loadtests/locustfile.py --host http://127.0.0.1:8080

keys.json: {"unlimited": [...enterprise keys], "limited": [...free-plan keys],
            "images": [...pro keys]} (loadtests/run_load.py writes it).

Scenarios (user classes, by weight): non-streamed and streamed chat over a mix of models and
providers (OpenAI-, Anthropic- and Gemini-shaped upstreams, and the local klawd/echo), many
accounts on the free plan so that 429s appear (reported as failures named "429 …", expected),
and image generation on pro accounts.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import orjson
from locust import HttpUser, between, task

CHAT_MODELS = [
    "openai/gpt-fake",
    "anthropic/claude-fake",
    "google/gemini-fake",
    "klawd/echo",
]
PROMPT = [{"role": "user", "content": "Say hello to the load test."}]


def _keys() -> dict[str, list[str]]:
    path = os.environ.get("KLAWD_LOAD_KEYS")
    if not path:
        raise RuntimeError("set KLAWD_LOAD_KEYS to the keys file written by run_load.py")
    keys: dict[str, list[str]] = orjson.loads(Path(path).read_bytes())
    return keys


KEYS = _keys()


def _headers(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}", "content-type": "application/json"}


def _body(model: str, stream: bool) -> bytes:
    body: dict[str, Any] = {"model": model, "messages": PROMPT, "max_tokens": 64}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return orjson.dumps(body)


class ChatUser(HttpUser):
    """Enterprise accounts: non-streamed and streamed chat over the model mix."""

    weight = 6
    wait_time = between(0.0, 0.05)

    def on_start(self) -> None:
        self.key = random.choice(KEYS["unlimited"])

    @task(3)
    def chat(self) -> None:
        model = random.choice(CHAT_MODELS)
        self.client.post(
            "/v1/chat/completions",
            data=_body(model, stream=False),
            headers=_headers(self.key),
            name=f"chat {model}",
        )

    @task(2)
    def chat_stream(self) -> None:
        model = random.choice(CHAT_MODELS)
        with self.client.post(
            "/v1/chat/completions",
            data=_body(model, stream=True),
            headers=_headers(self.key),
            name=f"stream {model}",
            stream=True,
            catch_response=True,
        ) as response:
            text = response.content.decode(errors="replace")
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}")
            elif not text.endswith("data: [DONE]\n\n"):
                response.failure("the stream did not end with [DONE]")


class FreePlanUser(HttpUser):
    """Many free accounts (10 requests/minute each): some requests must be refused with 429."""

    weight = 2
    wait_time = between(0.1, 0.5)

    def on_start(self) -> None:
        self.key = random.choice(KEYS["limited"])

    @task
    def chat(self) -> None:
        with self.client.post(
            "/v1/chat/completions",
            data=_body("klawd/echo", stream=False),
            headers=_headers(self.key),
            name="free-plan chat",
            catch_response=True,
        ) as response:
            if response.status_code == 429:
                if "retry-after" not in response.headers:
                    response.failure("429 without Retry-After")
                else:
                    response.failure("429 rate limited (expected on the free plan)")


class ImageUser(HttpUser):
    """Pro accounts generating images."""

    weight = 1
    wait_time = between(0.1, 0.3)

    def on_start(self) -> None:
        self.key = random.choice(KEYS["images"])

    @task
    def generate(self) -> None:
        self.client.post(
            "/v1/images/generations",
            data=orjson.dumps({"model": "openai/img-fake", "prompt": "a cat", "n": 1}),
            headers=_headers(self.key),
            name="images openai/img-fake",
        )
