"""The side-by-side run as a section of docs/benchmarks.md: table, ratios, targets, profiles."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

from loadtests.bench import contenders as c
from loadtests.bench import redis_split

DOCS = c.REPO / "docs" / "benchmarks.md"
START, END = "<!-- side-by-side:start -->", "<!-- side-by-side:end -->"
TITLES = {
    "upstream": "upstream (direct)",
    "nginx": "nginx proxy",
    "floor": "Starlette floor",
    "bare": "bare-ASGI pass-through",
    "bare-twin": "bare-ASGI, its twin (A/A)",
    "bare-rsgi": "bare-RSGI pass-through (informational)",
    "gateway-sqlite": "gateway, embedded",
    "gateway-sqlite-twin": "gateway, embedded, its twin (A/A)",
    "gateway-redis": "gateway, Redis",
    "gateway-before": "gateway, before (--before)",
}
# The burst's TTFB p99 over the streams of every round together (`with_pooled`): one value a run.
POOLED = "ttfb_p99_pooled_ms"
# key, title, format, higher is better
ROWS = [
    ("rps", "single answers, req/s, 64 connections", "{:,.0f}", True),
    ("p50_add", "added latency p50, 1 connection (ms)", "{:.2f}", False),
    ("p99_add", "added latency p99, 1 connection (ms)", "{:.2f}", False),
    ("sse", "SSE, static body (one piece), streams/s, 64 conn.", "{:,.0f}", True),
    ("event", "SSE, one chunk per event, streams/s, 64 conn.", "{:,.0f}", True),
    ("lines", "SSE, each line its own chunk, streams/s, 64 conn.", "{:,.0f}", True),
    (
        "lines20",
        "SSE, per line, 20 ms between events, streams/s, 256 conn. (÷ mean stream time)",
        "{:,.0f}",
        True,
    ),
    ("anth", "Anthropic per line, streams/s (gateway: → OpenAI; others relay)", "{:,.0f}", True),
    (
        "anth20",
        "Anthropic per line, 20 ms between events, streams/s, 256 conn. (÷ mean stream time)",
        "{:,.0f}",
        True,
    ),
    ("gemini", "Gemini per line, streams/s (gateway: → OpenAI; others relay)", "{:,.0f}", True),
    ("anth-agent", "Anthropic per line, an agent's 52.6 KB request, streams/s", "{:,.0f}", True),
    ("gemini-agent", "Gemini per line, an agent's 52.6 KB request, streams/s", "{:,.0f}", True),
    ("messages-anth", "/v1/messages, Anthropic passed through, streams/s", "{:,.0f}", True),
    ("messages-lines", "/v1/messages, OpenAI per line translated, streams/s", "{:,.0f}", True),
    ("responses-anth", "/v1/responses, Anthropic per line translated, streams/s", "{:,.0f}", True),
    ("responses-lines", "/v1/responses, OpenAI per line translated, streams/s", "{:,.0f}", True),
    (
        "anth-tools",
        "Anthropic tool call, ~300 argument deltas, → OpenAI, streams/s",
        "{:,.0f}",
        True,
    ),
    ("messages-tools", "/v1/messages, the tool call passed through, streams/s", "{:,.0f}", True),
    ("responses-tools", "/v1/responses, the tool call translated, streams/s", "{:,.0f}", True),
    ("lines20_stream_ms", "SSE per line, 20 ms: mean stream time (ms)", "{:,.0f}", False),
    ("anth20_stream_ms", "Anthropic per line, 20 ms: mean stream time (ms)", "{:,.0f}", False),
    (
        "lines20_window",
        "SSE per line, 20 ms: wrk's whole streams in the window ÷ window (quantized)",
        "{:,.0f}",
        True,
    ),
    (
        "anth20_window",
        "Anthropic per line, 20 ms: wrk's whole streams in the window ÷ window (quantized)",
        "{:,.0f}",
        True,
    ),
    ("rps_cpu", "single answers: CPU µs per request", "{:,.0f}", False),
    ("sse_cpu", "SSE static body: CPU µs per stream", "{:,.0f}", False),
    ("event_cpu", "SSE chunk per event: CPU µs per stream", "{:,.0f}", False),
    ("lines_cpu", "SSE chunk per line: CPU µs per stream", "{:,.0f}", False),
    ("lines20_cpu", "SSE per line, 20 ms: CPU µs per stream", "{:,.0f}", False),
    ("anth_cpu", "Anthropic per line: CPU µs per stream", "{:,.0f}", False),
    ("anth20_cpu", "Anthropic per line, 20 ms: CPU µs per stream", "{:,.0f}", False),
    ("gemini_cpu", "Gemini per line: CPU µs per stream", "{:,.0f}", False),
    ("anth-agent_cpu", "Anthropic per line, agent's request: CPU µs per stream", "{:,.0f}", False),
    ("gemini-agent_cpu", "Gemini per line, agent's request: CPU µs per stream", "{:,.0f}", False),
    ("messages-anth_cpu", "/v1/messages, Anthropic passed through: CPU µs", "{:,.0f}", False),
    ("messages-lines_cpu", "/v1/messages, OpenAI translated: CPU µs per stream", "{:,.0f}", False),
    ("responses-anth_cpu", "/v1/responses, Anthropic: CPU µs per stream", "{:,.0f}", False),
    ("responses-lines_cpu", "/v1/responses, OpenAI: CPU µs per stream", "{:,.0f}", False),
    ("anth-tools_cpu", "Anthropic tool call → OpenAI: CPU µs per stream", "{:,.0f}", False),
    ("messages-tools_cpu", "/v1/messages, tool call: CPU µs per stream", "{:,.0f}", False),
    ("responses-tools_cpu", "/v1/responses, tool call: CPU µs per stream", "{:,.0f}", False),
    (
        "rps_all_cpu",
        "single answers: CPU µs per request with the store's (+ redis-server)",
        "{:,.0f}",
        False,
    ),
    ("event_all_cpu", "SSE chunk per event: CPU µs with the store's", "{:,.0f}", False),
    ("lines_all_cpu", "SSE chunk per line: CPU µs with the store's", "{:,.0f}", False),
    ("lines20_all_cpu", "SSE per line, 20 ms: CPU µs with the store's", "{:,.0f}", False),
    (
        "rps_store_wait",
        "single answers: redis-server's wait for its core, µs per request",
        "{:,.1f}",
        False,
    ),
    (
        "event_store_wait",
        "SSE chunk per event: redis-server's wait for its core, µs",
        "{:,.1f}",
        False,
    ),
    ("rps_busy", "single answers: worker CPU s ÷ wall s (below 1: it waited)", "{:.2f}", True),
    ("event_busy", "SSE chunk per event: worker CPU s ÷ wall s", "{:.2f}", True),
    ("lines20_busy", "SSE per line, 20 ms: worker CPU s ÷ wall s", "{:.2f}", True),
    ("anth_busy", "Anthropic per line: worker CPU s ÷ wall s", "{:.2f}", True),
    ("anth20_busy", "Anthropic per line, 20 ms: worker CPU s ÷ wall s", "{:.2f}", True),
    ("gemini_busy", "Gemini per line: worker CPU s ÷ wall s", "{:.2f}", True),
    (
        "anth-agent_busy",
        "Anthropic per line, agent's request: worker CPU s ÷ wall s",
        "{:.2f}",
        True,
    ),
    (
        "gemini-agent_busy",
        "Gemini per line, agent's request: worker CPU s ÷ wall s",
        "{:.2f}",
        True,
    ),
    (
        "sse_reads",
        "SSE static body: read() calls per stream (upstream reads, loop wake-ups)",
        "{:.1f}",
        False,
    ),
    ("event_reads", "SSE chunk per event: read() calls per stream", "{:.1f}", False),
    ("lines_reads", "SSE chunk per line: read() calls per stream", "{:.1f}", False),
    ("anth_reads", "Anthropic per line: read() calls per stream", "{:.1f}", False),
    ("gemini_reads", "Gemini per line: read() calls per stream", "{:.1f}", False),
    (
        "event_upstream_cpu",
        "SSE chunk per event: the upstream's CPU (us) per stream (the load generator's core)",
        "{:.0f}",
        False,
    ),
    (
        "lines_upstream_cpu",
        "SSE chunk per line: upstream CPU (us) per stream",
        "{:.0f}",
        False,
    ),
    (
        "anth_upstream_cpu",
        "Anthropic per line: upstream CPU (us) per stream",
        "{:.0f}",
        False,
    ),
    ("gemini_upstream_cpu", "Gemini per line: upstream CPU (us) per stream", "{:.0f}", False),
    (
        "lines_upstream_segments",
        "SSE chunk per line: TCP segments the upstream sent per stream (its socket counters)",
        "{:.1f}",
        False,
    ),
    (
        "anth_upstream_segments",
        "Anthropic per line: TCP segments the upstream sent per stream",
        "{:.1f}",
        False,
    ),
    (
        "anth_upstream_segments_in",
        "Anthropic per line: TCP segments the upstream took per stream (the reader's ACKs)",
        "{:.1f}",
        False,
    ),
    ("lines_client_cpu", "SSE chunk per line: wrk's CPU (us) per stream", "{:.0f}", False),
    ("anth_client_cpu", "Anthropic per line: wrk's CPU (us) per stream", "{:.0f}", False),
    ("ttfb_p50_ms", "burst (1000 streams in 1 s, reopened): TTFB p50 (ms)", "{:.1f}", False),
    (
        "ttfb_p99_ms",
        "burst: TTFB p99 (ms), median of the rounds' p99 (each the 20th worst of ~2,000 streams;"
        " as before 19zzzzf)",
        "{:.1f}",
        False,
    ),
    (
        POOLED,
        "burst: TTFB p99 (ms), pooled: over every round's streams together (19zzzzf)",
        "{:.1f}",
        False,
    ),
    ("rss_mb", "burst: peak RSS (MB)", "{:.0f}", False),
    ("burst_failed", "burst: streams not complete (of all opened)", "{:.0f}", False),
]
GATEWAYS = ("gateway-sqlite", "gateway-redis", "gateway-before")

Samples = dict[str, dict[str, list[float]]]


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile, as long_streams.py takes the burst's own."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def pooled(rounds: list[list[float]], q: float = 0.99) -> float | None:
    """The `q` percentile of every round's values together (a round with none adds nothing)."""
    values = [value for values in rounds for value in values]
    return percentile(values, q) if values else None


