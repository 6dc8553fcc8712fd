"""GET /health: is ClickHouse reachable and is the schema current."""

from __future__ import annotations

from typing import Any

import anyio.to_thread
import msgspec
from litestar import Response, get
from litestar.di import NamedDependency

from service.errors import StorageUnavailable
from service.storage.clickhouse import ClickHouse
from service.storage.migrations import pending


class ComponentHealth(msgspec.Struct):
    status: str
    detail: str | None = None


class Health(msgspec.Struct):
    status: str
    components: dict[str, ComponentHealth]


def check_clickhouse(db: NamedDependency[ClickHouse]) -> dict[str, ComponentHealth]:
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
    summary="Service health",
    description="200 when ClickHouse answers and every migration is applied, else 503. Auth: none.",
    tags=["operations"],
)
async def health(db: NamedDependency[ClickHouse]) -> Response[Health]:
    components = await anyio.to_thread.run_sync(check_clickhouse, db)
    healthy = all(c.status == "ok" for c in components.values())
    body = Health(status="ok" if healthy else "unavailable", components=components)
    headers: dict[str, Any] = {"Cache-Control": "no-store"}
    return Response(body, status_code=200 if healthy else 503, headers=headers)
