"""deploy/Dockerfile, deploy/docker-compose.yml and the Kubernetes manifests agree with the
code and with their formats: the manifests validate against the Kubernetes JSON schemas
(kubernetes-validate, offline), the compose file parses and uses only Compose keys, the
variables they set are ones the service reads, their commands are `finops` subcommands,
the scrape configurations find the API and the workers, and the pieces point at each
other. No Docker and no cluster needed."""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from service.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "docker-compose.yml"
READY_PATH, LIVE_PATH = "/health/ready", "/health/live"
API_PORT, WORKER_METRICS_PORT = 8080, 9100
FINOPS_IMAGE_ROLES = {"migrate": "migrate", "api": "serve", "worker": "worker"}

# Settings the deploy files set that the service does not read yet (it will shortly).
# A name here must be set by some deploy file, so the list cannot rot.
PENDING_SETTINGS = {"WORKER_METRICS_PORT"}

# Kubernetes versions the manifests must be valid for: the oldest supported here and the
# newest whose schemas kubernetes-validate bundles.
OLDEST_KUBERNETES = "1.30"

yaml: Any = importlib.import_module("yaml")  # PyYAML comes with uvicorn[standard]; it has no stubs here
kubernetes_validate: Any = importlib.import_module("kubernetes_validate")  # no stubs either


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def service_environment() -> set[str]:
    """Every environment variable the service and the workers read."""
    patterns = [
        r"""\b_(?:env|int|bool|float)\(\s*["']([A-Z][A-Z0-9_]*)["']""",
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


def known_settings() -> set[str]:
    return service_environment() | PENDING_SETTINGS


def test_the_environment_scan_finds_the_settings() -> None:
    names = service_environment()
    assert {"CLICKHOUSE_URL", "JWT_SECRET", "REDIS_URL", "PORT", "PROMETHEUS_METRICS_ENABLED"} <= names
    assert "FINOPS_MIGRATIONS_DIR" in names  # read outside settings.py, by the migrations module
    assert "CLICKHOUSE_USER" not in names


def test_pending_settings_are_set_by_the_deploy_files() -> None:
    texts = [path.read_text() for path in sorted(DEPLOY.rglob("*")) if path.is_file()]
    for name in PENDING_SETTINGS:
        assert any(re.search(rf"\b{name}\b", text) for text in texts), f"{name} is pending but set nowhere"


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

Instruction = tuple[str, str]


def dockerfile_stages() -> list[list[Instruction]]:
    """The Dockerfile's instructions (keyword, arguments), one list per stage."""
    text = DOCKERFILE.read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    stages: list[list[Instruction]] = []
    for line in joined.splitlines():
        if not line.strip():
            continue
        keyword, _, rest = line.strip().partition(" ")
        instruction = (keyword.upper(), re.sub(r"\s+", " ", rest.strip()))
        if instruction[0] == "FROM":
            stages.append([])
        assert stages, "the Dockerfile must start with FROM"
        stages[-1].append(instruction)
    return stages


def stage_name(stage: list[Instruction]) -> str | None:
    match = re.fullmatch(r"\S+ AS (\S+)", stage[0][1], flags=re.IGNORECASE)
    return match[1] if match else None


def test_dockerfile_builds_the_wheel_in_one_stage_and_runs_it_slim_and_non_root() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage: a build stage and a runtime stage"
    build, runtime = stages[0], stages[-1]
    # build: the project (from pyproject.toml) and its dependencies as wheels
    builder = stage_name(build)
    assert builder
    assert any(k == "COPY" and "pyproject.toml" in v for k, v in build)
    assert any(k == "RUN" and "pip wheel" in v and v.rstrip().endswith(" .") for k, v in build)
    # runtime: slim Python, installs those wheels from the build stage, builds nothing
    assert runtime[0][1].split()[0] == "python:3.11-slim"
    [install] = [v for k, v in runtime if k == "RUN" and "pip install" in v]
    assert f"from={builder}" in install or any(k == "COPY" and f"--from={builder}" in v for k, v in runtime)
    assert "--no-index" in install
    assert "finops-svc" in install
    assert not any(k == "RUN" and re.search(r"pip wheel|apt-get|gcc|build-essential", v) for k, v in runtime)
    values = dict(runtime)
    assert json.loads(values["ENTRYPOINT"]) == ["finops"]
    assert json.loads(values["CMD"]) == ["serve"]
    assert finops_command(json.loads(values["CMD"])).command == "serve"
    assert set(values["EXPOSE"].split()) == {str(API_PORT), str(WORKER_METRICS_PORT)}
    user = values["USER"].split(":")[0]
    assert user.isdigit(), "a numeric user, so runAsNonRoot can check it"
    assert user != "0"
    assert LIVE_PATH in values["HEALTHCHECK"]
    assert "PORT" in values["HEALTHCHECK"]
    assert str(API_PORT) in values["HEALTHCHECK"]
    # the variables it sets are the service's (or Python's and pip's own)
    env = dict(re.findall(r"([A-Z][A-Z0-9_]*)=(\S+)", " ".join(v for k, v in runtime if k == "ENV")))
    service_env = {name for name in env if not name.startswith(("PYTHON", "PIP_"))}
    assert service_env <= service_environment(), service_env - service_environment()
    # the migrations travel outside the package, where FINOPS_MIGRATIONS_DIR says
    workdir = values["WORKDIR"]
    [copied] = [v.split() for k, v in runtime if k == "COPY" and v.startswith("clickhouse/migrations")]
    destination = copied[1] if copied[1].startswith("/") else str(Path(workdir) / copied[1])
    assert env["FINOPS_MIGRATIONS_DIR"] == destination.rstrip("/")
    assert env["HOST"] == "0.0.0.0"
    assert env["PORT"] == str(API_PORT)


def test_dockerignore_at_the_build_context_keeps_what_the_build_copies() -> None:
    # the build context is the repository root (see the compose file), where Docker reads it
    assert not (DEPLOY / ".dockerignore").exists()
    assert not (DEPLOY / "Dockerfile.dockerignore").exists()
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".venv", "data", ".git", "tests", "deploy"} <= ignored
    copied = {
        source
        for stage in dockerfile_stages()
        for keyword, value in stage
        if keyword == "COPY" and not value.startswith("--")
        for source in value.split()[:-1]
    }
    assert {"pyproject.toml", "README.md", "service", "workers", "clickhouse/migrations"} <= copied
    for source in copied:
        assert (ROOT / source).exists(), f"COPY {source}: not in the build context"
        parts = Path(source).parts
        assert not {str(Path(*parts[: i + 1])) for i in range(len(parts))} & ignored, f"{source} is ignored"


