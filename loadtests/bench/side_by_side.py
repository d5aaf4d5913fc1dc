"""`make bench`: the gateway side by side with the upstream itself, nginx and the stack floor.

    .venv/bin/python -m loadtests.bench.side_by_side [--seconds 5] [--reps 3] [--write-docs]
    .venv/bin/python -m loadtests.bench.side_by_side --measures lat --seconds 3   # a quick look

Every contender is started up front, pinned to core 0 (one worker each); the fake upstream
(nginx, fixed bodies), Redis, wrk and the long-stream client run on core 1. Each measure runs
for every contender in turn, `--reps` times, and the table shows medians, with the ratio of the
gateway to nginx and to the floor. Every run is bounded (wrk -d, subprocess timeouts) and every
process is stopped at the end. `--write-docs` replaces the side-by-side section of
docs/benchmarks.md (other sections are kept).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import re
import shutil
import statistics
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import httpx
import orjson

from loadtests.bench import contenders as c
from loadtests.bench.measure import PeakRss, long_streams, wrk, wrk_script

DOCS = c.REPO / "docs" / "benchmarks.md"
START, END = "<!-- side-by-side:start -->", "<!-- side-by-side:end -->"
NAMES = ["upstream", "nginx", "floor", "gateway-sqlite", "gateway-redis"]
MEASURES = ["rps", "lat", "sse", "anth", "long"]
TITLES = {
    "upstream": "upstream (direct)",
    "nginx": "nginx proxy",
    "floor": "stack floor",
    "gateway-sqlite": "gateway, embedded",
    "gateway-redis": "gateway, Redis",
}
UPSTREAM_PATHS = {
    "json": "/json/v1/chat/completions",
    "sse": "/sse/v1/chat/completions",
    "anth": "/anth/v1/messages",
    "slow": "/slow/v1/chat/completions",
}
MESSAGES = [{"role": "user", "content": "Say hello to the benchmark."}]


@dataclass
class Contender:
    name: str
    base_url: str
    pid: int
    gateway: bool
    headers: dict[str, str] = field(default_factory=dict)

    def path(self, scenario: str) -> str:
        if self.gateway:
            return "/v1/chat/completions"
        return UPSTREAM_PATHS[scenario]

    def body(self, scenario: str) -> bytes:
        model = {"json": "bench/m", "sse": "benchsse/m", "anth": "benchanth/m",
                 "slow": "benchslow/m"}[scenario]  # fmt: skip
        payload: dict[str, object] = {"model": model, "messages": MESSAGES, "max_tokens": 64}
        if scenario != "json":
            payload["stream"] = True
        return orjson.dumps(payload)


@contextlib.contextmanager
def started(directory: Path) -> Iterator[dict[str, Contender]]:
    """Every process up front; all stopped on the way out, whatever happens."""
    processes: list[subprocess.Popen[bytes]] = []

    def keep(process: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        processes.append(process)
        return process

    try:
        up_port, proxy_port, floor_port, redis_port = (c.free_port() for _ in range(4))
        upstream_url = f"http://127.0.0.1:{up_port}"
        delay = float(os.environ.get("BENCH_DELAY_S", "0.1"))
        up = keep(c.nginx(c.upstream_conf(directory, up_port, delay), directory, "upstream",
                          c.CLIENT_CORE))  # fmt: skip
        proxy = keep(c.nginx(c.proxy_conf(directory, proxy_port, up_port), directory, "proxy",
                             c.SERVER_CORE))  # fmt: skip
        keep(c.redis_server(redis_port, directory))
        floor = keep(c.floor(floor_port, upstream_url, directory))
        gateways = {}
        for name, store in (
            ("gateway-sqlite", f"sqlite:///{directory / 'bench.db'}"),
            ("gateway-redis", f"redis://127.0.0.1:{redis_port}/0"),
        ):
            port = c.free_port()
            gateways[name] = (port, keep(c.gateway(name, port, upstream_url, store, directory)))
        found: dict[str, Contender] = {
            "upstream": Contender("upstream", upstream_url, up.pid, False),
            "nginx": Contender("nginx", f"http://127.0.0.1:{proxy_port}", proxy.pid, False),
            "floor": Contender("floor", f"http://127.0.0.1:{floor_port}", floor.pid, False),
        }
        for contender in found.values():
            ready = _answers(contender)
            c.wait_for(ready, contender.name)
        for name, (port, process) in gateways.items():
            base = f"http://127.0.0.1:{port}"
            c.wait_for(_ready(base), name)
            key = c.gateway_key(base)
            found[name] = Contender(
                name, base, process.pid, True, {"authorization": f"Bearer {key}"}
            )
            c.wait_for(_answers(found[name]), name)
        yield found
    finally:
        for process in reversed(processes):
            c.stop(process)


def _ready(base_url: str) -> Callable[[], bool]:
    return lambda: httpx.get(f"{base_url}/readyz").status_code == 200


def _answers(contender: Contender) -> Callable[[], bool]:
    def check() -> bool:
        response = httpx.post(
            contender.base_url + contender.path("json"),
            content=contender.body("json"),
            headers=contender.headers | {"content-type": "application/json"},
            timeout=5,
        )
        return response.status_code == 200 and b"chat.completion" in response.content

    return check


# -- the run --------------------------------------------------------------------------------------
Results = dict[str, dict[str, float]]  # contender -> measure -> median


def run(args: argparse.Namespace, directory: Path) -> tuple[Results, dict[str, object]]:
    results: Results = {name: {} for name in NAMES}
    samples: dict[tuple[str, str], list[float]] = {}
    notes: dict[str, object] = {"bad_responses": {}, "load_before": os.getloadavg()[0]}
    with started(directory) as found:
        scripts = {
            (name, scenario): wrk_script(
                directory / f"{name}-{scenario}.lua",
                contender.body(scenario),
                contender.headers | {"Content-Type": "application/json"},
            )
            for name, contender in found.items()
            for scenario in ("json", "sse", "anth")
        }
        plan = [("json", 64, "rps"), ("json", 1, "lat"), ("sse", 64, "sse"), ("anth", 64, "anth")]
        plan = [step for step in plan if step[2] in args.measures]
        for scenario, connections, measure in plan:
            for name in NAMES:  # warm-up, not counted
                contender = found[name]
                wrk(contender.base_url + contender.path(scenario), scripts[name, scenario],
                    connections, 1)  # fmt: skip
            for rep in range(args.reps):
                for name in NAMES:
                    contender = found[name]
                    result = wrk(
                        contender.base_url + contender.path(scenario),
                        scripts[name, scenario],
                        connections,
                        args.seconds,
                    )
                    print(f"  {measure} rep {rep + 1} {name}: {result}", flush=True)
                    if result.bad_responses:
                        notes["bad_responses"][f"{name} {measure}"] = result.bad_responses  # type: ignore[index]
                    if measure == "lat":
                        samples.setdefault((name, "p50_ms"), []).append(result.p50_ms)
                        samples.setdefault((name, "p99_ms"), []).append(result.p99_ms)
                    else:
                        samples.setdefault((name, measure), []).append(result.requests_per_s)
        for (name, measure), values in samples.items():
            results[name][measure] = statistics.median(values)
        nominal = (c.EVENTS) * float(os.environ.get("BENCH_DELAY_S", "0.1"))
        for name in NAMES if "long" in args.measures else []:
            contender = found[name]
            with PeakRss(contender.pid) as rss:
                outcome = long_streams(
                    contender.base_url + contender.path("slow"),
                    contender.body("slow"),
                    contender.headers,
                    args.streams,
                    nominal,
                    args.ramp,
                )
            print(f"  long streams {name}: {outcome}, peak RSS {rss.peak_mb:.0f} MB", flush=True)
            results[name]["ttfb_p50_ms"] = float(outcome["ttfb_p50_ms"] or 0)
            results[name]["ttfb_p99_ms"] = float(outcome["ttfb_p99_ms"] or 0)
            results[name]["rss_mb"] = rss.peak_mb
            results[name]["completed"] = float(outcome["completed"] or 0)
            results[name]["on_time"] = float(outcome["on_time"] or 0)
        notes["load_after"] = os.getloadavg()[0]
        if args.profile:
            notes["profile"] = profile(found["gateway-sqlite"], scripts["gateway-sqlite", "json"],
                                       args.seconds, directory)  # fmt: skip
    return results, notes


def profile(contender: Contender, script: Path, seconds: float, directory: Path) -> list[str]:
    """py-spy on the gateway under the non-streamed load, sampling only the thread that holds
    the GIL (where Python spends CPU): the functions with the largest inclusive share, minus the
    server's bootstrap frames that every sample shares."""
    py_spy = shutil.which("py-spy") or str(c.BIN / "py-spy")
    raw = directory / "profile.txt"
    recorder = subprocess.Popen(
        [py_spy, "record", "--pid", str(contender.pid), "--subprocesses", "--rate", "250",
         "--duration", str(int(seconds) + 2), "--format", "raw", "--output", str(raw), "--gil"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wrk(contender.base_url + contender.path("json"), script, 64, seconds)
    recorder.wait(timeout=seconds + 60)
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
    return [f"{100 * n / max(1, total):5.1f}%  {name}" for name, n in shown[:30]]


# -- the table ------------------------------------------------------------------------------------
ROWS = [
    ("rps", "non-streamed req/s, 64 connections", "{:,.0f}"),
    ("p50_add", "added latency p50, 1 connection (ms)", "{:.2f}"),
    ("p99_add", "added latency p99, 1 connection (ms)", "{:.2f}"),
    ("sse", "SSE streams/s (50 events), 64 connections", "{:,.0f}"),
    ("events", "SSE events/s", "{:,.0f}"),
    ("anth", "Anthropic stream streams/s (gateway: → OpenAI)", "{:,.0f}"),
    ("ttfb_p50_ms", "1000 long streams: TTFB p50 (ms)", "{:.1f}"),
    ("ttfb_p99_ms", "1000 long streams: TTFB p99 (ms)", "{:.1f}"),
    ("rss_mb", "1000 long streams: peak RSS (MB)", "{:.0f}"),
    ("complete", "1000 long streams: complete / on time", "{}"),
]


def derived(results: Results) -> Results:
    up = results["upstream"]
    out: Results = {}
    for name, values in results.items():
        row = dict(values)
        row["p50_add"] = values.get("p50_ms", 0) - up.get("p50_ms", 0)
        row["p99_add"] = values.get("p99_ms", 0) - up.get("p99_ms", 0)
        row["events"] = values.get("sse", 0) * c.EVENTS
        out[name] = row
    return out


def table(results: Results, streams: int) -> str:
    rows = derived(results)
    lines = [
        "| measure | " + " | ".join(TITLES[n] for n in NAMES) + " |",
        "| --- |" + " ---: |" * len(NAMES),
    ]
    for key, title, fmt in ROWS:
        cells = []
        for name in NAMES:
            if key == "complete":
                cells.append(
                    f"{rows[name].get('completed', 0):.0f} / {rows[name].get('on_time', 0):.0f}"
                )
                continue
            value = rows[name].get(key, 0.0)
            cell = fmt.format(value)
            if name.startswith("gateway") and key not in ("p50_add", "p99_add"):
                ratios = [f"{value / rows[ref][key]:.2f}x {ref}" for ref in ("nginx", "floor")
                          if rows[ref].get(key)]  # fmt: skip
                cell += f" ({', '.join(ratios)})" if ratios else ""
            cells.append(cell)
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    del streams
    return "\n".join(lines)


def targets(results: Results, streams: int) -> list[str]:
    g = derived(results)["gateway-sqlite"]
    floor = results["floor"]
    checks = [
        ("non-streamed ≥ 4,000 req/s", g.get("rps", 0.0), 4000, True),
        ("non-streamed ≥ 0.7 x floor", g.get("rps", 0.0), 0.7 * floor.get("rps", 0), True),
        ("stretch: non-streamed ≥ floor", g.get("rps", 0.0), floor.get("rps", 0), True),
        ("added latency p50 ≤ 0.5 ms", g.get("p50_add", 0.0), 0.5, False),
        ("added latency p99 ≤ 1 ms", g.get("p99_add", 0.0), 1.0, False),
        ("SSE relay ≥ 1,800 streams/s", g.get("sse", 0.0), 1800, True),
        ("Anthropic → OpenAI ≥ 1,400 streams/s", g.get("anth", 0.0), 1400, True),
        ("1000 streams: TTFB p99 ≤ 100 ms", g.get("ttfb_p99_ms", 0.0), 100, False),
        ("stretch: TTFB p99 ≤ 50 ms", g.get("ttfb_p99_ms", 0.0), 50, False),
        ("1000 streams: RSS ≤ 160 MB", g.get("rss_mb", 0.0), 160, False),
        (f"every one of {streams} streams complete on time", g.get("on_time", 0.0), streams, True),
    ]
    out = []
    for title, value, limit, higher in checks:
        met = value >= limit if higher else value <= limit
        gap = "" if met or not limit else f", missed by {abs(value - limit) / limit:.0%}"
        out.append(f"- {title}: {value:,.2f} → {'met' if met else 'MISSED'}{gap}")
    return out


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
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
        f"Linux {platform.release()}, {os.cpu_count()} cores "
        f"({cpu_model()})"
    )


def section(results: Results, notes: dict[str, object], args: argparse.Namespace) -> str:
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    profile_lines = notes.get("profile") or []
    bad = notes.get("bad_responses") or {}
    return "\n".join(
        [
            START,
            "## Side by side: gateway vs nginx vs the stack floor",
            "",
            f"Measured {today} with `make bench` (= `.venv/bin/python -m "
            f"loadtests.bench.side_by_side --seconds {args.seconds} --reps {args.reps} "
            f"--streams {args.streams} --ramp {args.ramp} --write-docs"
            f"{' --profile' if args.profile else ''}`).",
            f"Versions: {versions()}.",
            f"Load average (1 min) before the run {notes['load_before']:.2f}, at its end "
            f"{notes.get('load_after', 0.0):.2f}: on 2 cores, anything above the benchmark's own "
            "~2 means other work shared the machine and the absolute figures are low.",
            "",
            "Setup: each contender runs one worker pinned to core 0; the fake upstream (nginx with "
            "fixed bodies), Redis, wrk and the long-stream client share core 1. Medians of "
            f"{args.reps} runs of {args.seconds} s (after a 1 s warm-up each). Added latency = the "
            "contender's wrk latency at 1 connection minus the upstream's own. Long streams: "
            f"{args.streams} concurrent streams of {c.EVENTS} events, 100 ms apart, started evenly "
            f"over {args.ramp:g} s (so all are open together from then on; TTFB is each stream's "
            "own, under the load of the others); RSS is the peak of the contender's whole process "
            "tree. The gateway runs with everything on (auth, limits, credit reservation, "
            "billing ledger, metrics in multiprocess mode, one JSON log line per request).",
            "",
            table(results, args.streams),
            "",
            "Targets (gateway, embedded store):",
            "",
            *targets(results, args.streams),
            "",
            *(
                [f"Bad responses seen (non-2xx or socket errors): {bad}", ""]
                if bad
                else ["No run had a non-2xx answer or a socket error.", ""]
            ),
            *(
                [
                    "Profile of the gateway worker under the non-streamed load (py-spy "
                    "--gil: samples of the thread holding the GIL; inclusive share by "
                    "function):",
                    "",
                    "```",
                    *profile_lines,  # type: ignore[misc]
                    "```",
                    "",
                ]
                if profile_lines
                else []
            ),
            END,
        ]
    )


def write_docs(text: str) -> None:
    current = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    if START in current and END in current:
        head, rest = current.split(START, 1)
        _, tail = rest.split(END, 1)
        updated = head + text + tail
    else:
        updated = current.rstrip("\n") + "\n\n" + text + "\n"
    DOCS.write_text(updated)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument(
        "--ramp", type=float, default=2.0, help="seconds over which the long streams start"
    )
    parser.add_argument("--profile", action="store_true", help="py-spy on the gateway worker")
    parser.add_argument(
        "--measures",
        type=lambda text: set(text.split(",")),
        default=set(MEASURES),
        help=f"a comma-separated subset of {','.join(MEASURES)} for a quick look (no --write-docs)",
    )
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    if not args.measures <= set(MEASURES):
        parser.error(f"--measures: choose among {','.join(MEASURES)}")
    if args.write_docs and args.measures != set(MEASURES):
        parser.error("--write-docs needs every measure")
    if not (1 <= args.seconds <= 60 and 1 <= args.reps <= 10 and 1 <= args.streams <= 5000):
        parser.error("bounds: --seconds 1..60, --reps 1..10, --streams 1..5000")
    for tool in ("nginx", "wrk", "taskset", "redis-server"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            parser.error(f"{tool} is missing (make bench installs it from Debian)")
    with tempfile.TemporaryDirectory(prefix="klawd-bench-") as tmp:
        results, notes = run(args, Path(tmp))
    text = section(results, notes, args)
    print(text)
    if args.write_docs:
        write_docs(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
