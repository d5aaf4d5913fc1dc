"""`server.log_bodies_bytes` (debugging): API bodies in the request log, cut; never admin bodies."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.conftest import free_port, gateway_config, start_gateway, stop
from tests.fakes.openai_upstream import FakeOpenAI
from tests.ops.test_metrics_and_request_log import log_lines

LIMIT = 200


def test_api_bodies_are_logged_cut_at_the_limit_and_admin_bodies_never(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    port = free_port()
    config = tmp_path / "klawd.toml"
    gateway_config(config, port, fake_openai.base_url)
    config.write_text(
        config.read_text().replace("[server]\n", f"[server]\nlog_bodies_bytes = {LIMIT}\n", 1)
    )
    gateway = start_gateway(config, port)
    try:
        key = gateway.new_key()  # its admin answer holds the key: it must not be logged
        prompt = "debug me " + "x" * 400
        with httpx.Client(base_url=gateway.base_url, timeout=10) as client:
            for request_id, stream in (("req-bodies-plain", False), ("req-bodies-stream", True)):
                response = client.post(
                    "/v1/chat/completions",
                    headers={"authorization": f"Bearer {key}", "x-request-id": request_id},
                    json={
                        "model": "openai/gpt-fake",
                        "messages": [{"role": "user", "content": prompt}],
                        "stream": stream,
                    },
                )
                assert response.status_code == 200
                [line] = log_lines(gateway, request_id)
                request_body = str(line["request_body"])
                assert request_body.startswith('{"model":"openai/gpt-fake"')
                assert "debug me" in request_body
                assert request_body.endswith("more bytes]")
                assert len(request_body.encode()) < LIMIT + 40
                response_body = str(line["response_body"])
                assert response_body == (
                    response.text[:LIMIT] + f"…[{len(response.content) - LIMIT} more bytes]"
                    if len(response.content) > LIMIT
                    else response.text
                )
                if stream:
                    assert response_body.startswith("data: {")
        log_text = (tmp_path / "gateway.log").read_text(errors="replace")
        assert key not in log_text
        assert '"route":"/admin/accounts/{account_id}/keys"' in log_text
        for admin_line in (ln for ln in log_text.splitlines() if '"route":"/admin' in ln):
            assert "request_body" not in admin_line and "response_body" not in admin_line
    finally:
        stop(gateway.process)


def test_without_the_setting_no_body_is_logged(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "klawd.toml"
    gateway_config(config, port, fake_openai.base_url)
    gateway = start_gateway(config, port)
    try:
        key = gateway.new_key()
        response = httpx.post(
            f"{gateway.base_url}/v1/chat/completions",
            headers={"authorization": f"Bearer {key}", "x-request-id": "req-no-bodies"},
            json={"model": "openai/gpt-fake", "messages": [{"role": "user", "content": "hi"}]},
            timeout=10,
        )
        assert response.status_code == 200
        [line] = log_lines(gateway, "req-no-bodies")
        assert "request_body" not in line and "response_body" not in line
    finally:
        stop(gateway.process)
