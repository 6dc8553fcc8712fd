"""Health: GET /health (every component), /health/live and /health/ready (for Kubernetes).

- ClickHouse: answers `SELECT 1`; migrations: none pending.
- Redis (when REDIS_URL is set): answers PING.
- Workers: in embedded mode the API's own job loops are running; in
  distributed mode at least one `finops worker` has written its heartbeat
  (`finops:worker:*` in Redis, every 10 s, kept 30 s).

- Pricing: the latest run of each price source.

`/health/ready` and `/health` answer 503 when ClickHouse, migrations or Redis
fail; no live worker, or a price source whose latest run failed, makes
`/health` say `degraded` (still 200: the API takes events; alerts wait for a
worker; prices stay as they were). `/health/live` answers 200 while the process
serves requests.
"""

from __future__ import annotations

from typing import Any

import anyio.to_thread
import msgspec
from litestar import Response, get
from litestar.di import NamedDependency
from redis.asyncio import Redis

from service.errors import StorageUnavailable
from service.jobs import JobRunner
from service.storage.clickhouse import ClickHouse
from service.storage.migrations import pending
from service.usage.ingest import GroupCommitBuffer

HEARTBEAT_PREFIX = "finops:worker:"
HEARTBEAT_EVERY_S = 10
HEARTBEAT_TTL_MS = 30_000
NO_STORE: dict[str, Any] = {"Cache-Control": "no-store"}


class ComponentHealth(msgspec.Struct, omit_defaults=True):
    status: str
    detail: str | None = None


class Health(msgspec.Struct):
    status: str
    components: dict[str, ComponentHealth]


class HealthProbe:
    """What the health routes check; built at start-up with the app's parts."""

    def __init__(self, db: ClickHouse, redis: Redis | None, runner: JobRunner, *, embedded: bool) -> None:
        self.db = db
        self.redis = redis
        self.runner = runner
        self.embedded = embedded
        self.ingest: GroupCommitBuffer | None = None

    def ingest_health(self) -> ComponentHealth | None:
        """The ingest journal: failing moves into ClickHouse make the service `degraded`."""
        buffer = self.ingest
        if buffer is None or buffer.journal is None:
            return None
        if buffer.move_failures:
            return ComponentHealth(
                "failed",
                f"moving the ingest journal into ClickHouse failed {buffer.move_failures} time(s) in a row; "
                f"{buffer.unmoved} acknowledged events wait in the journal (kept, retried)",
            )
        return ComponentHealth("ok", f"{buffer.unmoved} acknowledged events wait in the journal")

    async def ready(self) -> dict[str, ComponentHealth]:
        components = await anyio.to_thread.run_sync(check_clickhouse, self.db)
        if self.redis is not None:
            try:
                await self.redis.ping()
                components["redis"] = ComponentHealth("ok")
            except Exception as exc:
                components["redis"] = ComponentHealth("down", f"{type(exc).__name__}: {exc}")
        return components

    async def pricing(self) -> ComponentHealth:
        """The latest run of each price source: failed ones leave prices as they were."""
        try:
            rows = await anyio.to_thread.run_sync(
                lambda: self.db.query(
                    "SELECT source, toString(argMax(status, started_at)), argMax(error, started_at)"
                    " FROM pricing_runs GROUP BY source ORDER BY source",
                    label="health.pricing",
                )
            )
        except StorageUnavailable:
            return ComponentHealth("unknown", "ClickHouse unreachable")
        if not rows:
            return ComponentHealth("ok", "no price source has run yet")
        failed = [f"{source}: {error}" for source, status, error in rows if status == "failed"]
        if failed:
            return ComponentHealth("failed", "; ".join(failed)[:500])
        return ComponentHealth("ok", "latest runs of " + ", ".join(r[0] for r in rows) + " succeeded")

    async def workers(self) -> ComponentHealth:
        if self.embedded:
            if self.runner.alive():
                return ComponentHealth("ok", "jobs run in the API process")
            return ComponentHealth("down", "the API's job loops have stopped")
        assert self.redis is not None
        try:
            beats = [key async for key in self.redis.scan_iter(match=HEARTBEAT_PREFIX + "*", count=100)]
        except Exception as exc:
            return ComponentHealth("unknown", f"Redis: {type(exc).__name__}")
        if not beats:
            return ComponentHealth("down", "no `finops worker` heartbeat in the last 30 s")
        return ComponentHealth("ok", f"{len(beats)} worker(s) seen in the last 30 s")


def check_clickhouse(db: ClickHouse) -> dict[str, ComponentHealth]:
    try:
        db.query("SELECT 1", label="health.ping")
    except StorageUnavailable as exc:
        return {
            "clickhouse": ComponentHealth("down", exc.detail),
            "migrations": ComponentHealth("unknown", "ClickHouse unreachable"),
        }
    components = {"clickhouse": ComponentHealth("ok")}
    try:
        todo = pending(db)
    except (StorageUnavailable, OSError, ValueError) as exc:
        components["migrations"] = ComponentHealth("down", str(exc))
    else:
        components["migrations"] = (
            ComponentHealth("ok")
            if not todo
            else ComponentHealth("pending", "run `finops migrate`: " + ", ".join(m.path.name for m in todo))
        )
    return components


@get(
    "/health",
    operation_id="health",
    exclude_from_auth=True,
    summary="Service health, per component",
    description=(
        "ClickHouse, migrations, Redis (when configured) and workers. 503 when ClickHouse, migrations or "
        "Redis fail; `degraded` (200) when no worker is alive, the latest run of a price source failed, or "
        "moving the ingest journal into ClickHouse is failing (events stay in the journal). Auth: none."
    ),
    tags=["operations"],
)
async def health(probe: NamedDependency[HealthProbe]) -> Response[Health]:
    components = await probe.ready()
    ready = all(c.status == "ok" for c in components.values())
    components["workers"] = await probe.workers()
    if ready:
        components["pricing"] = await probe.pricing()
    ingest = probe.ingest_health()
    if ingest is not None:
        components["ingest"] = ingest
    extra = ("workers", "pricing", "ingest")
    extra_ok = all(components[name].status == "ok" for name in extra if name in components)
    status = "unavailable" if not ready else "ok" if extra_ok else "degraded"
    return Response(Health(status, components), status_code=200 if ready else 503, headers=NO_STORE)


@get(
    "/health/ready",
    operation_id="healthReady",
    exclude_from_auth=True,
    summary="Readiness: can this replica serve requests",
    description="200 when ClickHouse answers, migrations are current and Redis (if configured) answers. Auth: none.",
    tags=["operations"],
)
async def health_ready(probe: NamedDependency[HealthProbe]) -> Response[Health]:
    components = await probe.ready()
    ready = all(c.status == "ok" for c in components.values())
    return Response(
        Health("ok" if ready else "unavailable", components), status_code=200 if ready else 503, headers=NO_STORE
    )


@get(
    "/health/live",
    operation_id="healthLive",
    exclude_from_auth=True,
    summary="Liveness: the process serves requests",
    description="Always 200 while the event loop runs; checks nothing else. Auth: none.",
    tags=["operations"],
    sync_to_thread=False,
)
def health_live() -> Response[Health]:
    return Response(Health("ok", {}), headers=NO_STORE)
