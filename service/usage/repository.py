"""Reading stored usage events, always inside a tenant scope."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Any

import msgspec

from service.auth.principal import TenantScope
from service.errors import InvalidInput
from service.storage.clickhouse import ClickHouse
from service.usage.ingest import SELECT_EVENT, event_from_row
from service.usage.schemas import UsageEvent, UsageEventPage


class EventFilters(msgspec.Struct, kw_only=True):
    service: str | None = None
    learner_id: str | None = None
    provider: str | None = None
    model: str | None = None
    pricing_status: str | None = None
    start: datetime | None = None
    end: datetime | None = None


def encode_cursor(event: UsageEvent) -> str:
    payload = msgspec.json.encode([event.timestamp.isoformat(), event.event_id])
    return base64.urlsafe_b64encode(payload).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        stamp, event_id = msgspec.json.decode(base64.urlsafe_b64decode(padded), type=tuple[str, str])
        when = datetime.fromisoformat(stamp)
    except (binascii.Error, msgspec.DecodeError, ValueError) as exc:
        raise InvalidInput("cursor is not valid", errors=[{"field": "cursor", "reason": "malformed"}]) from exc
    return when.astimezone(UTC), event_id


class UsageRepository:
    def __init__(self, db: ClickHouse) -> None:
        self.db = db

    async def list_events(
        self, scope: TenantScope, filters: EventFilters, limit: int, cursor: str | None
    ) -> UsageEventPage:
        where = ["record_type = 'usage'"]
        params: dict[str, Any] = {}
        if scope.tenant_id is not None:
            where.append("tenant_id = {tenant:String}")
            params["tenant"] = scope.tenant_id
        for column in ("service", "learner_id", "provider", "model", "pricing_status"):
            value = getattr(filters, column)
            if value is not None:
                where.append(f"{column} = {{{column}:String}}")
                params[column] = value
        for name in ("start", "end"):
            value = getattr(filters, name)
            if value is not None and value.tzinfo is None:
                raise InvalidInput(
                    f"{name}: needs a UTC offset or Z",
                    errors=[{"field": name, "reason": "needs a UTC offset or Z (RFC 3339)"}],
                )
        if filters.start is not None:
            where.append("event_time >= {start:DateTime64(3, 'UTC')}")
            params["start"] = filters.start.astimezone(UTC)
        if filters.end is not None:
            where.append("event_time < {end:DateTime64(3, 'UTC')}")
            params["end"] = filters.end.astimezone(UTC)
        if cursor:
            when, event_id = decode_cursor(cursor)
            where.append("(event_time, event_id) < ({c_time:DateTime64(3, 'UTC')}, {c_id:String})")
            params["c_time"] = when
            params["c_id"] = event_id
        params["limit"] = limit + 1
        rows = await self.db.aquery(
            f"{SELECT_EVENT} WHERE {' AND '.join(where)} "
            "ORDER BY event_time DESC, event_id DESC LIMIT {limit:UInt32}",
            params,
            label="usage.list",
        )
        items = [event_from_row(row) for row in rows[:limit]]
        next_cursor = encode_cursor(items[-1]) if len(rows) > limit and items else None
        return UsageEventPage(items=items, next_cursor=next_cursor)

    async def get_event(self, scope: TenantScope, event_id: str) -> UsageEvent | None:
        params: dict[str, Any] = {"event_id": event_id}
        tenant_clause = ""
        if scope.tenant_id is not None:
            tenant_clause = " AND tenant_id = {tenant:String}"
            params["tenant"] = scope.tenant_id
        rows = await self.db.aquery(
            f"{SELECT_EVENT} WHERE record_type = 'usage' AND event_id = {{event_id:String}}{tenant_clause} "
            "ORDER BY received_at LIMIT 1",
            params,
            label="usage.get",
        )
        return event_from_row(rows[0]) if rows else None
