"""The window's usage, read once per run: rollups where they suffice, the raw table where not.

Rollups (`usage_daily_totals`, `usage_hourly_totals`, and `usage_daily` for
learners) give volumes per group, events per hour of the day, cost per day and
cost per learner. Two figures are not in any rollup — whether a call went
through the batch API, and each request's own prompt size — so the batch and
long-context checks read `usage_events` for the window, filtered by time and
tenant (the leading keys of its sort order) and grouped the same way.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, NamedTuple

from service.auth.principal import TenantScope
from service.costs.query import COUNTS, CostFilter, CostQueries, CostRow
from service.optimization.pricing import Volume
from service.storage.clickhouse import ClickHouse

GROUP_DIMENSIONS = ("tenant_id", "service", "provider", "model", "region")
_GROUP = ", ".join(GROUP_DIMENSIONS)
_RAW_SUMS = ", ".join(["count()", "toUInt64(0)", *(f"sum({name})" for name in COUNTS[2:])])
_RAW_COST = "sum(toDecimal128(ifNull(cost_usd, toDecimal64(0, 12)), 12))"


class GroupKey(NamedTuple):
    """Traffic of one tenant's service on one model, as reported (model name and region)."""

    tenant_id: str
    service: str
    provider: str
    model: str
    region: str


@dataclass
class WindowData:
    start: datetime
    end: datetime
    groups: dict[GroupKey, Volume] = field(default_factory=dict)
    hours: dict[GroupKey, list[int]] = field(default_factory=dict)
    """Events per UTC hour of the day (0-23)."""
    batched: dict[GroupKey, Volume] = field(default_factory=dict)
    """The part of each group sent through the batch API."""
    long_context: dict[tuple[GroupKey, int], Volume] = field(default_factory=dict)
    """Requests whose prompt exceeds a threshold, by (group, threshold)."""
    daily: dict[tuple[str, str], dict[date, Decimal]] = field(default_factory=dict)
    """Cost per UTC day by (tenant, service)."""
    learners: dict[str, list[tuple[str, Decimal, int]]] = field(default_factory=dict)
    """(learner, cost, events) per tenant, events with a learner only."""


def _volume(row: CostRow) -> Volume:
    return Volume(**row.counts, cost_usd=row.cost_usd)


def _key(keys: dict[str, str | None]) -> GroupKey:
    return GroupKey(*(keys[name] or "" for name in GROUP_DIMENSIONS))


def _raw_volume(row: tuple[Any, ...]) -> Volume:
    counts = {name: int(value) for name, value in zip(COUNTS, row, strict=False)}
    return Volume(**counts, cost_usd=row[len(COUNTS)])


def read_window(
    db: ClickHouse, scope: TenantScope, start: datetime, end: datetime, thresholds: list[int]
) -> WindowData:
    """Everything the checks need about [start, end) (whole hours) within `scope`."""
    queries = CostQueries(db)
    whole = CostFilter(scope=scope, start=start, end=end)
    data = WindowData(start, end)
    for row in queries.grouped(whole, GROUP_DIMENSIONS, "none", "UTC", label="optimization.groups"):
        data.groups[_key(row.keys)] = _volume(row)
    if not data.groups:
        return data

    params: dict[str, Any] = {"start": start, "end": end}
    where = " AND ".join(whole.where(params)) or "1"
    for *keys, hour, events in db.query(
        f"SELECT {_GROUP}, toHour(bucket) AS h, sum(events) FROM usage_hourly_totals "
        "WHERE bucket >= {start:DateTime('UTC')} AND bucket < {end:DateTime('UTC')} "
        f"AND {where} GROUP BY {_GROUP}, h",
        params,
        label="optimization.hours",
    ):
        data.hours.setdefault(GroupKey(*keys), [0] * 24)[int(hour)] += int(events)

    raw_where = (
        "event_time >= {start:DateTime64(3, 'UTC')} AND event_time < {end:DateTime64(3, 'UTC')} "
        f"AND record_type = 'usage' AND {where}"
    )
    for raw in db.query(
        f"SELECT {_GROUP}, {_RAW_SUMS}, {_RAW_COST} FROM usage_events WHERE {raw_where} AND batch GROUP BY {_GROUP}",
        params,
        label="optimization.batched",
    ):
        data.batched[GroupKey(*raw[:5])] = _raw_volume(raw[5:])
    if thresholds:
        for raw in db.query(
            f"SELECT {_GROUP}, threshold, {_RAW_SUMS}, {_RAW_COST} FROM usage_events "
            "ARRAY JOIN {thresholds:Array(UInt64)} AS threshold "
            f"WHERE {raw_where} AND input_tokens > threshold GROUP BY {_GROUP}, threshold",
            {**params, "thresholds": thresholds},
            label="optimization.long_context",
        ):
            data.long_context[(GroupKey(*raw[:5]), int(raw[5]))] = _raw_volume(raw[6:])

    for row in queries.grouped(whole, ["tenant_id", "service"], "day", "UTC", label="optimization.daily"):
        day = datetime.fromtimestamp(row.bucket or 0, UTC).date()
        data.daily.setdefault((row.keys["tenant_id"] or "", row.keys["service"] or ""), {})[day] = row.cost_usd

    learners: dict[str, list[tuple[str, Decimal, int]]] = defaultdict(list)
    for row in queries.grouped(whole, ["tenant_id", "learner_id"], "none", "UTC", label="optimization.learners"):
        if row.keys["learner_id"]:
            learners[row.keys["tenant_id"] or ""].append((row.keys["learner_id"], row.cost_usd, row.counts["events"]))
    data.learners = dict(learners)
    return data
