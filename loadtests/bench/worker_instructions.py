"""Instructions per request of a whole served worker under Granian, counted by callgrind.

    .venv/bin/python -m loadtests.bench.worker_instructions [--contenders gateway,bare]
        [--before DIR] [--scenarios json,sse] [--requests 1024] [--by-object] [--threads]
        [--keep DIR]

The worker as `make bench` runs it (`klawd serve` with the bench's config and the embedded
store, `gateway-redis` on a redis-server of its own (not under callgrind), or the bare-ASGI
pass-through on Granian), its upstream the bench's nginx, all under
`valgrind --tool=callgrind --trace-children=yes`: after a warm-up, the counters of this run's
processes are zeroed (`callgrind_control -z PID`, never another run's), `--requests` requests
over 16 keep-alive connections are made, and the counters dumped. The figure is the busiest
process's count (the worker) over the requests: every thread of it (the event loop, Granian's
I/O, the ledger's and the request log's), so what the in-process counts (`request_cost`,
`stream_instructions --request-path`) leave out is in it. A count, not a timing: what it misses
is the kernel's side (system calls, the GIL's hand-offs between threads), and timer-driven work
grows with valgrind's wall time (a few K per request). `--before DIR`: also that checkout's
gateway (its `gateway` package with its built `_core`), as side_by_side's. `--by-object`: the
count split by the library it ran in (libpython, `_core`, Granian, libc, SQLite, ...).
`--threads`: also split by thread (callgrind's `--separate-threads=yes`, one dump a thread),
each named by what it runs: the event loop (the busiest), the store's SQLite thread (the
ledger's batches, `sqlite3_step`), the request log's writer (`encode_lines`), the others
(Granian's). A helper thread's count follows valgrind's wall time (the ledger's 50 ms batches
hold fewer entries under valgrind than served: their fixed part weighs more a request).
Each run takes a minute or two (bounded by timeouts); every process is stopped at the end.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx
import orjson

from loadtests.bench import contenders as c
from loadtests.bench.measure import _tree

CONNECTIONS = 16
WARM_UP = 256
START_S = 300  # valgrind's start-up of Python and Granian
MESSAGES = [{"role": "user", "content": "Say hello to the benchmark."}]


def drive(port: int, path: str, body: bytes, headers: dict[str, str], requests: int) -> int:
    """`requests` POSTs (a multiple of CONNECTIONS) over CONNECTIONS keep-alive connections;
    how many were not a 200."""
    failed = [0] * CONNECTIONS  # one count per thread (`+=` on a shared one could lose some)

    def connection(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        left = requests // CONNECTIONS
        try:
            while left:
                conn.request("POST", path, body, headers)
                answer = conn.getresponse()
                answer.read()
                failed[i] += answer.status != 200
                left -= 1
        except OSError:  # the connection broke: what it had left counts as not a 200
            failed[i] += left
        finally:
            conn.close()

    threads = [threading.Thread(target=connection, args=(i,)) for i in range(CONNECTIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(failed)


def server_command(
    name: str,
    port: int,
    upstream: str,
    directory: Path,
    before: Path | None,
    redis_url: str | None = None,
) -> tuple[list[str], dict[str, str], Path | None]:
    """The contender's command, its environment and working directory (as contenders.py
    starts it); `redis_url`: the gateway's store (else the embedded one)."""
    if name == "bare":
        command = c.pass_through_command("loadtests.bench.bare_app:app", port)
        return command, {"BENCH_UPSTREAM": upstream, "PYTHONPATH": str(c.REPO)}, None
    config = directory / f"{name}.toml"
    store_url = redis_url or f"sqlite:///{directory / name}.db"
    config.write_text(c.gateway_conf(port, upstream, store_url))
    return c.gateway_command(config, directory, before if name == "before" else None)