# -- docker compose -----------------------------------------------------------------

# The Compose specification's top-level and service keys (extensions start with x-):
# an unknown key is a typo that `docker compose` refuses.
COMPOSE_TOP_LEVEL = {"version", "name", "include", "services", "networks", "volumes", "secrets", "configs"}
COMPOSE_SERVICE = {
    "annotations", "attach", "blkio_config", "build", "cap_add", "cap_drop", "cgroup", "cgroup_parent",
    "command", "configs", "container_name", "cpu_count", "cpu_percent", "cpu_period", "cpu_quota",
    "cpu_rt_period", "cpu_rt_runtime", "cpu_shares", "cpus", "cpuset", "credential_spec", "depends_on",
    "deploy", "develop", "device_cgroup_rules", "devices", "dns", "dns_opt", "dns_search", "domainname",
    "entrypoint", "env_file", "environment", "expose", "extends", "external_links", "extra_hosts", "gpus",
    "group_add", "healthcheck", "hostname", "image", "init", "ipc", "isolation", "labels", "links",
    "logging", "mac_address", "mem_limit", "mem_reservation", "mem_swappiness", "memswap_limit",
    "network_mode", "networks", "oom_kill_disable", "oom_score_adj", "pid", "pids_limit", "platform",
    "ports", "post_start", "pre_stop", "privileged", "profiles", "pull_policy", "read_only", "restart",
    "runtime", "scale", "secrets", "security_opt", "shm_size", "stdin_open", "stop_grace_period",
    "stop_signal", "storage_opt", "sysctls", "tmpfs", "tty", "ulimits", "user", "userns_mode", "uts",
    "volumes", "volumes_from", "working_dir",
}  # fmt: skip
COMPOSE_BUILD = {"context", "dockerfile", "args", "target", "labels", "cache_from", "cache_to", "tags", "platforms"}
COMPOSE_HEALTHCHECK = {"test", "interval", "timeout", "retries", "start_period", "start_interval", "disable"}
COMPOSE_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
COMPOSE_RESTART = {"no", "always", "on-failure", "unless-stopped"}


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = load_yaml(COMPOSE)
    return loaded


