"""The audit log: who changed what, kept in ClickHouse, read through GET /audit-events.

Every mutating operation writes one row: the caller (subject, role, tenant),
the action (`budget.create`, `budget.update`, `budget.delete`,
`budgets.evaluate`, `alerts.test`, `costs.summaries.refresh`), the target, a
JSON summary before and after (secrets masked by the caller), the request id
and the time. Admins read every row; tenant-admins read their tenant's.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import anyio.to_thread
import msgspec
from litestar import Request, get
from litestar.di import NamedDependency
from litestar.params import FromQuery, QueryParameter

from service.auth.guards import principal_of, require_roles
from service.auth.principal import Principal, Role
from service.errors import Forbidden, InvalidInput
from service.logs import request_id_var
from service.storage.clickhouse import ClickHouse, as_utc

AUDIT_COLUMNS = (
    "event_time",
    "request_id",
    "actor",
    "role",
    "tenant_id",
    "action",
    "target_type",
    "target_id",
    "before",
    "after",
)


def record_audit(
    db: ClickHouse,
    principal: Principal,
    *,
    action: str,
    target_type: str,
    target_id: str,
    tenant_id: str | None,
    before: Any = None,
    after: Any = None,
    request_id: str | None = None,
) -> None:
    """One audit row; `before` and `after` are summarised as JSON."""
    db.insert(
        "audit_log",
        [
            [
                datetime.now(UTC),
                request_id if request_id is not None else request_id_var.get() or "",
                principal.subject,
                str(principal.role),
                tenant_id or "",
                action,
                target_type,
                target_id,
                "" if before is None else msgspec.json.encode(before).decode(),
                "" if after is None else msgspec.json.encode(after).decode(),
            ]
        ],
        AUDIT_COLUMNS,
        label="audit.write",
    )


async def audit_action(
    db: ClickHouse, principal: Principal, action: str, target_type: str, target_id: str, *, after: Any = None
) -> None:
    """An audit row for an operation that changes state without a resource of its own."""
    await anyio.to_thread.run_sync(
        lambda: record_audit(
            db,
            principal,
            action=action,
            target_type=target_type,
            target_id=target_id,
            tenant_id=principal.tenant_id,
            after=after,
        )
    )


class AuditEvent(msgspec.Struct):
    event_time: datetime
    request_id: str | None
    actor: str
    role: str
    tenant_id: str | None
    action: str
    target_type: str
    target_id: str
    before: Any
    after: Any


class AuditPage(msgspec.Struct):
    items: list[AuditEvent]
    next_cursor: str | None


def read_audit(
    db: ClickHouse, principal: Principal, filters: dict[str, Any], limit: int, cursor: str | None
) -> AuditPage:
    from service.budgets.store import decode_cursor, encode_cursor

    where = ["1"]
    params: dict[str, Any] = {"limit": limit + 1}
    tenant = filters.get("tenant_id")
    if principal.role is not Role.ADMIN:
        if tenant not in (None, principal.tenant_id):
            raise Forbidden("tenant_id filter names a tenant outside your token's tenant")
        tenant = principal.tenant_id
    if tenant is not None:
        where.append("tenant_id = {tenant:String}")
        params["tenant"] = tenant
    for name in ("actor", "action", "target_type", "target_id", "request_id"):
        if filters.get(name):
            where.append(f"{name} = {{{name}:String}}")
            params[name] = filters[name]
    if filters.get("start"):
        where.append("event_time >= {start:DateTime64(3, 'UTC')}")
        params["start"] = filters["start"]
    if filters.get("end"):
        where.append("event_time < {end:DateTime64(3, 'UTC')}")
        params["end"] = filters["end"]
    if cursor:
        try:
            stamp, target = decode_cursor(cursor).split("|", 1)
            params["c_time"] = datetime.fromisoformat(stamp)
        except ValueError as exc:
            raise InvalidInput("cursor is not valid", errors=[{"field": "cursor", "reason": "malformed"}]) from exc
        where.append("(event_time, target_id) < ({c_time:DateTime64(3, 'UTC')}, {c_target:String})")
        params["c_target"] = target
    rows = db.query_dicts(
        f"SELECT {', '.join(AUDIT_COLUMNS)} FROM audit_log WHERE {' AND '.join(where)}"
        " ORDER BY event_time DESC, target_id DESC LIMIT {limit:UInt32}",
        params,
        label="audit.read",
    )
    items = [
        AuditEvent(
            event_time=as_utc(row["event_time"]),
            request_id=row["request_id"] or None,
            actor=row["actor"],
            role=row["role"],
            tenant_id=row["tenant_id"] or None,
            action=row["action"],
            target_type=row["target_type"],
            target_id=row["target_id"],
            before=msgspec.json.decode(row["before"]) if row["before"] else None,
            after=msgspec.json.decode(row["after"]) if row["after"] else None,
        )
        for row in rows[:limit]
    ]
    next_cursor = None
    if len(rows) > limit and items:
        next_cursor = encode_cursor(f"{items[-1].event_time.isoformat()}|{items[-1].target_id}")
    return AuditPage(items=items, next_cursor=next_cursor)


@get(
    "/audit-events",
    operation_id="listAuditEvents",
    guards=[require_roles(Role.ADMIN, Role.TENANT_ADMIN)],
    tags=["operations"],
    summary="Audit log, newest first",
    description=(
        "Filters: `tenant_id`, `actor`, `action`, `target_type`, `target_id`, `request_id`, `start`, `end`. "
        "Auth: bearer JWT with role `admin` (every row) or `tenant-admin` (its tenant's rows)."
    ),
)
async def list_audit_events(
    request: Request[Any, Any, Any],
    db: NamedDependency[ClickHouse],
    tenant_id: FromQuery[str | None] = None,
    actor: FromQuery[str | None] = None,
    action: FromQuery[str | None] = None,
    target_type: FromQuery[str | None] = None,
    target_id: FromQuery[str | None] = None,
    request_id: FromQuery[str | None] = None,
    start: FromQuery[datetime | None] = None,
    end: FromQuery[datetime | None] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
    cursor: FromQuery[str | None] = None,
) -> AuditPage:
    filters = {
        "tenant_id": tenant_id,
        "actor": actor,
        "action": action,
        "target_type": target_type,
        "target_id": target_id,
        "request_id": request_id,
        "start": start,
        "end": end,
    }
    principal = principal_of(request)
    return await anyio.to_thread.run_sync(read_audit, db, principal, filters, limit, cursor)
