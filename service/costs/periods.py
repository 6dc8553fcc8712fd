"""Calendar periods in a time zone: day, week (Monday first), month, quarter, year."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

Period = Literal["day", "week", "month", "quarter", "year"]


def _local_midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(UTC)


def period_start(moment: datetime, period: Period, zone: ZoneInfo) -> datetime:
    """Start (UTC) of the period containing `moment`, calendar-aligned in `zone`."""
    local = moment.astimezone(zone).date()
    if period == "week":
        local -= timedelta(days=local.weekday())
    elif period == "month":
        local = local.replace(day=1)
    elif period == "quarter":
        local = local.replace(month=(local.month - 1) // 3 * 3 + 1, day=1)
    elif period == "year":
        local = local.replace(month=1, day=1)
    return _local_midnight(local, zone)


def next_period(start: datetime, period: Period, zone: ZoneInfo) -> datetime:
    """Start (UTC) of the period after the one starting at `start`."""
    local = start.astimezone(zone).date()
    if period == "day":
        local += timedelta(days=1)
    elif period == "week":
        local += timedelta(days=7)
    else:
        months = {"month": 1, "quarter": 3, "year": 12}[period]
        index = local.year * 12 + local.month - 1 + months
        local = date(index // 12, index % 12 + 1, 1)
    return _local_midnight(local, zone)


def previous_period(start: datetime, period: Period, zone: ZoneInfo) -> datetime:
    return period_start(start - timedelta(seconds=1), period, zone)


def grain_floor(day: date, grain: str) -> date:
    """The first day of the UTC day, week (from Monday) or month holding `day`."""
    if grain == "month":
        return day.replace(day=1)
    if grain == "week":
        return day - timedelta(days=day.weekday())
    return day


def grain_next(bucket: date, grain: str) -> date:
    """The first day of the day, week or month after the one starting at `bucket`."""
    if grain == "month":
        return date(bucket.year + bucket.month // 12, bucket.month % 12 + 1, 1)
    return bucket + timedelta(days=7 if grain == "week" else 1)
