"""SQL over the rollups for cost questions, always inside a tenant scope."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from service.auth.principal import TenantScope
from service.costs.periods import grain_floor, grain_next
from service.costs.plan import UTC_NAMES, Granularity, Segment, plan_to_day_end
from service.storage.clickhouse import ClickHouse, as_utc

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
_ROLLUP_MEASURE_LIST = (*COUNTS, "cost_usd")
_ROLLUP_MEASURES = ", ".join(_ROLLUP_MEASURE_LIST)
# Raw rows: every column here is in the projection `events_by_time` (migration 0011),
# which holds the raw events ordered by time, so a partial hour at the edge of a range
# reads a few granules instead of one or more per tenant and service. A correction
# that prices an unpriced event (`resolves_unpriced`) takes it out of unpriced_events.
_RAW_MEASURE_LIST = (
    "toUInt64(record_type = 'usage') AS events",
    "toInt64(record_type = 'usage' AND pricing_status = 'unpriced') - toInt64(resolves_unpriced) AS unpriced_events",
    *COUNTS[2:],
    "toDecimal128(ifNull(cost_usd, toDecimal64(0, 12)), 12) AS cost_usd",
)
_RAW_MEASURES = ", ".join(_RAW_MEASURE_LIST)
_SOURCES = {
    "usage_daily": (
        "toDateTime(bucket, 'UTC')",
        "bucket >= toDate({s%(i)s:DateTime('UTC')}) AND bucket < toDate({e%(i)s:DateTime('UTC')})",
        _ROLLUP_MEASURE_LIST,
    ),
    "usage_hourly": (
        "bucket",
        "bucket >= {s%(i)s:DateTime('UTC')} AND bucket < {e%(i)s:DateTime('UTC')}",
        _ROLLUP_MEASURE_LIST,
    ),
    "usage_events": (
        "toDateTime(event_time, 'UTC')",
        # the hour bounds let the primary key (tenant, service, hour, ...) skip granules
        # in parts the projection does not cover yet
        "event_time >= {s%(i)s:DateTime64(3, 'UTC')} AND event_time < {e%(i)s:DateTime64(3, 'UTC')}"
        " AND toStartOfHour(event_time) >= toStartOfHour({s%(i)s:DateTime64(3, 'UTC')})"
        " AND toStartOfHour(event_time) <= toStartOfHour({e%(i)s:DateTime64(3, 'UTC')})",
        _RAW_MEASURE_LIST,
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


def _branch(
    columns: str, time_sql: str, measures: Sequence[str], conditions: dict[int, str], source: str, where: str
) -> str:
    """One UNION ALL branch: `SELECT columns, t, measures FROM source WHERE where` (`source`
    may carry a PREWHERE), each row's measures times the sign whose condition it meets
    (`conditions`: sign -> SQL; the last is the default). A negative sign multiplies the
    UInt64 counts by 2^64 + sign (their sums wrap back to the exact difference) and the
    signed ones by the sign; the factors are computed once per row, in a subquery."""
    if set(conditions) == {1}:
        select = ", ".join(part for part in (columns, f"{time_sql} AS t", *measures) if part)
        return f"SELECT {select} FROM {source} WHERE {where}"
    cases = sorted(conditions.items(), reverse=True)

    def factor(cast: str, modulo: int | None) -> str:
        value = [f"{cast}({sign % modulo if modulo else sign})" for sign, _ in cases]
        if len(cases) == 1:
            return value[0]
        pairs = ", ".join(f"{condition}, {v}" for (_, condition), v in zip(cases[:-1], value[:-1], strict=True))
        return f"multiIf({pairs}, {value[-1]})"

    inner, outer = [], []
    for index, part in enumerate(measures):
        expression, _, name = part.rpartition(" AS ")
        expression, name = (expression, name) if expression else (part, part)
        inner.append(f"{expression} AS m{index}")
        outer.append(f"m{index} * {'s_signed' if name in ('unpriced_events', 'cost_usd') else 's_unsigned'} AS {name}")
    select = ", ".join(
        part
        for part in (
            columns,
            f"{time_sql} AS t",
            *inner,
            f"{factor('toUInt64', 2**64)} AS s_unsigned",
            f"{factor('toInt64', None)} AS s_signed",
        )
        if part
    )
    return (
        f"SELECT {', '.join(part for part in (columns, 't', *outer) if part)} "
        f"FROM (SELECT {select} FROM {source} WHERE {where})"
    )


# A ranking by learner shows each learner's cost, events and tokens only; its total
# shows every count. Read `narrow`, the learner-keyed rollups give those (and the
# unpriced events, which the learner rollup nets of the corrections that price them),
# and the rollups without the learner give the other counts to the total alone (as
# learner ''): the widest table is read for five of its ten measures.
_RANKED = frozenset({"events", "unpriced_events", "input_tokens", "output_tokens", "cost_usd"})


def _measure_name(part: str) -> str:
    expression, _, name = part.rpartition(" AS ")
    return name if expression else part


def _narrowable(dimensions: Sequence[str], filters: CostFilter) -> bool:
    """Whether a ranking by learner can be read `narrow` (the rollups without the learner
    cannot take a learner filter or search)."""
    return "learner_id" in dimensions and not filters.values.get("learner_id") and not filters.learner_search


def _only(measures: Sequence[str], ranked: bool) -> list[str]:
    """`measures`, each outside `_RANKED` (or, with `ranked=False`, inside it) read as zero."""
    zero = {"cost_usd": "toDecimal128(0, 12)", "unpriced_events": "toInt64(0)"}
    return [
        part
        if (_measure_name(part) in _RANKED) == ranked
        else f"{zero.get(_measure_name(part), 'toUInt64(0)')} AS {_measure_name(part)}"
        for part in measures
    ]


def union_sql(
    segments: Sequence[Segment],
    dimensions: Sequence[str],
    filters: CostFilter,
    params: dict[str, Any],
    daily_from: str | None = None,
    *,
    narrow: bool = False,
    extras_only: bool = False,
    prefix: str = "",
) -> str:
    """One UNION ALL over the segments: one branch per table, its segments' ranges OR'd
    (a segment with sign -1 is taken away, see `plan_to_day_end`). `daily_from`, a SQL
    Date, cuts the `usage_daily` segments' rows before it (see `summary_periods`).
    `narrow` (a ranking by learner): see `_RANKED`; `extras_only`: only the counts outside
    `_RANKED`, from the rollups without the learner. `prefix` names the parameters."""
    branches = []
    where_common = filters.where(params)
    columns = ", ".join(dimensions)
    learner = "learner_id" in dimensions or bool(filters.values.get("learner_id")) or bool(filters.learner_search)
    ranges: dict[str, dict[int, list[str]]] = {}
    for position, segment in enumerate(segments):
        index = f"{prefix}{position}"
        params[f"s{index}"] = segment.start
        params[f"e{index}"] = segment.end
        condition = _SOURCES[segment.source][1] % {"i": index}
        if daily_from is not None and segment.source == "usage_daily":
            condition += f" AND bucket >= {daily_from}"
        condition = f"({condition})"
        ranges.setdefault(segment.source, {}).setdefault(segment.sign, []).append(condition)
    for source, by_sign in ranges.items():
        time_sql, _, measures = _SOURCES[source]
        table = source if learner else _WITHOUT_LEARNER.get(source, source)
        conditions = {sign: " OR ".join(found) for sign, found in by_sign.items()}
        where = " AND ".join([f"({' OR '.join(conditions.values())})", *where_common])
        split = (narrow or extras_only) and _narrowable(dimensions, filters) and source in _WITHOUT_LEARNER
        if not extras_only or not split:
            branches.append(
                _branch(columns, time_sql, _only(measures, True) if split else measures, conditions, table, where)
            )
        if split:
            blank = ", ".join(f"'' AS {name}" for name in dimensions)
            extras = _only(measures, False)
            branches.append(_branch(blank, time_sql, extras, conditions, _WITHOUT_LEARNER[source], where))
    return "\nUNION ALL\n".join(branches)


# -- the learner rollup -------------------------------------------------------
#
# `usage_learner_rollup` (migration 0011) holds one row per tenant, learner and
# UTC day, week (from Monday) and month. It answers the whole-day part of a
# question about learners that groups and filters on nothing but the tenant and
# the learner (the by-learner ranking, learner budgets): months first, then
# weeks, then days, each only where its buckets fit inside the range and inside
# the answer's buckets. The hourly and raw edges stay as `plan` cuts them.

LEARNER_ROLLUP = "usage_learner_rollup"
_LEARNER_KEYS = frozenset({"tenant_id", "learner_id"})
# Grains whose buckets nest in each granularity's (UTC) buckets, coarsest first.
_LEARNER_GRAINS: dict[str, tuple[str, ...]] = {
    "none": ("month", "week", "day"),
    "month": ("month", "day"),
    "week": ("week", "day"),
    "day": ("day",),
}


@dataclass(frozen=True)
class GrainSpan:
    """Buckets of one grain of the learner rollup starting in [start, end) (UTC days),
    added (sign 1) or taken away (sign -1)."""

    grain: str
    start: date
    end: date
    sign: int = 1


# Rows read per bucket, relative to a day's: a rough guess, only used to choose between
# covers that are all exact (more learners show up in a week or a month than in a day).
_GRAIN_WEIGHT = {"day": 1, "week": 3, "month": 6}


def _grain_ceil(day: date, grain: str) -> date:
    floor = grain_floor(day, grain)
    return floor if floor == day else grain_next(floor, grain)


def _month_ceil(day: date) -> date:
    return _grain_ceil(day, "month")


def _cover_cost(spans: Sequence[GrainSpan], today: date) -> int:
    """Buckets read, weighted by grain; buckets after `today` hold (next to) nothing."""
    cost = 0
    for span in spans:
        bucket = span.start
        while bucket < span.end and bucket <= today:
            cost += _GRAIN_WEIGHT[span.grain]
            bucket = grain_next(bucket, span.grain)
    return cost


def _today() -> date:
    return datetime.now(UTC).date()


def _negate(spans: Sequence[GrainSpan]) -> list[GrainSpan]:
    return [GrainSpan(s.grain, s.start, s.end, -s.sign) for s in spans]


def _grain_cover(start: date, end: date, grains: Sequence[str], today: date | None = None) -> list[GrainSpan]:
    """[start, end) as signed buckets of the grains: each day counted once in all.

    Without `today`, only buckets inside the range, coarsest first. With it, a
    coarse bucket may also reach past either end, less the days it holds outside the
    range (`month - the days after the end` when the range ends in the current
    month), whichever reads the fewest rows by `_cover_cost`."""
    if start >= end:
        return []
    grain, finer = grains[0], grains[1:]
    if grain == "day":
        return [GrainSpan("day", start, end)]
    inner = (_grain_ceil(start, grain), grain_floor(end, grain))
    outer = (grain_floor(start, grain), _grain_ceil(end, grain))
    options = [_grain_cover(start, end, finer, today)]
    sides = [("in", "in")] if today is None else [("in", "in"), ("in", "out"), ("out", "in"), ("out", "out")]
    for left, right in sides:
        low = inner[0] if left == "in" else outer[0]
        high = inner[1] if right == "in" else outer[1]
        if low >= high:
            continue
        before = (
            _grain_cover(start, low, finer, today) if low >= start else _negate(_grain_cover(low, start, finer, today))
        )
        after = _grain_cover(high, end, finer, today) if high <= end else _negate(_grain_cover(end, high, finer, today))
        options.append([*before, GrainSpan(grain, low, high), *after])
    if today is None:
        return options[-1]
    return min(options, key=lambda spans: _cover_cost(spans, today))


def _net(spans: Sequence[GrainSpan]) -> dict[int, list[GrainSpan]]:
    """The spans' buckets netted per (grain, bucket), as ranges grouped by their net sign."""
    signs: dict[tuple[str, date], int] = defaultdict(int)
    for span in spans:
        bucket = span.start
        while bucket < span.end:
            signs[(span.grain, bucket)] += span.sign
            bucket = grain_next(bucket, span.grain)
    out: dict[int, list[GrainSpan]] = defaultdict(list)
    for (grain, bucket), sign in sorted(signs.items()):
        if not sign:
            continue
        found = out[sign]
        last = found[-1] if found else None
        if last is not None and last.grain == grain and last.end == bucket:
            found[-1] = GrainSpan(grain, last.start, grain_next(bucket, grain), sign)
        else:
            found.append(GrainSpan(grain, bucket, grain_next(bucket, grain), sign))
    return dict(out)


