"""deploy/: every manifest the kustomize overlays render validates against the Kubernetes
schemas (offline, kubernetes-validate), and the pieces fit together."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from gateway.settings import load_settings
from tests.conftest import REPO
from tests.kustomize import build

K8S = REPO / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30.0"
OVERLAYS = ["dev", "prod"]
PRESTOP_S = 5


def rendered(overlay: str) -> list[dict[str, Any]]:
    return build(K8S / "overlays" / overlay)


def one(objects: list[dict[str, Any]], kind: str, name: str = "klawd-gateway") -> dict[str, Any]:
    [obj] = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_manifest_validates_against_the_kubernetes_schema(overlay: str) -> None:
    objects = rendered(overlay)
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= kinds
    assert {"ConfigMap", "NetworkPolicy", "ServiceMonitor", "ServiceAccount"} <= kinds
    for obj in objects:
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: checked by the ServiceMonitor test below
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_config_map_holds_a_klawd_toml_the_gateway_accepts(overlay: str, tmp_path: Path) -> None:
    config = one(rendered(overlay), "ConfigMap", "klawd-config")["data"]["klawd.toml"]
    (tmp_path / "klawd.toml").write_text(config)
    settings = load_settings(tmp_path / "klawd.toml")
    assert settings.store.url.startswith(("redis://", "rediss://")), "replicas must share Redis"
    assert settings.server.metrics_port is not None


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_drain_within_the_grace_period_and_run_locked_down(overlay: str) -> None:
    objects = rendered(overlay)
    config = tomllib.loads(one(objects, "ConfigMap", "klawd-config")["data"]["klawd.toml"])
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    [container] = pod["containers"]
    drain = config["server"]["streams"]["drain_grace_s"]
    assert pod["terminationGracePeriodSeconds"] > PRESTOP_S + drain
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(PRESTOP_S)]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    # the only writable place is the emptyDir at /tmp, where the metrics files go
    env = {e["name"]: e for e in container["env"]}
    assert env["PROMETHEUS_MULTIPROC_DIR"]["value"].startswith("/tmp/")
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert env["KLAWD_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "klawd-admin"
    assert container["envFrom"] == [
        {"secretRef": {"name": "klawd-provider-keys", "optional": True}}
    ]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_and_service_monitor_find_the_pods(overlay: str) -> None:
    objects = rendered(overlay)
    labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    service = one(objects, "Service")
    assert service["spec"]["selector"].items() <= labels.items()
    monitor = one(objects, "ServiceMonitor")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    port_names = {p["name"] for p in service["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= port_names
    assert all(e["path"] == "/metrics" for e in monitor["spec"]["endpoints"])
    namespace = {"dev": "klawd-dev", "prod": "klawd"}[overlay]
    assert {o["metadata"]["namespace"] for o in objects} == {namespace}


def test_dev_runs_one_replica_and_its_own_redis() -> None:
    objects = rendered("dev")
    assert one(objects, "Deployment")["spec"]["replicas"] == 1
    redis = one(objects, "StatefulSet", "klawd-redis")
    assert redis["spec"]["replicas"] == 1
    assert one(objects, "Service", "klawd-redis")["spec"]["ports"][0]["port"] == 6379


def test_prod_runs_several_replicas_on_an_external_redis() -> None:
    objects = rendered("prod")
    assert one(objects, "Deployment")["spec"]["replicas"] >= 3
    assert one(objects, "HorizontalPodAutoscaler")["spec"]["minReplicas"] >= 3
    assert not [o for o in objects if o["kind"] == "StatefulSet"]
    config = one(objects, "ConfigMap", "klawd-config")["data"]["klawd.toml"]
    assert 'url = "rediss://' in config


def test_dockerfile_builds_the_wheel_then_runs_klawd_serve_as_non_root() -> None:
    text = (REPO / "deploy" / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)(?: AS (\w+))?", text, re.MULTILINE)
    assert len(stages) == 2 and stages[1][0] == "python:3.11-slim"
    assert "deploy/build-wheel.sh" in text
    assert re.search(r"^USER 10001$", text, re.MULTILINE)
    assert re.search(r"^HEALTHCHECK (?:.*\\\n)*.*/healthz", text, re.MULTILINE)
    assert re.search(r'^ENTRYPOINT \["klawd", "serve"\]$', text, re.MULTILINE)
