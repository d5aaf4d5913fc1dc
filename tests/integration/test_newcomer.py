"""`make run` as a newcomer uses it: build, start, read the printed key, get an answer, stop.

The one liberty taken: KLAWD_CONFIG points at a throwaway file that moves the data directory and
the port, so the test neither touches the developer's ./data nor collides with a running gateway.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx

from tests.conftest import REPO, free_port
from tests.live_bound import running_deadline, wait_exit


def test_make_run_prints_a_working_key_and_curl_line(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "klawd.toml"
    config.write_text(f'[server]\nport = {port}\n[store]\nurl = "sqlite:///{tmp_path}/klawd.db"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("KLAWD_")}
    env["KLAWD_CONFIG"] = str(config)
    output = tmp_path / "make-run.log"
    with output.open("wb") as sink:
        process = subprocess.Popen(
            ["make", "run"],
            cwd=REPO,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        passed = running_deadline(300)
        while not passed():
            assert process.poll() is None, output.read_text()
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        text = output.read_text()
        key_match = re.search(r"KLAWD_API_KEY=(sk-klawd-\S+)", text)
        assert key_match, text
        assert f"curl {base}/v1/chat/completions" in text
        assert (tmp_path / "admin-token").exists()
        response = httpx.post(
            f"{base}/v1/chat/completions",
            headers={"authorization": f"Bearer {key_match.group(1)}"},
            json={
                "model": "klawd/echo",
                "messages": [{"role": "user", "content": "Hello, Klawd!"}],
            },
            timeout=10,
        )
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"] == "Hello, Klawd!"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        wait_exit(process, 30)
