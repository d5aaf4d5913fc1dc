"""A deadline on what the worker's clients leave unread, set on its listening sockets.

Granian answers a non-streamed body in one send that never waits for the client, and it has
no write timeout: a client that reads nothing of a large answer (a zero receive window, its
kernel still acknowledging) holds the connection, and with it one of the worker's
`max_in_flight` places, for good, after the request's task has ended (billed, logged). A
stream ended by the send deadline leaves the same: its unsent bytes in the server's buffers.
Nothing the app does frees it (returning, or raising, mid-body leaves the connection to
flush first). The kernel can: `TCP_USER_TIMEOUT` aborts a connection whose sent data stays
unacknowledged that long, zero-window probes included (Linux 5.x+), and an accepted socket
inherits it from its listener. Granian makes its listeners itself, in each worker after the
app's start-up: the worker looks for them (`when_listening`) and sets it on them
(docs/decisions/0013, "Seventeenth pass").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from typing import Any

log = logging.getLogger(__name__)


def bound_unread_sends(timeout_s: float, fds: str = "/proc/self/fd") -> int:
    """Sets `TCP_USER_TIMEOUT` (`timeout_s`) on this process's listening TCP sockets, and on
    the connections they accepted before it was set (those do not inherit it: a worker's
    first ones, before `when_listening` found the listener); returns how many listeners. None
    found (the app outside a server, a platform without the option): 0."""
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    if option is None:
        return 0
    value = max(1, round(timeout_s * 1000))
    # The listeners first: a connection accepted from now on inherits the option, and one
    # accepted before is among the descriptors read after (its local port the listener's).
    listening = _tcp_sockets(fds, listening=True)
    ports: set[int] = set()
    for sock, address in listening:
        with sock, contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, option, value)
            ports.add(address[1])
    if ports:
        # An outgoing connection's local port is never a listener's (the kernel skips bound
        # ports when it picks one): what has it was accepted by that listener.
        for sock, address in _tcp_sockets(fds, listening=False):
            with sock, contextlib.suppress(OSError):
                if address[1] in ports:
                    sock.setsockopt(socket.IPPROTO_TCP, option, value)
    return len(ports)


def _tcp_sockets(fds: str, listening: bool) -> list[tuple[socket.socket, tuple[Any, ...]]]:
    """This process's TCP sockets that listen (or not), each as a socket of its own over the
    same open file (closed alone), with its local address."""
    try:
        names = os.listdir(fds)
    except OSError:
        return []
    found = []
    for name in names:
        try:
            if not os.readlink(f"{fds}/{name}").startswith("socket:"):
                continue
            sock = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue
        try:
            if (
                sock.type == socket.SOCK_STREAM
                and sock.family in (socket.AF_INET, socket.AF_INET6)
                and bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)) == listening
            ):
                found.append((sock, sock.getsockname()))
                continue
        except OSError:
            pass
        sock.close()
    return found


async def when_listening(timeout_s: float, every_s: float = 0.05, for_s: float = 30.0) -> None:
    """`bound_unread_sends` once the server listens (it makes its listener after the app's
    start-up), looked for every `every_s` for at most `for_s`."""
    for _ in range(round(for_s / every_s)):
        if bound_unread_sends(timeout_s):
            return
        await asyncio.sleep(every_s)
    log.info("no listening socket found: a client that reads nothing is not cut off")
