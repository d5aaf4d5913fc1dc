"""`klawd serve` sizes a worker for long-lived streams: requests in flight, listen backlog,
open files."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any, NoReturn

import granian
import msgspec
import orjson
import pytest

from gateway import cli, supervisor
from gateway.settings import ConfigError, ServerSettings, load_settings


def test_defaults_let_one_worker_hold_ten_thousand_streams() -> None:
    server = load_settings(None).server
    assert server.max_in_flight >= 10_000
    assert server.listen_backlog == 4096
    assert server.max_header_bytes == 8192  # Granian's smallest buffer per connection


def test_both_settings_come_from_the_server_table(tmp_path: Path) -> None:
    path = tmp_path / "klawd.toml"
    path.write_text("[server]\nmax_in_flight = 300\nlisten_backlog = 512\n")
    server = load_settings(path).server
    assert (server.max_in_flight, server.listen_backlog) == (300, 512)


@pytest.mark.parametrize("field", ["max_in_flight", "listen_backlog"])
def test_zero_is_refused_naming_the_field(tmp_path: Path, field: str) -> None:
    path = tmp_path / "klawd.toml"
    path.write_text(f"[server]\n{field} = 0\n")
    with pytest.raises(ConfigError, match=f"server.{field}"):
        load_settings(path)


def test_open_files_limit_is_raised_to_two_per_request_within_the_hard_limit() -> None:
    script = (
        "import resource\n"
        "from gateway.cli import raise_open_files_limit\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
        "print(*raise_open_files_limit(1000), resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True
    )
    soft_now, needed, soft_seen = (int(word) for word in done.stdout.split())
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert needed == 2 * 1000 + cli.FDS_RESERVED
    expected = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
    assert soft_now == soft_seen == expected


def test_serve_hands_the_three_settings_to_granian(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}
    handed: list[supervisor.Spec] = []

    def record(self: granian.Granian) -> None:
        buffer = self.http1_settings.max_buffer_size
        seen.update(backpressure=self.backpressure, backlog=self.backlog, buffer=buffer)

    def in_process(spec: supervisor.Spec) -> NoReturn:  # what the exec'd process does
        handed.append(spec)
        raise SystemExit(supervisor.supervise(orjson.loads(orjson.dumps(spec))))

    monkeypatch.setattr(granian.Granian, "serve", record)
    monkeypatch.setattr(supervisor, "hand_over", in_process)
    for name in ("KLAWD_CONFIG", "KLAWD_ADMIN_TOKEN", "PROMETHEUS_MULTIPROC_DIR",
                 "KLAWD_DRAIN_FILE", "KLAWD_SUPERVISOR_PID"):  # fmt: skip
        # set first, so that the monkeypatch restores it (removes what `serve` sets): a
        # delenv of an absent variable records nothing
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.setenv("KLAWD_ADMIN_TOKEN", "test-admin-token")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "metrics"))
    config = tmp_path / "klawd.toml"
    config.write_text(
        f"[server]\nmax_in_flight = 20000\nlisten_backlog = 2048\nmax_header_bytes = 16384\n"
        f'[store]\nurl = "sqlite:///'
        f'{tmp_path / "klawd.db"}"\n'
    )
    with pytest.raises(SystemExit) as exited:
        cli.main(["serve", "--config", str(config), "--port", "1"])
    assert exited.value.code == 0
    assert seen == {"backpressure": 20000, "backlog": 2048, "buffer": 16384}
    (spec,) = handed
    assert (spec["port"], spec["kill_timeout_s"], spec["metrics_port"]) == (1, 30, None)
    drain_dir = Path(spec["drain_file"]).parent
    assert spec["remove_dirs"] == [str(drain_dir)]  # the given metrics directory is kept
    assert not drain_dir.exists()  # removed once the server stopped
    assert (tmp_path / "metrics").is_dir()


def test_the_hand_over_execs_the_supervisor_with_what_the_cli_prepared(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[str, list[str], str]] = []

    def execv(path: str, argv: list[str]) -> NoReturn:
        calls.append((path, argv, os.environ[supervisor.SPEC_ENV]))
        raise SystemExit(0)

    monkeypatch.setattr(os, "execv", execv)
    spec = supervisor.Spec(
        host="127.0.0.1", port=8080, workers=1, kill_timeout_s=30, max_header_bytes=8192,
        max_in_flight=12288, listen_backlog=4096, metrics_port=None, drain_file="/x/signalled",
        remove_dirs=["/x"],
    )  # fmt: skip
    try:
        with pytest.raises(SystemExit):
            supervisor.hand_over(spec)
        ((path, argv, given),) = calls
        # not started as the `klawd` script (here: pytest): the module, never pytest's command
        # line; what the exec'd process reads is for its PID (exec keeps it) and no other's
        assert path == sys.executable
        assert argv == [sys.executable, "-m", "gateway.supervisor"]
        pid, _, handed = given.partition(" ")
        assert (int(pid), orjson.loads(handed)) == (os.getpid(), spec)
        assert supervisor.handed_over() == spec
        assert supervisor.SPEC_ENV not in os.environ
    finally:
        os.environ.pop(supervisor.SPEC_ENV, None)


def test_every_server_field_is_documented() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    section = docs.split("## `[server]`", 1)[1].split("\n## ", 1)[0]
    for field in msgspec.structs.fields(ServerSettings):
        if field.name != "streams":  # its own table, [server.streams]
            assert f"| `{field.name}` |" in section, f"server.{field.name} is not documented"
