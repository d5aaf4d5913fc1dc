"""A real redis-server on a free loopback port, started and stopped by the test session."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import redis

from tests.live_bound import polls, wait_exit


def wait_until_answering(port: int, timeout_s: float = 10) -> None:
    client = redis.Redis(port=port)
    try:
        for _ in polls(timeout_s, 0.05):  # running time: a start across a stop of the machine
            try:
                client.ping()
                return
            except redis.ConnectionError:
                pass
        client.ping()  # the last try: its ConnectionError says why
    finally:
        client.close()


class RedisServer:
    def __init__(self, port: int, directory: Path) -> None:
        self.port = port
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, *extra_args: str) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: run `make test` (it installs it)")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                *extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until_answering(self.port)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            wait_exit(self.process, 10)
            self.process = None

    def flush(self) -> None:
        client = redis.Redis(port=self.port)
        try:
            client.flushall()
        finally:
            client.close()


def cluster_ports(count: int) -> list[int]:
    """Free ports whose cluster-bus twins (port + 10000) are free too."""
    ports: list[int] = []
    for candidate in range(21000 + (os.getpid() % 200) * 50, 50000, 7):
        if all(_free(p) for p in (candidate, candidate + 10000)):
            ports.append(candidate)
            if len(ports) == count:
                return ports
    raise RuntimeError("no free ports for a redis cluster")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class RedisClusterServers:
    """Three redis-server primaries in cluster mode on loopback, joined with redis-cli."""

    def __init__(self, ports: list[int], directory: Path) -> None:
        self.nodes = [RedisServer(port, directory / str(port)) for port in ports]

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def start(self) -> None:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not installed: run `make test` (it installs it)")
        for node in self.nodes:
            node.start(
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
            )
        create = [
            cli,
            "--cluster",
            "create",
            *[f"127.0.0.1:{n.port}" for n in self.nodes],
            "--cluster-replicas",
            "0",
            "--cluster-yes",
        ]
        with subprocess.Popen(
            create, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        ) as creating:
            try:  # 30 s of running time: a stop of the machine spends none of it
                code = wait_exit(creating, 30)
            except subprocess.TimeoutExpired:
                creating.kill()
                raise
        if code != 0:
            raise subprocess.CalledProcessError(code, create)
        turns = polls(20, 0.1)
        for node in self.nodes:
            client = redis.Redis(port=node.port)
            try:
                while b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
                    if next(turns, None) is None:
                        raise RuntimeError("the redis cluster did not come up")
            finally:
                client.close()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def flush(self) -> None:
        for node in self.nodes:
            node.flush()