def interpolate(value: str, environment: dict[str, str]) -> str:
    """Compose's variable interpolation: $VAR, ${VAR}, ${VAR:-default}, ${VAR-default},
    ${VAR:?error}, ${VAR?error}; $$ is a literal $."""

    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["name"] or match["bare"]
        operator, argument = match["operator"], match["argument"] or ""
        value = environment.get(name)
        if operator in {":-", "-"}:
            return argument if value is None or (operator == ":-" and not value) else value
        if operator in {":?", "?"}:
            if value is None or (operator == ":?" and not value):
                raise ValueError(f"{name}: {argument}")
            return value
        return value or ""

    pattern = r"(?P<escaped>\$\$)|\$\{(?P<name>\w+)(?:(?P<operator>:?[-?])(?P<argument>[^}]*))?\}|\$(?P<bare>\w+)"
    return re.sub(pattern, replace, value)


def test_interpolate_follows_compose() -> None:
    environment = {"SET": "x", "EMPTY": ""}
    assert interpolate("a${SET}b $SET $$SET", environment) == "axb x $SET"
    assert interpolate("${UNSET:-d} ${EMPTY:-d} ${EMPTY-d} ${SET:-d}", environment) == "d d  x"
    assert interpolate("${SET:?needed}", environment) == "x"
    with pytest.raises(ValueError, match="UNSET: set it"):
        interpolate("${UNSET:?set it}", environment)


def test_compose_file_parses_and_uses_only_compose_keys() -> None:
    spec = compose()
    assert set(spec) - COMPOSE_TOP_LEVEL <= {key for key in spec if key.startswith("x-")}
    assert spec["name"] == "finops", "a project name, or Compose would name it after the deploy folder"
    named_volumes = set(spec.get("volumes") or {})
    for name, service in spec["services"].items():
        unknown = {key for key in service if key not in COMPOSE_SERVICE and not key.startswith("x-")}
        assert not unknown, (name, unknown)
        assert "image" in service or "build" in service, name
        if isinstance(service.get("build"), dict):
            assert set(service["build"]) <= COMPOSE_BUILD, name
        assert set(service.get("healthcheck", {})) <= COMPOSE_HEALTHCHECK, name
        assert service.get("restart", "no") in COMPOSE_RESTART, name
        depends_on = service.get("depends_on", {})
        for dependency in depends_on:
            assert dependency in spec["services"], (name, dependency)
            if isinstance(depends_on, dict):
                assert depends_on[dependency]["condition"] in COMPOSE_CONDITIONS, (name, dependency)
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source.startswith((".", "/")) or source in named_volumes, (name, volume)
        for port in [*service.get("ports", []), *service.get("expose", [])]:
            assert re.fullmatch(r"(?:\d+:)?\d+", str(port)), (name, port)
    # every value interpolates, and JWT_SECRET is required
    text = COMPOSE.read_text()
    assert interpolate(text, {"JWT_SECRET": "secret"})
    with pytest.raises(ValueError, match="JWT_SECRET"):
        interpolate(text, {})


