"""Where the CPU of a traced request goes, stage by stage, per request of two spans (a server span
and a client span, as the gateway's seams make them).

    .venv/bin/python -m loadtests.bench.span_cost [--requests 4096] [--reps 5] [--before DIR]
        [--instructions]

Stages: in the gateway's process, its span bookkeeping on the request path (the two spans
started, filled and ended with the SDK's sampler and id generator: gateway/tracing/otel.py) and
the msgpack frames of their rows (gateway/tracing/pipe.py, `BATCH_SPANS` rows a frame; since
the Rust span recorder each row is written into its frame as the span ends, so the frames'
stage is in the bookkeeping's and the "frames" stage is only the last frame taken); in the
exporter child (gateway/tracing/exporter_child.py), each frame decoded and made the SDK's span
objects (`SpanMaker.make`), their OTLP protobuf encoding by the official exporter's encoder
(`encode_spans(...).SerializePartialToString()`, what `OTLPSpanExporter.export` does first),
and the whole of the child's work per frame: `OTLPSpanExporter.export(maker.make(frame))`, its
encoding and its HTTP POST to an OTLP/HTTP sink (nginx answering 200, on the other core).

Each tree is measured in its own process (`--tree DIR` imports that checkout's `gateway`
package), and with `--before DIR` the two trees alternate, round by round, in the same run, so
the shared machine's load falls on both alike; figures are medians of the rounds' CPU time
(`time.process_time`). `--instructions` counts instructions instead (valgrind's callgrind:
repeatable whatever the load): each tree is run three times, with no stage, with its gateway
stages over `--requests` requests, and with its child's whole work over as many, and the
differences are divided by the requests.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if "--tree" in sys.argv:
    sys.path.insert(0, str(Path(sys.argv[sys.argv.index("--tree") + 1]).resolve()))

import msgspec
import orjson

from loadtests.bench import contenders as c

HERE = Path(__file__).resolve().parents[2]
STAGES = [
    ("bookkeeping", "gateway: span bookkeeping on the request path"),
    ("frames", "gateway: msgpack frames for the exporter child"),
    ("make", "child: frames decoded, the SDK's span objects made"),
    ("encode", "child: OTLP protobuf encoding (the exporter's encoder)"),
    ("export", "child: all of it, OTLPSpanExporter.export with its POST"),
]


class Tree:
    """The imported tree's tracing parts, its rows kept in memory instead of sent to a child."""

    def __init__(self, sink: str) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource

        from gateway.requestlog import RequestRecord
        from gateway.routing.catalog import CatalogEntry
        from gateway.settings import ModelSettings, ProviderSettings, TelemetrySettings
        from gateway.tracing import pipe
        from gateway.tracing.exporter_child import SpanMaker
        from gateway.tracing.otel import Tracing

        self.record = RequestRecord
        self.target = CatalogEntry(
            ModelSettings(id="openai/gpt-4o", provider="openai", upstream_model="gpt-4o"),
            ProviderSettings(kind="openai", base_url="http://127.0.0.1:9/v1"),
            None,
        )
        # an endpoint nothing listens on: the pipe to the exporter child is closed (and the
        # child ends) before anything is sent
        self.tracing = Tracing(
            TelemetrySettings(otlp_endpoint="http://127.0.0.1:9", sample_ratio=1.0)
        )
        self.tracing.pipe.shutdown()
        self.rows: list[Any] = []
        self.batch: int = pipe.BATCH_SPANS
        self.recorder = getattr(self.tracing, "recorder", None)
        if self.recorder is None:  # a tree before the Rust recorder: rows are tuples
            self.tracing.pipe.add = self.rows.append  # type: ignore[method-assign]
            self.encode_frame = pipe._encode
        else:  # the recorder writes each row into its frame: a full frame is taken as is
            recorder = self.recorder
            self.tracing.pipe.attend = lambda: self.rows.append(recorder.take()[1])  # type: ignore[method-assign,index]
            self.encode_frame = self._frames
        self.maker = SpanMaker(Resource.create({"service.name": "klawd-gateway"}))
        self.exporter = OTLPSpanExporter(endpoint=sink)

    def drain(self) -> None:
        """No row kept from before (nor, with the recorder, left in its frame)."""
        self.rows.clear()
        if self.recorder is not None:
            self.recorder.take()

    def _frames(self, rows: list[Any]) -> bytes:
        """With the recorder: the frames it filled (kept in `rows`), or the rest it holds."""
        if rows:
            return bytes(rows[0])
        taken = self.recorder.take() if self.recorder is not None else None
        return b"" if taken is None else bytes(taken[1])

    def one_request(self) -> None:
        """A request's two spans, as the gateway's seams make them."""
        tracing = self.tracing
        record = self.record("req_bench", "POST")
        tracing.start_request(record, "/v1/chat/completions", [])
        span = tracing.start_attempt(record, self.target, 0)
        tracing.end_attempt(record, span, None)
        record.route, record.status = "/v1/chat/completions", 200
        record.model, record.provider, record.provider_kind = "openai/gpt-4o", "openai", "openai"
        record.account_id, record.request_model = "acct_x", "openai/gpt-4o"
        record.finish_reasons = ["stop"]
        record.prompt_tokens, record.completion_tokens, record.cost_usd = 12, 4, 0.00002
        tracing.end_request(record)

    def requests(self, count: int) -> list[bytes]:
        """`count` requests' spans through the gateway's seams; their rows framed."""
        self.drain()
        for _ in range(count):
            self.one_request()
        rows = self.rows
        if self.recorder is not None:
            return [*rows, *([rest] if (rest := self._frames([])) else [])]
        return [
            self.encode_frame(rows[i : i + self.batch]) for i in range(0, len(rows), self.batch)
        ]

    def export(self, frames: list[bytes]) -> None:
        decode = msgspec.msgpack.decode
        for frame in frames:
            self.exporter.export(self.maker.make(decode(frame)))


