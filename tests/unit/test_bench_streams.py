"""The bench's fixed upstream bodies: what the fake upstream's nginx config is given."""

import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import orjson
import pytest

from loadtests.bench import contenders


def test_the_tool_call_stream_s_fragments_join_into_its_arguments() -> None:
    events = contenders.anthropic_tool_events()
    datas = [orjson.loads(e.split(b"\ndata: ", 1)[1]) for e in events]
    fragments = [
        d["delta"]["partial_json"]
        for d in datas
        if d["type"] == "content_block_delta" and d["delta"]["type"] == "input_json_delta"
    ]
    assert len(fragments) >= 250
    arguments = orjson.loads("".join(fragments))
    assert arguments["path"] == "src/bench.py"
    assert datas[0]["type"] == "message_start" and datas[-1]["type"] == "message_stop"


def test_nginx_sends_the_tool_call_stream_byte_for_byte(tmp_path: Path) -> None:
    """Its escaped quotes pass through nginx.conf's quoting (`_quoted`) unchanged."""
    if shutil.which("nginx") is None or not Path(contenders.ECHO_MODULE).exists():
        pytest.skip("nginx with the echo module is not installed")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (tmp_path / "nginx.conf").write_text(contenders.upstream_conf(tmp_path, port))
    nginx = subprocess.Popen(["nginx", "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path)])
    try:
        url = f"http://127.0.0.1:{port}{contenders.upstream_path('anthtools')}"
        body = b""
        for _ in range(100):
            try:
                body = httpx.post(url, content=b"{}").content
                break
            except httpx.ConnectError:
                time.sleep(0.05)
        assert body == b"".join(contenders.anthropic_tool_events())
    finally:
        nginx.terminate()
        nginx.wait(10)


def test_the_upstream_reads_its_clock_every_millisecond_unless_asked_not_to(tmp_path: Path) -> None:
    """With nginx's default an `echo_sleep` also lasts the loop iteration that set it: the 20 ms
    paced streams lasted ~1.3 s, not ~1.0, at 256 connections (decision 0012, 19zzzzf)."""
    main = contenders.upstream_conf(tmp_path, 1).split("http {", 1)[0]
    assert "timer_resolution 1ms;" in main
    assert "timer_resolution" not in contenders.upstream_conf(tmp_path, 1, None)