def measure(
    name: str,
    scenario: str,
    requests: int,
    before: Path | None,
    by_object: bool,
    keep: Path | None = None,
    threads: bool = False,
) -> float:
    """Instructions per request of `name`'s worker (K), printed with its breakdown; `keep`: a
    directory the worker's callgrind dump is copied into (for `callgrind_annotate`)."""
    with tempfile.TemporaryDirectory(prefix="klawd-worker-instr-") as tmp:
        directory = Path(tmp)
        up_port, port = c.free_port(), c.free_port()
        upstream = f"http://127.0.0.1:{up_port}"
        up = c.nginx(c.upstream_conf(directory, up_port), directory, "upstream", c.CLIENT_CORE)
        redis = redis_url = None
        if name == "gateway-redis":
            redis_port = c.free_port()
            redis = c.redis_server(redis_port, directory, realtime=c.realtime_allowed())
            redis_url = f"redis://127.0.0.1:{redis_port}/0"
            c.wait_for(lambda: _answers_ping(redis_port), "redis-server")
        command, env, cwd = server_command(name, port, upstream, directory, before, redis_url)
        valgrind = ["valgrind", "--tool=callgrind", "--trace-children=yes",
                    f"--callgrind-out-file={directory}/callgrind.%p"]  # fmt: skip
        if threads:
            valgrind.append("--separate-threads=yes")  # (dumps `callgrind.PID.1-THREAD`)
        server = c.pinned(c.SERVER_CORE, [*valgrind, *command], directory / "server.log", env, cwd)
        try:
            headers = {"content-type": "application/json"}
            if name == "bare":
                # The upstream's own location (side_by_side's): the Anthropic and Gemini
                # streams are not at /{scenario}/v1/chat/completions.
                path = c.upstream_path(scenario)
                c.wait_for(lambda: _answers(port), name, START_S)
            else:
                path = "/v1/chat/completions"
                base = f"http://127.0.0.1:{port}"
                c.wait_for(lambda: httpx.get(f"{base}/readyz", timeout=30).is_success, name,
                           START_S)  # fmt: skip
                headers["authorization"] = f"Bearer {c.gateway_key(base)}"
            payload: dict[str, object] = {
                "model": c.gateway_model(scenario), "messages": MESSAGES, "max_tokens": 64,
            }  # fmt: skip
            if scenario != "json":
                payload["stream"] = True
            body = orjson.dumps(payload)
            drive(port, path, body, headers, WARM_UP)
            time.sleep(1)
            mine = [str(pid) for pid in _tree(server.pid)]
            for pid in mine:  # this run's processes only: never another run's callgrind
                subprocess.run(["callgrind_control", "-z", pid], capture_output=True, timeout=120)
            failed = drive(port, path, body, headers, requests)
            for pid in mine:
                subprocess.run(["callgrind_control", "-d", pid], capture_output=True, timeout=300)
            time.sleep(1)
            parts = _thread_dumps(directory) if threads else {}
            dumps = list(parts) if threads else list(directory.glob("callgrind.*.1"))
            counts = {dump: sum(map(_total, parts.get(dump, [dump]))) for dump in dumps}
            worker = max(counts, key=lambda dump: counts[dump])
            per_request = counts[worker] / requests / 1000
            bad = f", {failed} not 200" if failed else ""
            print(f"{name} {scenario}: {per_request:.1f}K instructions per request "
                  f"({counts[worker]:,} over {requests}{bad})", flush=True)  # fmt: skip
            if keep is not None:
                keep.mkdir(parents=True, exist_ok=True)
                for n, part in enumerate(parts.get(worker, [worker])):
                    suffix = f".{n}" if threads else ""
                    shutil.copy(part, keep / f"callgrind.{name}.{scenario}{suffix}")
            if threads:
                for what, count in _by_thread(parts[worker]):
                    if count >= 50 * requests:  # (Granian's idle workers: nothing a request)
                        print(f"    {count / requests / 1000:7.1f}K  {what}")
            if by_object:
                objects: collections.Counter[str] = collections.Counter()
                for part in parts.get(worker, [worker]):
                    objects.update(_by_object(part))
                for library, count in objects.most_common(8):
                    print(f"    {count / requests / 1000:7.1f}K  {library}")
            return per_request
        finally:
            c.stop(server)
            c.stop(up)
            if redis is not None:
                c.stop(redis)