def timed(tree: Tree, requests: int) -> dict[str, float]:
    """µs of CPU per request of each stage, for the imported tree."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    tree.export(tree.requests(200))  # warm-up
    out = {}
    tree.drain()
    started = time.process_time()
    for _ in range(requests):
        tree.one_request()
    out["bookkeeping"] = time.process_time() - started
    rows, batch = tree.rows, tree.batch
    started = time.process_time()
    if tree.recorder is not None:  # written row by row during the bookkeeping: the last taken
        frames = [*rows, *([rest] if (rest := tree._frames([])) else [])]
    else:
        frames = [tree.encode_frame(rows[i : i + batch]) for i in range(0, len(rows), batch)]
    out["frames"] = time.process_time() - started
    started = time.process_time()
    made = [tree.maker.make(msgspec.msgpack.decode(frame)) for frame in frames]
    out["make"] = time.process_time() - started
    started = time.process_time()
    for spans in made:
        encode_spans(spans).SerializePartialToString()
    out["encode"] = time.process_time() - started
    del made
    started = time.process_time()
    tree.export(frames)
    out["export"] = time.process_time() - started
    return {name: seconds / requests * 1e6 for name, seconds in out.items()}


def run_stages(tree: Tree, gateway: int, child: int) -> None:
    """For --instructions: `gateway` requests through the gateway's stages, then the child's
    whole work over `child` requests' frames (made beforehand in every run alike)."""
    frames = tree.requests(max(child, 256))  # in every run: the same count
    tree.export(tree.requests(256))  # warm-up
    if gateway:
        tree.requests(gateway)
    if child:
        tree.export(frames)


def in_tree(tree: Path, sink: str, args: list[str], valgrind: bool = False) -> str:
    command = [sys.executable, "-m", "loadtests.bench.span_cost", "--tree", str(tree),
               "--sink", sink, *args]  # fmt: skip
    if valgrind:
        command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *command]
    result = subprocess.run(
        command, capture_output=True, text=True, check=True, timeout=1800, cwd=HERE,
        env=os.environ | {"PYTHONHASHSEED": "0"},
    )  # fmt: skip
    return result.stderr if valgrind else result.stdout


def instructions(tree: Path, sink: str, requests: int) -> dict[str, float]:
    counts = []
    for gateway, child in ((0, 0), (requests, 0), (0, requests)):
        text = in_tree(tree, sink, ["--run", str(gateway), str(child)], valgrind=True)
        found = re.search(r"Collected : (\d+)", text)
        if found is None:
            raise RuntimeError(f"no instruction count from callgrind: {text[-500:]}")
        counts.append(int(found.group(1)))
    return {
        "gateway": (counts[1] - counts[0]) / requests,
        "child": (counts[2] - counts[0]) / requests,
    }


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4096)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--before", type=Path, help="another checkout, measured alternately")
    parser.add_argument("--instructions", action="store_true", help="callgrind's counts")
    parser.add_argument("--tree", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--sink", help=argparse.SUPPRESS)
    parser.add_argument("--run", type=int, nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not (256 <= args.requests <= 100_000 and 1 <= args.reps <= 20):
        parser.error("bounds: --requests 256..100000, --reps 1..20")
    if args.sink:  # inside one tree's process
        tree = Tree(args.sink)
        if args.run:
            run_stages(tree, *args.run)
        else:
            print(orjson.dumps(timed(tree, args.requests)).decode())
        return 0
    trees = {"after": HERE}
    if args.before is not None:
        trees["before"] = args.before.resolve()
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="klawd-span-cost-") as tmp:
        from loadtests.bench.trace_cache_bench import sink_conf

        port = c.free_port()
        sink = c.nginx(sink_conf(Path(tmp), port), Path(tmp), "sink", c.CLIENT_CORE)
        url = f"http://127.0.0.1:{port}/v1/traces"
        try:
            c.wait_for(lambda: _listening(port), "sink")
            if args.instructions:
                counted = {
                    name: instructions(tree, url, args.requests) for name, tree in trees.items()
                }
            else:
                rounds: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
                for rnd in range(args.reps):
                    order = list(trees.items())[:: 1 if rnd % 2 == 0 else -1]
                    for name, path in order:
                        measured = in_tree(path, url, ["--requests", str(args.requests)])
                        rounds[name].append(orjson.loads(measured))
        finally:
            c.stop(sink)
    load.append(os.getloadavg()[0])
    print(f"load average (1 min) at the start and the end: {load[0]:.1f}, {load[1]:.1f}")
    names = list(trees)
    if args.instructions:
        print(f"instructions per request of two spans (callgrind, {args.requests} requests)")
        print("| stage | " + " | ".join(names) + " |")
        for stage, label in (("gateway", "gateway: bookkeeping and frames"),
                             ("child", "exporter child: made, encoded, POSTed")):  # fmt: skip
            print(f"| {label} | " + " | ".join(f"{counted[n][stage]:,.0f}" for n in names) + " |")
        return 0
    print(
        f"µs CPU per request of two spans, median of {args.reps} rounds ({args.requests} requests)"
    )
    print("| stage | " + " | ".join(names) + " |")
    for stage, label in STAGES:
        cells = [statistics.median(r[stage] for r in rounds[n]) for n in names]
        print(f"| {label} | " + " | ".join(f"{x:.1f}" for x in cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
