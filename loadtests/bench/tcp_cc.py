"""Runs a command with every TCP socket it and its children open set to one congestion control.

    .venv/bin/python -m loadtests.bench.tcp_cc cubic -- .venv/bin/python -m \\
        loadtests.bench.side_by_side --measures anth,lines --contenders bare,gateway-sqlite

Why (decision 0012, 19zzzzk): this machine's TCP is BBR with no fq qdisc, so each socket paces
its own sends, and the upstream nginx's ~155 writes of a chunked stream reach the reader in
65-105 segments depending on how often the reader's ACKs come back (with CUBIC, ~150 for any
reader). The load generator's core pays per segment, so on the saturated per-line measures the
reader that reads rarely is charged less by the rig. The congestion control is a sysctl that
this container refuses (even in a network namespace), but a socket may choose its own: a small
`LD_PRELOAD` shim of `socket()` sets `TCP_CONGESTION` on every TCP socket (accepted ones inherit
their listener's). Built with the system's C compiler into a temporary directory, removed after.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ENV = "KLAWD_TCP_CC"

SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

int socket(int domain, int type, int protocol) {
    static int (*real)(int, int, int);
    if (!real) real = (int (*)(int, int, int))dlsym(RTLD_NEXT, "socket");
    int fd = real(domain, type, protocol);
    const char *cc = getenv("KLAWD_TCP_CC");
    if (fd >= 0 && cc && *cc && (domain == AF_INET || domain == AF_INET6)
        && (type & 0xf) == SOCK_STREAM)
        setsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, cc, strlen(cc));
    return fd;
}
"""


def usable(name: str) -> bool:
    """Whether a socket of this process may choose `name`."""
    with socket.socket() as probe:
        try:
            probe.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, name.encode())
        except OSError:
            return False
    return True


def build(directory: Path) -> Path:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise SystemExit("tcp_cc: no C compiler (cc) to build the shim")
    source, shim = directory / "tcp_cc.c", directory / "libtcp_cc.so"
    source.write_text(SHIM)
    subprocess.run(
        [compiler, "-shared", "-fPIC", "-O2", "-o", str(shim), str(source), "-ldl"],
        check=True,
        timeout=60,
    )
    return shim


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("congestion_control", help="e.g. cubic, reno, bbr")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command")
    if not usable(args.congestion_control):
        raise SystemExit(f"tcp_cc: a socket may not choose {args.congestion_control!r} here")
    with tempfile.TemporaryDirectory(prefix="tcp-cc-") as directory:
        shim = build(Path(directory))
        preload = " ".join(filter(None, [str(shim), os.environ.get("LD_PRELOAD", "")]))
        env = {**os.environ, ENV: args.congestion_control, "LD_PRELOAD": preload}
        return subprocess.run(command, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
