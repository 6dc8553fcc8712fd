"""Budgets and alerts in ClickHouse: versioned rows read with FINAL."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import msgspec

from service.alerts.channels import decode_channels
from service.budgets.schemas import Alert, Budget, Scope, Threshold
from service.money import money_str
from service.storage.clickhouse import ClickHouse

BUDGET_COLUMNS = (
    "budget_id",
    "name",
    "tenant_id",
    "service",
    "learner_id",
    "per_learner",
    "period",
    "timezone",
    "period_start",
    "period_end",
    "limit_usd",
    "thresholds",
    "channels",
    "enabled",
    "created_at",
    "created_by",
    "updated_at",
    "updated_by",
    "version",
    "is_deleted",
)
ALERT_COLUMNS = (
    "alert_id",
    "budget_id",
    "budget_name",
    "tenant_id",
    "service",
    "learner_id",
    "period_start",
    "period_end",
    "threshold_percent",
    "kind",
    "spend_usd",
    "forecast_usd",
    "limit_usd",
    "percent_used",
    "state",
    "delivery_state",
    "channel_keys",
    "created_at",
    "updated_at",
    "version",
)
_thresholds = msgspec.json.Decoder(list[Threshold])


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def budget_row(budget: Budget, *, deleted: bool = False) -> list[Any]:
    return [
        budget.budget_id,
        budget.name,
        budget.scope.tenant_id or "",
        budget.scope.service or "",
        budget.scope.learner_id or "",
        budget.per_learner,
        budget.period,
        budget.timezone,
        budget.period_start,
        budget.period_end,
        Decimal(budget.limit_usd),
        msgspec.json.encode(budget.thresholds).decode(),
        msgspec.json.encode(budget.channels).decode(),
        budget.enabled,
        budget.created_at,
        budget.created_by,
        budget.updated_at,
        budget.updated_by,
        budget.version,
        1 if deleted else 0,
    ]


def budget_from_row(row: dict[str, Any]) -> Budget:
    return Budget(
        budget_id=row["budget_id"],
        version=int(row["version"]),
        name=row["name"],
        scope=Scope(
            tenant_id=row["tenant_id"] or None, service=row["service"] or None, learner_id=row["learner_id"] or None
        ),
        per_learner=bool(row["per_learner"]),
        period=row["period"],
        timezone=row["timezone"],
        period_start=_utc(row["period_start"]),
        period_end=_utc(row["period_end"]),
        limit_usd=money_str(row["limit_usd"]),
        thresholds=_thresholds.decode(row["thresholds"]),
        channels=decode_channels(row["channels"]),
        enabled=bool(row["enabled"]),
        created_at=_utc(row["created_at"]) or datetime.now(UTC),
        created_by=row["created_by"],
        updated_at=_utc(row["updated_at"]) or datetime.now(UTC),
        updated_by=row["updated_by"],
    )


def alert_from_row(row: dict[str, Any]) -> Alert:
    return Alert(
        alert_id=row["alert_id"],
        budget_id=row["budget_id"],
        budget_name=row["budget_name"],
        tenant_id=row["tenant_id"] or None,
        scope=Scope(
            tenant_id=row["tenant_id"] or None, service=row["service"] or None, learner_id=row["learner_id"] or None
        ),
        period_start=_utc(row["period_start"]) or datetime.now(UTC),
        period_end=_utc(row["period_end"]) or datetime.now(UTC),
        threshold_percent=int(row["threshold_percent"]),
        kind=row["kind"],
        spend_usd=money_str(row["spend_usd"]),
        forecast_usd=money_str(row["forecast_usd"]),
        limit_usd=money_str(row["limit_usd"]),
        percent_used=money_str(row["percent_used"]),
        state=row["state"],
        delivery_state=row["delivery_state"],
        created_at=_utc(row["created_at"]) or datetime.now(UTC),
        updated_at=_utc(row["updated_at"]) or datetime.now(UTC),
    )


def encode_cursor(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError) as exc:
        from service.errors import InvalidInput

        raise InvalidInput("cursor is not valid", errors=[{"field": "cursor", "reason": "malformed"}]) from exc


class BudgetStore:
    def __init__(self, db: ClickHouse) -> None:
        self.db = db

    def write(self, budget: Budget, *, deleted: bool = False) -> None:
        self.db.insert("budgets", [budget_row(budget, deleted=deleted)], BUDGET_COLUMNS, label="budgets.write")

    def get(self, budget_id: str) -> Budget | None:
        rows = self.db.query_dicts(
            f"SELECT {', '.join(BUDGET_COLUMNS)} FROM budgets FINAL WHERE budget_id = {{id:String}}",
            {"id": budget_id},
            label="budgets.get",
        )
        return budget_from_row(rows[0]) if rows else None

    def find(
        self,
        *,
        tenant_visible: str | None,
        filters: dict[str, Any],
        limit: int | None = None,
        after: str | None = None,
    ) -> list[Budget]:
        """Budgets ordered by id. `tenant_visible` limits to one tenant's budgets."""
        where = ["1"]
        params: dict[str, Any] = {}
        if tenant_visible is not None:
            where.append("tenant_id = {visible:String}")
            params["visible"] = tenant_visible
        for column in ("tenant_id", "service", "learner_id"):
            if filters.get(column):
                where.append(f"{column} = {{f_{column}:String}}")
                params[f"f_{column}"] = filters[column]
        scope = filters.get("scope")
        if scope == "global":
            where.append("tenant_id = '' AND service = '' AND learner_id = '' AND NOT per_learner")
        elif scope == "tenant":
            where.append("tenant_id != '' AND service = '' AND learner_id = '' AND NOT per_learner")
        elif scope == "service":
            where.append("service != '' AND learner_id = '' AND NOT per_learner")
        elif scope == "learner":
            where.append("(learner_id != '' OR per_learner)")
        if filters.get("status") in ("enabled", "disabled"):
            where.append("enabled = {enabled:Bool}")
            params["enabled"] = filters["status"] == "enabled"
        if after is not None:
            where.append("budget_id > {after:String}")
            params["after"] = after
        sql = f"SELECT {', '.join(BUDGET_COLUMNS)} FROM budgets FINAL WHERE {' AND '.join(where)} ORDER BY budget_id"
        if limit is not None:
            sql += " LIMIT {limit:UInt32}"
            params["limit"] = limit
        return [budget_from_row(row) for row in self.db.query_dicts(sql, params, label="budgets.list")]

    # -- alerts -------------------------------------------------------------

    def write_alerts(self, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self.db.insert("budget_alerts", rows, ALERT_COLUMNS, label="alerts.write")

    def alert_rows(self, where: str, params: dict[str, Any], label: str) -> list[dict[str, Any]]:
        return self.db.query_dicts(
            f"SELECT {', '.join(ALERT_COLUMNS)} FROM budget_alerts FINAL WHERE {where}", params, label=label
        )