def test_compose_builds_the_image_from_the_repository_root() -> None:
    services = compose()["services"]
    builds = {json.dumps(services[name]["build"], sort_keys=True) for name in FINOPS_IMAGE_ROLES}
    [build] = [json.loads(b) for b in builds]
    context = (COMPOSE.parent / build["context"]).resolve()
    assert context == ROOT
    assert (context / build["dockerfile"]).resolve() == DOCKERFILE


def test_compose_runs_each_role_with_the_variables_the_service_reads() -> None:
    services = compose()["services"]
    assert {"clickhouse", "redis", "migrate", "api", "worker", "prometheus", "grafana"} <= set(services)
    assert services["clickhouse"]["image"].startswith("clickhouse/clickhouse-server:")
    known = known_settings()
    images = set()
    for name, role in FINOPS_IMAGE_ROLES.items():
        service = services[name]
        images.add(service["image"])
        assert finops_command(service["command"]).command == role, name
        env = service["environment"]
        assert isinstance(env, dict), name
        assert set(env) <= known, (name, set(env) - known)
        assert re.fullmatch(r"\$\{JWT_SECRET:\?[^}]+\}", env["JWT_SECRET"]), "JWT_SECRET must be required"
        clickhouse = urlparse(interpolate(env["CLICKHOUSE_URL"], {}))
        assert clickhouse.scheme == "http"
        assert (clickhouse.hostname, clickhouse.port) == ("clickhouse", 8123)
        assert clickhouse.path == "/finops"
        assert urlparse(env["REDIS_URL"]).hostname == "redis"
    assert len(images) == 1, "one image for every role"
    api = services["api"]
    assert api["environment"]["HOST"] == "0.0.0.0"
    assert f"{API_PORT}:{API_PORT}" in api["ports"]
    worker = services["worker"]
    assert worker["environment"]["WORKER_METRICS_PORT"] == str(WORKER_METRICS_PORT)
    assert str(WORKER_METRICS_PORT) in worker["expose"]
    for name in ("api", "worker"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["migrate"]["depends_on"]["clickhouse"]["condition"] == "service_healthy"
    assert services["migrate"]["restart"] == "no"


def host_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path → host path (resolved from the compose file's folder) of a service's bind mounts."""
    mounts = {}
    for volume in service.get("volumes", []):
        host, container, *_ = volume.split(":")
        if host.startswith("."):
            path = (COMPOSE.parent / host).resolve()
            assert path.exists(), f"{host} does not exist"
            mounts[container] = path
    return mounts


def dns_targets(job: dict[str, Any]) -> list[str]:
    targets = [f"{name}:{sd['port']}" for sd in job.get("dns_sd_configs", []) for name in sd["names"]]
    return targets + [t for static in job.get("static_configs", []) for t in static["targets"]]


def test_compose_monitoring_scrapes_the_api_and_the_workers_and_provisions_grafana() -> None:
    services = compose()["services"]
    prometheus = host_mounts(services["prometheus"])
    config = yaml.safe_load(prometheus["/etc/prometheus/prometheus.yml"].read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert all(job["metrics_path"] == "/metrics" for job in jobs.values())
    targets = sorted(target for job in jobs.values() for target in dns_targets(job))
    assert targets == [f"api:{API_PORT}", f"worker:{WORKER_METRICS_PORT}"]
    assert set(services["prometheus"]["depends_on"]) == {"api", "worker"}

    grafana = services["grafana"]
    assert "grafana-clickhouse-datasource" in grafana["environment"]["GF_INSTALL_PLUGINS"].split(",")
    mounts = host_mounts(grafana)
    assert mounts["/etc/grafana/provisioning"] == ROOT / "dashboards" / "provisioning"
    [provider] = [
        provider
        for path in sorted((ROOT / "dashboards/provisioning/dashboards").glob("*.yaml"))
        for provider in load_yaml(path)["providers"]
    ]
    dashboards = mounts[provider["options"]["path"]]
    assert dashboards == ROOT / "dashboards"
    assert list(dashboards.glob("*.json"))
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


def kubernetes_versions() -> list[str]:
    return [OLDEST_KUBERNETES, kubernetes_validate.latest_version()]


def test_every_manifest_is_valid_against_the_kubernetes_schemas() -> None:
    """Strict: an unknown field (a typo) fails as well as a wrong type or a missing field;
    a kind or apiVersion the version does not serve (autoscaling/v2beta2, policy/v1beta1)
    has no schema and fails too."""
    validated = []
    for name, docs in manifests().items():
        if name == "kustomization.yaml":
            continue  # kustomize's own file, not a Kubernetes resource
        for doc in docs:
            for version in kubernetes_versions():
                kubernetes_validate.validate(doc, version, strict=True)
            validated.append(doc["kind"])
    assert {
        "Namespace",
        "ConfigMap",
        "Secret",
        "Job",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    } <= set(validated)
    assert one("HorizontalPodAutoscaler")["apiVersion"] == "autoscaling/v2"
    assert one("PodDisruptionBudget")["apiVersion"] == "policy/v1"


def test_the_schema_validation_refuses_broken_manifests() -> None:
    api = one("Deployment", "api")
    latest = kubernetes_validate.latest_version()
    kubernetes_validate.validate(api, latest, strict=True)

    wrong_type = copy.deepcopy(api)
    wrong_type["spec"]["replicas"] = "two"
    typo = copy.deepcopy(api)
    typo["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": READY_PATH}}
    missing = copy.deepcopy(api)
    del missing["spec"]["template"]["spec"]["containers"][0]["name"]
    bad_port = copy.deepcopy(api)
    bad_port["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "http"
    for broken in (wrong_type, typo, missing, bad_port):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, latest, strict=True)

    for kind, retired in (
        ("HorizontalPodAutoscaler", "autoscaling/v2beta2"),
        ("PodDisruptionBudget", "policy/v1beta1"),
    ):
        old = copy.deepcopy(one(kind))
        old["apiVersion"] = retired
        with pytest.raises(kubernetes_validate.SchemaNotFoundError):
            kubernetes_validate.validate(old, OLDEST_KUBERNETES, strict=True)


def test_kustomization_lists_every_manifest_but_the_example_secret() -> None:
    files = set(manifests())
    [kustomization] = manifests()["kustomization.yaml"]
    assert (kustomization["apiVersion"], kustomization["kind"]) == ("kustomize.config.k8s.io/v1beta1", "Kustomization")
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed))
    assert set(listed) == files - {"kustomization.yaml", "secret.example.yaml"}
    assert kustomization["namespace"] == one("Namespace")["metadata"]["name"]
    images = {c["image"].split(":")[0] for kind in ("Deployment", "Job") for c in containers_of(resources(kind))}
    assert images == {image["name"] for image in kustomization["images"]}


def containers_of(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [container for doc in docs for container in doc["spec"]["template"]["spec"]["containers"]]


def config_map() -> dict[str, Any]:
    [found] = [doc for doc in resources("ConfigMap") if doc["metadata"]["name"] == "finops-config"]
    return found


def test_config_map_and_example_secret_hold_only_variables_the_service_reads() -> None:
    known = known_settings()
    config = config_map()["data"]
    assert set(config) <= known, set(config) - known
    assert all(isinstance(value, str) for value in config.values()), "ConfigMap values must be strings"
    assert config["PORT"] == str(API_PORT)
    assert config["WORKER_METRICS_PORT"] == str(WORKER_METRICS_PORT)
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
        assert refs == {config_map()["metadata"]["name"], secret["metadata"]["name"]}


def test_api_deployment_probes_resources_and_replicas() -> None:
    api = one("Deployment", "api")
    assert api["spec"]["replicas"] == 2
    pod = api["spec"]["template"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    [container] = pod["spec"]["containers"]
    assert finops_command(container["args"]).command == "serve"
    [port] = container["ports"]
    assert port["containerPort"] == API_PORT
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
    worker_deployment = one("Deployment", "worker")
    [worker] = worker_deployment["spec"]["template"]["spec"]["containers"]
    assert finops_command(worker["args"]).command == "worker"
    # the worker serves its metrics on WORKER_METRICS_PORT; liveness asks that server
    [port] = worker["ports"]
    assert (port["name"], port["containerPort"]) == ("metrics", WORKER_METRICS_PORT)
    assert worker["livenessProbe"]["httpGet"] == {"path": "/metrics", "port": "metrics"}
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(worker["resources"][kind])
    job = one("Job", "migrate")
    [migrate] = job["spec"]["template"]["spec"]["containers"]
    assert finops_command(migrate["args"]).command == "migrate"
    assert job["spec"]["template"]["spec"]["restartPolicy"] in {"OnFailure", "Never"}
    for docs in (resources("Deployment"), resources("Job")):
        for container in containers_of(docs):
            assert "command" not in container, "the image's ENTRYPOINT is finops"
            assert {"cpu", "memory"} <= set(container["resources"]["limits"])


# -- Prometheus on Kubernetes: service discovery and relabelling, as Prometheus does them --


def sanitize(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def discovered_targets(pod: dict[str, Any], namespace: str, ip: str, phase: str = "Running") -> list[dict[str, str]]:
    """The targets Prometheus' kubernetes_sd_configs (role: pod) makes of a pod template:
    one per declared container port, one without a port per container declaring none."""
    metadata = pod["metadata"]
    common = {
        "__meta_kubernetes_namespace": namespace,
        "__meta_kubernetes_pod_name": f"{metadata['labels']['app.kubernetes.io/component']}-0",
        "__meta_kubernetes_pod_ip": ip,
        "__meta_kubernetes_pod_phase": phase,
    }
    for key, value in metadata.get("labels", {}).items():
        common[f"__meta_kubernetes_pod_label_{sanitize(key)}"] = value
        common[f"__meta_kubernetes_pod_labelpresent_{sanitize(key)}"] = "true"
    for key, value in metadata.get("annotations", {}).items():
        common[f"__meta_kubernetes_pod_annotation_{sanitize(key)}"] = value
        common[f"__meta_kubernetes_pod_annotationpresent_{sanitize(key)}"] = "true"
    targets = []
    for container in pod["spec"]["containers"]:
        base = {**common, "__meta_kubernetes_pod_container_name": container["name"]}
        for port in container.get("ports", []):
            targets.append(
                {
                    **base,
                    "__address__": f"{ip}:{port['containerPort']}",
                    "__meta_kubernetes_pod_container_port_name": port.get("name", ""),
                    "__meta_kubernetes_pod_container_port_number": str(port["containerPort"]),
                }
            )
        if not container.get("ports"):
            targets.append({**base, "__address__": ip})
    return targets


def relabel(labels: dict[str, str], configs: list[dict[str, Any]]) -> dict[str, str] | None:
    """Prometheus' relabelling (keep, drop, replace); None when the target is dropped."""
    labels = dict(labels)
    for config in configs:
        action = config.get("action", "replace")
        assert action in {"keep", "drop", "replace"}, f"add {action} to this relabel()"
        regex = re.compile(config.get("regex", "(.*)"))
        value = config.get("separator", ";").join(labels.get(name, "") for name in config.get("source_labels", []))
        match = regex.fullmatch(value)  # Prometheus anchors every regex
        if action == "keep" and not match:
            return None
        if action == "drop" and match:
            return None
        if action == "replace" and match:
            replacement = config.get("replacement", "$1")
            result = match.expand(re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: rf"\g<{m[1] or m[2]}>", replacement))
            if result:
                labels[config["target_label"]] = result
            else:
                labels.pop(config["target_label"], None)
    return {name: value for name, value in labels.items() if not name.startswith("__meta_")}


def scrape(job: dict[str, Any], pod: dict[str, Any], namespace: str, ip: str, phase: str = "Running") -> list[str]:
    """The URLs Prometheus scrapes for `job` in a pod made from this template."""
    [sd] = job["kubernetes_sd_configs"]
    if namespace not in sd.get("namespaces", {}).get("names", [namespace]):
        return []
    urls = []
    for target in discovered_targets(pod, namespace, ip, phase):
        start = {**target, "__metrics_path__": job.get("metrics_path", "/metrics"), "__scheme__": "http"}
        labels = relabel(start, job.get("relabel_configs", []))
        if labels is not None:
            urls.append(f"{labels['__scheme__']}://{labels['__address__']}{labels['__metrics_path__']}")
    return urls


def test_relabel_follows_prometheus() -> None:
    labels = {"__address__": "10.0.0.1:80", "a": "x", "b": "y"}
    assert relabel(labels, [{"source_labels": ["a"], "regex": "x", "action": "keep"}]) == labels
    assert relabel(labels, [{"source_labels": ["a"], "regex": "xx?y", "action": "keep"}]) is None
    assert relabel(labels, [{"source_labels": ["a"], "regex": ".", "action": "drop"}]) is None
    replaced = relabel(
        labels, [{"source_labels": ["a", "b"], "regex": "(.+);(.+)", "replacement": "$2-${1}", "target_label": "c"}]
    )
    assert replaced == {**labels, "c": "y-x"}
    assert relabel(labels, [{"source_labels": ["missing"], "regex": "(.+)", "target_label": "a"}]) == labels


def test_kubernetes_scrape_config_finds_the_api_and_the_workers() -> None:
    [monitoring] = [doc for doc in resources("ConfigMap") if doc["metadata"]["name"] != "finops-config"]
    config = yaml.safe_load(monitoring["data"]["prometheus.yml"])
    [job] = config["scrape_configs"]
    [sd] = job["kubernetes_sd_configs"]
    assert sd["role"] == "pod"
    [kustomization] = manifests()["kustomization.yaml"]
    namespace = kustomization["namespace"]
    assert sd["namespaces"]["names"] == [namespace]

    api = one("Deployment", "api")["spec"]["template"]
    worker = one("Deployment", "worker")["spec"]["template"]
    migrate = one("Job", "migrate")["spec"]["template"]
    assert scrape(job, api, namespace, "10.1.0.7") == [f"http://10.1.0.7:{API_PORT}/metrics"]
    assert scrape(job, worker, namespace, "10.1.0.8") == [f"http://10.1.0.8:{WORKER_METRICS_PORT}/metrics"]
    assert scrape(job, migrate, namespace, "10.1.0.9") == []  # a Job that exits serves no metrics
    assert scrape(job, api, namespace, "10.1.0.7", phase="Pending") == []
    assert scrape(job, api, "elsewhere", "10.1.0.7") == []
    # the pods' annotations name the ports they listen on
    for pod, port in ((api, API_PORT), (worker, WORKER_METRICS_PORT)):
        annotations = pod["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(port)
        assert annotations["prometheus.io/path"] == "/metrics"
        [container] = pod["spec"]["containers"]
        assert port in {p["containerPort"] for p in container["ports"]}
    # each target keeps its component and pod, so the dashboards can tell them apart
    api_target = discovered_targets(api, namespace, "10.1.0.7")[0]
    labels = relabel({**api_target, "__metrics_path__": "/metrics"}, job["relabel_configs"])
    assert labels is not None
    assert (labels["component"], labels["namespace"]) == ("api", namespace)
    assert labels["pod"]
