"""SQL over the rollups for cost questions, always inside a tenant scope."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

from service.auth.principal import TenantScope
from service.costs.plan import Granularity, Segment, plan
from service.storage.clickhouse import ClickHouse

Dimension = Literal["tenant_id", "service", "learner_id", "provider", "model", "region"]
DIMENSIONS: tuple[Dimension, ...] = ("tenant_id", "service", "learner_id", "provider", "model", "region")
COUNTS = (
    "events",
    "unpriced_events",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "input_characters",
    "output_characters",
    "images",
)
ORDERS = {
    "cost": "cost_usd",
    "tokens": "input_tokens + output_tokens",
    "events": "events",
}

# Each source as rows of (dimensions, t, counts, cost) with identical types.
_ROLLUP_MEASURES = ", ".join([*COUNTS, "cost_usd"])
_RAW_MEASURES = ", ".join(
    [
        "toUInt64(record_type = 'usage') AS events",
        "toInt64(record_type = 'usage' AND pricing_status = 'unpriced')"
        " - toInt64(record_type = 'correction' AND metadata['resolves_unpriced'] = '1') AS unpriced_events",
        *COUNTS[2:],
        "toDecimal128(ifNull(cost_usd, toDecimal64(0, 12)), 12) AS cost_usd",
    ]
)
_SOURCES = {
    "usage_daily": (
        "toDateTime(bucket, 'UTC')",
        "bucket >= toDate({s%(i)d:DateTime('UTC')}) AND bucket < toDate({e%(i)d:DateTime('UTC')})",
        _ROLLUP_MEASURES,
    ),
    "usage_hourly": (
        "bucket",
        "bucket >= {s%(i)d:DateTime('UTC')} AND bucket < {e%(i)d:DateTime('UTC')}",
        _ROLLUP_MEASURES,
    ),
    "usage_events": (
        "toDateTime(event_time, 'UTC')",
        "event_time >= {s%(i)d:DateTime64(3, 'UTC')} AND event_time < {e%(i)d:DateTime64(3, 'UTC')}",
        _RAW_MEASURES,
    ),
}


def bucket_sql(granularity: Granularity) -> str | None:
    """Start of each row's bucket as a Unix timestamp, computed in the zone `{tz}`."""
    if granularity == "none":
        return None
    if granularity == "hour":
        return "toUnixTimestamp(toStartOfHour(t))"
    if granularity == "day":
        return "toUnixTimestamp(toStartOfDay(toDateTime(t, {tz:String})))"
    if granularity == "week":
        return "toUnixTimestamp(toDateTime(toMonday(toDateTime(t, {tz:String})), {tz:String}))"
    return "toUnixTimestamp(toDateTime(toStartOfMonth(toDateTime(t, {tz:String})), {tz:String}))"


@dataclass
class CostFilter:
    """What to count: a time range, a tenant scope and values per dimension."""

    scope: TenantScope
    start: datetime
    end: datetime
    values: dict[str, list[str]] = field(default_factory=dict)
    learner_search: str | None = None

    def where(self, params: dict[str, Any]) -> list[str]:
        clauses = []
        if self.scope.tenant_id is not None:
            clauses.append("tenant_id = {scope_tenant:String}")
            params["scope_tenant"] = self.scope.tenant_id
        for dimension in DIMENSIONS:
            values = self.values.get(dimension)
            if values:
                clauses.append(f"{dimension} IN {{f_{dimension}:Array(String)}}")
                params[f"f_{dimension}"] = list(values)
        if self.learner_search:
            clauses.append("positionCaseInsensitive(learner_id, {learner_search:String}) > 0")
            params["learner_search"] = self.learner_search
        return clauses


@dataclass
class Totals:
    cost_usd: Decimal
    counts: dict[str, int]


@dataclass
class CostRow:
    keys: dict[str, str | None]
    bucket: int | None
    cost_usd: Decimal
    counts: dict[str, int]


