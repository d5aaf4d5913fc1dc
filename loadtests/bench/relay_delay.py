"""Each event's relay delay on a paced stream: the gateway against the bare pass-through.

    .venv/bin/python -m loadtests.bench.relay_delay [--streams 256] [--seconds 4] [--reps 2]
        [--interval 0.02] [--contenders direct,bare,gateway-sqlite,gateway-redis] [--before DIR]
        [--upstream paced|nginx] [--ramp S] [--keepalive] [--cut S]

The upstream is paced_upstream.py (50 events `--interval` apart, each line its own chunk, each
stream on its own schedule, each content delta stamped in microseconds when written) on core 1
with the client (long_streams.py, `"events": true`); each contender runs one worker on core 0,
all started up front. Each round runs every contender once (the order reversed every other
round): `--streams` streams opened over `--ramp` s (1; 0: all at once, as wrk opens them), each
reopened as it ends, for `--seconds`. Per
contender and round: the relay delay (the client's read of a whole event minus the upstream's
stamp) of every event written once all streams are open, p50 / p99 / max; the mean stream time
(request to last byte); the client's worst lag; the server's CPU per stream. `direct` is the
client straight to the upstream: what the client and the upstream add by themselves, on the
same core. Also the mean TTFB and stream time of each round's first wave (its first
`--streams` streams, opened together with `--ramp 0`) and of the streams after it apart, and,
over nginx, the upstream connections the round opened: `--cut` closes every stream mid-way
before each round, as wrk's window end does before the side-by-side's turns (decision 0012,
19zzzzx: the gateway then opens a new upstream connection for each of its first wave's
streams, the bare pass-through none). Bounded: each round by `--seconds` + the streams'
timeout, every process stopped at the end. Decision 0012, 19zzzzf.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson

from loadtests.bench import contenders as c
from loadtests.bench.long_run import listening
from loadtests.bench.measure import long_streams, nginx_accepts, tree_cpu_s

NAMES = ["direct", "bare", "gateway-sqlite", "gateway-redis"]
BEFORE = "gateway-before"
EVENTS = 50
FIGURES = (
    "relay_p50_ms",
    "relay_p99_ms",
    "relay_max_ms",
    "stream_ms_mean",
    "ttfb_ms_mean",
    "client_lag_max_ms",
    # the first `--streams` streams opened (all at once with `--ramp 0`) and the rest apart
    "ttfb_ms_first_mean",
    "ttfb_ms_later_mean",
    "stream_ms_first_mean",
    "stream_ms_later_mean",
    "upstream_accepted",
)


@contextlib.contextmanager
def started(
    directory: Path,
    names: list[str],
    interval_s: float,
    before: Path | None,
    nginx: bool = False,
) -> Iterator[tuple[str, dict[str, tuple[str, dict[str, str], str, int | None]]]]:
    """The upstream and every contender, up front: the upstream's base URL, and name -> (url,
    headers, model, server pid).
    `nginx`: the side-by-side's upstream instead (its `lines20` location, 20 ms apart whatever
    `interval_s`; its stamps are its cached clock in ms, coarser than the relays' delay)."""
    processes: list[subprocess.Popen[bytes]] = []
    try:
        up_port = c.free_port()
        upstream = f"http://127.0.0.1:{up_port}"
        if nginx:
            conf = c.upstream_conf(directory, up_port)
            processes.append(c.nginx(conf, directory, "upstream", c.CLIENT_CORE))
        else:
            command = [sys.executable, "-m", "loadtests.bench.paced_upstream", str(up_port),
                       "--events", str(EVENTS), "--interval", str(interval_s),
                       "--stamp-us"]  # fmt: skip
            processes.append(c.pinned(c.CLIENT_CORE, command, directory / "upstream.log",
                                      {"PYTHONPATH": str(c.REPO)}))  # fmt: skip
        c.wait_for(lambda: listening(up_port), "the upstream")
        path = c.upstream_path("lines20")
        found: dict[str, tuple[str, dict[str, str], str, int | None]] = {}
        for name in names:
            port = c.free_port()
            base = f"http://127.0.0.1:{port}"
            if name == "direct":
                found[name] = (upstream + path, {}, "m", None)
                continue
            if name == "bare":
                server = c.bare(port, upstream, directory)
                processes.append(server)
                c.wait_for(lambda: listening(port), name)  # noqa: B023
                time.sleep(1)  # its lifespan: the session
                found[name] = (base + path, {}, "m", server.pid)
                continue
            store = f"sqlite:///{directory / (name + '.db')}"
            if name == "gateway-redis":
                redis_port = c.free_port()
                processes.append(c.redis_server(redis_port, directory,
                                                realtime=c.realtime_allowed()))  # fmt: skip
                store = f"redis://127.0.0.1:{redis_port}/0"
            source = before if name == BEFORE else None
            server = c.gateway(name, port, upstream, store, directory, source=source)
            processes.append(server)
            c.wait_for(lambda: httpx.get(f"{base}/readyz").status_code == 200, name)  # noqa: B023
            headers = {"authorization": f"Bearer {c.gateway_key(base)}"}
            found[name] = (base + "/v1/chat/completions", headers, c.gateway_model("lines20"),
                           server.pid)  # fmt: skip
        yield upstream, found
    finally:
        for process in reversed(processes):
            c.stop(process)


