"""What translating a chat request for an Anthropic (or Gemini) upstream costs: `build_request`,
in process.

    taskset -c 0 .venv/bin/python -m loadtests.bench.anthropic_request [--tree DIR]
        [--provider anthropic|gemini] [--runs 5] [--calls 2000] [--instructions]

For each body — the bench's one-message request (`anth`), a 22-message text conversation
(~10 KB), a coding agent's request (agent_request.json: 46 messages, 12 tools with JSON
schemas, 21 tool calls and their results, an image, cache breakpoints; ~52 KB) and the same
without its image and breakpoints — it prints
whether the Rust scan (`_core.anthropic_chat_request`) answered, the Python function calls per
`build_request` under cProfile (deterministic) and the µs per call, best and median of `--runs`
runs of `--calls` calls (process CPU); then the same for the body decoded afresh before each call
(`decode_chat_request` + `build_request`, what a request pays: a translation that reads the
messages pays their decode, which a call made again on one decoded request pays once) and the
µs of the decode alone. `--provider gemini` times `GeminiProvider.build_request` (its scan,
`_core.gemini_chat_request`). `--instructions`: the instructions per body of the decode and
`build_request` instead, under callgrind (as request_decode's: 200 calls less none, over 200;
deterministic). `--tree DIR` measures another checkout's `gateway` package (with its built
`_core`): run once per tree, back to back.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

if "--tree" in sys.argv:
    sys.path.insert(0, str(Path(sys.argv[sys.argv.index("--tree") + 1]).resolve()))

import orjson

from gateway import _core
from gateway.providers.anthropic import AnthropicProvider
from gateway.providers.base import ChatCall, HttpProvider
from gateway.providers.gemini import GeminiProvider
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


def scanned(kind: str, body: bytes) -> bool:
    """Whether the provider's Rust scan answers for `body` (False where the tree has none)."""
    if kind == "gemini":
        scan = getattr(_core, "gemini_chat_request", None)
        return scan is not None and scan(body, DEFAULT_MAX_TOKENS) is not None
    return _core.anthropic_chat_request(body, "m", DEFAULT_MAX_TOKENS, True) is not None


def timed(work: Callable[[], object], runs: int, calls: int) -> list[float]:
    """µs per call of `work`, one figure per run (process CPU)."""
    per_call = []
    for _ in range(runs):
        started = time.process_time()
        for _ in range(calls):
            work()
        per_call.append((time.process_time() - started) * 1e6 / calls)
    return per_call


def profiled_calls(work: Callable[[], object]) -> float:
    """Python function calls per call of `work` (cProfile, 100 calls)."""
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(100):
        work()
    profile.disable()
    return pstats.Stats(profile).total_calls / 100  # type: ignore[attr-defined,no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, help="another checkout's gateway package")
    parser.add_argument("--provider", choices=["anthropic", "gemini"], default="anthropic")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--instructions", action="store_true")
    parser.add_argument("--only", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.count is None:
        print(f"gateway from {Path(_core.__file__).parent}, provider kind {args.provider}")
    kind: str = args.provider
    settings = ProviderSettings(kind=kind, base_url="http://127.0.0.1:9")  # type: ignore[arg-type]
    provider: HttpProvider = (GeminiProvider if kind == "gemini" else AnthropicProvider)(
        kind, settings, None
    )
    target = CatalogEntry(
        ModelSettings(id=f"{kind}/m", provider=kind, upstream_model="m"), settings, None
    )
    for name, body in BODIES.items():
        if args.only is not None and name != args.only:
            continue
        call = ChatCall(decode_chat_request(body), body, target, "chatcmpl-bench", 1700000000)
        provider.build_request(call, True)  # warm: the cached headers and URL

        def fresh(body: bytes = body) -> object:
            request = decode_chat_request(body)
            return provider.build_request(
                ChatCall(request, body, target, "chatcmpl-bench", 1700000000), True
            )

        def decode(body: bytes = body) -> object:
            return ChatCall(decode_chat_request(body), body, target, "chatcmpl-bench", 1700000000)

        def build(call: ChatCall = call) -> object:
            return provider.build_request(call, True)

        if args.count is not None:  # one run under callgrind (--instructions)
            for _ in range(args.count):
                fresh()
            return
        if args.instructions:
            from loadtests.bench.request_decode import instructions

            module, extra = "loadtests.bench.anthropic_request", ("--provider", kind)
            counts = [instructions(name, args.tree, n, module, extra) for n in (200, 0)]
            print(f"{name:30s} {len(body):6d} B  {(counts[0] - counts[1]) / 200:10.0f} "
                  "instructions per body (decoded afresh)")  # fmt: skip
            continue

        per_call = timed(build, args.runs, args.calls)
        per_fresh = timed(fresh, args.runs, args.calls)
        per_decode = timed(decode, args.runs, args.calls)
        print(
            f"{name:28s} {len(body):6d} B  scan {'yes' if scanned(kind, body) else 'no '}  "
            f"{profiled_calls(build):7.1f} calls  best {min(per_call):8.2f}  "
            f"median {statistics.median(per_call):8.2f} us  |  decoded afresh: "
            f"{profiled_calls(fresh):7.1f} calls  best {min(per_fresh):8.2f}  "
            f"median {statistics.median(per_fresh):8.2f} us  (decode alone best "
            f"{min(per_decode):7.2f})"
        )


if __name__ == "__main__":
    main()
