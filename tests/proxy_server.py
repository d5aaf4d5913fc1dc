"""A real forward proxy (Debian's tinyproxy) on a free loopback port, and a test certificate for
TLS origins behind it. Started and stopped by the tests that use them."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

from tests.conftest import free_port
from tests.live_bound import polls, wait_exit


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1 (openssl's command line): it is
    its own CA, so a client trusts it with `cafile=cert` or `SSL_CERT_FILE=cert`."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("openssl is not installed")
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


class Tinyproxy:
    """tinyproxy in the foreground. No `ConnectPort` line: tinyproxy then allows CONNECT to
    every port (the TLS fakes listen on free ports, not 443). `credentials` ("user:password")
    turns on BasicAuth: requests without them get 407."""

    def __init__(self, directory: Path, credentials: str | None = None) -> None:
        self.directory = directory
        self.credentials = credentials
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.directory / "tinyproxy.log"

    def url(self, credentials: str | None = None) -> str:
        userinfo = f"{credentials}@" if credentials else ""
        return f"http://{userinfo}127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> None:
        binary = shutil.which("tinyproxy")
        if binary is None:
            raise RuntimeError("tinyproxy is not installed: run `make system-deps`")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o777)  # tinyproxy may drop to an unprivileged user to log
        lines = [
            f"Port {self.port}",
            "Listen 127.0.0.1",
            "Timeout 30",
            "MaxClients 50",
            f'LogFile "{self.log_path}"',
            "LogLevel Info",
            "Allow 127.0.0.1",
        ]
        if self.credentials is not None:
            user, _, password = self.credentials.partition(":")
            lines.append(f"BasicAuth {user} {password}")
        config = self.directory / "tinyproxy.conf"
        config.write_text("\n".join(lines) + "\n")
        with (self.directory / "stderr.log").open("wb") as stderr:
            self.process = subprocess.Popen(
                [binary, "-d", "-c", str(config)], stdout=subprocess.DEVNULL, stderr=stderr
            )
        turns = polls(10, 0.05)  # running time: a start across a stop of the machine
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"tinyproxy exited with {self.process.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if next(turns, None) is None:
                    raise

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            wait_exit(self.process, 10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            wait_exit(self.process, 5)
        self.process = None
