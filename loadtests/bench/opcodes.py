"""The Python bytecode a request runs, by function: the gateway against the bare pass-through.

    .venv/bin/python -m loadtests.bench.opcodes [--contenders gateway,bare] [--scenarios json,sse]
        [--requests 256] [--top 25] [--tree DIR] [--c-calls N]

In process, as request_cost and stream_cost drive the app: the ASGI app called directly (the
gateway with the bench's config, embedded store, everything on; or loadtests/bench/bare_app.py's
relay), its upstream the `make bench` nginx on loopback, 16 requests at a time as
worker_instructions' 16 connections; `receive()` after the body answers with a future, as
Granian's does. After a warm-up, `--requests` requests run under `sys.settrace` with
`frame.f_trace_opcodes = True` on every frame of the loop's thread: each opcode the eval loop
runs is counted once, for its code object (its own count) and for every code object on the
traced stack at that moment (its inclusive count; a frame's recursion counted once). Printed per
request: the total, the files, and the `--top` functions by own and by inclusive count, with how
many times each frame was entered (a coroutine's resumptions are entries too); for the gateway,
also by phase of the request path (loadtests/bench/phases.py's, the innermost phase function on
the stack: the opcodes of the metrics a settlement records are "metrics").

What it hides: C (uvloop, the asyncio Task's step, orjson, msgspec, `_core`, httptools, aiohttp's
compiled parser, multidict, yarl) runs no bytecode and is not in the counts, but the Python it
calls back is; Granian (Rust) is replaced by this driver, whose own frames are not counted; the
store's and the request log's writer threads are not traced; the RESUME that begins each entry
has no opcode event (counted here, one per entry), nor do the two opcodes that make a coroutine
(RETURN_GENERATOR, POP_TOP: not counted); timer-driven work (the metrics flush, the ledger's
batches) lands in whichever requests it runs beside (a few opcodes per request, not the same in
every run); the app's search for its server's listening socket (none here) is stopped.
`--c-calls N`: one more pass under `sys.setprofile` counting C calls by name per request (the
top N), what the opcodes leave out.
A count, not a timing: the same code gives the same count, so it shows what a change removes
from the eval loop (worker_instructions' and callgrind's `_PyEval_EvalFrameDefault` self cost).

`--tree DIR`: another checkout's `gateway` package (with its built `_core`) instead.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import CodeType, FrameType
from typing import Any

if "--tree" in sys.argv:
    sys.path.insert(0, str(Path(sys.argv[sys.argv.index("--tree") + 1]).resolve()))

import orjson
import uvloop

from loadtests.bench.asgi_scope import http_scope
from loadtests.bench.phases import ORDER, PhaseCounter

CONCURRENCY = 16
WARM_UP = 64
MESSAGES = [{"role": "user", "content": "Say hello to the benchmark."}]
HERE = __file__


class OpcodeCounter:
    """Opcodes run per code object while installed (`with counter:`), on this thread; frames of
    code in `skip_file` are not traced (their callees are)."""

    def __init__(self, skip_file: str = HERE, phases: PhaseCounter | None = None) -> None:
        self.skip_file = skip_file
        # `phases`: each opcode also counted for the phase of the request path it runs in
        # (loadtests/bench/phases.py: the innermost phase function on the stack, else by file)
        self.phases = phases
        self.by_phase: Counter[str] = Counter()
        self._phase = ""
        self.own: Counter[CodeType] = Counter()
        self.inclusive: Counter[CodeType] = Counter()
        self.entries: Counter[CodeType] = Counter()
        self.total = 0
        self._stack: list[tuple[FrameType, int, str]] = []
        self._depth: Counter[CodeType] = Counter()

    def __enter__(self) -> OpcodeCounter:
        sys.settrace(self._call)
        return self

    def __exit__(self, *_: object) -> None:
        sys.settrace(None)
        self._stack.clear()
        self._depth.clear()

    def _call(self, frame: FrameType, event: str, arg: Any) -> Callable[..., Any] | None:
        code = frame.f_code
        if code.co_filename in (self.skip_file, HERE):  # (this module's: the counter's exit)
            return None
        frame.f_trace_lines = False
        frame.f_trace_opcodes = True
        self.entries[code] += 1
        self._depth[code] += 1
        if self.phases is not None:
            self._phase = self.phases._phase(frame)
        self._stack.append((frame, self.total, self._phase))
        # The RESUME that begins each entry (a call, a coroutine's resumption) runs before
        # the frame's trace function is set: no opcode event for it.
        self.total += 1
        self.own[code] += 1
        self.by_phase[self._phase] += 1
        return self._local

    def _local(self, frame: FrameType, event: str, arg: Any) -> Callable[..., Any]:
        if event == "opcode":
            self.total += 1
            self.own[frame.f_code] += 1
            self.by_phase[self._phase] += 1
        elif event == "return":
            # Unwind to this frame (a frame entered before the counter was installed has no
            # entry: nothing to pop for it).
            for index in range(len(self._stack) - 1, -1, -1):
                if self._stack[index][0] is frame:
                    for left, start, _ in self._stack[index:][::-1]:
                        code = left.f_code
                        self._depth[code] -= 1
                        if not self._depth[code]:  # the outermost of a recursion
                            self.inclusive[code] += self.total - start
                    del self._stack[index:]
                    self._phase = self._stack[-1][2] if self._stack else ""
                    break
        return self._local

    def report(self, requests: int, top: int) -> list[str]:
        lines = [f"  {self.total / requests:9.1f} opcodes per request"]
        if self.phases is not None:
            lines.append("  by phase (loadtests/bench/phases.py):")
            lines += [
                f"    {self.by_phase[phase] / requests:8.1f}  {phase}"
                for phase in ORDER
                if self.by_phase[phase]
            ]
        files: Counter[str] = Counter()
        for code, count in self.own.items():
            files[name_of(code, with_function=False)] += count
        lines.append("  by file (own):")
        lines += [f"    {n / requests:8.1f}  {f}" for f, n in files.most_common(top)]
        lines.append("  by function, own (opcodes, entries per request):")
        lines += [
            f"    {n / requests:8.1f}  {self.entries[code] / requests:6.2f}  {name_of(code)}"
            for code, n in self.own.most_common(top)
        ]
        lines.append("  by function, inclusive:")
        lines += [
            f"    {n / requests:8.1f}  {self.entries[code] / requests:6.2f}  {name_of(code)}"
            for code, n in self.inclusive.most_common(top)
        ]
        return lines


class CCallCounter:
    """C functions called per name while installed (`sys.setprofile`), on this thread."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def __enter__(self) -> CCallCounter:
        sys.setprofile(self._event)
        return self

    def __exit__(self, *_: object) -> None:
        sys.setprofile(None)

    def _event(self, frame: FrameType, event: str, arg: Any) -> None:
        if event == "c_call":
            owner = getattr(arg, "__self__", None)
            kind = "" if owner is None or isinstance(owner, type(sys)) else type(owner).__name__
            module = getattr(arg, "__module__", None) or ""
            self.calls[f"{module or kind}.{arg.__qualname__}".lstrip(".")] += 1


