"""The processes of `make bench`: the fake upstream, and the contenders measured against it.

Core 0 runs the server under test (every contender is pinned there, each started up front and
measured in turn) and, in `make bench`, redis-server (as the embedded store's SQLite work runs
there; decision 0012, issue 19zzzze); core 1 runs the fake upstream and the load generator.
Redis runs at real-time priority where allowed: as soon as a command arrives.

The fake upstream is Debian's nginx answering fixed bodies: an OpenAI chat.completion (`/json`),
a 50-event OpenAI stream as one static body (`/sse`), and chunked streams sent the way real
providers send them, with the echo module (STREAMS: one chunk per event, each line its own chunk,
with 20 ms, 100 ms or 1 s between events; an Anthropic Messages stream, each line its own
chunk, also with 20 ms between events; a Gemini streamGenerateContent stream, each line its own
chunk; an Anthropic tool call whose arguments come in ~300 `input_json_delta` events, each line
its own chunk).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SERVER_CORE = "0"
CLIENT_CORE = "1"
EVENTS = 50
ECHO_MODULE = "/usr/lib/nginx/modules/ngx_http_echo_module.so"
ADMIN_TOKEN = "bench-admin-token"  # noqa: S105 (a loopback benchmark's throwaway token)


# -- fixed upstream bodies ------------------------------------------------------------------------
def openai_completion() -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1,
            "model": "bench",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello from the bench upstream."},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
        }
    )


def openai_events(count: int = EVENTS, stamped: bool = False) -> list[bytes]:
    """`count` data events: role, content x(count-3), finish, usage; then [DONE]. `stamped`:
    each content delta carries the upstream's clock when it is sent (nginx's $msec), from
    which the stream client measures how late each event arrives."""

    def chunk(delta: dict[str, object], finish: str | None = None) -> bytes:
        event = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "bench",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return b"data: " + orjson.dumps(event) + b"\n\n"

    usage = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "bench",
        "choices": [],
        "usage": {"prompt_tokens": 12, "completion_tokens": count - 3, "total_tokens": count + 9},
    }
    return (
        [chunk({"role": "assistant", "content": ""})]
        + [chunk({"content": f"tok{i} {'$msec' if stamped else ''}"}) for i in range(count - 3)]
        + [chunk({}, "stop"), b"data: " + orjson.dumps(usage) + b"\n\n", b"data: [DONE]\n\n"]
    )


def _anthropic_event(name: str, data: dict[str, object]) -> bytes:
    return f"event: {name}\n".encode() + b"data: " + orjson.dumps(data) + b"\n\n"


def _anthropic_start() -> list[bytes]:
    """How each of the bench's Anthropic answers begins: its message, then a text block."""
    message = {
        "id": "msg_bench",
        "type": "message",
        "role": "assistant",
        "model": "claude-bench",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 1},
    }
    return [
        _anthropic_event("message_start", {"type": "message_start", "message": message}),
        _anthropic_event(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
    ]


def anthropic_events() -> list[bytes]:
    event = _anthropic_event
    deltas = EVENTS - 5
    return (
        _anthropic_start()
        + [
            event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": f"tok{i} "},
                },
            )
            for i in range(deltas)
        ]
        + [
            event("content_block_stop", {"type": "content_block_stop", "index": 0}),
            event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": deltas},
                },
            ),
            event("message_stop", {"type": "message_stop"}),
        ]
    )


TOOL_DELTAS = 300


def anthropic_tool_events() -> list[bytes]:
    """A coding agent's answer: a line of text, then one tool call whose arguments (a file to
    write) arrive in about TOOL_DELTAS `input_json_delta` fragments of a few characters each,
    as Anthropic streams them (each fragment JSON text inside a JSON string: quotes escaped)."""
    event = _anthropic_event
    content = "".join(f"line {i}: ok\n" for i in range(TOOL_DELTAS))
    arguments = orjson.dumps({"path": "src/bench.py", "content": content}).decode()
    size = -(-len(arguments) // TOOL_DELTAS)  # so that there are TOOL_DELTAS fragments
    fragments = [arguments[i : i + size] for i in range(0, len(arguments), size)]
    tool = {"type": "tool_use", "id": "toolu_bench", "name": "write_file", "input": {}}
    return (
        _anthropic_start()
        + [
            event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": "Writing it."},
                },
            ),
            event("content_block_stop", {"type": "content_block_stop", "index": 0}),
            event(
                "content_block_start",
                {"type": "content_block_start", "index": 1, "content_block": tool},
            ),
        ]
        + [
            event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 1,
                    "delta": {"type": "input_json_delta", "partial_json": fragment},
                },
            )
            for fragment in fragments
        ]
        + [
            event("content_block_stop", {"type": "content_block_stop", "index": 1}),
            event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                    "usage": {"output_tokens": len(fragments) + 3},
                },
            ),
            event("message_stop", {"type": "message_stop"}),
        ]
    )


