"""The `cost_summaries` table: pre-computed UTC days, weeks and months.

`refresh_cost_summaries` recomputes every period touched by events received
since the previous run (all periods on the first run) from `usage_daily_totals`, and
records the run's watermark. Rows are exact for events received before their
watermark; a period that receives events later is stale until the next run
(every COST_AGGREGATION_INTERVAL seconds, or `POST /costs/summaries/refresh`).
Readers use pre-computed rows only for whole periods that ended before the
watermark's day, and the rollups for the rest.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import msgspec

from service.costs.query import COUNTS
from service.storage.clickhouse import ClickHouse

# Events are stamped `received_at` when accepted, shortly before their INSERT
# lands; a write in flight when a run starts may land with an earlier stamp.
# Runs re-read, and readers distrust, this much before a watermark
# (COST_SUMMARY_SLACK_SECONDS; it must exceed the longest accept-to-write delay).
DEFAULT_SLACK = timedelta(seconds=60)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_COUNTS = ", ".join(COUNTS)
_SUMS = ", ".join(f"sum({name})" for name in COUNTS)
_PERIOD_BUCKET = {"day": "bucket", "week": "toMonday(bucket)", "month": "toStartOfMonth(bucket)"}


class RefreshRun(msgspec.Struct):
    started_at: datetime
    watermark: datetime
    days: int
    rows: int
    seconds: float


@dataclass(frozen=True)
class Watermark:
    at: datetime | None

    @property
    def complete_before(self) -> date | None:
        """Periods ending on or before this UTC day are exact as of the watermark."""
        return self.at.astimezone(UTC).date() if self.at else None


def last_watermark(db: ClickHouse) -> Watermark:
    rows = db.query("SELECT max(watermark), count() FROM cost_summary_runs", label="summaries.watermark")
    when, runs = rows[0]
    if not runs:
        return Watermark(None)
    return Watermark(when.replace(tzinfo=UTC) if when.tzinfo is None else when)


def refresh_cost_summaries(db: ClickHouse, slack: timedelta = DEFAULT_SLACK) -> RefreshRun:
    """Recompute the periods touched since the last run; returns what it did."""
    started = time.perf_counter()
    started_at = datetime.now(UTC)
    watermark = started_at
    previous = last_watermark(db).at
    since = (previous - slack) if previous else _EPOCH
    touched = [
        row[0]
        for row in db.query(
            "SELECT DISTINCT toDate(event_time) FROM usage_events "
            "WHERE received_at >= {since:DateTime64(3, 'UTC')} AND received_at < {until:DateTime64(3, 'UTC')}",
            {"since": since, "until": watermark},
            label="summaries.touched",
        )
    ]
    written = 0
    if touched:
        for period, bucket in _PERIOD_BUCKET.items():
            db.command(
                f"INSERT INTO cost_summaries (period, period_start, tenant_id, service, provider, model, {_COUNTS}, "
                "cost_usd, computed_at) "
                f"SELECT {{period:String}}, {bucket} AS start, tenant_id, service, provider, model, {_SUMS}, "
                "sum(cost_usd), {watermark:DateTime64(3, 'UTC')} FROM usage_daily_totals "
                f"WHERE {bucket} IN (SELECT DISTINCT {bucket.replace('bucket', 'd')} "
                "FROM (SELECT arrayJoin({days:Array(Date)}) AS d)) "
                "GROUP BY start, tenant_id, service, provider, model",
                {"period": period, "watermark": watermark, "days": touched},
                label="summaries.write",
            )
        written = int(
            db.query(
                "SELECT count() FROM cost_summaries WHERE computed_at = {watermark:DateTime64(3, 'UTC')}",
                {"watermark": watermark},
                label="summaries.count",
            )[0][0]
        )
    db.insert(
        "cost_summary_runs",
        [[started_at, watermark, len(touched), written, datetime.now(UTC)]],
        ["started_at", "watermark", "days", "rows", "finished_at"],
        label="summaries.record",
    )
    return RefreshRun(started_at, watermark, len(touched), written, round(time.perf_counter() - started, 3))
