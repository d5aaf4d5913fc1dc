"""What a request on a new upstream connection costs the providers' HTTP client, counted:
callgrind's instructions per request of `HttpClient.request` + `read` when every request opens
a connection of its own (connect, its deadline, the request, the answer, the close), and, for
comparison, when one kept-alive connection serves them all.

    .venv/bin/python -m loadtests.bench.connect_cost [--tree DIR]

An upstream in a process of its own (plain asyncio, not counted: valgrind does not follow it)
answers every request with a small body, and `Connection: close` in the `new` run (so each
request opens a connection). The client (the gateway's `HttpClient`, uvloop, one request at a
time) runs under valgrind twice per mode, N = 200 and N = 1,200 requests
(`PYTHONHASHSEED=0`, no .pyc written, `setarch -R`); per request = the difference / 1,000, so
start-up cancels out. `new` minus `kept`: what opening and closing a connection adds to a request.
`--tree DIR`: another checkout's `gateway` package, for a before/after. A count, not a timing:
the loop's turns follow wall time, which callgrind stretches (a few hundred instructions of
spread). Decision 0011, issue 19zzzzzm.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

SMALL, LARGE = 200, 1_200
MODES = ("new", "kept")
BODY = b'{"ok":true}'


def serve(port_out: int) -> None:
    """The upstream (run as a child: `--serve FD`): writes its port to FD, serves until killed."""

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                close = b"x-close: 1" in head.lower()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + (b"Connection: close\r\n" if close else b"")
                    + b"Content-Length: %d\r\n\r\n" % len(BODY)
                    + BODY
                )
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(on_client, "127.0.0.1", 0)
        os.write(port_out, b"%d\n" % server.sockets[0].getsockname()[1])
        os.close(port_out)
        await asyncio.Event().wait()

    asyncio.run(main())


def run_requests(requests: int, mode: str) -> None:
    """The measured program (run under valgrind with `--requests`)."""
    import uvloop

    from gateway.providers.http_client import HttpClient

    read_end, write_end = os.pipe()
    upstream = subprocess.Popen(  # (its own process: valgrind does not trace children)
        [sys.executable, "-m", "loadtests.bench.connect_cost", "--serve", str(write_end)],
        pass_fds=(write_end,),
    )
    os.close(write_end)
    with os.fdopen(read_end) as ports:
        port = int(ports.readline())
    headers = {"content-type": "application/json"} | ({"x-close": "1"} if mode == "new" else {})

    async def main() -> None:
        http = HttpClient(pool_size=10, connect_timeout_s=5, read_timeout_s=30)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        try:
            for _ in range(requests):
                response = await http.request("POST", url, headers, b"{}")
                await response.read()
        finally:
            await http.close()

    try:
        uvloop.run(main())
    finally:
        upstream.send_signal(signal.SIGTERM)
        upstream.wait(timeout=10)


def count(requests: int, mode: str, tree: str | None) -> int:
    """valgrind's instruction total for one run of `requests` requests."""
    from loadtests.bench.measure import callgrind_total  # (here: the counted child need not)

    arguments = ["loadtests.bench.connect_cost", "--requests", str(requests), "--mode", mode]
    if tree:
        arguments += ["--tree", tree]
    return callgrind_total(arguments)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", help="another checkout's gateway package")
    parser.add_argument("--requests", type=int, help=argparse.SUPPRESS)  # the measured run
    parser.add_argument("--mode", choices=MODES, default="new", help=argparse.SUPPRESS)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # the upstream's child
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve)
        return
    if args.tree:
        sys.path.insert(0, str(Path(args.tree).resolve()))
    if args.requests is not None:
        run_requests(args.requests, args.mode)
        return
    per: dict[str, int] = {}
    for mode in MODES:
        small, large = count(SMALL, mode, args.tree), count(LARGE, mode, args.tree)
        per[mode] = (large - small) // (LARGE - SMALL)
        print(f"{mode}: {per[mode]:,} instructions a request ({small:,}, {large:,})", flush=True)
    tree = args.tree or "this checkout"
    print(f"{tree}: a new connection adds {per['new'] - per['kept']:,} instructions a request")


if __name__ == "__main__":
    main()
