"""Benchmark gateway._core against the pure-Python reference (pyref.py), same input, same run.

    .venv/bin/python loadtests/bench/core_bench.py [--reps 7] [--events 3000]

Reframers: each provider's realistic stream (text deltas, tool calls, usage), fed in network
sized chunks (random 1-4 KiB) and one event per chunk; the reported time is the median of
`--reps` full passes (new reframer each pass). Limiter: acquire() with one bucket and one quota
over 1000 account keys, binding vs a dict + float-math token bucket. Request bodies' nesting
check: conversations of 40 to 3000 turns, the Rust walk vs the pure-Python byte passes. An
event stream's chunked body (the bench's OpenAI stream, a chunk per event and each line its own
chunk) read by `_core.Dechunker` vs httptools, the parser it stands in for (`--only dechunker`).
`--only reframers`: the reframers' table alone.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httptools
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pyref
import pyref_responses

from gateway import _core

WORDS = "the of and to in is that for it as with was on be at by this had not are but from".split()


def _text(rng: random.Random) -> str:
    return " " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6)))


def _sse(obj: Any, event: str | None = None, eol: str = "\n") -> str:
    head = f"event: {event}{eol}" if event else ""
    return f"{head}data: {orjson.dumps(obj).decode()}{eol}{eol}"


def openai_stream(n: int, rng: random.Random) -> bytes:
    base = {
        "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        "object": "chat.completion.chunk",
        "created": 1741570283,
        "model": "gpt-4o-2024-08-06",
        "service_tier": "default",
        "system_fingerprint": "fp_eb9dce56a8",
    }
    parts = []
    for i in range(n):
        delta = {"role": "assistant", "content": ""} if i == 0 else {"content": _text(rng)}
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
        parts.append(_sse({**base, "choices": [choice], "usage": None}))
    end = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    parts.append(_sse({**base, "choices": [end], "usage": None}))
    usage = {"prompt_tokens": 14, "completion_tokens": n, "total_tokens": n + 14}
    parts.append(_sse({**base, "choices": [], "usage": usage}))
    parts.append("data: [DONE]\n\n")
    return "".join(parts).encode()


def anthropic_stream(n: int, rng: random.Random) -> bytes:
    usage = {"input_tokens": 472, "cache_read_input_tokens": 2048, "output_tokens": 2}
    msg = {"id": "msg_014p7gG3wDgGV9EUtLvnow3U", "type": "message", "role": "assistant"}
    msg |= {"model": "claude-sonnet-4-20250514", "content": [], "usage": usage}
    parts = [_sse({"type": "message_start", "message": msg}, "message_start")]
    block = {"type": "text", "text": ""}
    start = {"type": "content_block_start", "index": 0, "content_block": block}
    parts.append(_sse(start, "content_block_start"))
    for i in range(n):
        if i % 100 == 50:
            parts.append(_sse({"type": "ping"}, "ping"))
        delta = {"type": "text_delta", "text": _text(rng)}
        ev = {"type": "content_block_delta", "index": 0, "delta": delta}
        parts.append(_sse(ev, "content_block_delta"))
    parts.append(_sse({"type": "content_block_stop", "index": 0}, "content_block_stop"))
    tool = {"type": "tool_use", "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "name": "get_weather"}
    start = {"type": "content_block_start", "index": 1, "content_block": tool | {"input": {}}}
    parts.append(_sse(start, "content_block_start"))
    for frag in ['{"location":', ' "San Fra', 'ncisco, CA"', ', "unit": "fah', 'renheit"}']:
        delta = {"type": "input_json_delta", "partial_json": frag}
        ev = {"type": "content_block_delta", "index": 1, "delta": delta}
        parts.append(_sse(ev, "content_block_delta"))
    parts.append(_sse({"type": "content_block_stop", "index": 1}, "content_block_stop"))
    md = {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None}}
    parts.append(_sse(md | {"usage": {"output_tokens": n}}, "message_delta"))
    parts.append(_sse({"type": "message_stop"}, "message_stop"))
    return "".join(parts).encode()


def gemini_stream(n: int, rng: random.Random) -> bytes:
    parts = []
    meta = {"modelVersion": "gemini-2.5-flash", "responseId": "mDAmaL2BNvGhz7IPxeLb4QQ"}
    for i in range(n):
        usage = {"promptTokenCount": 57, "candidatesTokenCount": i, "totalTokenCount": 57 + i}
        content = {"parts": [{"text": _text(rng)}], "role": "model"}
        resp = {"candidates": [{"content": content, "index": 0}], "usageMetadata": usage}
        parts.append(_sse(resp | meta, eol="\r\n"))
    call = {"functionCall": {"name": "get_weather", "args": {"location": "Paris", "days": [1, 2]}}}
    last = {"content": {"parts": [call], "role": "model"}, "finishReason": "STOP", "index": 0}
    usage = {"promptTokenCount": 57, "candidatesTokenCount": n, "totalTokenCount": 57 + n}
    parts.append(_sse({"candidates": [last], "usageMetadata": usage} | meta, eol="\r\n"))
    return "".join(parts).encode()


def network_chunks(data: bytes, rng: random.Random) -> list[bytes]:
    out, i = [], 0
    while i < len(data):
        size = rng.randint(1024, 4096)
        out.append(data[i : i + size])
        i += size
    return out


def event_chunks(data: bytes, eol: bytes) -> list[bytes]:
    sep = eol + eol
    pieces = data.split(sep)
    return [p + sep for p in pieces[:-1]] + ([pieces[-1]] if pieces[-1] else [])


def run_once(make: Callable[[], Any], chunks: list[bytes]) -> tuple[float, bytes]:
    r = make()
    t = time.perf_counter()
    out = [r.feed(c) for c in chunks]
    out.append(r.finish())
    return time.perf_counter() - t, b"".join(out)


def median_times(
    makers: list[Callable[[], Any]], chunks: list[bytes], reps: int
) -> list[tuple[float, bytes]]:
    """Median time of each implementation; repetitions interleaved so drift hits both alike."""
    times: list[list[float]] = [[] for _ in makers]
    outs = [b""] * len(makers)
    for _ in range(reps):
        for i, make in enumerate(makers):
            t, outs[i] = run_once(make, chunks)
            times[i].append(t)
    return [(statistics.median(ts), out) for ts, out in zip(times, outs, strict=True)]


# What a Responses stream's response objects echo (the request's settings), as the gateway sends.
RESPONSE_FIELDS = orjson.dumps(
    {
        "instructions": "You are a helpful assistant.",
        "max_output_tokens": None,
        "metadata": {},
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": True,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "user": None,
        "background": False,
    }
).decode()


def reframer_makers(kind: str) -> list[Callable[[], Any]]:
    """(Python reference, Rust) constructors of one reframer kind."""
    args = (kind, "openai/gpt-4o", "chatcmpl-klawd", 1700000000, True)
    if kind == "openai_to_responses":
        fields = RESPONSE_FIELDS
        return [
            lambda: pyref_responses.ToResponsesRef(*args[1:], response_fields=fields),
            lambda: _core.Reframer(*args, response_fields=fields),
        ]
    return [lambda: pyref.reframer(*args), lambda: _core.Reframer(*args)]


def bench_reframers(n: int, reps: int) -> list[str]:
    rng = random.Random(42)
    rows = [
        "| stream | chunking | input | events out | Python MB/s | Rust MB/s | Python "
        "events/s | Rust events/s | Rust / Python |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind, data, eol in [
        ("openai", openai_stream(n, rng), b"\n"),
        ("anthropic", anthropic_stream(n, rng), b"\n"),
        ("gemini", gemini_stream(n, rng), b"\r\n"),
        # POST /v1/messages: OpenAI chunks → Anthropic events, and Anthropic relayed as is.
        ("openai_to_anthropic", openai_stream(n, rng), b"\n"),
        ("anthropic_passthrough", anthropic_stream(n, rng), b"\n"),
        # POST /v1/responses: OpenAI chunks → Responses API events.
        ("openai_to_responses", openai_stream(n, rng), b"\n"),
    ]:
        for label, chunks in [
            ("1-4 KiB", network_chunks(data, rng)),
            ("per event", event_chunks(data, eol)),
        ]:
            (t_py, out_py), (t_rs, out_rs) = median_times(reframer_makers(kind), chunks, reps)
            n_events = out_rs.count(b"\n\n")
            assert n_events == out_py.count(b"\n\n"), kind
            mb = len(data) / 1e6
            rows.append(
                f"| {kind} | {label} | {len(data) / 1024:.0f} KiB | {n_events} | "
                f"{mb / t_py:.1f} | {mb / t_rs:.1f} | {n_events / t_py:,.0f} | "
                f"{n_events / t_rs:,.0f} | **{t_py / t_rs:.1f}x** |"
            )
    return rows


def bench_limiter(calls: int, reps: int) -> list[str]:
    keys = [f"acct_{i}" for i in range(1000)]
    args = [
        ([(f"rpm:{k}", 600.0, 10.0, 1.0)], [(f"rpd:{k}", 10**9, 1)])
        for k in (keys[i % len(keys)] for i in range(calls))
    ]

    def run(acquire: Callable[..., Any]) -> float:
        now = 1_764_115_000.0
        t = time.perf_counter()
        for buckets, quotas in args:
            now += 0.0001
            acquire(buckets, quotas, now)
        return time.perf_counter() - t

    py_times, rs_times = [], []
    for _ in range(reps):  # interleaved, fresh limiter each repetition
        py_times.append(run(pyref.PyLimiter().acquire))
        rs_times.append(run(_core.Limiter().acquire))
    t_py, t_rs = statistics.median(py_times), statistics.median(rs_times)
    return [
        "| limiter | calls | Python ns/call | Rust ns/call | Python calls/s | Rust calls/s |"
        " Rust / Python |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| acquire(1 bucket + 1 quota), 1000 keys | {calls} | {t_py / calls * 1e9:,.0f} | "
        f"{t_rs / calls * 1e9:,.0f} | {calls / t_py:,.0f} | {calls / t_rs:,.0f} | "
        f"**{t_py / t_rs:.1f}x** |",
    ]


def conversation(messages: int, chars: int, rng: random.Random) -> bytes:
    """A chat request body of `messages` turns of about `chars` characters each, with the
    escapes (newlines, quotes) and a tool schema that real conversations carry."""
    turns = []
    for i in range(messages):
        words = " ".join(rng.choice(WORDS) for _ in range(chars // 4))
        text = f'{words[: chars // 2]}\n"quoted"\n{words[chars // 2 : chars]}'
        turns.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
    tool = {
        "type": "function",
        "function": {
            "name": "search",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
        },
    }
    return orjson.dumps({"model": "openai/gpt-4o", "messages": turns, "tools": [tool]})


def bench_nesting(reps: int) -> list[str]:
    """The request body's nesting check (gateway/schemas/decoding.py) on conversations of
    growing length: the Rust walk against the pure-Python passes it replaced."""
    rng = random.Random(7)
    rows = [
        "| request body | size | Python us/body | Rust us/body | Rust / Python |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for messages, chars in [(40, 200), (100, 1000), (400, 2000), (3000, 3000)]:
        body = conversation(messages, chars, rng)
        depth = pyref.nesting_depth(body)
        assert _core.json_nesting_depth(body, 64) == depth, (messages, depth)
        count = max(3, 2_000_000 // len(body))
        py_times, rs_times = [], []
        for _ in range(reps):  # interleaved
            start = time.perf_counter()
            for _ in range(count):
                pyref.nesting_depth(body)
            py_times.append((time.perf_counter() - start) / count)
            start = time.perf_counter()
            for _ in range(count):
                _core.json_nesting_depth(body, 64)
            rs_times.append((time.perf_counter() - start) / count)
        t_py, t_rs = statistics.median(py_times), statistics.median(rs_times)
        rows.append(
            f"| {messages} messages of ~{chars} characters | {len(body) / 1024:,.0f} KiB | "
            f"{t_py * 1e6:,.1f} | {t_rs * 1e6:,.1f} | **{t_py / t_rs:.1f}x** |"
        )
    return rows


class _Body:
    """httptools' callbacks as the HTTP client sets them: each chunk's data into a list."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.on_body = self.chunks.append