# When no learner is grouped, filtered or searched, the rollups without the
# learner answer the same question from far fewer rows.
_WITHOUT_LEARNER = {"usage_daily": "usage_daily_totals", "usage_hourly": "usage_hourly_totals"}


def union_sql(
    segments: Sequence[Segment], dimensions: Sequence[str], filters: CostFilter, params: dict[str, Any]
) -> str:
    """One UNION ALL over the segments, each from its own table."""
    branches = []
    where_common = filters.where(params)
    columns = ", ".join(dimensions)
    learner = "learner_id" in dimensions or bool(filters.values.get("learner_id")) or bool(filters.learner_search)
    for index, segment in enumerate(segments):
        time_sql, range_sql, measures = _SOURCES[segment.source]
        table = segment.source if learner else _WITHOUT_LEARNER.get(segment.source, segment.source)
        params[f"s{index}"] = segment.start
        params[f"e{index}"] = segment.end
        where = " AND ".join([range_sql % {"i": index}, *where_common])
        select = ", ".join(part for part in (columns, f"{time_sql} AS t", measures) if part)
        branches.append(f"SELECT {select} FROM {table} WHERE {where}")
    return "\nUNION ALL\n".join(branches)


_SUMS = ", ".join([*(f"sum({c}) AS {c}" for c in COUNTS), "sum(cost_usd) AS cost_usd"])


