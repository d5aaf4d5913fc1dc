"""tests/live_bound.py: a hang is still cut; a stopped process (the machine's timed runs stop
every other process with SIGSTOP) is not taken for one. The process stops itself here, and a
child it started resumes it (SIGCONT) after STOPPED_S: the wall clock runs on meanwhile."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx
import httpx2
import pytest

from tests.live_bound import (
    Stops,
    call_within,
    recv,
    running_deadline,
    running_timeout,
    wait_exit,
    within,
)

STOPPED_S = 2.0
BOUND_S = 1.0  # shorter than the stop: a wall-clock bound is tripped by it


def stopped_for_a_while() -> str:
    """This process stopped for STOPPED_S (then resumed by a child), as a frozen machine stops
    it."""
    resumer = subprocess.Popen(["sh", "-c", f"sleep {STOPPED_S}; kill -CONT {os.getpid()}"])
    try:
        os.kill(os.getpid(), signal.SIGSTOP)
    finally:
        resumer.wait()
    return "answered"


async def stopped_then_answered() -> str:
    """The process stopped while the bounded wait runs; the answer comes only after it resumes
    (as the app's does once a frozen machine resumes)."""
    await asyncio.sleep(0.05)  # the bound armed
    stopped_for_a_while()
    await asyncio.sleep(0.1)
    return "answered"


def test_a_stopped_process_trips_a_wall_clock_bound() -> None:
    """What the bounds here replace: `wait_for` counts the stop against the wait."""
    with pytest.raises(TimeoutError):
        asyncio.run(asyncio.wait_for(stopped_then_answered(), BOUND_S))


def test_a_stopped_process_does_not_trip_the_running_time_bound() -> None:
    started = time.monotonic()
    assert asyncio.run(within(stopped_then_answered(), BOUND_S)) == "answered"
    assert time.monotonic() - started >= STOPPED_S  # the stop happened inside the bound


def test_a_stopped_process_does_not_trip_the_running_time_block_bound() -> None:
    """`running_timeout`, the block form: `asyncio.timeout` over the same stop raises."""

    async def bounded(timeout: Callable[[float], AbstractAsyncContextManager[Any]]) -> str:
        async with timeout(BOUND_S):
            return await stopped_then_answered()

    with pytest.raises(TimeoutError):
        asyncio.run(bounded(asyncio.timeout))
    started = time.monotonic()
    assert asyncio.run(bounded(running_timeout)) == "answered"
    assert time.monotonic() - started >= STOPPED_S


def test_a_stopped_process_has_not_passed_a_running_deadline_and_a_hang_does() -> None:
    passed = running_deadline(BOUND_S)
    time.sleep(0.05)
    stopped_for_a_while()
    assert not passed(), "the stop counted"
    while not passed():  # a loop that never sees its condition still ends
        time.sleep(0.05)


def test_a_stopped_call_in_a_thread_does_not_trip_the_running_time_bound() -> None:
    def call() -> str:
        time.sleep(0.05)
        return stopped_for_a_while()

    assert call_within(call, BOUND_S) == "answered"


def test_a_hang_is_still_cut() -> None:
    with pytest.raises(TimeoutError):
        asyncio.run(within(asyncio.sleep(3600), 0.3))
    with pytest.raises(TimeoutError):
        call_within(lambda: time.sleep(3), 0.3)

    async def hung_block() -> None:
        async with running_timeout(0.3):
            await asyncio.sleep(3600)

    with pytest.raises(TimeoutError):
        asyncio.run(hung_block())


def stopping_server() -> tuple[socket.socket, threading.Thread]:
    """A server of one answer that stops the whole process (client included) while the client
    reads it, and answers 0.2 s after resuming, as a just-resumed gateway does."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)  # the request
            time.sleep(0.05)  # the client waits on its read
            stopped_for_a_while()
            time.sleep(0.2)  # resumed: the answer is written only now
            connection.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nanswered")

    server = threading.Thread(target=serve)
    server.start()
    return listener, server


@pytest.mark.parametrize("library", [httpx, httpx2], ids=["httpx", "httpx2"])
def test_an_async_client_read_timeout_counts_running_time(library: Any) -> None:
    """The same for an AsyncClient (its timeout is anyio's, on the loop's clock)."""
    listener, server = stopping_server()
    port = listener.getsockname()[1]

    async def asked() -> str:
        async with library.AsyncClient(timeout=BOUND_S) as client:
            return str((await client.get(f"http://127.0.0.1:{port}/")).text)

    try:
        started = time.monotonic()
        assert asyncio.run(asked()) == "answered"
        assert time.monotonic() - started >= STOPPED_S
    finally:
        server.join(10)
        listener.close()


@pytest.mark.parametrize("library", [httpx, httpx2], ids=["httpx", "httpx2"])
def test_a_client_read_timeout_counts_running_time(library: Any) -> None:
    """A client (httpx, or httpx2, what the official SDKs read with) waiting on a server that
    is stopped with it, as a frozen machine stops the test and its gateway together: on
    resuming, the answer is still to be written. The client's `timeout=1` is counted in running
    time (tests/conftest.py's `client_reads_count_running_time`); a wall-clock read timeout
    expired during the 2 s stop and failed the read at once (ReadTimeout, seen before it)."""
    listener, server = stopping_server()
    port = listener.getsockname()[1]
    try:
        with library.Client(timeout=BOUND_S) as client:
            started = time.monotonic()
            assert client.get(f"http://127.0.0.1:{port}/").text == "answered"
            assert time.monotonic() - started >= STOPPED_S  # the stop was inside the read
    finally:
        server.join(10)
        listener.close()


def test_a_raw_socket_read_counts_running_time() -> None:
    """`recv`: a raw socket's read across a stop of the process (its server stopped with it)
    is answered, and the socket keeps its own timeout."""
    listener, server = stopping_server()
    try:
        with socket.create_connection(listener.getsockname()) as client:
            client.settimeout(30)
            client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            started = time.monotonic()
            assert recv(client, 65536, BOUND_S).startswith(b"HTTP/1.1 200 OK")
            assert time.monotonic() - started >= STOPPED_S  # the stop was inside the read
            assert client.gettimeout() == 30
    finally:
        server.join(10)
        listener.close()


def test_a_raw_socket_timeout_is_spent_by_a_stop() -> None:
    """What `recv` replaces: `settimeout(BOUND_S)` counts the stop against the read."""
    listener, server = stopping_server()
    try:
        with socket.create_connection(listener.getsockname()) as client:
            client.settimeout(BOUND_S)
            client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            with pytest.raises(TimeoutError):
                client.recv(65536)
            server.join(10)
    finally:
        listener.close()


def test_a_silent_socket_and_a_lasting_process_are_still_cut() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        with socket.create_connection(listener.getsockname()) as client:
            with pytest.raises(TimeoutError):
                recv(client, 1, 0.3)
    lasting = subprocess.Popen(["sleep", "60"])
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            wait_exit(lasting, 0.3)
    finally:
        lasting.kill()
        assert wait_exit(lasting, 10) == -signal.SIGKILL


def test_a_stop_is_seen_and_a_run_without_one_is_not() -> None:
    with Stops() as quiet:
        time.sleep(0.3)
    with Stops() as stopped:
        time.sleep(0.05)
        stopped_for_a_while()
    assert (quiet.seen, stopped.seen) == (False, True)