def gemini_events() -> list[bytes]:
    """A Gemini `streamGenerateContent?alt=sse` answer as Google sends it (the fields of
    tests/fakes/gemini_upstream.py's stream, which the google-genai tests read): 50 events, each
    a whole GenerateContentResponse (the first candidate's one text part and role, its index,
    `usageMetadata` with the counts so far, `modelVersion`, `responseId`), CRLF line ends, no
    terminator event: the last one carries `finishReason`. The same responses as
    rust_core/examples/reframe_cost.rs's `gemini` body."""

    def event(i: int) -> bytes:
        finish = ',"finishReason":"STOP"' if i == EVENTS - 1 else ""
        return (
            b'data: {"candidates":[{"content":{"parts":[{"text":"tok%d "}],"role":"model"}'
            b'%s,"index":0}],"usageMetadata":{"promptTokenCount":57,"candidatesTokenCount":%d,'
            b'"totalTokenCount":%d},"modelVersion":"gemini-2.5-flash",'
            b'"responseId":"mDAmaL2BNvGhz7IPxeLb4QQ"}\r\n\r\n'
        ) % (i, finish.encode(), i, 57 + i)

    return [event(i) for i in range(EVENTS)]


def _quoted(body: bytes) -> str:
    """A single-quoted nginx string: nginx reads `\\\\` as one backslash (the tool-call
    stream's escaped quotes)."""
    text = body.decode()
    if "'" in text:
        raise ValueError("a fixed body must not hold a single quote")
    return "'" + text.replace("\\", "\\\\") + "'"


def echoed(events: list[bytes], per_line: bool, delay_s: float) -> str:
    """The echo module's directives that send `events` as a chunked stream: one chunk per event
    (as most providers do), or each line its own chunk (`per_line`: legal, and what many small
    writes upstream look like), with `delay_s` between events."""
    lines = []
    for i, event in enumerate(events):
        pieces = event.splitlines(keepends=True) if per_line else [event]
        for piece in pieces:
            lines += [f"echo -n {_quoted(piece)};", "echo_flush;"]
        if delay_s and i < len(events) - 1:
            lines.append(f"echo_sleep {delay_s};")
    return "\n".join(" " * 12 + line for line in lines)


# Streamed locations of the fake upstream: path -> (events, each line its own chunk, pause).
STREAMS: dict[str, tuple[str, bool, float]] = {
    "event": ("openai", False, 0.0),  # one chunk per event
    "lines": ("openai", True, 0.0),  # each line its own chunk
    "lines20": ("openai-paced", True, 0.02),  # ... 20 ms between events
    "slow": ("openai-paced", True, 0.1),  # ... 100 ms between events (the burst)
    "long": ("openai-long", True, 1.0),  # one event a second for a minute
    "anth": ("anthropic", True, 0.0),  # Anthropic Messages, each line its own chunk
    "anth20": ("anthropic", True, 0.02),  # ... 20 ms between events (a read per event or line)
    "gemini": ("gemini", True, 0.0),  # Gemini streamGenerateContent, each line its own chunk
    # Anthropic, a tool call's arguments in TOOL_DELTAS input_json_delta events, per line
    "anthtools": ("anthropic-tools", True, 0.0),
}
# Where the upstream answers each kind of stream (the gateway's provider of that kind asks there).
PATHS = {
    "anthropic": "v1/messages",
    "anthropic-tools": "v1/messages",
    "gemini": "v1beta/models/m:streamGenerateContent",
}
# The gateway's provider kind of each body's upstream (else the body's own name).
KINDS = {"anthropic-tools": "anthropic"}


def upstream_path(scenario: str) -> str:
    """The upstream's location for `scenario` (`json`, `sse` or a key of STREAMS)."""
    body = STREAMS[scenario][0] if scenario in STREAMS else "openai"
    return f"/{scenario}/{PATHS.get(body, 'v1/chat/completions')}"


LONG_EVENTS = 60