def pooled_ratio_interval(
    mine: list[list[float]],
    ref: list[list[float]],
    q: float = 0.99,
    draws: int = 1000,
    seed: int = 19,
) -> tuple[float, float] | None:
    """A 95 % interval of pooled(mine) ÷ pooled(ref) by a bootstrap over rounds: each draw takes
    as many rounds as there are, with replacement, the same rounds of both (each round's pair
    ran back to back), and pools their streams. The round is what is drawn, not the stream:
    a round's tail moves as a whole (a collector's pause or the machine's speed delays many of
    its streams at once), so streams drawn one by one would give too narrow an interval. With
    4 rounds there are 35 distinct draws: a coarse interval, not a fine one. None with fewer
    than 2 paired rounds."""
    count = min(len(mine), len(ref))
    if count < 2:
        return None
    rng = random.Random(seed)
    found = []
    for _ in range(draws):
        picks = [rng.randrange(count) for _ in range(count)]
        a, b = pooled([mine[i] for i in picks], q), pooled([ref[i] for i in picks], q)
        if a is not None and b:
            found.append(a / b)
    if not found:
        return None
    found.sort()
    return found[int(0.025 * len(found))], found[min(len(found) - 1, int(0.975 * len(found)))]


def with_pooled(samples: Samples, ttfb: dict[str, list[list[float]]]) -> Samples:
    """`samples` with each contender's burst TTFB p99 pooled over its rounds (POOLED, one value:
    its ratios are then the pooled figures' ratio)."""
    out = {name: dict(measures) for name, measures in samples.items()}
    for name, rounds in ttfb.items():
        value = pooled(rounds)
        if value is not None and name in out:
            out[name][POOLED] = [value]
    return out


