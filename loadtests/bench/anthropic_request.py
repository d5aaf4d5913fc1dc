"""What translating a chat request for an Anthropic upstream costs: `build_request`, in process.

    taskset -c 0 .venv/bin/python -m loadtests.bench.anthropic_request [--tree DIR]
        [--runs 5] [--calls 2000]

For each body — the bench's one-message request (`anth`), a 22-message text conversation
(~10 KB), a coding agent's request (agent_request.json: 46 messages, 12 tools with JSON
schemas, 21 tool calls and their results, an image, cache breakpoints; ~52 KB) and the same
without its image and breakpoints — it prints
whether the Rust scan (`_core.anthropic_chat_request`) answered, the Python function calls per
`build_request` under cProfile (deterministic) and the µs per call, best and median of `--runs`
runs of `--calls` calls (process CPU). `--tree DIR` measures another checkout's `gateway`
package (with its built `_core`): run once per tree, back to back.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import time
from pathlib import Path

if "--tree" in sys.argv:
    sys.path.insert(0, str(Path(sys.argv[sys.argv.index("--tree") + 1]).resolve()))

import orjson

from gateway import _core
from gateway.providers.anthropic import AnthropicProvider
from gateway.providers.base import ChatCall
from gateway.routing.catalog import CatalogEntry
from gateway.schemas.openai import DEFAULT_MAX_TOKENS, decode_chat_request
from gateway.settings import ModelSettings, ProviderSettings

AGENT = Path(__file__).with_name("agent_request.json")


def conversation(turns: int = 22) -> bytes:
    """A text conversation of `turns` messages after a system message, ~10 KB."""
    messages: list[dict[str, object]] = [{"role": "system", "content": "Be brief. " * 20}]
    for i in range(turns):
        role = "user" if i % 2 == 0 else "assistant"
        text = f"Turn {i}: " + 'a sentence of an ordinary chat, with "quotes" and a line.\n' * 7
        messages.append({"role": role, "content": text})
    return orjson.dumps(
        {"model": "anthropic/m", "messages": messages, "max_tokens": 512, "stream": True}
    )


def without_images_and_breakpoints(body: bytes) -> bytes:
    """`body` with its image parts and `cache_control` breakpoints left out."""
    fields = orjson.loads(body)
    for message in fields["messages"]:
        message.pop("cache_control", None)
        if isinstance(message.get("content"), list):
            message["content"] = [
                {k: v for k, v in part.items() if k != "cache_control"}
                for part in message["content"]
                if part["type"] != "image_url"
            ]
    for tool in fields.get("tools", ()):
        tool.pop("cache_control", None)
    return orjson.dumps(fields)


BODIES = {
    "anth (one message)": orjson.dumps(
        {
            "model": "anthropic/m",
            "messages": [{"role": "user", "content": "Say hello to the benchmark."}],
            "max_tokens": 64,
            "stream": True,
        }
    ),
    "conversation (22 messages)": conversation(),
    "agent, no image or breakpoint": without_images_and_breakpoints(AGENT.read_bytes()),
    "agent (agent_request.json)": AGENT.read_bytes(),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, help="another checkout's gateway package")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    print(f"gateway from {Path(_core.__file__).parent}")
    settings = ProviderSettings(kind="anthropic", base_url="http://127.0.0.1:9")
    provider = AnthropicProvider("anthropic", settings, None)
    target = CatalogEntry(
        ModelSettings(id="anthropic/m", provider="anthropic", upstream_model="m"), settings, None
    )
    for name, body in BODIES.items():
        call = ChatCall(decode_chat_request(body), body, target, "chatcmpl-bench", 1700000000)
        scanned = _core.anthropic_chat_request(body, "m", DEFAULT_MAX_TOKENS, True) is not None
        provider.build_request(call, True)  # warm: the cached headers and URL
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(100):
            provider.build_request(call, True)
        profile.disable()
        calls = pstats.Stats(profile).total_calls / 100  # type: ignore[attr-defined]
        per_call = []
        for _ in range(args.runs):
            started = time.process_time()
            for _ in range(args.calls):
                provider.build_request(call, True)
            per_call.append((time.process_time() - started) * 1e6 / args.calls)
        print(
            f"{name:28s} {len(body):6d} B  scan {'yes' if scanned else 'no '}  "
            f"{calls:7.1f} calls  best {min(per_call):8.2f}  "
            f"median {statistics.median(per_call):8.2f} us"
        )


if __name__ == "__main__":
    main()