# Both nginx servers accept every pending connection at each wake (multi_accept). nginx's
# default accepts one per pass of its event loop, and a pass over 64 busy streams of small
# chunks (the tool-call stream: ~600 writes each) takes tens of ms on the shared core: wrk's 64
# new connections of a round, or a contender's new upstream connections, then waited up to
# 3-4 s in the accept queue (nothing dropped, no SYN resent), the 3 s p99 of issue 19zzc.
EVENTS_BLOCK = "events { worker_connections 16384; multi_accept on; }"


# The upstream's clock: nginx reads it once a millisecond (a SIGALRM), not after each wait for
# events. With its default (none) the echo module's `echo_sleep` is not 20 ms but 20 ms plus
# the loop iteration that set it: nginx computes its epoll_wait timeout from the time cached at
# the iteration's start, and the iteration that fires 256 paced streams' timers writes all
# their lines first. Measured on the upstream alone (decision 0012, 19zzzzf): the 20 ms paced
# streams (49 sleeps, 0.98 s) lasted 1,296 ms (`lines20`) and 1,423 ms (`anth20`) at 256
# connections, 1,012 and 993 ms at one; with this, 1,013 and 992 ms at 256. None: as before
# 19zzzzf (`side_by_side --upstream-timers loop`, for a comparison with older runs).
UPSTREAM_TIMER_RESOLUTION = "1ms"


def upstream_conf(
    directory: Path, port: int, timer_resolution: str | None = UPSTREAM_TIMER_RESOLUTION
) -> str:
    directory.chmod(0o755)  # nginx's workers run unprivileged and read the bodies from here
    (directory / "openai.sse").write_bytes(b"".join(openai_events()))
    (directory / "openai.sse").chmod(0o644)
    bodies = {
        "openai": openai_events(),
        "openai-paced": openai_events(stamped=True),
        "openai-long": openai_events(LONG_EVENTS, stamped=True),
        "anthropic": anthropic_events(),
        "gemini": gemini_events(),
        "anthropic-tools": anthropic_tool_events(),
    }
    streamed = "".join(
        f"""
        location = {upstream_path(name)} {{
            default_type text/event-stream;
{echoed(bodies[body], per_line, delay_s)}
        }}"""
        for name, (body, per_line, delay_s) in STREAMS.items()
    )
    return f"""
load_module {ECHO_MODULE};
worker_processes 1;
{f"timer_resolution {timer_resolution};" if timer_resolution else ""}
worker_rlimit_nofile 20000;
daemon off;
pid {directory}/upstream.pid;
error_log {directory}/upstream-error.log warn;
{EVENTS_BLOCK}
http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    client_body_temp_path {directory}/upstream-body;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        # How many connections it has accepted (measure.ListenWatch: per round).
        location = /nginx-status {{
            stub_status;
        }}
        location = /json/v1/chat/completions {{
            default_type application/json;
            return 200 {_quoted(openai_completion())};
        }}
        # The static body: the whole stream in one piece. Static files answer GET only: a
        # 405 is turned into the file itself (as a GET).
        location = /sse/v1/chat/completions {{
            default_type text/event-stream;
            alias {directory}/openai.sse;
            error_page 405 =200 $uri;
        }}{streamed}
    }}
}}
"""


def proxy_conf(directory: Path, port: int, upstream_port: int) -> str:
    return f"""
worker_processes 1;
daemon off;
pid {directory}/proxy.pid;
error_log {directory}/proxy-error.log warn;
{EVENTS_BLOCK}
http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    client_body_temp_path {directory}/proxy-body;
    proxy_temp_path {directory}/proxy-temp;
    upstream fake {{
        server 127.0.0.1:{upstream_port};
        keepalive 1024;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://fake;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""


def gateway_model(scenario: str) -> str:
    """The gateway's model whose provider points at the upstream's `scenario` location."""
    return f"bench{scenario}/m"


def gateway_conf(
    port: int, upstream: str, store_url: str, streams: int = 1024, tpm: int | None = None
) -> str:
    """`streams`: how many may be open at once (max_in_flight and the providers' pools); `tpm`:
    the bench plan's `tokens_per_minute` (every answer's tokens then charged to it)."""
    providers = {f"bench{name}": ("openai", f"{upstream}/{name}/v1") for name in ("json", "sse")}
    providers |= {
        f"bench{name}": (KINDS.get(body, body), f"{upstream}/{name}") if body in PATHS
        else ("openai", f"{upstream}/{name}/v1")
        for name, (body, _, _) in STREAMS.items()
    }  # fmt: skip
    tables = "".join(
        f'[providers.{name}]\nkind = "{kind}"\nbase_url = "{url}"\n'
        f'api_key_env = "BENCH_UPSTREAM_KEY"\npool_size = {max(4096, streams)}\n\n'
        f'[[models]]\nid = "{name}/m"\nprovider = "{name}"\nupstream_model = "m"\n'
        f"context_length = 100000\ninput_usd_per_mtok = 1.0\noutput_usd_per_mtok = 2.0\n\n"
        for name, (kind, url) in providers.items()
    )
    return f"""