def stream_spec(
    url: str, headers: dict[str, str], model: str, streams: int, seconds: float, ramp_s: float,
    keepalive: bool,
) -> dict[str, object]:  # fmt: skip
    message = {"role": "user", "content": "Say hello to the benchmark."}
    body = {"model": model, "stream": True, "max_tokens": 64, "messages": [message]}
    return {
        "url": url,
        "body": orjson.dumps(body).decode(),
        "headers": headers,
        "count": streams,
        "ramp_s": ramp_s,
        "until_s": seconds,
        "timeout_s": 30.0,
        "events": True,
        "keepalive": keepalive,
    }


def one_round(spec: dict[str, object]) -> dict[str, object]:
    outcome: dict[str, object] = dict(long_streams(spec))
    outcome.pop("ttfb_ms", None)
    outcome.pop("late_by_second_ms", None)
    return outcome


def cut(spec: dict[str, object], cut_s: float, stream_s: float) -> None:
    """`spec`'s streams opened at once and each closed `cut_s` in, before its end, as wrk's
    window closes its connections at the end of a warm-up or a turn: a gateway cancels each
    such stream by closing its upstream connection (DESIGN: "If the client disconnects, the
    upstream request is cancelled at once"); the bare pass-through reads it on and keeps
    its connection. Then a stream's length (`stream_s`) for what is read on to end, as other
    contenders' turns pass between a warm-up and a turn in the side-by-side. Nothing
    measured: the round that follows is."""
    long_streams(spec | {"ramp_s": 0, "until_s": 0, "timeout_s": cut_s, "events": False})
    time.sleep(stream_s)