def learner_rollup_fits(dimensions: Sequence[str], filters: CostFilter, granularity: Granularity, tz: str) -> bool:
    """Whether the learner rollup can answer the whole-day part of this question."""
    learner = "learner_id" in dimensions or bool(filters.values.get("learner_id")) or bool(filters.learner_search)
    filtered = {name for name, values in filters.values.items() if values}
    utc = granularity == "none" or tz in UTC_NAMES
    return learner and utc and granularity in _LEARNER_GRAINS and set(dimensions) | filtered <= _LEARNER_KEYS


def learner_union_sql(
    segments: Sequence[Segment],
    dimensions: Sequence[str],
    filters: CostFilter,
    params: dict[str, Any],
    granularity: Granularity,
    *,
    narrow: bool = False,
) -> str:
    """`union_sql`, with every `usage_daily` segment read from the learner rollup in one
    branch; only for questions where `learner_rollup_fits`. `narrow`: see `_RANKED`."""
    narrow = narrow and _narrowable(dimensions, filters)
    days = [segment for segment in segments if segment.source == "usage_daily"]
    others = [segment for segment in segments if segment.source != "usage_daily"]
    branches = [union_sql(others, dimensions, filters, params, narrow=narrow)] if others else []
    if narrow and days:
        branches.append(union_sql(days, dimensions, filters, params, extras_only=True, prefix="x"))
    today = _today()
    spans = [
        span
        for segment in days
        for span in _grain_cover(
            segment.start.astimezone(UTC).date(),
            segment.end.astimezone(UTC).date(),
            _LEARNER_GRAINS[granularity],
            today,
        )
    ]
    by_sign = _net(spans)
    if by_sign:
        # One branch: each row's (grain, bucket) is in the ranges of one net sign.
        conditions: dict[int, str] = {}
        index = 0
        for sign, found in sorted(by_sign.items()):
            ranges = []
            for span in found:
                params[f"lg{index}"] = span.grain
                params[f"ls{index}"] = span.start
                params[f"le{index}"] = span.end
                ranges.append(
                    f"(grain = {{lg{index}:String}} AND bucket >= {{ls{index}:Date}} AND bucket < {{le{index}:Date}})"
                )
                index += 1
            conditions[sign] = " OR ".join(ranges)
        where = " AND ".join([f"({' OR '.join(conditions.values())})", *filters.where(params)])
        branches.append(
            _branch(
                ", ".join(dimensions),
                "toDateTime(bucket, 'UTC')",
                _only(_ROLLUP_MEASURE_LIST, True) if narrow else _ROLLUP_MEASURE_LIST,
                conditions,
                LEARNER_ROLLUP,
                where,
            )
        )
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
        segments = plan_to_day_end(filters.start, filters.end, granularity, tz, datetime.now(UTC))
        if not segments:
            return None
        params: dict[str, Any] = {"tz": tz}
        bucket = bucket_sql(granularity)
        keys = [*group_by, *(["bucket"] if bucket else [])]
        select_keys = [*group_by, *([f"{bucket} AS bucket"] if bucket else [])]
        if learner_rollup_fits(group_by, filters, granularity, tz):
            union = learner_union_sql(segments, group_by, filters, params, granularity)
        else:
            union = union_sql(segments, group_by, filters, params)
        sql = (
            f"SELECT {', '.join([*select_keys, _SUMS])} "
            f"FROM ({union}) "
            + (f"GROUP BY {', '.join(keys)} " if keys else "")
            + f"ORDER BY {ORDERS[order_by]} DESC{''.join(', ' + k for k in keys)}"
        )
        if limit is not None:
            sql += " LIMIT {limit:UInt64} OFFSET {offset:UInt64}"
            params["limit"] = limit
            params["offset"] = offset
        return sql, params

    def ranked_with_total(
        self, filters: CostFilter, dimension: str, limit: int, label: str = "costs.ranked", *, narrow: bool = False
    ) -> tuple[list[CostRow], Totals]:
        """The `limit` costliest rows per `dimension` over the whole range, and the total of
        every row, from one query (GROUPING SETS ((dimension), ())). `narrow` (by learner):
        the rows carry cost, events and tokens only (the other counts read as zero there,
        and the row of learner '' may hold other learners' ones), the total every count."""
        segments = plan_to_day_end(filters.start, filters.end, "none", "UTC", datetime.now(UTC))
        if not segments:
            return [], Totals(Decimal(0), dict.fromkeys(COUNTS, 0))
        params: dict[str, Any] = {"limit": limit + 1}
        if learner_rollup_fits([dimension], filters, "none", "UTC"):
            union = learner_union_sql(segments, [dimension], filters, params, "none", narrow=narrow)
        else:
            union = union_sql(segments, [dimension], filters, params, narrow=narrow)
        sql = (
            f"SELECT {dimension}, grouping({dimension}) AS level, {_SUMS} FROM ({union}) "
            f"GROUP BY GROUPING SETS (({dimension}), ()) "
            f"ORDER BY level DESC, cost_usd DESC, {dimension} LIMIT {{limit:UInt64}}"
        )
        rows: list[CostRow] = []
        totals = Totals(Decimal(0), dict.fromkeys(COUNTS, 0))  # no total row when nothing matched
        for row in self.db.query(sql, params, label=label):
            found = to_cost_row((row[0], *row[2:]), [dimension], False)
            if int(row[1]):  # grouping(dimension) = 1: the () set, every row
                totals = Totals(found.cost_usd, found.counts)
            else:
                rows.append(found)
        return rows, totals

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

    def breakdown(
        self, filters: CostFilter, granularity: Granularity, tz: str, label: str = "costs.breakdown"
    ) -> Breakdown:
        """Per bucket: the whole, by service and by model, from one GROUPING SETS query over the rollups."""
        segments = plan_to_day_end(filters.start, filters.end, granularity, tz, datetime.now(UTC))
        if not segments:
            return Breakdown([], [], [])
        params: dict[str, Any] = {"tz": tz}
        bucket = bucket_sql(granularity) or "0"
        sql = (
            f"SELECT service, model, {bucket} AS bucket, grouping(service, model) AS level, {_SUMS} "
            f"FROM ({union_sql(segments, ['service', 'model'], filters, params)}) "
            "GROUP BY GROUPING SETS ((bucket), (bucket, service), (bucket, model))"
        )
        return _breakdown(self.db.query(sql, params, label=label))

    def summary_periods(
        self,
        filters: CostFilter,
        granularity: Granularity,
        tz: str,
        period: str,
        top: int,
        slack: timedelta | None = None,
        label: str = "costs.summary",
    ) -> tuple[list[PeriodRow], datetime]:
        """Per bucket of [filters.start, filters.end) (`filters.start` on a period start): the
        sums and the `top` costliest services and models, in one query. With `slack` (UTC
        periods, filters on summary dimensions only), the leading run of whole periods whose
        `cost_summaries` rows are current comes from there and the rest from the rollups;
        also returns where that run ends (`filters.start` when there is none).

        The run is decided inside the query, as the refresh job defines staleness: it ends at
        the first period one of whose days received an event (`usage_daily_totals.last_received_at`)
        no earlier than `slack` before its row was computed, or that has no row, and at the
        latest at the last period that ended on or before the day of the last refresh's
        watermark (`cost_summary_runs`) and before `filters.end`."""
        first = filters.start.astimezone(UTC).date()
        params: dict[str, Any] = {"tz": tz, "first": first, "top": top}
        segments = plan_to_day_end(filters.start, filters.end, granularity, tz, datetime.now(UTC))
        branches: list[str] = []
        split = "{first:Date}"
        with_sql = ""
        if slack is not None:
            split = "split"
            day = _PERIOD_OF_DAY[period]
            moment = "Nullable(DateTime64(3, 'UTC'))"
            params.update(
                period=period,
                end_day=filters.end.astimezone(UTC).date(),
                slack_ms=int(slack / timedelta(milliseconds=1)),
            )
            where = filters.where(params)
            received = " AND ".join([f"{day} >= {{first:Date}}", f"{day} < {{end_day:Date}}", *where])
            computed = " AND ".join(
                ["period = {period:String}", "period_start >= {first:Date}", "period_start < {end_day:Date}", *where]
            )
            stale = (
                "(SELECT minOrNull(p) FROM (SELECT p, max(r) AS received, min(c) AS computed FROM ("
                f"SELECT {day} AS p, CAST(last_received_at AS {moment}) AS r, CAST(NULL AS {moment}) AS c "
                f"FROM usage_daily_totals WHERE {received} "
                f"UNION ALL SELECT period_start, CAST(NULL AS {moment}), CAST(computed_at AS {moment}) "
                f"FROM cost_summaries FINAL WHERE {computed}) GROUP BY p "
                "HAVING received IS NOT NULL "
                "AND (computed IS NULL OR received >= computed - toIntervalMillisecond({slack_ms:Int64}))))"
            )
            # the last period start whose period ends on or before the watermark's day and `end`
            newest = _PERIOD_OF_DAY[period].replace(
                "bucket", "least((SELECT toDate(max(watermark)) FROM cost_summary_runs), {end_day:Date})"
            )
            with_sql = (
                f"WITH {newest} AS newest, {stale} AS stale, "
                "greatest({first:Date}, if(stale IS NULL, newest, least(assumeNotNull(stale), newest))) AS split "
            )
            measures = ", ".join(
                name if name != "unpriced_events" else "toInt64(unpriced_events) AS unpriced_events"
                for name in _ROLLUP_MEASURE_LIST
            )
            summaries_where = " AND ".join(
                ["period = {period:String}", "period_start >= {first:Date}", "period_start < split", *where]
            )
            branches.append(
                f"SELECT service, model, toDateTime(period_start, 'UTC') AS t, {measures} "
                f"FROM cost_summaries FINAL WHERE {summaries_where}"
            )
        branches.append(
            union_sql(segments, ["service", "model"], filters, params, daily_from=split if slack is not None else None)
        )
        bucket = bucket_sql(granularity) or "0"
        per_level = ", ".join(f"anyIf(g_{name}, level = 3)" for name in (*COUNTS, "cost_usd"))
        sums = ", ".join(f"sum({name}) AS g_{name}" for name in (*COUNTS, "cost_usd"))

        def ranked(name: str, level: int) -> str:
            pairs = f"groupArrayIf(({name}, g_cost_usd), level = {level})"
            return f"arraySlice(arraySort(x -> (-x.2, x.1), {pairs}), 1, {{top:UInt64}})"

        sql = (
            f"{with_sql}SELECT bucket, {per_level}, {ranked('service', 1)}, {ranked('model', 2)}, "
            f"any({split}) FROM ("
            f"SELECT service, model, {bucket} AS bucket, grouping(service, model) AS level, {sums} "
            f"FROM ({' UNION ALL '.join(branches)}) "
            "GROUP BY GROUPING SETS ((bucket), (bucket, service), (bucket, model))"
            ") GROUP BY bucket"
        )
        rows = self.db.query(sql, params, label=label)
        out = [
            PeriodRow(
                int(row[0]),
                row[1 + len(COUNTS)],
                {name: int(row[1 + i]) for i, name in enumerate(COUNTS)},
                [(name or "", cost) for name, cost in row[2 + len(COUNTS)]],
                [(name or "", cost) for name, cost in row[3 + len(COUNTS)]],
            )
            for row in rows
        ]
        until = rows[0][-1] if rows else first
        return out, datetime(until.year, until.month, until.day, tzinfo=UTC)

    def precomputed_breakdown(self, filters: CostFilter, period: str, label: str = "costs.precomputed") -> Breakdown:
        """`breakdown` from `cost_summaries`, for UTC periods starting in [filters.start, filters.end);
        the range must hold whole periods."""
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
        sql = (
            "SELECT service, model, toUnixTimestamp(toDateTime(period_start, 'UTC')) AS bucket, "
            f"grouping(service, model) AS level, {_SUMS} FROM cost_summaries FINAL WHERE {where} "
            "GROUP BY GROUPING SETS ((bucket), (bucket, service), (bucket, model))"
        )
        return _breakdown(self.db.query(sql, params, label=label))

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
            out[int(key)] = (as_utc(when), None)
        for key, when in computed:
            out[int(key)] = (out.get(int(key), (None, None))[0], as_utc(when))
        return out

    def total(self, filters: CostFilter, label: str = "costs.total") -> Totals:
        """Sums over the whole filtered range."""
        rows = self.grouped(filters, [], "none", "UTC", label=label)
        if not rows:
            return Totals(Decimal(0), dict.fromkeys(COUNTS, 0))
        return Totals(rows[0].cost_usd, rows[0].counts)