def name_of(code: CodeType, with_function: bool = True) -> str:
    path = code.co_filename
    for marker in ("/site-packages/", "/gateway/", "/loadtests/"):
        if marker in path:
            path = marker.strip("/") + "/" + path.split(marker, 1)[1]
            if marker == "/site-packages/":
                path = path.split("/", 1)[1]
            break
    if not with_function:
        return path
    return f"{path}:{code.co_firstlineno} {code.co_qualname}"


class Driver:
    """Requests through an ASGI app in process; `receive()` after the body is a future (as
    Granian's), resolved with `http.disconnect` once the answer has ended."""

    def __init__(self, app: Any, state: dict[str, Any], path: str, headers: list[Any]) -> None:
        self.app, self.state, self.path, self.headers = app, state, path, headers

    async def request(self, body: bytes) -> int:
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[dict[str, Any]] = loop.create_future()
        first = True
        status = 0

        def receive() -> asyncio.Future[dict[str, Any]]:
            nonlocal first
            if first:
                first = False
                message: asyncio.Future[dict[str, Any]] = loop.create_future()
                message.set_result({"type": "http.request", "body": body, "more_body": False})
                return message
            return ended

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif not message.get("more_body") and not ended.done():
                ended.set_result({"type": "http.disconnect"})

        scope = http_scope("POST", self.path, self.headers, body, self.state)
        await self.app(scope, receive, send)
        return status

    async def rounds(self, body: bytes, requests: int) -> None:
        """`requests` requests, CONCURRENCY at a time (tasks of this module's own code, not
        asyncio.gather's Python, whose callbacks would be counted)."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        left = CONCURRENCY

        async def one() -> None:
            nonlocal left
            try:
                for _ in range(requests // CONCURRENCY):
                    status = await self.request(body)
                    if status != 200:
                        raise RuntimeError(f"status {status}")
            except Exception as exc:
                if not done.done():
                    done.set_exception(exc)
            left -= 1
            if not left and not done.done():
                done.set_result(None)

        tasks = [loop.create_task(one()) for _ in range(CONCURRENCY)]
        try:
            await done
        finally:
            for task in tasks:
                task.cancel()


def body_for(scenario: str, model: str) -> bytes:
    payload: dict[str, Any] = {"model": model, "messages": MESSAGES, "max_tokens": 64}
    if scenario != "json":
        payload["stream"] = True
    return orjson.dumps(payload)


async def measure(
    name: str, scenario: str, upstream: str, directory: Path, args: argparse.Namespace
) -> None:
    from loadtests.bench import contenders as c
    from loadtests.bench.metering_bench import Harness

    if name == "bare":
        from loadtests.bench.bare_app import BareRelay

        class BareHarness(Harness):  # metering_bench's lifespan driver, on the relay
            def __init__(self, app: BareRelay) -> None:
                self.app = app  # type: ignore[assignment]
                self.lifespan_state = {}
                self._lifespan_queue = asyncio.Queue()
                self._sent = asyncio.Queue()
                self._task = None

        relay = BareRelay()
        relay.upstream = upstream
        harness: Harness = BareHarness(relay)
        await harness.start()
        headers = [(b"content-type", b"application/json")]
        driver = Driver(relay, {}, c.upstream_path(scenario), headers)
    else:
        from loadtests.bench.request_cost import ConfiguredHarness
        from loadtests.bench.stream_cost import new_key

        config = directory / f"{name}-{scenario}.toml"
        store = f"sqlite:///{directory / name}-{scenario}.db"
        config.write_text(c.gateway_conf(8080, upstream, store))
        harness = ConfiguredHarness(config)
        await harness.start()
        for task in asyncio.all_tasks():
            # It looks for the server's listening socket for 30 s (none here: no server), a
            # scan of the process's descriptors each 50 ms: a served worker's is done at once.
            if task.get_name() == "klawd-listener":
                task.cancel()
        key = await new_key(harness)
        headers = [(b"authorization", f"Bearer {key}".encode()),
                   (b"content-type", b"application/json")]  # fmt: skip
        driver = Driver(harness.app, harness.lifespan_state, "/v1/chat/completions", headers)
    body = body_for(scenario, c.gateway_model(scenario))
    try:
        await driver.rounds(body, WARM_UP)
        await asyncio.sleep(0.1)
        counter = OpcodeCounter(phases=PhaseCounter() if name != "bare" else None)
        with counter:
            await driver.rounds(body, args.requests)
        print(f"{name} {scenario}:", flush=True)
        print("\n".join(counter.report(args.requests, args.top)), flush=True)
        if args.c_calls:
            calls = CCallCounter()
            with calls:
                await driver.rounds(body, args.requests)
            print(f"  C calls per request: {sum(calls.calls.values()) / args.requests:.1f}")
            for called, n in calls.calls.most_common(args.c_calls):
                print(f"    {n / args.requests:7.2f}  {called}")
    finally:
        await harness.stop()


async def main(args: argparse.Namespace) -> None:
    from loadtests.bench import contenders as c

    directory = Path(tempfile.mkdtemp(prefix="klawd-opcodes-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)  # as `klawd serve` runs it
    port = c.free_port()
    upstream = c.nginx(c.upstream_conf(directory, port), directory, "upstream", c.CLIENT_CORE)
    try:
        c.wait_for(lambda: _listening(port), "upstream")
        for scenario in args.scenarios.split(","):
            for name in args.contenders.split(","):
                await measure(name, scenario, f"http://127.0.0.1:{port}", directory, args)
    finally:
        c.stop(upstream)


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contenders", default="gateway,bare", help="gateway, bare")
    parser.add_argument("--scenarios", default="json,sse", help="json, sse, ...")
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--tree", type=Path, help="another checkout's gateway package")
    parser.add_argument("--c-calls", type=int, default=0, help="also C calls by name (top N)")
    parsed = parser.parse_args()
    if parsed.requests < CONCURRENCY or parsed.requests % CONCURRENCY:
        parser.error(f"--requests: a positive multiple of {CONCURRENCY}")
    uvloop.run(main(parsed))