def pooled_lines(ttfb: dict[str, list[list[float]]]) -> list[str]:
    """The burst's pooled TTFB p99 of each gateway against the bare's and the Redis store's
    against the embedded one's, each with its interval (`pooled_ratio_interval`), and each
    contender's rounds' own p99 beside the pooled one."""
    if not ttfb:
        return []
    found = []
    for name, ref in (
        ("gateway-sqlite", "bare"),
        ("gateway-redis", "bare"),
        ("gateway-redis", "gateway-sqlite"),
        ("gateway-before", "gateway-sqlite"),
    ):
        mine, theirs = ttfb.get(name), ttfb.get(ref)
        a, b = (pooled(mine), pooled(theirs)) if mine and theirs else (None, None)
        if a is None or not b:
            continue
        interval = pooled_ratio_interval(mine, theirs)  # type: ignore[arg-type]
        within = verdict = ""
        if interval is not None:
            within = f", 95 % interval {interval[0]:.2f} to {interval[1]:.2f}"
            verdict = (
                "; ≤ 1 in the whole interval"
                if interval[1] <= 1
                else "; > 1 in the whole interval"
                if interval[0] > 1
                else "; the interval holds 1: not resolved by this run"
            )
        found.append(f"{name} ÷ {ref} {a / b:.2f}x ({a:.1f} vs {b:.1f} ms{within}{verdict})")
    rounds = "; ".join(
        f"{name} "
        + ", ".join(f"{percentile(values, 0.99):.1f}" for values in per if values)
        + f" (pooled {pooled(per) or 0:.1f}, of {sum(len(values) for values in per):,} streams)"
        for name, per in ttfb.items()
        if any(per)
    )
    return [
        "Burst TTFB p99 pooled over the rounds (every round's streams together; the interval by "
        "a bootstrap over rounds, the same rounds for both, since a round's tail moves as a "
        "whole; decision 0012, 19zzzzf): " + "; ".join(found) + ". Each round's own p99 (ms), "
        "as the median row reads them: " + rounds + ".",
        "",
    ]


def per_round(samples: Samples) -> Samples:
    """Derived values per round: added latency (minus the upstream's own in the same round)."""
    up = samples.get("upstream", {})
    out: Samples = {}
    for name, measures in samples.items():
        row = dict(measures)
        for key, raw in (("p50_add", "p50_ms"), ("p99_add", "p99_ms")):
            if raw in measures and raw in up:
                row[key] = [a - b for a, b in zip(measures[raw], up[raw], strict=False)]
        out[name] = row
    return out


def round_ratios(samples: Samples, name: str, ref: str, key: str) -> list[float]:
    """name ÷ ref in each round, each round's pair measured back to back."""
    mine, theirs = samples.get(name, {}).get(key), samples.get(ref, {}).get(key)
    if not mine or not theirs:
        return []
    return [a / b for a, b in zip(mine, theirs, strict=False) if b]


def ratio(samples: Samples, name: str, ref: str, key: str) -> float | None:
    """The median over rounds of name ÷ ref."""
    pairs = round_ratios(samples, name, ref, key)
    return statistics.median(pairs) if pairs else None


def ratio_range(samples: Samples, name: str, ref: str, key: str) -> tuple[float, float] | None:
    """The lowest and highest of the per-round ratios: one run's own noise, printed beside each
    target so that a step smaller than it is not read as one."""
    pairs = round_ratios(samples, name, ref, key)
    return (min(pairs), max(pairs)) if pairs else None


def median(samples: Samples, name: str, key: str) -> float | None:
    values = samples.get(name, {}).get(key)
    return statistics.median(values) if values else None


def table(samples: Samples) -> str:
    rows = per_round(samples)
    names = [n for n in TITLES if n in rows]
    lines = [
        "| measure | " + " | ".join(TITLES[n] for n in names) + " |",
        "| --- |" + " ---: |" * len(names),
    ]
    for key, title, fmt, _ in ROWS:
        cells = []
        for name in names:
            value = median(rows, name, key)
            if value is None:
                cells.append("—")
                continue
            cell = fmt.format(value)
            if name == "bare-rsgi" and key not in ("p50_add", "p99_add", "burst_failed"):
                r = ratio(rows, name, "bare", key)
                cell += f" ({r:.2f}x bare)" if r is not None else ""
            elif name in GATEWAYS and key not in ("p50_add", "p99_add", "burst_failed"):
                ratios = [f"{r:.2f}x {ref}" for ref in ("bare", "floor")
                          if (r := ratio(rows, name, ref, key)) is not None]  # fmt: skip
                cell += f" ({', '.join(ratios)})" if ratios else ""
            cells.append(cell)
        if any(cell != "—" for cell in cells):  # a measure no contender ran (opt-in) is left out
            lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(value: float, limit: float, higher: bool, rounds: tuple[float, float] | None) -> str:
    """Met or missed by the median of the rounds, then whether every round agrees: a miss (or a
    pass) inside one run's own noise is not read as a clear one."""

    def ok(x: float) -> bool:
        return x >= limit if higher else x <= limit

    met = ok(value)
    agree = None if rounds is None else ok(rounds[0]) == met and ok(rounds[1]) == met
    if met:
        return "met" if agree in (None, True) else "met, not in every round"
    gap = abs(value - limit) / abs(limit) if limit else 0.0
    by = f"{gap:.1%}" if gap < 0.01 else f"{gap:.0%}"
    if agree is None:
        return f"MISSED by {by}"
    return f"MISSED by {by}, " + ("in every round" if agree else "within the rounds' spread")