@dataclass
class PeriodRow:
    """One bucket of a summary: its sums and its costliest services and models (name, cost)."""

    bucket: int
    cost_usd: Decimal
    counts: dict[str, int]
    top_services: list[tuple[str, Decimal]]
    top_models: list[tuple[str, Decimal]]


# The start of the summary period (`cost_summaries.period`) holding a UTC day `bucket`.
_PERIOD_OF_DAY = {"day": "bucket", "week": "toMonday(bucket)", "month": "toStartOfMonth(bucket)"}


@dataclass
class Breakdown:
    """Rows per bucket: the whole period, and per service and per model (each ordered by cost, descending)."""

    periods: list[CostRow]
    services: list[CostRow]
    models: list[CostRow]


def _breakdown(rows: Sequence[Sequence[Any]]) -> Breakdown:
    """Rows of `service, model, bucket, level, COUNTS..., cost_usd` from GROUPING SETS
    ((bucket), (bucket, service), (bucket, model)); `level` is grouping(service, model)
    (a bit is set for a column that is aggregated away)."""
    out = Breakdown([], [], [])
    for row in rows:
        counts = {name: int(row[4 + i]) for i, name in enumerate(COUNTS)}
        cost = row[4 + len(COUNTS)]
        level = int(row[3])
        if level == 3:
            out.periods.append(CostRow({}, int(row[2]), cost, counts))
        elif level == 1:
            out.services.append(CostRow({"service": row[0] or None}, int(row[2]), cost, counts))
        else:
            out.models.append(CostRow({"model": row[1] or None}, int(row[2]), cost, counts))
    for found, name in ((out.services, "service"), (out.models, "model")):
        found.sort(key=lambda row: (-row.cost_usd, row.keys[name] or ""))
    return out


def to_cost_row(row: Sequence[Any], group_by: Sequence[str], bucketed: bool) -> CostRow:
    width = len(group_by)
    keys = {name: (row[i] if row[i] != "" else None) for i, name in enumerate(group_by)}
    measures = width + (1 if bucketed else 0)
    counts = {name: int(row[measures + i]) for i, name in enumerate(COUNTS)}
    return CostRow(keys, int(row[width]) if bucketed else None, row[measures + len(COUNTS)], counts)
