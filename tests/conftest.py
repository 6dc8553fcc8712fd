"""Shared fixtures: a real embedded ClickHouse (chDB), fresh databases, tokens."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from service.app import create_app
from service.auth.principal import Role
from service.auth.tokens import issue_token
from service.settings import (
    AuthSettings,
    CostSettings,
    DatabaseSettings,
    IngestSettings,
    OperationsSettings,
    PricingSettings,
    Settings,
)
from service.storage.clickhouse import ClickHouse
from service.storage.migrations import migrate
from tests.databases import DatabasePool

JWT_SECRET = "test-secret-0123456789abcdef0123456789abcdef"


@contextmanager
def arq_worker(settings: Settings, db: ClickHouse) -> Iterator[None]:
    """A real arq worker on `settings.redis_url`, in this process (its own thread and event loop),
    sharing `db`: the embedded engine belongs to one process."""
    import redis

    from workers.settings import build_worker

    redis.Redis.from_url(settings.redis_url).flushdb()
    loop = asyncio.new_event_loop()
    task: asyncio.Task[None] | None = None

    def run() -> None:
        nonlocal task
        asyncio.set_event_loop(loop)
        worker = build_worker(settings, db=db, handle_signals=False, poll_delay=0.05)
        task = loop.create_task(worker.main())
        try:
            loop.run_until_complete(task)
        except asyncio.CancelledError:
            pass
        finally:
            loop.run_until_complete(worker.close())
            loop.close()

    thread = threading.Thread(target=run, name="arq-worker", daemon=True)
    thread.start()
    try:
        yield
    finally:
        loop.call_soon_threadsafe(lambda: task.cancel() if task else None)
        thread.join(timeout=20)


@pytest.fixture(scope="session")
def chdb_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One embedded engine path for the whole session (chDB allows one per process)."""
    path: Path = tmp_path_factory.mktemp("clickhouse")
    return f"chdb://{path}"


def fresh_database_name() -> str:
    return f"test_{uuid.uuid4().hex[:12]}"


def make_settings(url: str, database: str, **ingest: Any) -> Settings:
    """Settings for a test app. The ingest journal is off unless a test turns it on
    (`journal=True`): most tests read ClickHouse directly right after an API write."""
    return Settings(
        database=DatabaseSettings(url=url, database=database, pool_size=2, max_overflow=2, query_timeout_s=30),
        auth=AuthSettings(jwt_secret=JWT_SECRET, jwt_algorithm="HS256", jwt_expiration_minutes=60),
        ingest=IngestSettings(**{"journal": False, **ingest}),
        # tests wait for every write, so no write is in flight when a summary refresh runs
        costs=CostSettings(max_range_days=732, aggregation_interval_s=3600, summary_slack_s=0),
        redis_url="",
        prometheus_metrics_enabled=True,
        # limits far above what a test sends; tests/test_operations.py sets tight ones
        pricing=PricingSettings(catalog_url=""),  # no source is fetched unless a test points one somewhere
        operations=OperationsSettings(
            rate_limit_ingest="100000/second", rate_limit_read="10000/second", rate_limit_write="10000/second"
        ),
    )


@pytest.fixture(scope="session")
def databases(chdb_url: str) -> Iterator[DatabasePool]:
    """Migrated, empty databases: the session migrates one, later tests get its tables emptied
    under a new name (tests/databases.py)."""
    pool = DatabasePool(chdb_url, fresh_database_name)
    yield pool
    pool.close()


@pytest.fixture
def settings(chdb_url: str, databases: DatabasePool) -> Iterator[Settings]:
    """Settings on a new database of the session's embedded engine: migrated, empty, this test's alone."""
    name = databases.take()
    yield make_settings(chdb_url, name)
    databases.give_back(name)


@pytest.fixture
def unmigrated_settings(chdb_url: str, databases: DatabasePool) -> Iterator[Settings]:
    """Settings on a new database that no migration has touched (for tests of the migrations)."""
    name = fresh_database_name()
    yield make_settings(chdb_url, name)
    databases.drop(name)


@pytest.fixture
def db(settings: Settings) -> Iterator[ClickHouse]:
    """A migrated, empty database on the embedded engine (the one `settings` names)."""
    database = ClickHouse(settings.database.url, settings.database.database, pool_size=2)
    migrate(database)
    yield database
    database.close()


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:  # type: ignore[type-arg]
    """The whole app (lifespan included) on a fresh database."""
    with TestClient(app=create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def token() -> Callable[..., str]:
    def make(role: str, tenant: str | None = None, minutes: int = 60) -> str:
        return issue_token(JWT_SECRET, role=Role(role), tenant_id=tenant, minutes=minutes)

    return make


@pytest.fixture
def auth(token: Callable[..., str]) -> Callable[..., dict[str, str]]:
    """Authorization headers for a role (and tenant)."""

    def make(role: str, tenant: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token(role, tenant)}"}

    return make


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis server of the test session's own, on a free port."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="session")
def clickhouse_server_url() -> Iterator[str]:
    """A ClickHouse server: CLICKHOUSE_TEST_URL, else testcontainers when Docker answers, else skip."""
    url = os.environ.get("CLICKHOUSE_TEST_URL")
    if url:
        yield url
        return
    try:
        import docker

        docker.from_env(timeout=3).ping()
    except Exception as exc:
        pytest.skip(f"no ClickHouse server: set CLICKHOUSE_TEST_URL or run a Docker engine ({type(exc).__name__})")
    from testcontainers.clickhouse import ClickHouseContainer

    with ClickHouseContainer("clickhouse/clickhouse-server:24.8") as container:
        host = container.get_container_host_ip()
        port = container.get_exposed_port(8123)
        yield f"http://{container.username}:{container.password}@{host}:{port}/default"
