"""What one more upstream read costs a stream: the same stream read in more or fewer pieces.

    .venv/bin/python -m loadtests.bench.read_cost [--scenarios lines,anth] [--groups 8,4,2,1]
        [--streams 32] [--detail N] [--instructions [--profile DIR]] [--tree DIR]
        [--route chat|messages|responses] 2>/dev/null

(the per-request JSON log goes to stderr.) In process, as stream_cost (the ASGI app driven
directly, embedded store, everything on), but its upstream is a paced one in the same event
loop: it answers every request with the bench's stream of that scenario
(loadtests/bench/contenders.py: each line its own HTTP chunk for `lines`, `anth` and `gemini`,
a chunk per event for `event`) written `group` HTTP chunks per write, and lets the loop turn a
few times between writes, so that the gateway reads each write by itself (the reads per stream
are counted and printed) and its relay has run before the next one. So a stream is read in
1 + ceil(chunks / group) reads (the head, then the body) whatever the machine's load, and the
difference between two groups' counts, divided by the difference of their reads, is what one
more read costs. One stream at a time.

Printed per stream, for each group: the reads, the relay's sends, Python calls by phase
(`phases.PhaseCounter`, as `stream_cost --phases`); `--detail N`: the N functions whose calls
differ most between two groups, per read of difference (what one more read calls). With
`--instructions`, callgrind's count of the gateway's own work, in one run under valgrind
(`--collect-atstart=no`): collected inside the request's coroutine steps (run through
`operator.call`, as `trace_share --request-path` does) and inside libuv's `uv__stream_io` (each
read of a socket: uvloop's callback, `data_received` and all they call), and dumped (counts
zeroed) at each `os.getppid()` (`--dump-before`), which the child calls only just before and
after each group's measured streams, after a warm-up of its own. Not counted: the loop's turn
between a read and the relay's step (epoll, the handle that wakes the task, the task's own
step in C), the fake upstream's writes, the server's side of a send (the driver's `send` is a
Python coroutine, counted: Granian's is `worker_instructions`'); the fake upstream's read of
each request is (the same in every group). `--profile DIR`: callgrind's dumps kept there
(`callgrind_annotate --inclusive=yes DIR/callgrind.read_cost.N`; N = 2, 4, ... are the groups'
measured streams in order). `--tree DIR`: another checkout's `gateway` package (with its built
`_core`) measured instead. `--route messages|responses`: the streams ask `/v1/messages` or
`/v1/responses` (stream_cost's `--route`): with `anth` the Messages route passes the Anthropic
stream through, with `lines` it translates an OpenAI one; the Responses route translates both.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

if "--tree" in sys.argv:  # another checkout's gateway package (with its built _core)
    sys.path.insert(0, str(Path(sys.argv[sys.argv.index("--tree") + 1]).resolve()))

from loadtests.bench import contenders as c

TURNS = 4  # loop turns between two writes: the read, the relay's wake, its step, one to spare
TIMEOUT_S = 1800
WARM_STREAMS = 8
TOGGLES = ["--toggle-collect=_operator_call", "--toggle-collect=uv__stream_io"]
# The C function of `os.getppid`: callgrind dumps its counts before each call (the child calls
# it only around each group's measured streams).
DUMP = "os_getppid"


def http_chunks(scenario: str) -> list[bytes]:
    """The scenario's body as the bench's nginx sends it: its HTTP chunks, the last one
    (`0\\r\\n\\r\\n`) included."""
    body, per_line, delay = c.STREAMS[scenario]
    if delay:
        raise SystemExit(f"{scenario}: a paced scenario (read_cost paces by itself)")
    events = {
        "openai": c.openai_events,
        "anthropic": c.anthropic_events,
        "anthropic-tools": c.anthropic_tool_events,
        "gemini": c.gemini_events,
    }[body]()
    pieces = [p for e in events for p in (e.splitlines(keepends=True) if per_line else [e])]
    return [b"%x\r\n%s\r\n" % (len(p), p) for p in pieces] + [b"0\r\n\r\n"]


HEAD = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/event-stream\r\n"
    b"Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n"
)


class PacedUpstream(asyncio.Protocol):
    """One upstream connection: each request's answer written `group` HTTP chunks at a time,
    TURNS turns of the loop apart (callbacks, no task: nothing of it runs in a counted step)."""

    writes: list[bytes]  # one stream's writes (set per group, before its streams)

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buffer[:end].lower()
        found = re.search(rb"content-length: *(\d+)", head)
        length = int(found.group(1)) if found else 0
        if len(self.buffer) < end + 4 + length:
            return
        self.buffer = self.buffer[end + 4 + length :]
        self.write(PacedUpstream.writes, 0, 0)

    def write(self, writes: list[bytes], index: int, turns: int) -> None:
        if turns:
            self.loop.call_soon(self.write, writes, index, turns - 1)
            return
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(writes[index])
        if index + 1 < len(writes):
            self.loop.call_soon(self.write, writes, index + 1, TURNS)


def writes_of(scenario: str, group: int) -> list[bytes]:
    chunks = http_chunks(scenario)
    return [HEAD] + [b"".join(chunks[i : i + group]) for i in range(0, len(chunks), group)]


async def serve(
    scenarios: list[str],
    groups: list[int],
    streams: int,
    mode: str,
    detail: int = 0,
    route: str = "chat",
) -> None:
    """`mode`: "calls" (reads, sends and Python calls per stream, printed) or "count" (the
    streams' steps through `operator.call`, for callgrind). `detail`: with "calls", the
    functions whose calls per stream differ most between two groups, per read of difference."""
    import gateway.providers.http_client as http_client
    from gateway.app import create_app
    from gateway.settings import load_settings
    from loadtests.bench import stream_cost
    from loadtests.bench.metering_bench import ADMIN, Harness
    from loadtests.bench.phases import PhaseCounter
    from loadtests.bench.trace_share import Counted

    loop = asyncio.get_running_loop()
    server = await loop.create_server(PacedUpstream, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reads = 0
    if mode == "calls":  # (before any connection is made: uvloop keeps the bound method)
        received = http_client._Connection.data_received

        def counted(conn: Any, data: bytes) -> None:
            nonlocal reads
            reads += 1
            received(conn, data)

        http_client._Connection.data_received = counted  # type: ignore[method-assign,assignment]

    directory = Path(tempfile.mkdtemp(prefix="klawd-read-cost-"))
    conf = c.gateway_conf(0, f"http://127.0.0.1:{port}", "")
    extra = conf[conf.index("[plans.bench]") :]
    harness = Harness(f"sqlite:///{directory / 'bench.db'}", extra)
    config = directory / "klawd.toml"
    config.write_text(f'[store]\nurl = "sqlite:///{directory / "bench.db"}"\n{extra}')
    harness.app = create_app(
        load_settings(config), {"KLAWD_ADMIN_TOKEN": ADMIN, "BENCH_UPSTREAM_KEY": "bench"}
    )
    await harness.start()
    try:
        driver = stream_cost.Driver(harness, await stream_cost.new_key(harness), route=route)
        app = harness.app
        for scenario in scenarios:
            model = c.gateway_model(scenario)
            last: tuple[int, float, Any] | None = None
            for group in groups:
                PacedUpstream.writes = writes_of(scenario, group)
                for _ in range(WARM_STREAMS):
                    await driver.stream(model)
                if mode == "count":
                    harness.app = Counted(app)
                    os.getppid()  # callgrind dumps here (--dump-before): the count starts
                    try:
                        for _ in range(streams):
                            await driver.stream(model)
                    finally:
                        os.getppid()  # and is dumped here
                        harness.app = app
                    continue
                before_reads, before_sends = reads, driver.sends
                counter = PhaseCounter()
                size = 0
                with counter.counting():
                    for _ in range(streams):
                        size += await driver.stream(model)
                per_read = (reads - before_reads) / streams
                print(
                    f"{scenario} group {group}: {len(PacedUpstream.writes)} writes, "
                    f"{per_read:.2f} reads, {(driver.sends - before_sends) / streams:.2f} sends, "
                    f"{size / streams:.0f} bytes out per stream",
                    flush=True,
                )
                print("\n".join(counter.table(streams, f"calls per stream ({scenario} {group})")))
                if detail and last is not None:
                    rows = per_read_detail(last, (group, per_read, counter), streams, detail)
                    print("\n".join(rows))
                last = (group, per_read, counter)
    finally:
        await harness.stop()
        server.close()


def per_read_detail(
    a: tuple[int, float, Any], b: tuple[int, float, Any], streams: int, top: int
) -> list[str]:
    """The calls that one more read makes, by function: (calls in `a` - calls in `b`) per
    read of difference, the `top` largest."""
    (group_a, reads_a, calls_a), (group_b, reads_b, calls_b) = a, b
    reads = (reads_a - reads_b) * streams
    names = set(calls_a.functions) | set(calls_b.functions)
    rows = sorted(((calls_a.functions[n] - calls_b.functions[n]) / reads, n) for n in names)
    rows = [row for row in rows if abs(row[0]) >= 0.05]
    rows.sort(key=lambda row: -abs(row[0]))
    head = f"  one read more ({group_b} -> {group_a} chunks a read), calls per read:"
    total = sum(n for n, _ in rows)
    return [head, f"    {total:6.2f}  in all (rows shown)"] + [
        f"    {n:6.2f}  {phase}: {name}" for n, (phase, name) in rows[:top]
    ]


def child(args: argparse.Namespace) -> None:
    import uvloop

    uvloop.run(serve(args.scenarios, args.groups, args.child, "count", route=args.route))


def count(
    scenarios: list[str],
    groups: list[int],
    streams: int,
    tree: str | None,
    profile: str | None,
    route: str = "chat",
) -> dict[tuple[str, int], int]:
    """Instructions counted in each (scenario, group)'s `streams` streams: one callgrind run,
    which dumps its counts (and starts afresh) at each `os.getppid()` (`--dump-before`), called
    by the child only before and after each group's measured streams."""
    with tempfile.TemporaryDirectory(prefix="klawd-read-cost-cg-") as tmp:
        directory = profile or tmp
        out = f"{directory}/callgrind.read_cost"
        command = [
            "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
            "--collect-atstart=no", *TOGGLES, f"--dump-before={DUMP}", sys.executable, "-m",
            "loadtests.bench.read_cost", "--child", str(streams), "--scenarios",
            ",".join(scenarios), "--groups", ",".join(map(str, groups)), "--route", route,
        ]  # fmt: skip
        if tree:
            command += ["--tree", tree]
        done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S)
        if done.returncode != 0:
            raise SystemExit(f"callgrind run failed:\n{done.stderr[-3000:]}")
        dumps = sorted(Path(directory).glob("callgrind.read_cost.*"), key=_dump_number)
        totals = [_total(dump) for dump in dumps]
    # dumps: 1 = up to the first group's measured streams, then (measured, the next warm-up)...
    measured = totals[1::2]
    keys = [(scenario, group) for scenario in scenarios for group in groups]
    if len(measured) < len(keys):
        raise SystemExit(f"callgrind wrote {len(dumps)} dumps for {len(keys)} groups")
    return dict(zip(keys, measured, strict=False))


