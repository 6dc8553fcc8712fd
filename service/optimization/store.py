"""The cache: `optimization_runs` and `optimization_suggestions` (migration 0010)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime

import msgspec

from service.optimization.schemas import Suggestion
from service.storage.clickhouse import ClickHouse, as_utc

ALL_TENANTS = "*"
_RUN_COLUMNS = ("window_days", "run_scope", "computed_at", "window_start", "window_end", "suggestions", "seconds")
_ROW_COLUMNS = (
    "window_days",
    "run_scope",
    "computed_at",
    "tenant_id",
    "service",
    "suggestion_id",
    "kind",
    "estimated_monthly_savings_usd",
    "body",
)
_DECODER = msgspec.json.Decoder(Suggestion)


@dataclass(frozen=True)
class Run:
    window_days: int
    run_scope: str
    computed_at: datetime
    window_start: datetime
    window_end: datetime


def write_run(db: ClickHouse, run: Run, suggestions: Sequence[Suggestion], seconds: float) -> None:
    """The suggestions first, then the run row that makes them visible to readers."""
    if suggestions:
        db.insert(
            "optimization_suggestions",
            [
                [
                    run.window_days,
                    run.run_scope,
                    run.computed_at,
                    s.scope.tenant_id,
                    s.scope.service or "",
                    s.id,
                    s.kind,
                    s.estimated_monthly_savings_usd,
                    msgspec.json.encode(s).decode(),
                ]
                for s in suggestions
            ],
            _ROW_COLUMNS,
            label="optimization.write",
        )
    db.insert(
        "optimization_runs",
        [
            [
                run.window_days,
                run.run_scope,
                run.computed_at,
                run.window_start,
                run.window_end,
                len(suggestions),
                seconds,
            ]
        ],
        _RUN_COLUMNS,
        label="optimization.record",
    )


def latest_run(db: ClickHouse, window_days: int, scopes: Sequence[str]) -> Run | None:
    """The newest run of `window_days` among those computed for `scopes`."""
    rows = db.query(
        "SELECT window_days, run_scope, computed_at, window_start, window_end FROM optimization_runs "
        "WHERE window_days = {days:UInt16} AND run_scope IN {scopes:Array(String)} "
        "ORDER BY computed_at DESC LIMIT 1",
        {"days": window_days, "scopes": list(scopes)},
        label="optimization.latest",
    )
    if not rows:
        return None
    days, scope, computed, start, end = rows[0]
    return Run(int(days), str(scope), as_utc(computed), as_utc(start), as_utc(end))


def read_suggestions(db: ClickHouse, run: Run, tenant_id: str | None, service: str | None) -> list[Suggestion]:
    clauses = [
        "window_days = {days:UInt16}",
        "run_scope = {scope:String}",
        "computed_at = {computed:DateTime64(3, 'UTC')}",
    ]
    params: dict[str, object] = {"days": run.window_days, "scope": run.run_scope, "computed": run.computed_at}
    if tenant_id is not None:
        clauses.append("tenant_id = {tenant:String}")
        params["tenant"] = tenant_id
    if service is not None:
        clauses.append("service = {service:String}")
        params["service"] = service
    rows = db.query(
        f"SELECT body FROM optimization_suggestions WHERE {' AND '.join(clauses)}", params, label="optimization.read"
    )
    return [_DECODER.decode(row[0]) for row in rows]


def last_received(db: ClickHouse, tenant_id: str | None, since: date) -> datetime | None:
    """When the newest event of a day from `since` on was received (in `tenant_id`, or any tenant)."""
    where = "bucket >= {since:Date}"
    params: dict[str, object] = {"since": since}
    if tenant_id is not None:
        where += " AND tenant_id = {tenant:String}"
        params["tenant"] = tenant_id
    rows = db.query(
        f"SELECT max(last_received_at), count() FROM usage_daily_totals WHERE {where}",
        params,
        label="optimization.received",
    )
    when, count = rows[0]
    return as_utc(when) if count else None


def prices_changed(db: ClickHouse) -> datetime | None:
    """When `provider_pricing` last received a row (a new or changed price)."""
    rows = db.query("SELECT max(updated_at), count() FROM provider_pricing", label="optimization.prices_changed")
    when, count = rows[0]
    return as_utc(when) if count else None