[server]
host = "127.0.0.1"
port = {port}
workers = 1
max_in_flight = {max(12288, streams)}

[store]
url = "{store_url}"

[plans.bench]
requests_per_minute = 1000000000
requests_per_day = 1000000000
starting_credit_usd = 1000000.0
{"" if tpm is None else f"tokens_per_minute = {tpm}"}

{tables}
"""


# -- processes ------------------------------------------------------------------------------------
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_bench() -> None:
    """Runs in the child before exec: a SIGTERM when the bench that started it goes, even killed
    with SIGKILL (its own session is out of reach of a kill of the bench's process group), so a
    stopped bench leaves no nginx or redis-server behind."""
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def pinned(
    core: str,
    command: list[str],
    log: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            ["taskset", "-c", core, *command],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
            preexec_fn=_die_with_bench,
            cwd=cwd,
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not start")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


def nginx(conf: str, directory: Path, name: str, core: str) -> subprocess.Popen[bytes]:
    nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"
    path = directory / f"{name}.conf"
    path.write_text(conf)
    return pinned(core, [nginx_bin, "-c", str(path), "-e", str(directory / f"{name}-error.log")],
                  directory / f"{name}.log")  # fmt: skip


def redis_server(
    port: int, directory: Path, core: str = CLIENT_CORE, realtime: bool = False
) -> subprocess.Popen[bytes]:
    """`realtime`: SCHED_FIFO (priority 1) on its core, so that a command is run as soon as it
    arrives instead of waiting behind wrk and the upstream for its turn on the shared core (as
    on a core or host of its own, where Redis runs in a deployment). Needs root (CAP_SYS_NICE)."""
    binary = shutil.which("redis-server") or "redis-server"
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
               "no", "--dir", str(directory)]  # fmt: skip
    if realtime:
        command = ["chrt", "--fifo", "1", *command]
    return pinned(core, command, directory / "redis.log")


def realtime_allowed() -> bool:
    """Whether `redis_server(realtime=True)` may set SCHED_FIFO here."""
    return os.geteuid() == 0 and shutil.which("chrt") is not None


def add_redis_priority(parser: argparse.ArgumentParser) -> None:
    """`--redis-priority`, for every bench that starts redis-server: `realtime` (the default
    where allowed) or `normal`; pass `realtime=args.redis_priority == "realtime"` to
    `redis_server`. At normal priority redis-server waits behind the load generator and the
    upstream for its turn on the shared core (decision 0010, issue 19zd)."""
    parser.add_argument(
        "--redis-priority",
        choices=("realtime", "normal"),
        default="realtime" if realtime_allowed() else "normal",
        help="redis-server's scheduling on its core: real-time (run as soon as a command "
        "arrives, as on a core of its own; needs root, the default when run as root), or "
        "normal (queued behind the load generator and the upstream, as before issue 19zd)",
    )


# The pass-throughs get the server settings `klawd serve` gives the gateway by default (header
# buffer, header timeout), so that the comparison is between the apps.
SAME_SERVER = ["--http1-buffer-size", "8192", "--http1-header-read-timeout", "10000"]


def pass_through_command(app: str, port: int, interface: str = "asgi") -> list[str]:
    """Granian serving a pass-through `app` (module:attribute) as `klawd serve` serves the
    gateway: one worker, the same backlog, backpressure and SAME_SERVER settings."""
    return [str(BIN / "granian"), "--interface", interface, "--loop", "uvloop", "--workers", "1",
            "--host", "127.0.0.1", "--port", str(port), "--no-ws", "--backlog", "4096",
            "--backpressure", "16384", *SAME_SERVER, app]  # fmt: skip


def pass_through(
    name: str, app: str, port: int, upstream: str, directory: Path, interface: str = "asgi"
) -> subprocess.Popen[bytes]:
    return pinned(
        SERVER_CORE,
        pass_through_command(app, port, interface),
        directory / f"{name}.log",
        {"BENCH_UPSTREAM": upstream, "PYTHONPATH": str(REPO)},
    )


def floor(port: int, upstream: str, directory: Path) -> subprocess.Popen[bytes]:
    return pass_through("floor", "loadtests.bench.floor_app:app", port, upstream, directory)


def bare(port: int, upstream: str, directory: Path) -> subprocess.Popen[bytes]:
    return pass_through("bare", "loadtests.bench.bare_app:app", port, upstream, directory)


def bare_rsgi(port: int, upstream: str, directory: Path) -> subprocess.Popen[bytes]:
    """bare_app.py's relay over Granian's RSGI interface (informational: what ASGI costs)."""
    return pass_through(
        "bare-rsgi", "loadtests.bench.bare_rsgi_app:app", port, upstream, directory, "rsgi"
    )


def gateway_command(
    config: Path, directory: Path, source: Path | None = None
) -> tuple[list[str], dict[str, str], Path]:
    """How every gateway is started, this checkout's or another tree's (`source`), so that a
    before/after run compares trees and nothing else: the tree's own CLI module, which every
    tree has (the `klawd` script's entry may not exist in an older one), with the tree first on
    the path (`-P`: not the working directory), run from `directory` (the CLI execs `python -m
    gateway.supervisor`, which puts its working directory first on the path, without `-P` in
    trees before 19u). Returns the command, its environment and its working directory."""
    env = {
        "KLAWD_ADMIN_TOKEN": ADMIN_TOKEN,
        "BENCH_UPSTREAM_KEY": "sk-bench-upstream",
        "PYTHONPATH": str(source if source is not None else REPO),
    }
    command = [sys.executable, "-P", "-m", "gateway.cli", "serve", "--config", str(config)]
    return command, env, directory


def gateway(
    name: str,
    port: int,
    upstream: str,
    store_url: str,
    directory: Path,
    streams: int = 1024,
    source: Path | None = None,
    gc_log: Path | None = None,
    tpm: int | None = None,
) -> subprocess.Popen[bytes]:
    """`source`: a directory holding another version's `gateway` package (with its built
    `_core`), run instead of this one, for a before/after comparison in one run. `tpm`: the
    bench plan's token limit (`gateway_conf`). `gc_log`: a
    file where every process of the gateway's tree logs its cycle collections (gc_site/)."""
    config = directory / f"{name}.toml"
    text = gateway_conf(port, upstream, store_url, streams, tpm)
    if source is not None:  # an older version may not know the newer [server] fields
        text = "\n".join(line for line in text.splitlines() if not line.startswith("max_in"))
    config.write_text(text)
    command, env, cwd = gateway_command(config, directory, source)
    if gc_log is not None:
        env["PYTHONPATH"] += os.pathsep + str(GC_SITE)
        env["KLAWD_BENCH_GC_LOG"] = str(gc_log)
    return pinned(SERVER_CORE, command, directory / f"{name}.log", env, cwd)


# A sitecustomize that logs a process's cycle collections (`gateway(gc_log=...)`).
GC_SITE = Path(__file__).with_name("gc_site")


def collections(log: Path, since: float, until: float) -> str:
    """The collections `log` holds that started between `since` and `until` (time.monotonic()),
    per generation: count, total and longest pause (the worker's: the process with the most)."""
    rows = [line.split() for line in log.read_text().splitlines()] if log.exists() else []
    rows = [row for row in rows if since <= float(row[2]) <= until]
    if not rows:
        return "no collections"
    pids = [row[0] for row in rows]
    worker = max(set(pids), key=pids.count)
    parts = []
    for generation in ("0", "1", "2"):
        pauses = [float(row[3]) * 1e3 for row in rows if row[0] == worker and row[1] == generation]
        if pauses:
            parts.append(
                f"gen{generation} {len(pauses)} ({sum(pauses):.1f} ms, max {max(pauses):.1f})"
            )
    return "collector: " + ", ".join(parts)


def gateway_key(base_url: str) -> str:
    headers = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=10) as admin:
        account = admin.post("/admin/accounts", json={"name": "bench", "plan": "bench"})
        account.raise_for_status()
        key = admin.post(f"/admin/accounts/{account.json()['id']}/keys", json={})
        key.raise_for_status()
        value: str = key.json()["key"]
        return value
