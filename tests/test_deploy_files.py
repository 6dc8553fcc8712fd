"""Dockerfile, docker-compose.yml and the Kubernetes manifests agree with the code: the
variables they set are ones the service reads, their commands are `finops`
subcommands, and the pieces point at each other. No Docker needed."""

from __future__ import annotations

import argparse
import importlib
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from service.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
READY_PATH, LIVE_PATH = "/health/ready", "/health/live"
FINOPS_IMAGE_ROLES = {"migrate": "migrate", "api": "serve", "worker": "worker"}

yaml: Any = importlib.import_module("yaml")  # PyYAML comes with uvicorn[standard]; it has no stubs here


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def service_environment() -> set[str]:
    """Every environment variable the service and the workers read."""
    patterns = [
        r"""\b_(?:env|int|bool)\(\s*["']([A-Z][A-Z0-9_]*)["']""",
        r"""os\.environ\.get\(\s*["']([A-Z][A-Z0-9_]*)["']""",
        r"""os\.getenv\(\s*["']([A-Z][A-Z0-9_]*)["']""",
        r"""os\.environ\[\s*["']([A-Z][A-Z0-9_]*)["']\s*\]""",
    ]
    names: set[str] = set()
    for package in ("service", "workers"):
        for path in (ROOT / package).rglob("*.py"):
            text = path.read_text()
            for pattern in patterns:
                names.update(re.findall(pattern, text))
    return names


def test_the_environment_scan_finds_the_settings() -> None:
    names = service_environment()
    assert {"CLICKHOUSE_URL", "JWT_SECRET", "REDIS_URL", "PORT", "PROMETHEUS_METRICS_ENABLED"} <= names
    assert "FINOPS_MIGRATIONS_DIR" in names  # read outside settings.py, by the migrations module
    assert "CLICKHOUSE_USER" not in names


def finops_command(argv: list[str]) -> argparse.Namespace:
    """`argv` parsed by the real `finops` parser (a wrong subcommand or flag fails)."""
    try:
        return build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"`finops {' '.join(argv)}` is not a valid finops command line")


def test_finops_command_refuses_what_the_cli_refuses() -> None:
    assert finops_command(["serve", "--no-migrate"]).command == "serve"
    with pytest.raises(pytest.fail.Exception):
        finops_command(["server"])
    with pytest.raises(pytest.fail.Exception):
        finops_command(["worker", "--concurrency", "4"])


# -- Dockerfile ---------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    instructions = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def test_dockerfile_builds_a_non_root_finops_image() -> None:
    instructions = dockerfile_instructions()
    final = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    stage = instructions[final:]
    assert stage[0][1].split()[0] == "python:3.11-slim"
    values = dict(stage)
    assert json.loads(values["ENTRYPOINT"]) == ["finops"]
    assert json.loads(values["CMD"]) == ["serve"]
    assert finops_command(json.loads(values["CMD"])).command == "serve"
    assert values["EXPOSE"].split() == ["8080"]
    user = values["USER"].split(":")[0]
    assert user not in {"root", "0"}
    assert "/health" in values["HEALTHCHECK"]
    assert "8080" in values["HEALTHCHECK"]
    # the project is installed with pip from pyproject.toml
    assert any(k == "COPY" and "pyproject.toml" in v for k, v in instructions)
    assert any(k == "RUN" and "pip wheel" in v and v.rstrip().endswith(" .") for k, v in instructions)
    assert any(k == "RUN" and "pip install" in v for k, v in stage)
    # the variables it sets are the service's (or Python's and pip's own)
    env = dict(re.findall(r"([A-Z][A-Z0-9_]*)=(\S+)", " ".join(v for k, v in stage if k == "ENV")))
    service_env = {name for name in env if not name.startswith(("PYTHON", "PIP_"))}
    assert service_env <= service_environment(), service_env - service_environment()
    # the migrations travel outside the package, where FINOPS_MIGRATIONS_DIR says
    workdir = values["WORKDIR"]
    [copied] = [v.split() for k, v in stage if k == "COPY" and v.startswith("clickhouse/migrations")]
    destination = copied[1] if copied[1].startswith("/") else str(Path(workdir) / copied[1])
    assert env["FINOPS_MIGRATIONS_DIR"] == destination.rstrip("/")
    assert env["HOST"] == "0.0.0.0"
    assert env["PORT"] == "8080"


