"""`finops` as a user runs it: real subprocesses, each on its own embedded ClickHouse path.

chDB allows one data path per process and this pytest process holds the session path,
so every command here runs as a subprocess with CLICKHOUSE_URL=chdb://<tmp>/ch.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from service.auth.principal import Role
from service.auth.tokens import DEVELOPMENT_SECRET, issue_token
from service.usage.demo import TENANTS, TRAFFIC
from tests.conftest import JWT_SECRET

_SCRIPT = Path(sys.executable).parent / "finops"
FINOPS = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "service.cli"]
# Every variable the CLI reads; the caller's shell must not leak into these tests.
FINOPS_VARS = (
    "JWT_SECRET",
    "JWT_ALGORITHM",
    "JWT_EXPIRATION_MINUTES",
    "FINOPS_ENV",
    "FINOPS_API_URL",
    "FINOPS_MIGRATIONS_DIR",
    "CLICKHOUSE_URL",
    "CLICKHOUSE_DATABASE",
    "HOST",
    "PORT",
    "REDIS_URL",
)
COMMAND_TIMEOUT_S = 90
START_DEADLINE_S = 60


# -- helpers -----------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def cli_env(data_dir: Path, **overrides: str | None) -> dict[str, str]:
    """A clean environment: embedded ClickHouse under `data_dir`, no service at FINOPS_API_URL."""
    env = {k: v for k, v in os.environ.items() if k not in FINOPS_VARS}
    env.update(
        CLICKHOUSE_URL=f"chdb://{data_dir}/ch",
        CLICKHOUSE_DATABASE="finops",
        FINOPS_API_URL=url(free_port()),  # nothing listens there
        HOST="127.0.0.1",
        PYTHONUNBUFFERED="1",
    )
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str

    def line(self, prefix: str) -> str:
        """The first stderr line starting with `prefix` (the CLI's one-line report)."""
        for line in self.stderr.splitlines():
            if line.startswith(prefix):
                return line
        raise AssertionError(f"no stderr line starts with {prefix!r}:\n{self.stderr}")


def finops(*args: str, env: dict[str, str], cwd: Path, timeout: float = COMMAND_TIMEOUT_S) -> Run:
    """Run `finops ARGS` to completion (killed if it outlives `timeout`)."""
    done = subprocess.run(
        [*FINOPS, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    return Run(done.returncode, done.stdout, done.stderr)


class Server:
    """`finops serve` in a subprocess, logs in files; always stopped by its owner."""

    def __init__(self, env: dict[str, str], cwd: Path, name: str, *extra: str) -> None:
        self.port = free_port()
        self.url = url(self.port)
        self._log = cwd / f"{name}.log"
        with self._log.open("wb") as log:
            self.process = subprocess.Popen(
                [*FINOPS, "serve", "--port", str(self.port), *extra],
                env=env,
                cwd=cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def logs(self) -> str:
        return self._log.read_text(errors="replace")

    def wait_until(self, deadline_s: float = START_DEADLINE_S) -> httpx.Response | None:
        """The first answer of GET /health, or None when the process exited first."""
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return None
            try:
                return httpx.get(self.url + "/health", timeout=2)
            except httpx.HTTPError:
                time.sleep(0.2)
        raise AssertionError(f"finops serve did not answer within {deadline_s}s:\n{self.logs()}")

    def wait_healthy(self) -> None:
        response = self.wait_until()
        if response is None or response.status_code != 200:
            raise AssertionError(f"finops serve is not healthy ({response!r}):\n{self.logs()}")

    def stop(self) -> int:
        """SIGTERM, then SIGKILL if it does not exit; returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        return int(self.process.returncode)


def list_all_events(base_url: str) -> list[dict[str, Any]]:
    """Every stored event through GET /usage-events, paging with an admin token."""
    token = issue_token(JWT_SECRET, role=Role.ADMIN, minutes=5)
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
        while True:
            params = {"limit": "1000", **({"cursor": cursor} if cursor else {})}
            response = http.get("/usage-events", params=params)
            assert response.status_code == 200, response.text
            page = response.json()
            items += page["items"]
            cursor = page["next_cursor"]
            if not cursor:
                return items


def decode(token: str, secret: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(
        token, secret, algorithms=["HS256"], options={"require": ["exp", "iat", "sub", "role"]}
    )
    return claims


def assert_no_traceback(run: Run) -> None:
    assert "Traceback" not in run.stderr, run.stderr
    assert "Traceback" not in run.stdout, run.stdout


# -- finops token ------------------------------------------------------------


def test_token_prints_a_jwt_signed_with_jwt_secret(tmp_path: Path) -> None:
    run = finops("token", "--role", "admin", env=cli_env(tmp_path, JWT_SECRET=JWT_SECRET), cwd=tmp_path)

    assert run.returncode == 0, run.stderr
    token = run.stdout.strip()
    claims = decode(token, JWT_SECRET)
    assert claims["role"] == "admin"
    assert claims["sub"] == "admin@platform"
    assert "tenant_id" not in claims
    assert claims["exp"] - claims["iat"] == 60 * 60  # JWT_EXPIRATION_MINUTES defaults to 60
    with pytest.raises(jwt.InvalidSignatureError):
        decode(token, "some-other-secret-0123456789abcdef0123456789")


def test_token_for_a_user_needs_a_tenant(tmp_path: Path) -> None:
    run = finops("token", "--role", "user", env=cli_env(tmp_path, JWT_SECRET=JWT_SECRET), cwd=tmp_path)

    assert run.returncode == 1
    assert run.stdout == ""
    assert run.line("finops token:") == "finops token: role user needs a tenant"
    assert_no_traceback(run)


def test_token_minutes_sets_the_lifetime(tmp_path: Path) -> None:
    before = int(time.time())
    run = finops(
        "token",
        "--role",
        "user",
        "--tenant",
        "school-a",
        "--minutes",
        "5",
        env=cli_env(tmp_path, JWT_SECRET=JWT_SECRET),
        cwd=tmp_path,
    )
    after = int(time.time())

    assert run.returncode == 0, run.stderr
    claims = decode(run.stdout.strip(), JWT_SECRET)
    assert claims["role"] == "user"
    assert claims["tenant_id"] == "school-a"
    assert claims["sub"] == "user@school-a"
    assert before <= claims["iat"] <= after
    assert claims["exp"] - claims["iat"] == 5 * 60


def test_token_in_development_uses_the_development_secret_and_warns(tmp_path: Path) -> None:
    env = cli_env(tmp_path, JWT_SECRET=None, FINOPS_ENV="development")
    run = finops("token", "--role", "service", env=env, cwd=tmp_path)

    assert run.returncode == 0, run.stderr
    assert decode(run.stdout.strip(), DEVELOPMENT_SECRET)["role"] == "service"
    assert "WARNING" in run.stderr
    assert "development JWT_SECRET" in run.stderr
    assert "never use it in production" in run.stderr


def test_token_in_production_without_jwt_secret_exits_1_naming_it(tmp_path: Path) -> None:
    run = finops("token", "--role", "admin", env=cli_env(tmp_path, JWT_SECRET=None), cwd=tmp_path)

    assert run.returncode == 1
    assert run.stdout == ""
    line = run.line("finops token:")
    assert "JWT_SECRET is not set" in line
    assert "FINOPS_ENV=development" in line
    assert_no_traceback(run)


# -- finops serve refusals -----------------------------------------------------


def test_serve_in_production_without_jwt_secret_refuses_to_start(tmp_path: Path) -> None:
    port = free_port()
    run = finops("serve", "--port", str(port), env=cli_env(tmp_path, JWT_SECRET=None), cwd=tmp_path, timeout=30)

    assert run.returncode == 1
    assert "JWT_SECRET is not set" in run.line("finops serve:")
    assert "Uvicorn running" not in run.stderr
    assert_no_traceback(run)
    # it refused before opening the database, let alone binding the port
    assert not (tmp_path / "ch").exists()


def test_serve_without_migrating_an_unmigrated_database_reports_it_clearly(tmp_path: Path) -> None:
    server = Server(cli_env(tmp_path, JWT_SECRET=JWT_SECRET), tmp_path, "unmigrated", "--no-migrate")
    try:
        health = server.wait_until()
        if health is None:  # refused to start: one clear line, exit 1
            logs = server.logs()
            assert server.process.returncode == 1, logs
            assert "Traceback" not in logs, logs
            assert "finops serve: migrations are pending: run `finops migrate`" in logs
        else:  # or serves, and says so on /health
            assert health.status_code == 503
            assert health.json()["components"]["migrations"]["status"] == "pending"
    finally:
        server.stop()


# -- end to end: one data path, a running service, then none ------------------


@dataclass
class Journey:
    """What each step of the end-to-end run printed; tests assert on it."""

    data_path: Path
    api_url: str = ""
    dead_api_url: str = ""
    demo_via_api: Run | None = None
    listed_while_running: list[dict[str, Any]] = field(default_factory=list)
    migrate_while_served: Run | None = None
    migrate_while_held: Run | None = None
    second_serve: Run | None = None
    sigterm_status: int | None = None
    service_logs: str = ""
    traced: httpx.Response | None = None
    import_in_process: Run | None = None
    reprice_via_api: Run | None = None
    traced_token: str = ""
    migrate_after_stop: Run | None = None
    demo_in_process: Run | None = None
    listed_after_restart: list[dict[str, Any]] = field(default_factory=list)


def _run(run: Run | None) -> Run:
    assert run is not None, "the end-to-end fixture did not reach this step"
    return run


@pytest.fixture(scope="module")
def journey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Journey]:
    """Serve a data path, use it through the CLI, stop it, use it without the service, restart."""
    cwd = tmp_path_factory.mktemp("cli-e2e")
    env = cli_env(cwd, JWT_SECRET=JWT_SECRET, LOG_REQUESTS="true")
    result = Journey(data_path=cwd / "ch", dead_api_url=env["FINOPS_API_URL"])
    servers: list[Server] = []
    try:
        first = Server(env, cwd, "first")
        servers.append(first)
        first.wait_healthy()
        result.api_url = first.url
        served = {**env, "FINOPS_API_URL": first.url}

        result.demo_via_api = finops("demo", "--events", "300", "--batch-size", "100", env=served, cwd=cwd)
        result.listed_while_running = list_all_events(first.url)
        result.migrate_while_served = finops("migrate", env=served, cwd=cwd)
        result.migrate_while_held = finops("migrate", env=env, cwd=cwd)
        try:
            result.second_serve = finops("serve", "--port", str(free_port()), env=env, cwd=cwd, timeout=30)
        except subprocess.TimeoutExpired:
            result.second_serve = Run(-1, "", "a second `finops serve` on the held path kept running")

        result.traced_token = issue_token(JWT_SECRET, role=Role.TENANT_ADMIN, tenant_id="school-a", minutes=5)
        result.traced = httpx.get(
            first.url + "/budgets",
            headers={"Authorization": f"Bearer {result.traced_token}", "X-Request-ID": "journey-req-1"},
            timeout=30,
        )
        result.sigterm_status = first.stop()
        result.service_logs = first.logs()

        result.migrate_after_stop = finops("migrate", env=env, cwd=cwd)
        result.demo_in_process = finops("demo", "--events", "50", env=env, cwd=cwd)
        (cwd / "negotiated.json").write_text(
            '{"format": "finops-catalog/1", "prices": [{"provider": "openai", "model": "acme-tutor",'
            ' "effective_from": "2026-01-01T00:00:00Z", "input_per_mtok": "2", "output_per_mtok": "8"}]}'
        )
        result.import_in_process = finops("pricing", "import", "negotiated.json", env=env, cwd=cwd)

        restarted = Server(env, cwd, "restarted")
        servers.append(restarted)
        restarted.wait_healthy()
        result.listed_after_restart = list_all_events(restarted.url)
        result.reprice_via_api = finops(
            "pricing",
            "reprice",
            "--start",
            "2026-01-01T00:00:00Z",
            "--end",
            "2100-01-01T00:00:00Z",
            env={**env, "FINOPS_API_URL": restarted.url},
            cwd=cwd,
        )
        yield result
    finally:
        for server in servers:
            server.stop()


def test_logs_are_json_lines_carrying_the_request_id_and_caller(journey: Journey) -> None:
    assert journey.traced is not None
    assert journey.traced.status_code == 200
    assert journey.traced.headers["X-Request-ID"] == "journey-req-1"
    lines = [json.loads(line) for line in journey.service_logs.splitlines() if line.startswith("{")]
    assert lines, journey.service_logs
    assert all({"timestamp", "level", "message", "logger"} <= set(line) for line in lines)
    [traced] = [line for line in lines if line.get("request_id") == "journey-req-1"]
    assert (traced["route"], traced["status"], traced["method"]) == ("/budgets", 200, "GET")
    assert (traced["tenant_id"], traced["principal"]) == ("school-a", "tenant-admin@school-a")
    assert journey.traced_token not in journey.service_logs


def test_pricing_commands_work_in_process_and_through_the_api(journey: Journey) -> None:
    imported = _run(journey.import_in_process)
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout)["added"] == 1
    repriced = _run(journey.reprice_via_api)
    assert repriced.returncode == 0, repriced.stderr
    assert "through the API" in repriced.stderr
    summary = json.loads(repriced.stdout)
    assert summary["events_examined"] >= 350  # every demo event the service priced
    assert summary["events_corrected"] == 0  # nothing changed for them


def test_demo_goes_through_the_running_api(journey: Journey) -> None:
    run = _run(journey.demo_via_api)

    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == (f"demo: 300 events stored, 0 duplicates, through the API at {journey.api_url}")


def test_demo_events_are_listed_by_the_api_with_prices(journey: Journey) -> None:
    events = journey.listed_while_running

    assert len(events) == 300
    assert {e["tenant_id"] for e in events} <= set(TENANTS)
    assert {(e["service"], e["provider"], e["model"]) for e in events} <= {t[:3] for t in TRAFFIC}
    assert len({e["service"] for e in events}) > 1
    assert {e["provider"] for e in events} == {"openai", "gemini", "bedrock"}
    assert all(e["metadata"] == {"source": "finops-demo"} for e in events)
    priced = [e for e in events if e["pricing_status"] == "priced"]
    assert priced, "no demo event was priced from the bundled catalog"
    assert all(Decimal(e["cost_usd"]) > 0 for e in priced)


def test_demo_shows_a_progress_bar_on_stderr(journey: Journey) -> None:
    api = _run(journey.demo_via_api)
    local = _run(journey.demo_in_process)

    assert "demo: 100%" in api.stderr
    assert "300/300" in api.stderr
    assert "ev/s" in api.stderr
    assert "50/50" in local.stderr


def test_migrate_refuses_while_the_service_answers(journey: Journey) -> None:
    run = _run(journey.migrate_while_served)

    assert run.returncode == 1
    assert run.line("finops migrate:") == (
        f"finops migrate: the embedded ClickHouse at {journey.data_path} is held by a running finops "
        f"service; use its API at {journey.api_url}, or stop it and retry "
        "(it applies migrations when it starts)"
    )
    assert_no_traceback(run)


def test_migrate_on_a_held_path_exits_1_without_a_traceback(journey: Journey) -> None:
    run = _run(journey.migrate_while_held)

    assert run.returncode == 1
    run.line("finops migrate: ")
    assert "migrations applied" not in run.stdout
    assert_no_traceback(run)


def test_migrate_on_a_held_path_says_another_process_holds_it(journey: Journey) -> None:
    line = _run(journey.migrate_while_held).line("finops migrate:")

    assert str(journey.data_path) in line
    assert "held by another process" in line


def test_second_serve_on_a_held_path_exits_1_without_a_traceback(journey: Journey) -> None:
    run = _run(journey.second_serve)

    assert run.returncode == 1, run.stderr
    run.line("finops serve: ")
    assert "Uvicorn running" not in run.stderr
    assert_no_traceback(run)


def test_second_serve_on_a_held_path_says_another_process_holds_it(journey: Journey) -> None:
    line = _run(journey.second_serve).line("finops serve:")

    assert str(journey.data_path) in line
    assert "held by another process" in line


def test_service_stops_cleanly_on_sigterm(journey: Journey) -> None:
    # uvicorn shuts down gracefully, then re-raises the signal it caught
    assert journey.sigterm_status in (0, -signal.SIGTERM), journey.service_logs
    assert "Application shutdown complete" in journey.service_logs
    assert "Traceback" not in journey.service_logs


def test_migrate_succeeds_once_the_service_stopped(journey: Journey) -> None:
    run = _run(journey.migrate_after_stop)

    assert run.returncode == 0, run.stderr
    assert "database finops: 0 migrations applied, schema current" in run.stdout
    assert "price catalog: 0 prices added, 0 changed" in run.stdout


def test_demo_without_a_service_ingests_in_process(journey: Journey) -> None:
    run = _run(journey.demo_in_process)

    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == (
        f"demo: 50 events stored, 0 duplicates, in-process (no service answered at {journey.dead_api_url})"
    )


def test_a_restarted_service_lists_every_event_of_both_demo_runs(journey: Journey) -> None:
    events = journey.listed_after_restart

    assert len(events) == 350
    assert len({e["event_id"] for e in events}) == 350
    runs = Counter(e["event_id"].rsplit("-", 1)[0] for e in events)  # demo-<run>-<n>
    assert sorted(runs.values()) == [50, 300]
    before = {e["event_id"]: e for e in journey.listed_while_running}
    assert all(e == before[e["event_id"]] for e in events if e["event_id"] in before)