def targets(samples: Samples) -> list[str]:
    """Issue 19's targets, each met or missed (and by how much)."""
    rows = per_round(samples)
    out: list[str] = []

    def check(
        title: str,
        value: float | None,
        limit: float | None,
        higher: bool,
        rounds: tuple[float, float] | None = None,
    ) -> None:
        if value is None or limit is None:
            out.append(f"- {title}: not measured")
            return
        spread = "" if rounds is None else f" (rounds {rounds[0]:,.2f} to {rounds[1]:,.2f})"
        out.append(
            f"- {title}: {value:,.2f}{spread} vs {limit:,.2f} → "
            + verdict(value, limit, higher, rounds)
        )

    for gw in GATEWAYS:
        if gw not in samples:
            continue
        store = {"gateway-sqlite": "embedded", "gateway-redis": "Redis"}.get(gw, "before")
        for key, what in (("rps", "single answers"), ("event", "SSE relay, chunk per event"),
                          ("lines", "SSE relay, chunk per line"),
                          ("lines20", "SSE relay, per line, 20 ms"),
                          ("sse", "SSE relay, static body")):  # fmt: skip
            check(f"{store}: {what} ≥ 1.0x bare", ratio(rows, gw, "bare", key), 1.0, True,
                  ratio_range(rows, gw, "bare", key))  # fmt: skip
        for key, what in (("rps", "single answers"), ("event", "SSE relay, chunk per event"),
                          ("lines", "SSE relay, chunk per line"),
                          ("lines20", "SSE relay, per line, 20 ms"),
                          ("sse", "SSE relay, static body")):  # fmt: skip
            r = ratio(rows, "bare", gw, f"{key}_cpu")
            check(f"{store}: {what}, by CPU per request (bare's ÷ gateway's) ≥ 1.0",
                  r, 1.0, True, ratio_range(rows, "bare", gw, f"{key}_cpu"))  # fmt: skip
        check(f"{store}: Anthropic → OpenAI ≥ 0.9x the bare relay",
              ratio(rows, gw, "bare", "anth"), 0.9, True,
              ratio_range(rows, gw, "bare", "anth"))  # fmt: skip
        check(f"{store}: Gemini → OpenAI ≥ 0.9x the bare relay",
              ratio(rows, gw, "bare", "gemini"), 0.9, True,
              ratio_range(rows, gw, "bare", "gemini"))  # fmt: skip
        check(f"{store}: added latency p50 ≤ bare's (ms)", median(rows, gw, "p50_add"),
              median(rows, "bare", "p50_add"), False)  # fmt: skip
        check(f"{store}: burst TTFB p99 ≤ bare's (ms; median of the rounds' p99, as before "
              "19zzzzf)", median(rows, gw, "ttfb_p99_ms"),
              median(rows, "bare", "ttfb_p99_ms"), False)  # fmt: skip
        if median(rows, gw, POOLED) is not None:
            check(f"{store}: burst TTFB p99 ≤ bare's (ms; pooled over the rounds, 19zzzzf)",
                  median(rows, gw, POOLED), median(rows, "bare", POOLED), False)  # fmt: skip
        check(f"{store}: burst peak RSS ≤ 160 MB", median(rows, gw, "rss_mb"), 160, False)
    for key, _, _, higher in ROWS:
        # (the pooled p99's Redis ÷ embedded is read with its interval: `pooled_lines`)
        if key in ("p50_add", "p99_add", "burst_failed", "ttfb_p50_ms", POOLED) or key.endswith(
            # (how a run read and what it cost the load generator's core: not targets)
            (
                "_busy",
                "_store_wait",
                "_reads",
                "_upstream_cpu",
                "_client_cpu",
                "_upstream_segments",
                "_upstream_segments_in",
                # (the paced measures' stream time is their rate's other face; wrk's window
                # count is quantized: neither is a target of its own)
                "_stream_ms",
                "_window",
            )
        ):
            continue
        r = ratio(rows, "gateway-redis", "gateway-sqlite", key)
        rounds = ratio_range(rows, "gateway-redis", "gateway-sqlite", key)
        if r is not None:
            if rounds is not None and not higher:
                rounds = (1 / rounds[1], 1 / rounds[0])
            check(f"Redis ÷ embedded, {key}", r if higher else 1 / r, 0.95, True, rounds)
    return out


