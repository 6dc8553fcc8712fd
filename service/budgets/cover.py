"""Where a pass reads spend from: each budget window as signed pieces of the rollups, and
one query for every group of budgets that share grouping columns.

A window [start, end) is cut into pieces, each a range of one source, added or taken
away (`cover`): whole UTC days from the daily rollup, whole hours from the hourly one,
and the raw events for what is left at the edges. A partial day at either end may be
read as the whole day less the hours (and raw minutes) outside the window, when that
reads less; a window ending now reads its last day whole less what follows the end
(events stamped in the future: next to none). Totals stay exact: every event of a day is
in its daily rows, and what lies outside is subtracted.

Groups that key on the tenant and the learner only (per-learner templates, single-learner
budgets without a service) read their whole days from `usage_learner_rollup` instead, as
whole months, then whole weeks, then days (`grain_pieces`): a few rows per learner rather
than one per learner, day, service, provider, model and region.

`group_query` measures many groups (same grouping columns, any windows) in one scan: each
group's spend so far and recent spend are conditional sums over the pieces of its own
window, and a row comes back only for the groups it may matter to (`Measure.keep`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from service.costs.periods import grain_floor, grain_next
from service.costs.plan import plan

DAY = timedelta(days=1)
# Each source: its code in the scan's `k` column, its table (with and without the learner),
# its time column as DateTime64(3, 'UTC'), and the range it is pruned with.
RAW_COST = "toDecimal128(ifNull(cost_usd, toDecimal64(0, 12)), 12)"
CODES = {"daily": 1, "hourly": 2, "raw": 3, "day": 4, "week": 5, "month": 6}
GRAINS = ("month", "week", "day")
LEADING_DAYS = 3
LEARNER_ROLLUP = "usage_learner_rollup"
LEARNER_KEYS = frozenset({"tenant_id", "learner_id"})
_PLANNED = {"usage_daily": "daily", "usage_hourly": "hourly", "usage_events": "raw"}


@dataclass(frozen=True)
class Piece:
    """A range of one source, added (sign 1) or taken away (-1). For the learner rollup's
    grains (`day`, `week`, `month`) the range holds whole buckets of that grain."""

    source: str
    start: datetime
    end: datetime
    sign: int = 1


def _floor(moment: datetime) -> datetime:
    return datetime(moment.year, moment.month, moment.day, tzinfo=UTC)


def _ceil(moment: datetime) -> datetime:
    floored = _floor(moment)
    return floored if floored == moment else floored + DAY


def _planned(start: datetime, end: datetime, sign: int = 1, *, hours: bool = True) -> list[Piece]:
    """Less than a day: whole hours and raw minutes, or (without `hours`) raw events throughout."""
    if not hours:
        return [Piece("raw", start, end, sign)] if start < end else []
    return [Piece(_PLANNED[s.source], s.start, s.end, sign * s.sign) for s in plan(start, end, "none", "UTC")]


def cover(start: datetime, end: datetime, now: datetime, *, hours: bool = True) -> list[Piece]:
    """[start, end) as signed pieces of the daily, hourly and raw sources: each moment counted once.

    What follows an end at or after `now` is taken away from the raw events (stamped in the
    future: next to none, read by time through the raw events' time-ordered projection).
    Without `hours`, the parts of a day are read from the raw events only: when the hourly
    rows are about as many as the events (at learner grain), one table fewer to read."""
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    if start >= end:
        return []
    first_day, last_day = _ceil(start), _floor(end)
    if first_day > last_day:  # inside one UTC day, touching neither midnight
        return _planned(start, end, hours=hours)
    pieces: list[Piece] = []
    if start < first_day:
        day = first_day - DAY
        if first_day - start > start - day:  # more of the day inside than outside: the day, less its start
            pieces += [Piece("daily", day, first_day), *_planned(day, start, -1, hours=hours)]
        else:
            pieces += _planned(start, first_day, hours=hours)
    if first_day < last_day:
        pieces.append(Piece("daily", first_day, last_day))
    if last_day < end:
        following = last_day + DAY
        if end >= now:  # the day, less what follows the end (the future)
            pieces += [Piece("daily", last_day, following), Piece("raw", end, following, -1)]
        elif following - end < end - last_day:  # the day, less what follows the end
            pieces += [Piece("daily", last_day, following), *_planned(end, following, -1, hours=hours)]
        else:
            pieces += _planned(last_day, end, hours=hours)
    return _joined(pieces)


def _joined(pieces: Sequence[Piece]) -> list[Piece]:
    """Adjacent ranges of one source and sign as one."""
    out: list[Piece] = []
    for piece in sorted(pieces, key=lambda p: (p.source, p.sign, p.start)):
        last = out[-1] if out else None
        if last is not None and (last.source, last.sign, last.end) == (piece.source, piece.sign, piece.start):
            out[-1] = Piece(piece.source, last.start, piece.end, piece.sign)
        else:
            out.append(piece)
    return out


def _moment(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def grain_pieces(piece: Piece, today: date) -> list[Piece]:
    """A `daily` piece as buckets of the learner rollup: whole months, then whole weeks
    (from Monday), then days. A month or week that starts inside the range and reaches past
    its end is taken whole, less its days from the end on, when those days are all after
    `today` (they hold next to nothing). At the start, a month or week that begins at most
    `LEADING_DAYS` before the range is taken whole less those days, when that replaces more
    day rows (up to today) than it adds."""
    start, end = piece.start.date(), piece.end.date()
    out: list[Piece] = []
    cursor = start
    for grain in ("month", "week"):
        bucket = grain_floor(start, grain)
        following = grain_next(bucket, grain)
        lead = (start - bucket).days
        if not lead:
            break  # the range starts with a whole bucket of this grain: taken below
        replaced = (min(following, end, today + timedelta(days=1)) - start).days
        if lead <= LEADING_DAYS and (following <= end or end > today) and replaced > lead + 1:
            out += [Piece(grain, _moment(bucket), _moment(following), piece.sign)]
            out += [Piece("day", _moment(bucket), _moment(start), -piece.sign)]
            if following > end:
                out.append(Piece("day", _moment(end), _moment(following), -piece.sign))
            cursor = min(following, end)
            break
    while cursor < end:
        for grain in GRAINS:
            if grain_floor(cursor, grain) != cursor:
                continue
            following = grain_next(cursor, grain)
            if following <= end:
                out.append(Piece(grain, _moment(cursor), _moment(following), piece.sign))
                cursor = following
                break
            if grain != "day" and end > today:
                out.append(Piece(grain, _moment(cursor), _moment(following), piece.sign))
                out.append(Piece("day", _moment(end), _moment(following), -piece.sign))
                cursor = end
                break
    return _joined(out)


def learner_pieces(pieces: Sequence[Piece], today: date) -> list[Piece]:
    """Pieces with their `daily` ones as buckets of the learner rollup (`grain_pieces`), netted."""
    return netted([g for piece in pieces for g in (grain_pieces(piece, today) if piece.source == "daily" else [piece])])


def netted(pieces: Sequence[Piece]) -> list[Piece]:
    """The learner rollup's pieces netted per bucket (a bucket added and taken away is not
    read at all), other pieces as they are."""
    signs: dict[tuple[str, date], int] = {}
    others: list[Piece] = []
    for piece in pieces:
        if piece.source not in GRAINS:
            others.append(piece)
            continue
        bucket = piece.start.date()
        while bucket < piece.end.date():
            signs[(piece.source, bucket)] = signs.get((piece.source, bucket), 0) + piece.sign
            bucket = grain_next(bucket, piece.source)
    out = list(others)
    for (grain, bucket), sign in signs.items():
        out += [Piece(grain, _moment(bucket), _moment(grain_next(bucket, grain)), 1 if sign > 0 else -1)] * abs(sign)
    return _joined(out)


def learner_rollup_fits(columns: Sequence[str], filtered: Sequence[str]) -> bool:
    """Whether the learner rollup holds what a group keys and filters on (the tenant and the learner only)."""
    return "learner_id" in columns and set(columns) | set(filtered) <= LEARNER_KEYS


@dataclass
class GroupSql:
    """One scan measuring several groups: `sql` returns rows of (columns..., group index,
    spend so far, recent spend), one per group a row is kept for."""

    sql: str
    params: dict[str, Any]


@dataclass
class _Params:
    """Query parameters, one per distinct value of a type (many pieces share their bounds)."""

    values: dict[str, Any] = field(default_factory=dict)
    names: dict[tuple[str, Any], str] = field(default_factory=dict)

    def __call__(self, value: Any, kind: str) -> str:
        key = (kind, tuple(value) if isinstance(value, list) else value)
        name = self.names.get(key)
        if name is None:
            name = self.names[key] = f"p{len(self.names)}"
            self.values[name] = value
        return f"{{{name}:{kind}}}"


TIME = "DateTime64(3, 'UTC')"
UNION = "\nUNION ALL\n"
HOUR_TIME = "DateTime('UTC')"


def _union(ranges: Sequence[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    out: list[tuple[datetime, datetime]] = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _branch(
    source: str, pieces: Sequence[Piece], columns: Sequence[str], filters: Sequence[str], p: _Params, learner: bool
) -> str:
    """SELECT columns, k, t, c FROM the source's table, pruned to the union of its pieces' ranges."""
    keys = ", ".join(columns)
    lead = f"{keys}, " if keys else ""
    if source in GRAINS:
        by_grain: dict[str, list[tuple[datetime, datetime]]] = {}
        for piece in pieces:
            by_grain.setdefault(piece.source, []).append((piece.start, piece.end))
        ranges = [
            f"(grain = '{grain}' AND bucket >= {p(start.date(), 'Date')} AND bucket < {p(end.date(), 'Date')})"
            for grain, found in sorted(by_grain.items())
            for start, end in _union(found)
        ]
        select = f"{lead}toUInt8(toUInt8(grain) + 3) AS k, toDateTime64(bucket, 3, 'UTC') AS t, cost_usd AS c"
        table = LEARNER_ROLLUP
    else:
        spans = _union([(piece.start, piece.end) for piece in pieces])
        if source == "daily":
            ranges = [
                f"(bucket >= {p(start.date(), 'Date')} AND bucket < {p(end.date(), 'Date')})" for start, end in spans
            ]
            select = f"{lead}toUInt8(1) AS k, toDateTime64(bucket, 3, 'UTC') AS t, cost_usd AS c"
            table = "usage_daily" if learner else "usage_daily_totals"
        elif source == "hourly":
            ranges = [f"(bucket >= {p(start, HOUR_TIME)} AND bucket < {p(end, HOUR_TIME)})" for start, end in spans]
            select = f"{lead}toUInt8(2) AS k, toDateTime64(bucket, 3, 'UTC') AS t, cost_usd AS c"
            table = "usage_hourly" if learner else "usage_hourly_totals"
        else:
            # the hour bounds let the primary key (tenant, service, hour, ...) skip granules in parts
            # the time-ordered projection does not cover yet
            ranges = [
                f"(event_time >= {p(start, TIME)} AND event_time < {p(end, TIME)}"
                f" AND toStartOfHour(event_time) >= toStartOfHour({p(start, TIME)})"
                f" AND toStartOfHour(event_time) <= toStartOfHour({p(end, TIME)}))"
                for start, end in spans
            ]
            select = f"{lead}toUInt8(3) AS k, event_time AS t, {RAW_COST} AS c"
            table = "usage_events"
    where = " AND ".join([f"({' OR '.join(ranges)})", *filters])
    return f"SELECT {select} FROM {table} WHERE {where}"


class _Sums:
    """One sum (and count) per distinct piece range over the scan, shared by every measure
    that reads that range: a few small conditions rather than one per group and measure."""

    def __init__(self, p: _Params) -> None:
        self.p = p
        self.index: dict[tuple[str, datetime, datetime], int] = {}
        self.counted: set[int] = set()

    def _slot(self, piece: Piece) -> int:
        key = (piece.source, piece.start, piece.end)
        if key not in self.index:
            self.index[key] = len(self.index)
        return self.index[key]

    def signed(self, pieces: Sequence[Piece]) -> str:
        """The measure over `pieces` as arithmetic over the per-piece sums."""
        if not pieces:
            return "toDecimal128(0, 12)"
        ordered = sorted(pieces, key=lambda piece: -piece.sign)  # added ones first
        text = " ".join(f"{'-' if piece.sign < 0 else '+'} s{self._slot(piece)}" for piece in ordered)
        return text[2:] if text.startswith("+ ") else "-" + text[2:]

    def any(self, pieces: Sequence[Piece]) -> str:
        """Whether a row has any of `pieces` (added ones)."""
        slots = [self._slot(piece) for piece in pieces if piece.sign > 0]
        self.counted.update(slots)
        return "(" + " + ".join(f"n{slot}" for slot in slots) + ") > 0" if slots else "0"

    def select(self) -> list[str]:
        out: list[str] = []
        for (source, start, end), slot in self.index.items():
            condition = f"k = {CODES[source]} AND t >= {self.p(start, TIME)} AND t < {self.p(end, TIME)}"
            out.append(f"sumIf(c, {condition}) AS s{slot}")
            if slot in self.counted:
                out.append(f"countIf({condition}) AS n{slot}")
        return out


@dataclass
class Measure:
    """One group's part of a scan: the pieces of its spend so far and of its recent spend,
    and which rows it keeps: SQL over `{total}` and `{recent}` (its own sums) and `{any}`
    (the row has any of its pieces of spend so far); None: `{any}`."""

    total: list[Piece]
    recent: list[Piece]
    keep: str | None = None
    params: dict[str, Any] = field(default_factory=dict)


def group_query(
    columns: Sequence[str],
    measures: Sequence[Measure],
    values: dict[str, list[str]],
    today: date,
) -> GroupSql:
    """One query measuring every group of `measures` (same grouping `columns`); `values`
    narrows the scan to those values of some columns (every group's rows lie inside them).

    Rows are (columns..., group index, spend so far, recent spend): one per group whose
    `keep` holds for the row (the row's sums named `total` and `recent` there)."""
    p = _Params()
    filters = [f"{column} IN {p(sorted(found), 'Array(String)')}" for column, found in sorted(values.items()) if found]
    learner = "learner_id" in columns or "learner_id" in values
    rollup = learner_rollup_fits(columns, [c for c, v in values.items() if v])
    read = [
        (learner_pieces(m.total, today), learner_pieces(m.recent, today)) if rollup else (m.total, m.recent)
        for m in measures
    ]
    by_source: dict[str, list[Piece]] = {}
    for total, recent in read:
        for piece in [*total, *recent]:
            by_source.setdefault("grains" if piece.source in GRAINS else piece.source, []).append(piece)
    if not by_source:
        return GroupSql("", {})
    branches = [
        _branch(GRAINS[0] if source == "grains" else source, found, columns, filters, p, learner)
        for source, found in sorted(by_source.items())
    ]
    sums = _Sums(p)
    totals: list[str] = []
    keeps: list[str] = []
    params: dict[str, Any] = {}
    for index, (measure, (total, recent)) in enumerate(zip(measures, read, strict=True)):
        totals += [f"{sums.signed(total)} AS total{index}", f"{sums.signed(recent)} AS recent{index}"]
        keep = (measure.keep or "{any}").replace("{total}", f"total{index}").replace("{recent}", f"recent{index}")
        if "{any}" in keep:
            keep = keep.replace("{any}", f"any{index}")
            totals.append(f"{sums.any(total)} AS any{index}")
        keeps.append(f"toUInt8({keep})")
        params.update(measure.params)
    keys = ", ".join(columns)
    lead = f"{keys}, " if keys else ""
    count = len(measures)
    # layers: sums per piece; each group's measures from them; whether each group keeps the
    # row; one row per kept group (subqueries, so that no expression is analysed twice)
    scan = f"SELECT {lead}{', '.join(sums.select())} FROM ({UNION.join(branches)})" + (
        f" GROUP BY {keys}" if keys else ""
    )
    measured = f"SELECT {lead}{', '.join(totals)} FROM ({scan})"
    arrays = (
        f"[{', '.join(f'total{i}' for i in range(count))}] AS totals, "
        f"[{', '.join(f'recent{i}' for i in range(count))}] AS recents, "
        f"[{', '.join(keeps)}] AS keeps"
    )
    sql = (
        f"SELECT {lead}group_index - 1, total, recent FROM (SELECT {lead}{arrays} FROM ({measured})) "
        "ARRAY JOIN totals AS total, recents AS recent, keeps AS kept, arrayEnumerate(totals) AS group_index "
        "WHERE kept"
    )
    params.update(p.values)
    return GroupSql(sql, params)