def test_dockerignore_keeps_what_the_build_copies() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".venv", "data", ".git", "tests"} <= ignored
    copied = {"pyproject.toml", "README.md", "service", "workers", "clickhouse", "clickhouse/migrations"}
    assert not ignored & copied


# -- docker compose -----------------------------------------------------------------


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = load_yaml(ROOT / "docker-compose.yml")
    return loaded


def test_compose_runs_each_role_with_the_variables_the_service_reads() -> None:
    services = compose()["services"]
    assert {"clickhouse", "redis", "migrate", "api", "worker", "prometheus", "grafana"} <= set(services)
    assert services["clickhouse"]["image"].startswith("clickhouse/clickhouse-server:")
    known = service_environment()
    images = set()
    for name, role in FINOPS_IMAGE_ROLES.items():
        service = services[name]
        images.add(service["image"])
        assert service["build"] == "."
        assert finops_command(service["command"]).command == role, name
        env = service["environment"]
        assert isinstance(env, dict), name
        assert set(env) <= known, (name, set(env) - known)
        assert re.fullmatch(r"\$\{JWT_SECRET:\?[^}]+\}", env["JWT_SECRET"]), "JWT_SECRET must be required"
        clickhouse = urlparse(env["CLICKHOUSE_URL"])
        assert clickhouse.scheme == "http"
        assert (clickhouse.hostname, clickhouse.port) == ("clickhouse", 8123)
        assert clickhouse.path == "/finops"
        assert urlparse(env["REDIS_URL"]).hostname == "redis"
    assert len(images) == 1, "one image for every role"
    api = services["api"]
    assert api["environment"]["HOST"] == "0.0.0.0"
    assert "8080:8080" in api["ports"]
    for name in ("api", "worker"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["migrate"]["depends_on"]["clickhouse"]["condition"] == "service_healthy"
    assert services["migrate"]["restart"] == "no"


def host_mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path → host path of a service's bind mounts."""
    mounts = {}
    for volume in service.get("volumes", []):
        host, container, *_ = volume.split(":")
        if host.startswith("./"):
            assert (ROOT / host).exists(), f"{host} does not exist"
            mounts[container] = host
    return mounts


def test_compose_monitoring_scrapes_the_api_and_provisions_grafana() -> None:
    services = compose()["services"]
    prometheus = host_mounts(services["prometheus"])
    config = load_yaml(ROOT / prometheus["/etc/prometheus/prometheus.yml"])
    [job] = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    targets = [f"{name}:{sd['port']}" for sd in job.get("dns_sd_configs", []) for name in sd["names"]]
    targets += [t for static in job.get("static_configs", []) for t in static["targets"]]
    assert targets == ["api:8080"]

    grafana = services["grafana"]
    assert "grafana-clickhouse-datasource" in grafana["environment"]["GF_INSTALL_PLUGINS"].split(",")
    mounts = host_mounts(grafana)
    assert mounts["/etc/grafana/provisioning"] == "./dashboards/provisioning"
    [provider] = [
        provider
        for path in sorted((ROOT / "dashboards/provisioning/dashboards").glob("*.yaml"))
        for provider in load_yaml(path)["providers"]
    ]
    assert mounts[provider["options"]["path"]] == "./dashboards"
    assert list((ROOT / "dashboards").glob("*.json"))
    sources = [
        source
        for path in sorted((ROOT / "dashboards/provisioning/datasources").glob("*.yaml"))
        for source in load_yaml(path)["datasources"]
    ]
    [clickhouse] = [s for s in sources if s["type"] == "grafana-clickhouse-datasource"]
    assert clickhouse["jsonData"]["host"] in services
    assert clickhouse["jsonData"]["username"] == services["clickhouse"]["environment"]["CLICKHOUSE_USER"]
    assert clickhouse["secureJsonData"]["password"] == "$CLICKHOUSE_PASSWORD"
    assert "CLICKHOUSE_PASSWORD" in grafana["environment"]
    [prom] = [s for s in sources if s["type"] == "prometheus"]
    assert urlparse(prom["url"]).hostname in services


# -- Kubernetes -------------------------------------------------------------------------


def manifests() -> dict[str, list[dict[str, Any]]]:
    return {
        path.name: [doc for doc in yaml.safe_load_all(path.read_text()) if doc] for path in sorted(K8S.glob("*.yaml"))
    }


def resources(kind: str) -> list[dict[str, Any]]:
    return [
        doc
        for name, docs in manifests().items()
        if name not in {"kustomization.yaml", "secret.example.yaml"}
        for doc in docs
        if doc["kind"] == kind
    ]


def one(kind: str, component: str | None = None) -> dict[str, Any]:
    found = [
        doc
        for doc in resources(kind)
        if component is None or doc["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]
    assert len(found) == 1, (kind, component, len(found))
    return found[0]


def test_kustomization_lists_every_manifest_but_the_example_secret() -> None:
    files = set(manifests())
    [kustomization] = manifests()["kustomization.yaml"]
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed))
    assert set(listed) == files - {"kustomization.yaml", "secret.example.yaml"}
    assert kustomization["namespace"] == one("Namespace")["metadata"]["name"]
    images = {c["image"].split(":")[0] for kind in ("Deployment", "Job") for c in containers_of(resources(kind))}
    assert images == {image["name"] for image in kustomization["images"]}


def containers_of(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [container for doc in docs for container in doc["spec"]["template"]["spec"]["containers"]]


def test_config_map_and_example_secret_hold_only_variables_the_service_reads() -> None:
    known = service_environment()
    config = one("ConfigMap")["data"]
    assert set(config) <= known, set(config) - known
    assert all(isinstance(value, str) for value in config.values()), "ConfigMap values must be strings"
    [secret] = manifests()["secret.example.yaml"]
    assert secret["kind"] == "Secret"
    values = secret["stringData"]
    assert set(values) <= known, set(values) - known
    assert {"JWT_SECRET", "CLICKHOUSE_URL", "REDIS_URL"} <= set(values)
    assert not {"JWT_SECRET", "CLICKHOUSE_URL", "REDIS_URL"} & set(config), "secrets belong in the Secret"
    for name, value in values.items():
        assert value == "" or "REPLACE" in value, f"{name} must be a placeholder"
    assert urlparse(values["CLICKHOUSE_URL"]).scheme in {"http", "https"}
    # every pod takes both, by these names
    for container in containers_of(resources("Deployment") + resources("Job")):
        refs = {next(iter(ref.values()))["name"] for ref in container["envFrom"]}
        assert refs == {one("ConfigMap")["metadata"]["name"], secret["metadata"]["name"]}


def test_api_deployment_probes_resources_and_replicas() -> None:
    api = one("Deployment", "api")
    assert api["spec"]["replicas"] == 2
    pod = api["spec"]["template"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    [container] = pod["spec"]["containers"]
    assert finops_command(container["args"]).command == "serve"
    [port] = container["ports"]
    assert port["containerPort"] == 8080
    assert container["readinessProbe"]["httpGet"]["path"] == READY_PATH
    assert container["livenessProbe"]["httpGet"]["path"] == LIVE_PATH
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] in {port["name"], port["containerPort"]}
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])
    labels = pod["metadata"]["labels"]
    assert api["spec"]["selector"]["matchLabels"].items() <= labels.items()

    service = one("Service")
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] in {port["name"], port["containerPort"]}

    hpa = one("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": api["metadata"]["name"],
    }
    assert hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]

    pdb = one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] < api["spec"]["replicas"]


def test_worker_and_migrate_run_their_finops_subcommands() -> None:
    [worker] = one("Deployment", "worker")["spec"]["template"]["spec"]["containers"]
    assert finops_command(worker["args"]).command == "worker"
    job = one("Job", "migrate")
    [migrate] = job["spec"]["template"]["spec"]["containers"]
    assert finops_command(migrate["args"]).command == "migrate"
    assert job["spec"]["template"]["spec"]["restartPolicy"] in {"OnFailure", "Never"}
    for docs in (resources("Deployment"), resources("Job")):
        for container in containers_of(docs):
            assert "command" not in container, "the image's ENTRYPOINT is finops"
            assert {"cpu", "memory"} <= set(container["resources"]["limits"])