def py_spy(pid: int, raw: Path, seconds: float, load: Callable[[], Any]) -> list[str]:
    """py-spy on a worker while `load` runs, sampling the thread that holds the GIL: the
    functions with the largest inclusive share, minus the bootstrap frames every sample shares."""
    binary = shutil.which("py-spy") or str(c.BIN / "py-spy")
    recorder = subprocess.Popen(
        [binary, "record", "--pid", str(pid), "--subprocesses", "--rate", "250",
         "--duration", str(int(seconds) + 2), "--format", "raw", "--output", str(raw), "--gil"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    load()
    recorder.wait(timeout=seconds + 60)
    keep = os.environ.get("BENCH_PROFILE_DIR")  # the raw samples, for a closer look
    if keep and raw.exists():
        shutil.copy(raw, Path(keep) / raw.name)
    inclusive: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines() if raw.exists() else []:
        stack, _, count = line.rpartition(" ")
        total += int(count)
        for frame in dict.fromkeys(stack.split(";")):
            name = re.sub(r" \(.*?([^/]+/[^/]+\.py):\d+\)", r" (\1)", frame)
            inclusive[name] = inclusive.get(name, 0) + int(count)
    shown = [
        (name, n)
        for name, n in sorted(inclusive.items(), key=lambda kv: -kv[1])
        if n < 0.9 * total and not name.startswith(("process ", "thread "))
    ]
    return [f"{100 * n / max(1, total):5.1f}%  {name}" for name, n in shown[:25]]


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "?"


def congestion_control(path: Path = Path("/proc/sys/net/ipv4/tcp_congestion_control")) -> str:
    """The host's TCP congestion control, which every contender's and the upstream's sockets
    use: under BBR (with no fq qdisc) each socket paces its own sends, so how often a reader
    ACKs sets how many segments the upstream writes (decision 0012, 19zzzzk)."""
    try:
        return path.read_text().strip() or "?"
    except OSError:
        return "?"


def versions() -> str:
    def tool(command: list[str]) -> str:
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return "?"
        return (done.stdout + done.stderr).strip().splitlines()[0]

    packages = ", ".join(
        f"{p} {version(p)}"
        for p in ("granian", "starlette", "aiohttp", "httptools", "uvloop", "msgspec", "hiredis")
    )
    return (
        f"Python {platform.python_version()}, {packages}; {tool(['nginx', '-v'])}; "
        f"{tool(['wrk', '--version'])}; {tool(['redis-server', '--version'])}; "
        f"Linux {platform.release()} (TCP congestion control {congestion_control()}), "
        f"{os.cpu_count()} cores ({cpu_model()})"
    )


def section(samples: Samples, notes: dict[str, object], args: argparse.Namespace) -> str:
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    ttfb: dict[str, list[list[float]]] = notes.get("ttfb") or {}  # type: ignore[assignment]
    samples = with_pooled(samples, ttfb)
    profiles: dict[str, list[str]] = notes.get("profile") or {}  # type: ignore[assignment]
    bad = notes.get("bad_responses") or {}
    load = ", ".join(f"{value:.2f}" for value in notes["load"])  # type: ignore[attr-defined]
    method = getattr(args, "method", "whole")  # (how the rounds were made: side_by_side.METHODS)
    profile_lines = []
    for scenario, lines in profiles.items():
        what = {"json": "single answers", "lines": "SSE, each line its own chunk"}.get(
            scenario, scenario
        )
        profile_lines += [f"Profile of the gateway worker ({what}, py-spy --gil, inclusive):",
                          "", "```", *lines, "```", ""]  # fmt: skip
    return "\n".join(
        [
            START,
            "## Side by side: gateway vs nginx vs two pass-throughs",
            "",
            f"Measured {today} with `make bench` (= `.venv/bin/python -m "
            f"loadtests.bench.side_by_side --seconds {args.seconds:g} --reps {args.reps} "
            f"--burst-seconds {args.burst_seconds:g} --write-docs"
            f"{' --profile' if args.profile else ''}`).",
            f"Versions: {versions()}.",
            "Load average (1 min) at the start and after each "
            f"{'round' if method == 'fresh' else 'measure'}: {load} (2 cores; the "
            "benchmark itself keeps both busy, so above ~2 means other work shared the machine).",
            "",
            "Setup: each contender runs one worker pinned to core 0; the fake upstream (nginx: "
            "fixed bodies, and chunked streams through the echo module, 50 events each; "
            + (
                "its clock read every millisecond, so that a paced stream's 20 ms sleeps last "
                "20 ms, since 19zzzzf"
                if getattr(args, "upstream_timers", "loop") != "loop"
                else "its clock read after each wait for events, as before 19zzzzf: a paced "
                "stream's sleeps also last the loop iteration that set them"
            )
            + "), "
            "wrk and the stream client share core 1; "
            + (
                "redis-server runs on core 0 with the contenders (since 19zzzze: its CPU taken "
                "from the gateway's core, as the embedded store's SQLite work is; on core 1 the "
                "per-line measure's full load-generator core decided the Redis rounds)"
                if getattr(args, "redis_core", c.CLIENT_CORE) == c.SERVER_CORE
                else "redis-server runs on core 1 with them, as before 19zzzze"
            )
            + (
                ", at real-time priority: run as soon as a command arrives, its wait for the "
                "core reported per request"
                if notes.get("redis_priority") == "realtime"
                else ", at normal priority: queued behind the others on its core"
            )
            + (
                ". Each round measures every contender once, back to back (the order reversed "
                f"every other round), for {args.seconds:g} s (after a 1 s warm-up)"
                if method == "whole"
                else ". Each round starts every contender but the upstream and the nginx proxy "
                "afresh (the pass-throughs, the gateways and redis-server, with new stores; "
                "`--method fresh`, since 19zzzzr: the rounds then sample each process's own "
                "offset, which lasts its life), warms each measure up for 1 s a contender (a "
                "paced measure with one whole stream a connection, since 19zzzzx: wrk's window "
                "would cut every stream, and the gateway, which cancels a cut stream by closing "
                "its upstream connection, would alone reconnect them in the measured turn), then "
                "measures every contender once, back to back (the order reversed every other "
                f"round), for {args.seconds:g} s"
                if method == "fresh"
                else f". Each round gives every contender {args.seconds:g} s (after a 1 s "
                "warm-up): on the saturated measures in 1 s slices interleaved with the others' "
                "(the order reversed every slice and every other round; a round's figure the "
                "mean of its slices, `--method sliced`), on the paced and latency measures in "
                "one turn"
            )
            + f"; figures are medians of {args.reps} rounds and ratios medians of the "
            f"per-round ratios. {AA_RESOLUTION} Added "
            "latency = the contender's wrk latency at 1 connection minus the upstream's own. "
            "Each round also measures the CPU that programs outside the bench took (all "
            "processes but the bench's own tree); rounds where it reached 0.05 of a core are "
            "named below the targets. "
            f"Burst: {BURST_STREAMS_TEXT} streams opened evenly within 1 s over the upstream "
            "that sends a line per chunk and an event every 100 ms (5 s per stream), each "
            f"reopened as it ends, for {args.burst_seconds:g} s; RSS is the peak of the "
            "contender's process tree. The gateway runs with everything on (auth, limits, "
            "credit reservation, billing ledger, metrics in multiprocess mode, one JSON log "
            "line per request).",
            "",
            table(samples),
            "",
            "Targets (issue 19):",
            "",
            *targets(samples),
            "",
            *pooled_lines(ttfb),
            *(
                [f"Bad responses seen (non-2xx or socket errors): {bad}", ""]
                if bad
                else ["No run had a non-2xx answer or a socket error.", ""]
            ),
            listen_line(notes.get("listen") or {}),  # type: ignore[arg-type]
            "",
            *clock_lines(notes.get("clock_steps") or {}),  # type: ignore[arg-type]
            *others_lines(notes.get("others") or {}),  # type: ignore[arg-type]
            *steal_lines(notes.get("steal") or {}),  # type: ignore[arg-type]
            *speed_lines(samples),
            *fast_lines(samples),
            *aa_lines(samples),
            *paced_lines(samples),
            *reads_lines(samples),
            *client_core_lines(samples),
            *cores_lines(samples),
            *redis_split.lines(samples),
            *profile_lines,
            END,
        ]
    )


def listen_line(listen: dict[str, list[dict[str, int]]]) -> str:
    """The rounds in which the kernel dropped a connection on a listen queue or resent a SYN
    (measure.ListenWatch): each such connection waits 1 s or more, which a round's p99 shows."""
    seen = {
        key: [", ".join(f"{name} {n}" for name, n in counters.items() if n) or "none"
              for counters in rounds]
        for key, rounds in listen.items()
        if any(any(counters.values()) for counters in rounds)
    }  # fmt: skip
    if not seen:
        return "No round had a listen-queue overflow or drop, or a SYN resent (kernel counters)."
    return f"Listen-queue drops or SYNs resent during rounds (kernel counters, per round): {seen}"


def clock_lines(steps: dict[str, float]) -> list[str]:
    """The rounds whose wall clock stepped (side_by_side's ClockWatch), if any."""
    if not steps:
        return []
    return [
        "The wall clock stepped during rounds (s; the machine paused? wrk times with it, so "
        f"those rounds' figures are wrong): {steps}",
        "",
    ]


# The saturated stream measures whose rounds are read with their reads (decision 0012, 19zzr).
READ_MEASURES = ("sse", "event", "lines", "anth", "gemini")


def reads_lines(samples: Samples, name: str = "gateway-sqlite", ref: str = "bare") -> list[str]:
    """Each saturated stream measure's rounds: `name` ÷ `ref` in streams/s beside the read()
    calls per stream of each, and the upstream's CPU per stream while each was measured. A
    saturated stream settles for a whole round into few big reads or a read per chunk or two
    (decision 0012, 19zzr), for every contender, and streams/s follow; on two cores the
    upstream shares the load generator's core, which limits the per-line measures, so a round's
    ratio follows what each contender's reading costs the upstream (19zzy)."""
    mine, theirs = samples.get(name, {}), samples.get(ref, {})
    found = []
    for measure in READ_MEASURES:
        ratios = round_ratios(samples, name, ref, measure)
        reads, ref_reads = mine.get(f"{measure}_reads"), theirs.get(f"{measure}_reads")
        # (paired by position: a round that completed nothing has a ratio but no reads)
        if (
            not ratios
            or not reads
            or not ref_reads
            or not len(ratios) == len(reads) == len(ref_reads)
        ):
            continue
        costs = mine.get(f"{measure}_upstream_cpu") or []
        ref_costs = theirs.get(f"{measure}_upstream_cpu") or []
        segments = mine.get(f"{measure}_upstream_segments") or []
        ref_segments = theirs.get(f"{measure}_upstream_segments") or []
        # (none in a run from before they were recorded)
        paired = len(costs) == len(ref_costs) == len(ratios)
        counted = len(segments) == len(ref_segments) == len(ratios)
        # each core's speed probe in the two rounds (19zzzzb: a slow reader's core reads few
        # big pieces); none in a run from before the probe
        cores = [
            (mine[f"{measure}_probe{core}"], theirs[f"{measure}_probe{core}"])
            for core in (c.SERVER_CORE, c.CLIENT_CORE)
            if len(mine.get(f"{measure}_probe{core}", [])) == len(ratios)
            and len(theirs.get(f"{measure}_probe{core}", [])) == len(ratios)
        ]
        rounds = ", ".join(
            f"{r:.2f}x ({reads[i]:.1f} vs {ref_reads[i]:.1f}"
            + (f"; upstream {costs[i]:.0f} vs {ref_costs[i]:.0f} us" if paired else "")
            + (f", {segments[i]:.0f} vs {ref_segments[i]:.0f} segments" if counted else "")
            + (
                "; probe "
                + "/".join(f"{a[i]:.0f}" for a, _ in cores)
                + " vs "
                + "/".join(f"{b[i]:.0f}" for _, b in cores)
                + " us"
                if len(cores) == 2
                else ""
            )
            + ")"
            for i, r in enumerate(ratios)
        )
        found.append(f"{measure} {rounds}")
    if not found:
        return []
    return [
        f"Rounds of the stream measures, {name} ÷ {ref} in streams/s (read() calls per stream: "
        f"{name} vs {ref}, and the upstream's CPU and TCP segments sent per stream while each "
        "ran, and each core's speed probe, server/client core; a saturated "
        "stream's rounds settle into few big reads or many small ones, and streams/s follow "
        "what the upstream, on the load generator's core, pays; a reader on a slow core (the "
        "probe at ~350 µs, not ~225) reads few big pieces): " + "; ".join(found) + ".",
        "",
    ]


def client_core_lines(
    samples: Samples, name: str = "gateway-redis", ref: str = "gateway-sqlite"
) -> list[str]:
    """Each saturated stream measure's rounds: `name` ÷ `ref` in streams/s beside the load
    generator's core's CPU per stream while each ran (side_by_side's `{measure}_client_core_us`:
    the upstream's, wrk's and, where it runs there, redis-server's) and how busy that core was.
    Where that core is full, it sets the rate: a round's ratio is then about `ref`'s µs ÷
    `name`'s, whatever the worker's own cost (decision 0010, 19zzzze: the per-line streams,
    redis-server's share of that core with them)."""
    mine, theirs = samples.get(name, {}), samples.get(ref, {})
    found = []
    for measure in READ_MEASURES:
        ratios = round_ratios(samples, name, ref, measure)
        costs = mine.get(f"{measure}_client_core_us") or []
        ref_costs = theirs.get(f"{measure}_client_core_us") or []
        busy = mine.get(f"{measure}_client_core") or []
        ref_busy = theirs.get(f"{measure}_client_core") or []
        # (none in a run from before they were recorded)
        if not ratios or not len(ratios) == len(costs) == len(ref_costs) == len(busy) == len(
            ref_busy
        ):
            continue
        rounds = ", ".join(
            f"{r:.2f}x ({costs[i]:.0f} vs {ref_costs[i]:.0f} us, ÷ {ref_costs[i] / costs[i]:.2f}x;"
            f" busy {busy[i]:.2f} vs {ref_busy[i]:.2f})"
            for i, r in enumerate(ratios)
            if costs[i] > 0
        )
        found.append(f"{measure} {rounds}")
    if not found:
        return []
    return [
        f"Rounds of the stream measures, {name} ÷ {ref} in streams/s beside the load generator's "
        f"core's CPU per stream ({name} vs {ref}: the upstream's, wrk's and redis-server's when "
        "it runs there; ÷: the rate that core alone allows, the second's µs ÷ the first's) and "
        "how busy that core was (near 0.95 it was full and set the rate): "
        + "; ".join(found)
        + ".",
        "",
    ]


def others_lines(shared: dict[str, float]) -> list[str]:
    """The rounds in which programs outside the bench took CPU (side_by_side's OthersWatch), if
    any: on the load generator's core they change which core limits a saturated stream."""
    if not shared:
        return []
    return [
        "Other programs took CPU during rounds (cores; those rounds shared the machine, and "
        f"their ratios may not be the quiet machine's): {shared}",
        "",
    ]


def steal_lines(stolen: dict[str, dict[str, float]]) -> list[str]:
    """The rounds in which the hypervisor took time from the machine's cores (side_by_side's
    StealWatch), if any: the contender measured then had less of its core than the wall clock
    says."""
    if not stolen:
        return []
    return [
        "The host took time from the cores during rounds (steal, a share of each core's time; "
        f"those rounds' contenders had less of their core than their wall clock says): {stolen}",
        "",
    ]


# A round pair whose speed probes differ this much (either way), on a core, ran its two contenders
# on machines of different speed (decision 0012, 19zzzzb).
UNEVEN = 1.15
# The A/A pairs (side_by_side's twin contenders and their originals): the same program twice,
# so a ratio's distance from 1 is the method's own noise (decision 0012, 19zzzzo).
TWINS = (("bare-twin", "bare"), ("gateway-sqlite-twin", "gateway-sqlite"))
# The pairs whose per-round ratios the report reads (the targets', and a paired run's).
SPEED_PAIRS = (
    ("gateway-sqlite", "bare"),
    ("gateway-redis", "bare"),
    ("gateway-redis", "gateway-sqlite"),
    ("gateway-before", "gateway-sqlite"),
    *TWINS,
)


def _probe_measure(key: str) -> str | None:
    """The measure of a speed-probe key (`{measure}_probe{core}`), else None."""
    measure, _, core = key.rpartition("_probe")
    return measure if measure and core.isdigit() else None


def uneven_rounds(samples: Samples, threshold: float = UNEVEN) -> dict[str, dict[str, float]]:
    """The rounds in which a pair's two contenders ran at different machine speeds: the speed
    probe (side_by_side's `{measure}_probe{core}`: µs for a fixed loop, per round) of the
    first ÷ the second's in the same round, per core, where it is `threshold` or more or
    1/`threshold` or less (above 1: the first ran on the slower machine). By "first ÷ second
    measure round N"."""
    found: dict[str, dict[str, float]] = {}
    for name, ref in SPEED_PAIRS:
        mine, theirs = samples.get(name, {}), samples.get(ref, {})
        for key, values in mine.items():
            measure = _probe_measure(key)
            if measure is None or key not in theirs:
                continue
            core = key.rpartition("_probe")[2]
            for i, (a, b) in enumerate(zip(values, theirs[key], strict=False)):
                if a and b and not 1 / threshold < a / b < threshold:
                    uneven = found.setdefault(f"{name} ÷ {ref} {measure} round {i + 1}", {})
                    uneven[f"core {core}"] = round(a / b, 2)
    return found


def speed_lines(samples: Samples) -> list[str]:
    """The rounds whose pairs ran at different machine speeds (`uneven_rounds`), if any."""
    uneven = uneven_rounds(samples)
    if not uneven:
        return []
    return [
        "Rounds whose two contenders ran on machines of different speed (a speed probe runs a "
        "fixed loop on each core at idle priority; its time in the first contender's round ÷ "
        f"in the second's, per core, where they differ by {UNEVEN - 1:.0%} or more; above 1 the "
        f"first ran on the slower machine): {uneven}. On this VM a core's speed moves between "
        "two states (the probe at ~225 or ~350 µs) for seconds at a time with no steal "
        "counted, and a contender that saturates its core runs about as much slower or "
        "faster: such a round's ratio is the machine's, not the code's.",
        "",
    ]


# A round is in the fast state, for a pair, when every speed probe of both contenders' turns
# read, on every core, within this of the run's fastest reading (decision 0012, 19zzzzx): both
# cores ran fast for both, the state in which the gateway's reads per stream show in full.
FAST = 1.15
# The pairs whose fast rounds the report reads apart (`fast_lines`).
FAST_PAIRS = (
    ("gateway-sqlite", "bare"),
    ("gateway-redis", "bare"),
    ("gateway-redis", "gateway-sqlite"),
    ("gateway-before", "gateway-sqlite"),
)


def fastest_probe(samples: Samples) -> float | None:
    """The run's fastest speed-probe reading: every contender's, every measure's, either core."""
    readings = [
        value
        for measures in samples.values()
        for key, values in measures.items()
        if _probe_measure(key)
        for value in values
        if value > 0
    ]
    return min(readings) if readings else None


def fast_ratios(
    samples: Samples, name: str, ref: str, measure: str, within: float = FAST
) -> list[tuple[int, float]]:
    """`name` ÷ `ref` on `measure` in its even, fast rounds: (round, ratio), the rounds (from
    1) in which every probe of both turns, on every core, read at most `within` times the
    run's fastest reading (`fastest_probe`)."""
    fastest = fastest_probe(samples)
    mine, theirs = samples.get(name, {}), samples.get(ref, {})
    cores = [key for key in mine if _probe_measure(key) == measure and key in theirs]
    if fastest is None or not cores or measure not in mine or measure not in theirs:
        return []
    found = []
    for i, (a, b) in enumerate(zip(mine[measure], theirs[measure], strict=False)):
        probes = [values[i] for key in cores for values in (mine[key], theirs[key])
                  if i < len(values)]  # fmt: skip
        if b and len(probes) == 2 * len(cores) and all(0 < v <= fastest * within for v in probes):
            found.append((i + 1, a / b))
    return found


def fast_lines(samples: Samples) -> list[str]:
    """Each pair's ratio per rate measure (the single answers and every stream measure), the
    median of all rounds beside the median of its even, fast rounds only (`fast_ratios`)."""
    fastest = fastest_probe(samples)
    pairs = [(name, ref) for name, ref in FAST_PAIRS if name in samples and ref in samples]
    if fastest is None or not pairs:
        return []
    lines = [
        "| measure | "
        + " | ".join(f"{TITLES[n]} ÷ {TITLES[r]}: all rounds | even, fast rounds" for n, r in pairs)
        + " |",
        "| --- |" + " ---: | --- |" * len(pairs),
    ]
    for key, title, _, _ in ROWS:
        cells = []
        for name, ref in pairs:
            every = ratio(samples, name, ref, key)
            if every is None or not any(_probe_measure(k) == key for k in samples[name]):
                cells += ["—", "—"]
                continue
            fast = fast_ratios(samples, name, ref, key)
            rounds = len(round_ratios(samples, name, ref, key))
            cells.append(f"{every:.2f}x")
            cells.append(
                f"{statistics.median(r for _, r in fast):.2f}x ({len(fast)} of {rounds}: "
                + ", ".join(f"round {i} {r:.2f}" for i, r in fast)
                + ")"
                if fast
                else f"none of {rounds}"
            )
        if any(cell != "—" for cell in cells):
            lines.append(f"| {title} | " + " | ".join(cells) + " |")
    if len(lines) == 2:
        return []
    return [
        "The targets' ratios in the machine's fast state (decision 0012, 19zzzzx): a round is "
        "even and fast, for a pair, when every speed-probe reading of both contenders' turns, "
        f"on both cores, is within {FAST - 1:.0%} of the run's fastest reading ({fastest:.0f} "
        "µs), i.e. both cores ran fast for both. The medians above mix the states; where most "
        "rounds had a slow core the gateway reads a stream in fewer, bigger pieces and wins, "
        "so the fast rounds' median is read beside the all-rounds one (few rounds: each is "
        "named). The bound is the run's own: in a run whose cores never ran fast (~225 µs on "
        "this VM, ~350 slow) these rounds are only even.",
        "",
        *lines,
        "",
    ]


def cores_lines(samples: Samples, name: str = "gateway-sqlite", ref: str = "bare") -> list[str]:
    """Which core set each saturated stream measure's rate, fast and slow rounds apart: `name`
    ÷ `ref` in streams/s beside how busy each core was in each one's turn (the worker's: its
    CPU s ÷ the turn's wall s, side_by_side's `{measure}_busy`; the load generator's: the
    upstream's and wrk's, `{measure}_client_core`) and its CPU per stream there (`_cpu`,
    `_client_core_us`): the medians of the even, fast rounds (`fast_ratios`) and of the others.
    A worker with idle time while the other core is full would make a round measure the load
    generator's core, not the worker (issue 19zzzzzf)."""
    mine, theirs = samples.get(name, {}), samples.get(ref, {})
    keys = ("_busy", "_cpu", "_client_core", "_client_core_us")
    rows = []
    for measure in READ_MEASURES:
        ratios = round_ratios(samples, name, ref, measure)
        figures = [(mine.get(measure + k) or [], theirs.get(measure + k) or []) for k in keys]
        # (a run from before these were recorded has none: no row)
        if not ratios or any(len(a) != len(ratios) or len(b) != len(ratios) for a, b in figures):
            continue
        fast = {i - 1 for i, _ in fast_ratios(samples, name, ref, measure)}
        for state, chosen in (("fast", sorted(fast)), ("other", [
            i for i in range(len(ratios)) if i not in fast
        ])):  # fmt: skip
            if not chosen:
                continue
            cells = [
                f"{statistics.median(a[i] for i in chosen):{form}} vs "
                f"{statistics.median(b[i] for i in chosen):{form}}"
                for (a, b), form in zip(figures, (".2f", ".0f", ".2f", ".0f"), strict=True)
            ]
            ratio_cell = f"{statistics.median(ratios[i] for i in chosen):.2f}x"
            rows.append(
                f"| {measure} | {state} ({', '.join(str(i + 1) for i in chosen)}) | {ratio_cell} | "
                + " | ".join(cells)
                + " |"
            )
    if not rows:
        return []
    return [
        f"Which core set the rate, {name} vs {ref}, each stream measure's even, fast rounds "
        "(as above) and its other rounds apart, medians (issue 19zzzzzf): how busy the worker's "
        "core was (its CPU s ÷ the turn's wall s; the wall holds wrk's start and end, so a full "
        "core reads a little under 1, ~0.92 here) and the load generator's (the upstream's and "
        "wrk's CPU ÷ the same wall), and each one's CPU per stream. A worker's core well below "
        "full while the other is full would make a round measure the load generator's core, "
        "not the worker.",
        "",
        f"| measure | rounds | {name} ÷ {ref} | worker's core busy | worker µs a stream "
        "| load generator's core busy | its µs a stream |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
        *rows,
        "",
    ]


# What one run can resolve, measured by A/A runs (the same program twice as two contenders:
# `--contenders bare,bare-twin,gateway-sqlite,gateway-sqlite-twin`; decision 0012, 19zzzzo,
# and with fresh processes each round, 19zzzzr; aa_runs.py reads such runs).
AA_RESOLUTION = (
    "A/A runs (the same program twice as two contenders; 3 runs of 4 rounds of 3 s with new "
    "processes each round, as here, alternating with 3 runs whose processes served every round, "
    "2026-12-07 09:02 to 09:34 UTC; decision 0012, 19zzzzr) read the twin ÷ its original's "
    "median of the rounds at 0.985 to 1.034 on single answers, 0.976 to 1.047 on the static "
    "body, 0.988 to 1.001 per event, 0.950 to 1.039 per line, 0.888 to 1.025 on Anthropic, "
    "0.974 to 0.996 on Gemini and 0.997 to 1.009 per line with 20 ms between events, single "
    "rounds from 0.78 to 1.12: a ratio nearer 1 than that, on those measures, is not resolved "
    "by one run (with the same processes every round, 0.68 to 1.05: each process's own offset "
    "lasts its life)."
)
# The rates an A/A run reads (`aa_lines`).
AA_MEASURES = ("rps", "sse", "event", "lines", "lines20", "anth", "anth20", "gemini")


def aa_spread(ratios: list[float]) -> float:
    """How far from 1 the farthest of an A/A pair's ratios is, either way (1.10 and 1/1.10 are
    both 10 %): what a ratio taken the same way cannot tell from 1."""
    return max(max(r, 1 / r) for r in ratios) - 1 if ratios else 0.0


def aa_lines(samples: Samples) -> list[str]:
    """Each A/A pair's rounds per measure: the twin ÷ its original in each round, their median
    (what the report's ratios are) and the farthest from 1 of both (`aa_spread`)."""
    found = []
    for name, ref in TWINS:
        parts = []
        for measure in AA_MEASURES:
            ratios = round_ratios(samples, name, ref, measure)
            if ratios:
                parts.append(
                    f"{measure} {statistics.median(ratios):.3f} (rounds "
                    + ", ".join(f"{r:.3f}" for r in ratios)
                    + f"; ±{aa_spread(ratios):.1%})"
                )
        if parts:
            found.append(f"{name} ÷ {ref}: " + "; ".join(parts))
    if not found:
        return []
    return [
        "A/A pairs (the same program twice, started alike: their ratio differs from 1 by the "
        "method's own noise only; decision 0012, 19zzzzo), median of the per-round ratios "
        "(each round's ratio; the farthest from 1 either way): " + ". ".join(found) + ".",
        "",
    ]


def paced_lines(samples: Samples) -> list[str]:
    """The paced measures' rounds: each contender's mean stream time and wrk's whole streams in
    the window per connection (the same whole number for every connection when they open
    together: wrk's own rate is then connections x k / seconds, the quantization that 19zzzzb
    took out of the streams/s)."""
    found = []
    for measure in ("lines20", "anth20"):
        parts = []
        for name, measures in samples.items():
            times, whole = measures.get(f"{measure}_stream_ms"), measures.get(f"{measure}_whole")
            if times and whole and len(times) == len(whole):
                pairs = zip(times, whole, strict=True)
                parts.append(f"{name} " + ", ".join(f"{t:,.0f} ms ({w:.2f})" for t, w in pairs))
        if parts:
            found.append(f"{measure}: " + "; ".join(parts))
    if not found:
        return []
    return [
        "Paced measures' rounds, each contender's mean stream time (49 sleeps of 20 ms: 980 ms "
        "and the relay; ~1.3 s before 19zzzzf, whose upstream's sleeps lasted longer) and wrk's "
        "whole streams in the window per connection (its connections open together, so each "
        "completes the same whole number in the window, and wrk's own rate can only read "
        "connections x k / seconds; the streams/s above are connections ÷ the mean stream "
        "time): " + "; ".join(found) + ".",
        "",
    ]


BURST_STREAMS_TEXT = "1000"


def write_docs(text: str) -> None:
    current = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    if START in current and END in current:
        head, rest = current.split(START, 1)
        _, tail = rest.split(END, 1)
        updated = head + text + tail
    else:
        updated = current.rstrip("\n") + "\n\n" + text + "\n"
    DOCS.write_text(updated)