def _answers_ping(port: int) -> bool:
    try:
        done = subprocess.run(
            ["redis-cli", "-p", str(port), "PING"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.stdout.strip() == "PONG"


def _answers(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/")
        conn.getresponse().read()
        return True
    except OSError:
        return False


def _total(dump: Path) -> int:
    found = re.search(r"^(?:summary|totals): (\d+)", dump.read_text(errors="replace"), re.M)
    return int(found.group(1)) if found else 0


def _thread_dumps(directory: Path) -> dict[Path, list[Path]]:
    """The dumps of each process, one a thread (`callgrind.PID.1-NN`), keyed by the process's
    name for them (`callgrind.PID.1`)."""
    parts: dict[Path, list[Path]] = collections.defaultdict(list)
    for part in sorted(directory.glob("callgrind.*.1-*")):
        parts[part.with_name(part.name.rsplit("-", 1)[0])].append(part)
    return parts


def _by_thread(parts: list[Path]) -> list[tuple[str, int]]:
    """Each thread's count, named by what it runs (the busiest: the event loop)."""
    counts = sorted(((_total(part), part) for part in parts), reverse=True)
    named = []
    for rank, (count, part) in enumerate(counts):
        text = part.read_text(errors="replace")
        if rank == 0:
            what = "the event loop's thread"
        elif " sqlite3_step" in text:
            what = "the store's SQLite thread (the ledger's batches)"
        elif "encode_lines" in text:
            what = "the request log's writer"
        else:
            what = f"another thread ({part.name.rsplit('-', 1)[1]}: Granian's, ...)"
        named.append((what, count))
    return named


def _by_object(dump: Path) -> collections.Counter[str]:
    """Self instructions by object file (each function's own cost lines, not its calls')."""
    names: dict[str, str] = {}
    counts: collections.Counter[str] = collections.Counter()
    current = "?"
    skip_next = False
    for line in dump.read_text(errors="replace").splitlines():
        if skip_next:  # the inclusive cost of the call on the line before
            skip_next = False
        elif line.startswith(("ob=", "cob=")):
            found = re.match(r"c?ob=\((\d+)\)(?: (.*))?", line)
            if found is not None:
                number, name = found.groups()
                if name is not None:
                    names[number] = name.rsplit("/", 1)[-1]
                if line.startswith("ob="):
                    current = names.get(number, number)
        elif line.startswith("calls="):
            skip_next = True
        elif line[:1].isdigit() or line[:1] in "+-*":
            fields = line.split()
            if len(fields) >= 2 and fields[1].isdigit():
                counts[current] += int(fields[1])
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contenders", default="gateway,bare", help="gateway, gateway-redis, bare")
    parser.add_argument("--before", type=Path, help="also this checkout's gateway")
    parser.add_argument("--scenarios", default="json,sse", help="json, sse, event, lines, ...")
    parser.add_argument("--requests", type=int, default=1024)
    parser.add_argument("--by-object", action="store_true", help="split by library")
    parser.add_argument("--threads", action="store_true", help="split by thread")
    parser.add_argument("--keep", type=Path, help="copy the workers' callgrind dumps here")
    args = parser.parse_args()
    if args.requests < CONNECTIONS or args.requests % CONNECTIONS:
        # (each connection makes requests // CONNECTIONS: the count divides by all of them)
        parser.error(f"--requests: a positive multiple of {CONNECTIONS}")
    names = args.contenders.split(",") + (["before"] if args.before else [])
    for scenario in args.scenarios.split(","):
        for name in names:
            measure(
                name,
                scenario,
                args.requests,
                args.before,
                args.by_object,
                args.keep,
                args.threads,
            )


if __name__ == "__main__":
    main()
