"""Bedrock ConverseStream: the Rust reframer "bedrock" (event stream decoding, CRCs and OpenAI
chunks in one pass) against the pure-Python reference (eventstream_ref.py), same input, same run.

    .venv/bin/python loadtests/bench/eventstream_bench.py [--reps 11] [--events 3000]

Input: one realistic stream (messageStart, `--events` text deltas with Bedrock's `p` padding,
a tool call whose input arrives in 50 fragments, messageStop, metadata), fed in random 1-4 KiB
network chunks and one message per chunk. Time: the median of `--reps` passes, repetitions
interleaved so that drift hits both sides alike; both outputs are checked to hold the same events.
"""

from __future__ import annotations

import argparse
import random
import statistics
import struct
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

import eventstream_ref
from core_bench import versions

from gateway import _core

WORDS = "the of and to in is that for it as with was on be at by this had not are but from".split()


def message(name: str, body: dict[str, Any]) -> bytes:
    headers = {":event-type": name, ":content-type": "application/json", ":message-type": "event"}
    head = b"".join(
        bytes([len(k)]) + k.encode() + b"\x07" + struct.pack(">H", len(v)) + v.encode()
        for k, v in headers.items()
    )
    payload = orjson.dumps(body | {"p": "abcdefghijklmnopqrstuvwxyzABCDEFGHIJ"[: len(head) % 30]})
    prelude = struct.pack(">II", 16 + len(head) + len(payload), len(head))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    whole = prelude + head + payload
    return whole + struct.pack(">I", zlib.crc32(whole))


def converse_stream(n: int, rng: random.Random) -> list[bytes]:
    out = [message("messageStart", {"role": "assistant"})]
    for _ in range(n):
        text = " " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4)))
        out.append(message("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": text}}))
    out.append(message("contentBlockStop", {"contentBlockIndex": 0}))
    start = {"toolUse": {"toolUseId": "tooluse_abc", "name": "search"}}
    out.append(message("contentBlockStart", {"contentBlockIndex": 1, "start": start}))
    arguments = orjson.dumps({"query": " ".join(rng.choice(WORDS) for _ in range(200))}).decode()
    step = max(1, len(arguments) // 50)
    for i in range(0, len(arguments), step):
        delta = {"toolUse": {"input": arguments[i : i + step]}}
        out.append(message("contentBlockDelta", {"contentBlockIndex": 1, "delta": delta}))
    out.append(message("contentBlockStop", {"contentBlockIndex": 1}))
    out.append(message("messageStop", {"stopReason": "tool_use"}))
    usage = {"inputTokens": 1000, "outputTokens": n, "totalTokens": 1000 + n}
    out.append(message("metadata", {"usage": usage, "metrics": {"latencyMs": 900}}))
    return out


def network_chunks(data: bytes, rng: random.Random) -> list[bytes]:
    chunks, at = [], 0
    while at < len(data):
        size = rng.randint(1024, 4096)
        chunks.append(data[at : at + size])
        at += size
    return chunks


def run_once(make: Callable[[], Any], chunks: list[bytes]) -> tuple[float, bytes]:
    reframer = make()
    started = time.perf_counter()
    out = [reframer.feed(c) for c in chunks]
    out.append(reframer.finish())
    return time.perf_counter() - started, b"".join(out)


def events(blob: bytes) -> list[Any]:
    return [
        orjson.loads(e.removeprefix(b"data: "))
        for e in blob.split(b"\n\n")
        if e.startswith(b"data: {")
    ]


def bench(n: int, reps: int) -> list[str]:
    rng = random.Random(16)
    messages = converse_stream(n, rng)
    data = b"".join(messages)
    rows = [
        "| stream | chunking | input | events out | Python MB/s | Rust MB/s | Python events/s "
        "| Rust events/s | Rust / Python |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    args = ("bedrock/claude", "chatcmpl-klawd", 1700000000, True)
    makers: list[Callable[[], Any]] = [
        lambda: eventstream_ref.BedrockRef(*args),
        lambda: _core.Reframer("bedrock", *args),
    ]
    for label, chunks in [("1-4 KiB", network_chunks(data, rng)), ("per message", messages)]:
        times: list[list[float]] = [[], []]
        outs = [b"", b""]
        for _ in range(reps):
            for i, make in enumerate(makers):
                elapsed, outs[i] = run_once(make, chunks)
                times[i].append(elapsed)
        assert events(outs[0]) == events(outs[1]), "the reference and Rust disagree"
        t_py, t_rs = (statistics.median(t) for t in times)
        count = outs[1].count(b"\n\n")
        mb = len(data) / 1e6
        rows.append(
            f"| bedrock | {label} | {len(data) / 1024:.0f} KiB | {count} | {mb / t_py:.1f} | "
            f"{mb / t_rs:.1f} | {count / t_py:,.0f} | {count / t_rs:,.0f} | "
            f"**{t_py / t_rs:.1f}x** |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--reps", type=int, default=11)
    parser.add_argument("--events", type=int, default=3000)
    a = parser.parse_args()
    sys.stdout.write("\n".join([versions(), "", *bench(a.events, a.reps)]) + "\n")


if __name__ == "__main__":
    main()