def summary(rounds: dict[str, list[dict[str, object]]], ref: str = "bare") -> list[str]:
    """Per contender, each figure's median over rounds (and each round's), and the gateways'
    relay p50 and p99 ÷ the `ref`'s, per round (each round's pair measured back to back)."""
    lines = []
    for name, outcomes in rounds.items():
        parts = []
        for figure in FIGURES:
            values = [float(o[figure]) for o in outcomes if o.get(figure) is not None]  # type: ignore[arg-type]
            if values:
                each = ", ".join(f"{v:.2f}" for v in values)
                parts.append(f"{figure} {statistics.median(values):.2f} ({each})")
        lines.append(f"{name}: " + "; ".join(parts))
    for name, outcomes in rounds.items():
        if name in ("direct", ref) or ref not in rounds:
            continue
        for figure in ("relay_p50_ms", "relay_p99_ms"):
            pairs = [
                float(mine[figure]) / float(theirs[figure])  # type: ignore[arg-type]
                for mine, theirs in zip(outcomes, rounds[ref], strict=False)
                if mine.get(figure) and theirs.get(figure)
            ]
            if pairs:
                each = ", ".join(f"{p:.2f}" for p in pairs)
                lines.append(f"{name} ÷ {ref}, {figure}: {statistics.median(pairs):.2f} ({each})")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--interval", type=float, default=0.02)
    parser.add_argument(
        "--ramp",
        type=float,
        default=1.0,
        help="the streams' starts spread over this many seconds (0: all at once, as wrk opens "
        "its connections: every stream's events then come in the same few milliseconds)",
    )
    parser.add_argument(
        "--contenders",
        type=lambda text: [n for n in [*NAMES, BEFORE] if n in text.split(",")],
        default=NAMES,
    )
    parser.add_argument("--before", type=Path, help=f"add {BEFORE}: this checkout's gateway")
    parser.add_argument(
        "--upstream",
        choices=("paced", "nginx"),
        default="paced",
        help="paced: paced_upstream.py (µs stamps, each stream on its own schedule); nginx: the "
        "side-by-side's `lines20` (ms stamps of its cached clock: its relay delays are coarse)",
    )
    parser.add_argument(
        "--keepalive",
        action="store_true",
        help="each slot's streams on one kept-alive connection, the next request sent as soon "
        "as the last answer ends (as wrk does); by default a connection per stream",
    )
    parser.add_argument(
        "--cut",
        type=float,
        default=0.0,
        help="before each round, every stream opened at once and closed this many seconds "
        "in (0: none), as wrk's window end closes its connections mid-stream; with "
        "`--upstream nginx` each round also counts the upstream connections it opened",
    )
    args = parser.parse_args()
    if args.before is not None and BEFORE not in args.contenders:
        args.contenders.append(BEFORE)
    if not (1 <= args.streams <= 2000 and 2 <= args.seconds <= 30 and 1 <= args.reps <= 10
            and 0.001 <= args.interval <= 1 and 0 <= args.ramp <= 10
            and 0 <= args.cut <= 5):  # fmt: skip
        parser.error(
            "bounds: --streams 1..2000, --seconds 2..30, --reps 1..10, --interval ≤ 1, "
            "--ramp 0..10, --cut 0..5"
        )
    rounds: dict[str, list[dict[str, object]]] = {name: [] for name in args.contenders}
    with (
        tempfile.TemporaryDirectory(prefix="klawd-relay-") as tmp,
        started(
            Path(tmp), args.contenders, args.interval, args.before, args.upstream == "nginx"
        ) as (upstream, found),
    ):
        counted = args.upstream == "nginx"
        for rnd in range(args.reps):
            order = list(found.items())
            for name, (url, headers, model, pid) in order[::-1] if rnd % 2 else order:
                cpu = tree_cpu_s(pid) if pid else 0.0
                spec = stream_spec(url, headers, model, args.streams, args.seconds,
                                   args.ramp, args.keepalive)  # fmt: skip
                if args.cut:
                    cut(spec, args.cut, EVENTS * args.interval)
                accepts = nginx_accepts(upstream) if counted else 0
                outcome = one_round(spec)
                if counted:  # (less this count's own connection)
                    outcome["upstream_accepted"] = nginx_accepts(upstream) - accepts - 1
                if pid:
                    used = tree_cpu_s(pid) - cpu
                    outcome["server_cpu_us_per_stream"] = used * 1e6 / max(1, outcome["streams"])  # type: ignore[call-overload]
                rounds[name].append(outcome)
                print(f"round {rnd + 1} {name}: {orjson.dumps(outcome).decode()}", flush=True)
    print("\n".join(summary(rounds)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