def chunked_wire(pieces: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


def bench_dechunker(reps: int) -> list[str]:
    """An event stream's chunked body in one read: `_core.Dechunker` (what the HTTP client reads
    it with) against httptools, the parser it stands in for (head fed first, body timed)."""
    from loadtests.bench.contenders import openai_events  # (the bench's bodies)

    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    events = openai_events()
    lines = [line for event in events for line in event.splitlines(keepends=True)]
    rows = [
        "| chunked body | bytes | chunks | httptools us/body | Dechunker us/body |"
        " Dechunker / httptools |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, pieces in [("a chunk per event", events), ("each line its own chunk", lines)]:
        wire = chunked_wire(pieces)
        count = 2000
        ht_times, rs_times = [], []
        for _ in range(reps):  # interleaved
            elapsed = 0.0
            for _ in range(count):
                sink = _Body()
                parser = httptools.HttpResponseParser(sink)
                parser.feed_data(head)
                start = time.perf_counter()
                parser.feed_data(wire)
                body = b"".join(sink.chunks)
                elapsed += time.perf_counter() - start
            ht_times.append(elapsed / count)
            start = time.perf_counter()
            for _ in range(count):
                ours = _core.Dechunker().feed(wire)
            rs_times.append((time.perf_counter() - start) / count)
            assert ours == body
        t_ht, t_rs = statistics.median(ht_times), statistics.median(rs_times)
        rows.append(
            f"| {name} | {len(wire):,} | {len(pieces)} | {t_ht * 1e6:,.1f} | "
            f"{t_rs * 1e6:,.1f} | **{t_ht / t_rs:.1f}x** |"
        )
    return rows


def versions() -> str:
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    return (
        f"date {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; "
        f"Python {platform.python_version()}; orjson {orjson.__version__}; "
        f"gateway._core {_core.__version__}; {rustc or 'rustc ?'}; "
        f"{platform.machine()} ({platform.processor() or 'cpu ?'})"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--events", type=int, default=3000)
    p.add_argument("--calls", type=int, default=100_000)
    p.add_argument(
        "--only", choices=["reframers", "nesting", "dechunker"], help="run one table only"
    )
    a = p.parse_args()
    if a.only == "reframers":
        sys.stdout.write("\n".join([versions(), "", *bench_reframers(a.events, a.reps)]) + "\n")
        return
    if a.only == "nesting":
        sys.stdout.write("\n".join([versions(), "", *bench_nesting(a.reps)]) + "\n")
        return
    if a.only == "dechunker":
        sys.stdout.write("\n".join([versions(), "", *bench_dechunker(a.reps)]) + "\n")
        return
    lines = [
        versions(),
        "",
        *bench_reframers(a.events, a.reps),
        "",
        *bench_limiter(a.calls, a.reps),
        "",
        *bench_nesting(a.reps),
        "",
        *bench_dechunker(a.reps),
    ]
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