class CostQueries:
    def __init__(self, db: ClickHouse) -> None:
        self.db = db

    def grouped_sql(
        self,
        filters: CostFilter,
        group_by: Sequence[str],
        granularity: Granularity,
        tz: str,
        *,
        order_by: str = "cost",
        limit: int | None = None,
        offset: int = 0,
    ) -> tuple[str, dict[str, Any]] | None:
        """The SQL for rows per group (and bucket), ordered by `order_by` descending; None for an empty range."""
        segments = plan(filters.start, filters.end, granularity, tz)
        if not segments:
            return None
        params: dict[str, Any] = {"tz": tz}
        bucket = bucket_sql(granularity)
        keys = [*group_by, *(["bucket"] if bucket else [])]
        select_keys = [*group_by, *([f"{bucket} AS bucket"] if bucket else [])]
        sql = (
            f"SELECT {', '.join([*select_keys, _SUMS])} "
            f"FROM ({union_sql(segments, group_by, filters, params)}) "
            + (f"GROUP BY {', '.join(keys)} " if keys else "")
            + f"ORDER BY {ORDERS[order_by]} DESC{''.join(', ' + k for k in keys)}"
        )
        if limit is not None:
            sql += " LIMIT {limit:UInt64} OFFSET {offset:UInt64}"
            params["limit"] = limit
            params["offset"] = offset
        return sql, params

    def grouped(
        self,
        filters: CostFilter,
        group_by: Sequence[str],
        granularity: Granularity,
        tz: str,
        *,
        order_by: str = "cost",
        limit: int | None = None,
        offset: int = 0,
        label: str = "costs.grouped",
    ) -> list[CostRow]:
        """Rows per group (and bucket), ordered by `order_by` descending."""
        query = self.grouped_sql(filters, group_by, granularity, tz, order_by=order_by, limit=limit, offset=offset)
        if query is None:
            return []
        return [to_cost_row(row, group_by, granularity != "none") for row in self.db.query(*query, label=label)]

    def stream_grouped(
        self, filters: CostFilter, group_by: Sequence[str], granularity: Granularity, tz: str, *, order_by: str
    ) -> Iterator[list[CostRow]]:
        """Every row of `grouped`, block by block; consume it on one thread."""
        query = self.grouped_sql(filters, group_by, granularity, tz, order_by=order_by)
        if query is None:
            return
        with self.db.stream_rows(*query, label="costs.export") as blocks:
            for block in blocks:
                yield [to_cost_row(row, group_by, granularity != "none") for row in block]

    def precomputed(
        self, filters: CostFilter, period: str, dimension: str | None, label: str = "costs.precomputed"
    ) -> list[CostRow]:
        """Rows per UTC period (and `dimension`) from `cost_summaries`, for periods
        starting in [filters.start, filters.end); the range must hold whole periods."""
        params: dict[str, Any] = {
            "period": period,
            "first": filters.start.astimezone(UTC).date(),
            "last": filters.end.astimezone(UTC).date(),
        }
        where = " AND ".join(
            [
                "period = {period:String}",
                "period_start >= {first:Date}",
                "period_start < {last:Date}",
                *filters.where(params),
            ]
        )
        dims = [dimension] if dimension else []
        keys = ", ".join(["bucket", *dims])
        bucket = "toUnixTimestamp(toDateTime(period_start, 'UTC')) AS bucket"
        sql = (
            f"SELECT {', '.join([*dims, bucket, _SUMS])} FROM cost_summaries FINAL WHERE {where} "
            f"GROUP BY {keys} ORDER BY cost_usd DESC, {keys}"
        )
        rows = self.db.query(sql, params, label=label)
        width = 1 if dimension else 0
        return [
            CostRow(
                {dimension: row[0] or None} if dimension else {},
                int(row[width]),
                row[width + 1 + len(COUNTS)],
                {name: int(row[width + 1 + i]) for i, name in enumerate(COUNTS)},
            )
            for row in rows
        ]

    def freshness(self, filters: CostFilter, period: str) -> dict[int, tuple[datetime | None, datetime | None]]:
        """Per UTC period starting in [filters.start, filters.end): when its days last
        received an event (usage_daily_totals) and when its summary was computed (cost_summaries)."""
        params: dict[str, Any] = {
            "period": period,
            "first": filters.start.astimezone(UTC).date(),
            "last": filters.end.astimezone(UTC).date(),
        }
        where = filters.where(params)
        day = {"day": "bucket", "week": "toMonday(bucket)", "month": "toStartOfMonth(bucket)"}[period]
        received = self.db.query(
            f"SELECT toUnixTimestamp(toDateTime({day}, 'UTC')) AS p, max(last_received_at) FROM usage_daily_totals "
            f"WHERE {' AND '.join([f'{day} >= {{first:Date}}', f'{day} < {{last:Date}}', *where])} GROUP BY p",
            params,
            label="costs.freshness",
        )
        computed = self.db.query(
            "SELECT toUnixTimestamp(toDateTime(period_start, 'UTC')) AS p, min(computed_at) FROM cost_summaries FINAL "
            "WHERE "
            + " AND ".join(
                ["period = {period:String}", "period_start >= {first:Date}", "period_start < {last:Date}", *where]
            )
            + " GROUP BY p",
            params,
            label="costs.freshness",
        )
        out: dict[int, tuple[datetime | None, datetime | None]] = {}
        for key, when in received:
            out[int(key)] = (_aware(when), None)
        for key, when in computed:
            out[int(key)] = (out.get(int(key), (None, None))[0], _aware(when))
        return out

    def total(self, filters: CostFilter, label: str = "costs.total") -> Totals:
        """Sums over the whole filtered range."""
        rows = self.grouped(filters, [], "none", "UTC", label=label)
        if not rows:
            return Totals(Decimal(0), dict.fromkeys(COUNTS, 0))
        return Totals(rows[0].cost_usd, rows[0].counts)


def to_cost_row(row: Sequence[Any], group_by: Sequence[str], bucketed: bool) -> CostRow:
    width = len(group_by)
    keys = {name: (row[i] if row[i] != "" else None) for i, name in enumerate(group_by)}
    measures = width + (1 if bucketed else 0)
    counts = {name: int(row[measures + i]) for i, name in enumerate(COUNTS)}
    return CostRow(keys, int(row[width]) if bucketed else None, row[measures + len(COUNTS)], counts)


def _aware(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
