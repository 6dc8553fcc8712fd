"""Which table answers which part of a time range.

A range is cut into segments, each read from the coarsest table whose buckets
fit inside it exactly:

- `usage_daily` for whole UTC days, when the answer does not need buckets
  finer than a UTC day (granularity `none`, or day/week/month in UTC);
- `usage_hourly` for whole hours, when the zone's offset is a whole number of
  hours over the range (true of nearly every zone), so an hour never straddles
  a local bucket edge;
- `usage_events` (the raw table) only for the partial hours at the ends of a
  range whose `start` or `end` is not on the hour, and for zones with
  half-hour offsets (Asia/Kolkata, Australia/Adelaide) bucketed by day, week
  or month. Every other filter is a rollup dimension, so no filter forces the
  raw table.

Each segment is half-open, and together they cover [start, end) exactly once,
so totals equal `sum(cost_usd)` over the raw events of the same filter.

The daily and hourly segments read the rollups without the learner
(`usage_daily_totals`, `usage_hourly_totals`) unless the question groups,
filters or searches by learner (`service.costs.query.union_sql`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

Source = Literal["usage_daily", "usage_hourly", "usage_events"]
Granularity = Literal["none", "hour", "day", "week", "month"]
UTC_NAMES = frozenset({"UTC", "Etc/UTC", "Etc/UCT", "UCT", "Etc/GMT", "GMT", "Etc/Zulu", "Zulu", "Universal"})

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


@dataclass(frozen=True)
class Segment:
    source: Source
    start: datetime
    end: datetime
    sign: int = 1  # -1: rows taken away (see `plan_to_day_end`)


def _ceil(moment: datetime, step: timedelta) -> datetime:
    floored = _floor(moment, step)
    return floored if floored == moment else floored + step


def _floor(moment: datetime, step: timedelta) -> datetime:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return epoch + ((moment - epoch) // step) * step


def whole_hour_offsets(zone: ZoneInfo, start: datetime, end: datetime) -> bool:
    """Whether the zone's UTC offset is a whole number of hours at every moment of the range."""
    probes = [start, end]
    for year in range(start.year, end.year + 1):
        probes += [datetime(year, 1, 1, tzinfo=UTC), datetime(year, 7, 1, tzinfo=UTC)]
    for moment in probes:
        offset = moment.astimezone(zone).utcoffset() or timedelta(0)
        if offset % HOUR:
            return False
    return True


def plan(start: datetime, end: datetime, granularity: Granularity, tz: str) -> list[Segment]:
    """Segments covering [start, end) exactly once, coarsest table first."""
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    if start >= end:
        return []
    local_buckets = granularity in ("day", "week", "month")
    if local_buckets and tz not in UTC_NAMES and not whole_hour_offsets(ZoneInfo(tz), start, end):
        return [Segment("usage_events", start, end)]
    first_hour, last_hour = _ceil(start, HOUR), _floor(end, HOUR)
    if first_hour >= last_hour:
        return [Segment("usage_events", start, end)]
    segments: list[Segment] = []
    if start < first_hour:
        segments.append(Segment("usage_events", start, first_hour))
    daily_fits = granularity == "none" or (local_buckets and tz in UTC_NAMES)
    first_day, last_day = _ceil(first_hour, DAY), _floor(last_hour, DAY)
    if daily_fits and first_day < last_day:
        if first_hour < first_day:
            segments.append(Segment("usage_hourly", first_hour, first_day))
        segments.append(Segment("usage_daily", first_day, last_day))
        if last_day < last_hour:
            segments.append(Segment("usage_hourly", last_day, last_hour))
    else:
        segments.append(Segment("usage_hourly", first_hour, last_hour))
    if last_hour < end:
        segments.append(Segment("usage_events", last_hour, end))
    return segments


# A range may end this close before the present and still be "ending now".
NOW_SLACK = timedelta(minutes=5)


def plan_to_day_end(
    start: datetime, end: datetime, granularity: Granularity, tz: str, now: datetime | None = None
) -> list[Segment]:
    """`plan`, except that a range ending inside a UTC day that it starts before (or at the
    midnight of) may read that whole day from `usage_daily` less the raw events from `end`
    to the next midnight (a segment with sign -1), instead of its hours from `usage_hourly`
    and the partial hour from the raw events. When `end` is now, the events taken away are those stamped in the
    future: next to none. Used when that is at most as much raw time as the hours it
    replaces, or when the range ends now. Totals stay exact: every event of the day is in
    its `usage_daily` rows, and those at or after `end` are subtracted."""
    segments = plan(start, end, granularity, tz)
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    last_day = _floor(end, DAY)
    following = last_day + DAY
    daily_fits = granularity == "none" or (granularity in ("day", "week", "month") and tz in UTC_NAMES)
    if not daily_fits or last_day < start or last_day == end:
        return segments
    recent = now is not None and end >= now.astimezone(UTC) - NOW_SLACK
    if not recent and following - end > end - last_day:
        return segments
    kept = [Segment(s.source, s.start, min(s.end, last_day), s.sign) for s in segments if s.start < last_day]
    if kept and kept[-1].source == "usage_daily":
        kept[-1] = Segment("usage_daily", kept[-1].start, following)
    else:
        kept.append(Segment("usage_daily", last_day, following))
    return [*kept, Segment("usage_events", end, following, -1)]