def _dump_number(path: Path) -> int:
    found = re.search(r"\.(\d+)$", path.name)
    return int(found.group(1)) if found else 1 << 30  # the final dump (no number) last


def _total(dump: Path) -> int:
    found = re.search(r"^(?:summary|totals): (\d+)", dump.read_text(errors="replace"), re.M)
    return int(found.group(1)) if found else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scenarios", default="lines,anth", help="event, lines, anth, gemini, anthtools"
    )
    parser.add_argument("--groups", default="1,2,4,8", help="HTTP chunks per upstream write")
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--detail", type=int, default=0, help="a read's top N functions")
    parser.add_argument("--instructions", action="store_true", help="callgrind's counts too")
    parser.add_argument("--profile", help="with --instructions: keep callgrind's files here")
    parser.add_argument("--tree", help="another checkout's gateway package, measured instead")
    parser.add_argument(
        "--route", default="chat", help="chat, messages or responses: the route every stream asks"
    )
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.scenarios = args.scenarios.split(",")
    args.groups = [int(g) for g in args.groups.split(",")]
    if args.child is not None:
        child(args)
        return
    import uvloop

    import gateway

    print(f"gateway from {Path(gateway.__file__).parent}", flush=True)
    uvloop.run(serve(args.scenarios, args.groups, args.streams, "calls", args.detail, args.route))
    if not args.instructions:
        return
    counts = count(args.scenarios, args.groups, args.streams, args.tree, args.profile, args.route)
    for scenario in args.scenarios:
        chunks = len(http_chunks(scenario))
        per_stream = {group: counts[(scenario, group)] / args.streams for group in args.groups}
        for group in args.groups:
            print(
                f"{scenario} group {group}: {per_stream[group] / 1000:.1f}K instructions per "
                f"stream, {1 + math.ceil(chunks / group)} reads",
                flush=True,
            )
        pairs = zip(args.groups, args.groups[1:], strict=False)
        for a, b in pairs:
            extra = math.ceil(chunks / a) - math.ceil(chunks / b)
            cost = (per_stream[a] - per_stream[b]) / extra
            print(f"{scenario}: a read more ({b} -> {a} chunks a read): {cost:.0f} instructions")


if __name__ == "__main__":
    main()
