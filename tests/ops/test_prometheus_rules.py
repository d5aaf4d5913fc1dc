"""deploy/prometheus and deploy/grafana: promtool, a running gateway, a real Prometheus."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from gateway.metrics import Metrics
from tests.conftest import REPO, Gateway, free_port
from tests.live_bound import running_deadline, wait_exit
from tests.scrape import metric_names, scrape

PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "rules.yaml"
DASHBOARD = REPO / "deploy" / "grafana" / "klawd.json"
METRIC = re.compile(r"\bklawd_[a-z0-9_]+")


def binary(name: str) -> str:
    path = shutil.which(name)
    assert path is not None, f"{name} is not installed: run `make system-deps` (Debian prometheus)"
    return path


def rule_expressions() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def dashboard_expressions() -> list[str]:
    dashboard: dict[str, Any] = orjson.loads(DASHBOARD.read_bytes())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_promtool_checks_the_rules() -> None:
    result = subprocess.run(
        [binary("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_of_every_alert_pass() -> None:
    tests = PROMETHEUS_DIR / "rules.test.yaml"
    alerts = {
        rule["alert"]
        for group in yaml.safe_load(RULES.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    tested = set(re.findall(r"alertname: (\w+)", tests.read_text()))
    assert alerts == tested, f"alerts without a unit test: {alerts - tested}"
    result = subprocess.run(
        [binary("promtool"), "test", "rules", tests.name],
        capture_output=True,
        text=True,
        cwd=PROMETHEUS_DIR,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_metric_in_rules_and_dashboard_is_exported_by_a_running_gateway(
    gateway: Gateway, api_key: str
) -> None:
    body = {"model": "openai/gpt-fake", "messages": [{"role": "user", "content": "hi"}]}
    for stream in (False, True):
        response = httpx.post(
            f"{gateway.base_url}/v1/chat/completions",
            headers={"authorization": f"Bearer {api_key}"},
            json=body | {"stream": stream},
            timeout=20,
        )
        assert response.status_code == 200
    _, samples = scrape(f"{gateway.base_url}/metrics")
    exported = metric_names(samples)
    used = {m for e in rule_expressions() + dashboard_expressions() for m in METRIC.findall(e)}
    assert len(used) >= 15
    assert used <= exported, f"not exported: {sorted(used - exported)}"
    panels = orjson.loads(DASHBOARD.read_bytes())["panels"]
    assert len({p["id"] for p in panels}) == len(panels)


def test_the_dashboard_plots_every_counter_of_the_upstream_error_ratio() -> None:
    """KlawdUpstreamErrors fires on `klawd:upstream_error_ratio:rate5m`: each counter it adds
    up (errors before the headers, answers lost after them, answered calls) has a panel, so an
    operator sees which part moved."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    ratio = next(
        rule["expr"]
        for group in groups
        for rule in group["rules"]
        if rule.get("record") == "klawd:upstream_error_ratio:rate5m"
    )
    summed = set(METRIC.findall(ratio))
    assert "klawd_upstream_body_errors_total" in summed
    plotted = {m for e in dashboard_expressions() for m in METRIC.findall(e)}
    missing = {
        m
        for m in summed
        if m not in plotted and m.removesuffix("_count") + "_bucket" not in plotted
    }
    assert not missing, f"counters of the ratio without a panel: {sorted(missing)}"


def test_the_dashboard_plots_every_upstream_counter() -> None:
    """Each `klawd_upstream_*` metric the gateway defines has a panel (a new one gets its own,
    as the body errors and the images lost did)."""
    metrics = Metrics([], [], [], "sqlite")
    upstream = {
        family.name
        for family in metrics.registry.collect()
        if family.name.startswith("klawd_upstream_")
    }
    assert {"klawd_upstream_body_errors", "klawd_upstream_images_lost"} <= upstream
    plotted = {m for e in dashboard_expressions() for m in METRIC.findall(e)}
    missing = {
        name for name in upstream if not any(m == name or m.startswith(name + "_") for m in plotted)
    }
    assert not missing, f"upstream metrics without a panel: {sorted(missing)}"


def test_an_alert_watches_every_upstream_failure_counter() -> None:
    """Each counter of what an upstream failed to deliver is in an alert's expression (or in a
    recording rule one uses): calls that failed, answers lost after their headers, and images
    made and billed that no client got."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    recorded = {rule["record"]: rule["expr"] for rule in rules if "record" in rule}
    alerted: set[str] = set()
    for rule in rules:
        if "alert" in rule:
            expr = rule["expr"]
            for name, recording in recorded.items():
                if name in expr:
                    expr += "\n" + recording
            alerted |= set(METRIC.findall(expr))
    failures = {
        "klawd_upstream_errors_total",
        "klawd_upstream_body_errors_total",
        "klawd_upstream_images_lost_total",
    }
    assert not failures - alerted, f"failure counters no alert watches: {failures - alerted}"


def test_an_alert_watches_the_polls_polled_again() -> None:
    """A job's poll that failed transiently and was polled again (Replicate's predictions) is
    counted in `klawd_upstream_retries_total{kind="poll"}`: an alert selects that kind (a poll
    retried delays the client by a backoff; one retried `poll_retries` times loses the image)."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    selecting = [
        rule["alert"]
        for group in groups
        for rule in group["rules"]
        if "alert" in rule
        and re.search(r'klawd_upstream_retries_total\{[^}]*kind="poll"', rule["expr"])
    ]
    assert selecting, 'no alert watches klawd_upstream_retries_total{kind="poll"}'


@pytest.fixture
def prometheus(gateway: Gateway, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    target = gateway.base_url.removeprefix("http://")
    shutil.copy(RULES, tmp_path / "rules.yaml")
    (tmp_path / "prometheus.yml").write_text(
        f"""
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [rules.yaml]
scrape_configs:
  - job_name: klawd-gateway
    static_configs:
      - targets: ["{target}"]
"""
    )
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary("prometheus"),
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            wait_exit(process, 15)
        except subprocess.TimeoutExpired:
            process.kill()
            wait_exit(process, 5)
        log.close()


def query(prometheus: str, promql: str) -> list[dict[str, Any]]:
    try:
        response = httpx.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=5)
    except httpx.HTTPError:
        return []
    if response.status_code != 200:
        return []
    result: list[dict[str, Any]] = response.json()["data"]["result"]
    return result


def test_real_prometheus_scrapes_the_gateway_and_answers_a_query(
    prometheus: str, gateway: Gateway, api_key: str
) -> None:
    response = httpx.post(
        f"{gateway.base_url}/v1/chat/completions",
        headers={"authorization": f"Bearer {api_key}"},
        json={"model": "openai/gpt-fake", "messages": [{"role": "user", "content": "hi"}]},
        timeout=20,
    )
    assert response.status_code == 200
    promql = 'sum(klawd_http_requests_total{route="/v1/chat/completions",status_class="2xx"})'
    passed = running_deadline(60)
    result = query(prometheus, promql)
    while not result:
        assert not passed(), "Prometheus never returned the gateway's counter"
        time.sleep(0.5)
        result = query(prometheus, promql)
    assert float(result[0]["value"][1]) >= 1
    [up] = query(prometheus, 'up{job="klawd-gateway"}')
    assert up["value"][1] == "1"
    rules = httpx.get(f"{prometheus}/api/v1/rules", timeout=5).json()["data"]["groups"]
    assert {g["name"] for g in rules} == {"klawd.recording", "klawd.alerts"}
    assert all(r["health"] != "err" for g in rules for r in g["rules"])
