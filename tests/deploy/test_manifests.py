"""deploy/: the Kustomize build against the Kubernetes schemas, and every env name, port, probe
path and command in the manifests against the code's settings, routes and subcommands."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml  # type: ignore[import-untyped]

from dispatcher.adminserver import METRICS_PATH
from dispatcher.app import create_app
from dispatcher.cli import build_parser
from dispatcher.cli_ops import DASHBOARD_PORT, EXPORTER_PORT
from dispatcher.dashboard import dashboard_app
from dispatcher.exporter import exporter_app
from dispatcher.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
K8S_VERSION = "1.30.0"
SETTINGS = {f"DISPATCHER_{f.name.upper()}" for f in dataclasses.fields(Settings)}
POD_PORT, ADMIN_PORT = 8000, 9100


def kustomize(path: Path) -> list[dict[str, Any]]:
    """The rendered resources: `kubectl kustomize` when kubectl is here, else the listed files
    read directly (the base uses no patches, so the two differ only in the common labels)."""
    if shutil.which("kubectl"):
        out = subprocess.run(
            ["kubectl", "kustomize", str(path)], capture_output=True, text=True, check=True
        ).stdout
        return [d for d in yaml.safe_load_all(out) if d]
    spec = yaml.safe_load((path / "kustomization.yaml").read_text())
    docs = []
    for name in spec["resources"]:
        docs += [d for d in yaml.safe_load_all((path / name).read_text()) if d]
    return docs


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return kustomize(K8S)


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return list(doc["spec"]["template"]["spec"]["containers"])


def routes(app: Any) -> set[str]:
    return {r.path for r in app.routes}


@pytest.mark.parametrize("path", [K8S, K8S / "redis-example"], ids=["base", "redis-example"])
def test_kustomize_build_is_valid_kubernetes(path: Path) -> None:
    docs = kustomize(path)
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_base_has_every_piece(base: list[dict[str, Any]]) -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for d in base}
    assert {
        ("Deployment", "dispatcher-pod"),
        ("Deployment", "dispatcher-writer"),
        ("Deployment", "dispatcher-exporter"),
        ("Deployment", "dispatcher-dashboard"),
        ("Service", "dispatcher"),
        ("Ingress", "dispatcher"),
        ("PodDisruptionBudget", "dispatcher-pod"),
        ("HorizontalPodAutoscaler", "dispatcher-pod"),
        ("ConfigMap", "dispatcher-settings"),
        ("Secret", "dispatcher-secrets"),
    } <= kinds
    # Redis is external in the base; the StatefulSet is only the example's
    assert not by_kind(base, "StatefulSet")
    assert by_kind(kustomize(K8S / "redis-example"), "StatefulSet")
    exporter = by_kind(base, "Deployment")["dispatcher-exporter"]
    assert exporter["spec"]["replicas"] == 1  # two would double every sum


def test_env_names_are_settings(base: list[dict[str, Any]]) -> None:
    config = by_kind(base, "ConfigMap")["dispatcher-settings"]["data"]
    secret = by_kind(base, "Secret")["dispatcher-secrets"]["stringData"]
    assert set(config) | set(secret) <= SETTINGS
    assert "DISPATCHER_REDIS_URL" in secret and "DISPATCHER_REDIS_URL" not in config
    assert config["DISPATCHER_ADMIN_PORT"] == str(ADMIN_PORT)
    assert config["DISPATCHER_ADMIN_HOST"] == "0.0.0.0"
    Settings.from_env({**config, **secret})  # every value parses and passes validation
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    for name, service in compose["services"].items():
        env = service.get("environment") or {}
        names = {k for k in env if k.startswith("DISPATCHER_")}
        assert names <= SETTINGS, name


def test_pod_ports_probes_and_drain(base: list[dict[str, Any]]) -> None:
    pod = by_kind(base, "Deployment")["dispatcher-pod"]
    (container,) = containers(pod)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"ws": POD_PORT, "admin": ADMIN_PORT}
    command = container["command"]
    assert command[:2] == ["dispatcher", "serve"]
    assert command[command.index("--port") + 1] == str(POD_PORT)
    pod_routes = routes(create_app(Settings()))
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        assert container[probe]["httpGet"]["path"] == path
        assert path in pod_routes
        assert container[probe]["httpGet"]["port"] == "ws"
    annotations = pod["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(ADMIN_PORT)
    assert annotations["prometheus.io/path"] == METRICS_PATH
    # preStop sleep + the 1001 drain + uvicorn's 5 s graceful shutdown fit in the grace period
    sleep = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    grace = pod["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= sleep + 5 + 10
    assert pod["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    service = by_kind(base, "Service")["dispatcher"]
    assert {p["targetPort"] for p in service["spec"]["ports"]} == set(ports)
    ingress = by_kind(base, "Ingress")["dispatcher"]
    annotations = ingress["metadata"]["annotations"]
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) > 20 * 3
    (rule,) = ingress["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    assert "/v1/runners/{runner}/channel".startswith(path["path"])
    assert path["backend"]["service"]["port"]["name"] == "ws"


def test_exporter_dashboard_and_writer_commands(base: list[dict[str, Any]]) -> None:
    deployments = by_kind(base, "Deployment")
    settings = Settings()
    for name, port, app in (
        ("dispatcher-exporter", EXPORTER_PORT, exporter_app(settings)),
        ("dispatcher-dashboard", DASHBOARD_PORT, dashboard_app(settings)),
    ):
        (container,) = containers(deployments[name])
        command = container["command"]
        assert command[command.index("--port") + 1] == str(port)
        assert [p["containerPort"] for p in container["ports"]] == [port]
        probe = container["readinessProbe"]["httpGet"]["path"]
        assert probe in routes(app)
    (writer,) = containers(deployments["dispatcher-writer"])
    assert writer["command"] == ["worker-bridge"]
    assert METRICS_PATH in routes(exporter_app(settings))


def _dispatcher_commands() -> list[list[str]]:
    """Every `dispatcher ...` command line in the manifests, compose file and Dockerfile."""
    found: list[list[str]] = []
    for doc in kustomize(K8S):
        if doc["kind"] == "Deployment":
            found += [c["command"] for c in containers(doc)]
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    for service in compose["services"].values():
        if isinstance(service.get("command"), list) and "entrypoint" not in service:
            found.append(service["command"])
    cmd = re.search(r"^CMD (\[.*\])$", (DEPLOY / "Dockerfile").read_text(), re.M)
    assert cmd is not None
    found.append(yaml.safe_load(cmd.group(1)))
    return [c for c in found if c[0] == "dispatcher"]


def test_every_dispatcher_command_parses() -> None:
    commands = _dispatcher_commands()
    assert {c[1] for c in commands} == {"serve", "metrics-exporter", "dashboard"}
    for command in commands:
        build_parser().parse_args(command[1:])


def test_compose_wiring() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert "--appendonly" in services["redis"]["command"]
    pods = [
        n for n, s in services.items() if s.get("command", [None])[:2] == ["dispatcher", "serve"]
    ]
    assert sorted(pods) == ["pod1", "pod2"]
    for name in pods:
        assert services[name]["environment"]["DISPATCHER_ADMIN_PORT"] == str(ADMIN_PORT)
    writers = [n for n, s in services.items() if s.get("command") == ["worker-bridge"]]
    runners = [n for n, s in services.items() if "dispatch-runner" in str(s.get("command"))]
    assert len(writers) == 2 and len(runners) == 2
    haproxy = (DEPLOY / "haproxy" / "haproxy.cfg").read_text()
    for name in pods:
        assert f"server {name} {name}:{POD_PORT} check" in haproxy
    assert "httpchk GET /readyz" in haproxy and "timeout tunnel" in haproxy
    prometheus = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    targets = {
        job["job_name"]: job["static_configs"][0]["targets"] for job in prometheus["scrape_configs"]
    }
    assert targets["dispatcher-pods"] == [f"{n}:{ADMIN_PORT}" for n in pods]
    assert targets["dispatcher-exporter"] == [f"exporter:{EXPORTER_PORT}"]
