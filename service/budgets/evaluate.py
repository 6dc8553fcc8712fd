"""Budget evaluation: spend and forecast per budget, thresholds, alerts.

One pass loads every enabled budget, groups them by scope kind (which of
tenant, service and learner they name, and whether they apply per learner)
and by period window, and runs one rollup query per group — not one per
budget. Spend is the cost in the budget's current period so far.

Forecast (spend at the period's end) blends two rates: the period's average
rate so far and the rate over the last three days (or since the period began,
if later), half each, projected over the time left. The period average keeps
one busy hour from dominating early in a period; the recent rate follows a
trend change within days rather than weeks.

Each (budget, period, threshold, kind, limit[, learner]) fires at most once:
its alert id is derived from those values, so repeated or concurrent passes
write the same row. An active alert whose condition no longer holds (the
limit was raised, the budget disabled or deleted) is resolved; a lowered
limit is a new limit, so its thresholds fire anew.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, Decimal
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from service.alerts.channels import channel_key, targets
from service.budgets.cover import Measure, cover, group_query
from service.budgets.schemas import Budget, EvaluationRun, Threshold
from service.budgets.store import ALERT_COLUMNS, BudgetStore
from service.budgets.watch import Touched
from service.costs.periods import Period, next_period, period_start
from service.errors import StorageUnavailable
from service.storage.clickhouse import ClickHouse

log = logging.getLogger("finops.budgets")

RECENT = timedelta(days=3)
TWELVE = Decimal("0.000000000001")
FOUR = Decimal("0.0001")
PERIODS: dict[str, Period] = {
    "daily": "day",
    "weekly": "week",
    "monthly": "month",
    "quarterly": "quarter",
    "yearly": "year",
}


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime


def budget_window(budget: Budget, now: datetime) -> Window | None:
    """The budget's period containing `now` (None for a custom period not in force)."""
    if budget.period == "custom":
        if budget.period_start is None or budget.period_end is None:
            return None
        if budget.period_start <= now < budget.period_end:
            return Window(budget.period_start, budget.period_end)
        return None
    return calendar_window(PERIODS[budget.period], budget.timezone, now)


@lru_cache(maxsize=1024)
def calendar_window(period: Period, timezone: str, now: datetime) -> Window:
    """The calendar period containing `now` in a zone (cached: a pass asks for the same few many times)."""
    zone = ZoneInfo(timezone)
    start = period_start(now, period, zone)
    return Window(start, next_period(start, period, zone))


def per_learner(budget: Budget) -> bool:
    return budget.per_learner and not budget.scope.learner_id


def group_columns(budget: Budget) -> tuple[str, ...]:
    """The rollup columns a budget's spend is grouped by. A per-learner budget also
    groups by tenant: the same learner id in two tenants is two learners."""
    if per_learner(budget):
        return ("tenant_id", *(["service"] if budget.scope.service else []), "learner_id")
    return tuple(c for c in ("tenant_id", "service", "learner_id") if getattr(budget.scope, c))


def scope_key(budget: Budget) -> tuple[str, ...]:
    return tuple(getattr(budget.scope, c) for c in ("tenant_id", "service", "learner_id") if getattr(budget.scope, c))


def recent_start(window: Window, now: datetime) -> datetime:
    """Start of the forecast's recent window: three days back, floored to a UTC day
    (the daily rollups' grain), never before the period."""
    back = now - RECENT
    return max(window.start, datetime(back.year, back.month, back.day, tzinfo=UTC))


def forecast_ready(window: Window, now: datetime) -> bool:
    """Too early in a period a forecast extrapolates a burst: wait for a day or a tenth of the period."""
    return now - window.start >= min(timedelta(days=1), (window.end - window.start) / 10)


@dataclass
class Spend:
    total: Decimal = Decimal(0)
    recent: Decimal = Decimal(0)


@dataclass
class Measured:
    """Spend per scope key of one group; per-learner groups key on (scope..., learner)."""

    rows: dict[tuple[str, ...], Spend] = field(default_factory=dict)


@lru_cache(maxsize=1024)
def _spans(window: Window, now: datetime) -> tuple[Decimal, Decimal, Decimal]:
    """(elapsed, remaining, recent span) in seconds: the same for every scope of a window."""
    elapsed = Decimal((now - window.start).total_seconds())
    remaining = Decimal(max((window.end - now).total_seconds(), 0))
    recent_span = Decimal((now - recent_start(window, now)).total_seconds())
    return elapsed, remaining, recent_span


def forecast(spend: Spend, window: Window, now: datetime) -> Decimal:
    elapsed, remaining, recent_span = _spans(window, now)
    if elapsed <= 0:
        return spend.total
    period_rate = spend.total / elapsed
    recent_rate = spend.recent / recent_span if recent_span > 0 else period_rate
    return (spend.total + (period_rate + recent_rate) / 2 * remaining).quantize(TWELVE, rounding=ROUND_HALF_EVEN)


MAX_PERCENT = Decimal("99999999999999.9999")  # what Decimal(18, 4) holds


def percent_of(amount: Decimal, limit: Decimal) -> Decimal:
    if limit <= 0:
        return Decimal(0)
    return min((amount / limit * 100).quantize(FOUR, rounding=ROUND_HALF_EVEN), MAX_PERCENT)


def alert_id(budget: Budget, window: Window, percent: int, kind: str, learner: str) -> str:
    """sha256 of `budget_id|period start|percent|kind|limit|learner`."""
    head, limit = _alert_id_parts(budget.budget_id, window.start, budget.limit_usd)
    parts = f"{head}{percent}|{kind}{limit}{learner}"
    return "alt_" + hashlib.sha256(parts.encode()).hexdigest()[:24]


@lru_cache(maxsize=65536)
def _alert_id_parts(budget_id: str, start: datetime, limit: str) -> tuple[str, str]:
    return f"{budget_id}|{start.isoformat()}|", f"|{Decimal(limit)}|"


HUGE = Decimal("1" + "0" * 25)  # above any spend: a scope with no threshold of that kind


@dataclass(frozen=True)
class Floor:
    """What a scope must reach before any threshold of its budgets can cross:
    spend >= actual, or a * spend + b * recent >= projected (forecast thresholds)."""

    actual: Decimal
    projected: Decimal


def least_amounts(budgets: Sequence[Budget], ready: bool) -> Floor:
    """The least threshold amount of each kind over `budgets`, rounded down to the
    12 decimals ClickHouse compares at (so the filter never drops a crossing)."""
    return _least([(budget.limit_usd, budget.thresholds) for budget in budgets], ready)


def _least(limits: Sequence[tuple[str, Sequence[Threshold]]], ready: bool) -> Floor:
    actual = projected = HUGE
    for text, thresholds in limits:
        limit = decimal_of(text)
        for threshold in thresholds:
            amount = (limit * threshold.percent / 100).quantize(TWELVE, rounding=ROUND_FLOOR)
            if threshold.kind == "actual":
                actual = min(actual, amount)
            elif ready:
                projected = min(projected, amount)
    # the forecast is rounded half-even to 12 decimals: allow for half a unit
    return Floor(actual, projected - TWELVE if projected < HUGE else HUGE)


@lru_cache(maxsize=256)
def forecast_factors(window: Window, now: datetime) -> tuple[Decimal, Decimal]:
    """(a, b) with a * spend + b * recent >= the forecast (see `forecast`): a and b
    are rounded up, so the filter only ever lets through more scopes than cross."""
    elapsed = Decimal(max((now - window.start).total_seconds(), 1))
    remaining = Decimal(max((window.end - now).total_seconds(), 0))
    span = Decimal(max((now - recent_start(window, now)).total_seconds(), 1))
    up = Decimal("0.000000001")
    a = (1 + remaining / (2 * elapsed)).quantize(up, rounding=ROUND_CEILING)
    b = (remaining / (2 * span)).quantize(up, rounding=ROUND_CEILING)
    return a, b


@lru_cache(maxsize=65536)
def decimal_of(text: str) -> Decimal:
    return Decimal(text)


def _key_sql(columns: Sequence[str]) -> str:
    """An unambiguous string of some columns' values: each as its byte length, ':', the value."""
    if not columns:
        return "''"
    return "concat(" + ", ".join(f"toString(length({c})), ':', {c}" for c in columns) + ")"


def _key(values: Sequence[str]) -> str:
    return "".join(f"{len(v.encode())}:{v}" for v in values)


def _named(budget: Budget) -> tuple[str, ...]:
    """The scope fields a budget names: how its floor is looked up per row."""
    return tuple(c for c in ("tenant_id", "service", "learner_id") if getattr(budget.scope, c))


def crossing_keep(
    window: Window,
    budgets: Sequence[Budget],
    now: datetime,
    params: dict[str, Any],
    prefix: str,
    total: str = "{total}",
    recent: str = "{recent}",
) -> str:
    """A condition (over the row's spend so far `total` and recent spend `recent`) keeping only
    the rows that may cross a threshold of a budget of the group they belong to.

    For per-learner budgets each row's floor is the least over the budgets that match
    it (budgets grouped by the scope fields they name; each one's floors looked up by
    the row's values of those fields). Rows of other budgets (one row each) are kept
    by key, and checked against their floor in Python (`Floor`). The exact check
    happens afterwards in Decimal. Parameters are named with `prefix`."""
    ready = forecast_ready(window, now)
    by_fields: dict[tuple[str, ...], dict[str, list[Budget]]] = defaultdict(lambda: defaultdict(list))
    whole: set[Any] = set()
    whole_fields: tuple[str, ...] = ()
    for budget in budgets:
        fields = _named(budget)
        if per_learner(budget):
            by_fields[fields][_key([getattr(budget.scope, c) for c in fields])].append(budget)
        else:
            key = scope_key(budget)
            whole.add(key if len(key) > 1 else key[0] if key else "")
            whole_fields = fields  # the group's columns: the same for each of them
    conditions: list[str] = []
    if by_fields:
        actual_terms: list[str] = []
        projected_terms: list[str] = []
        for index, (fields, members) in enumerate(by_fields.items()):
            keys = list(members)
            floors = [least_amounts(members[k], ready) for k in keys]
            params[f"{prefix}fk{index}"] = keys
            params[f"{prefix}fa{index}"] = [HUGE, *(f.actual for f in floors)]
            position = f"indexOf({{{prefix}fk{index}:Array(String)}}, {_key_sql(fields)}) + 1"
            actual_terms.append(f"{{{prefix}fa{index}:Array(Decimal(38, 12))}}[{position}]")
            if ready:
                params[f"{prefix}fp{index}"] = [HUGE, *(f.projected for f in floors)]
                projected_terms.append(f"{{{prefix}fp{index}:Array(Decimal(38, 12))}}[{position}]")
        params[f"{prefix}huge"] = HUGE
        huge = f"{{{prefix}huge:Decimal(38, 12)}}"
        conditions.append(f"{total} >= least({', '.join(actual_terms)}, {huge})")
        if projected_terms:
            a, b = forecast_factors(window, now)
            params.update({f"{prefix}a": a, f"{prefix}b": b})
            conditions.append(
                f"{total} * {{{prefix}a:Decimal(18, 9)}} + {recent} * {{{prefix}b:Decimal(18, 9)}}"
                f" >= least({', '.join(projected_terms)}, {huge})"
            )
    if whole and whole_fields:
        params[f"{prefix}whole"] = sorted(whole)
        kind = f"Tuple({', '.join(['String'] * len(whole_fields))})" if len(whole_fields) > 1 else "String"
        conditions.append(f"({', '.join(whole_fields)}) IN {{{prefix}whole:Array({kind})}}")
    elif whole:
        conditions.append("1")  # global budgets: the one row
    return " OR ".join(f"({c})" for c in conditions) or "1"


def group_values(budgets: Sequence[Budget], learners: Collection[str] | None) -> dict[str, list[str]]:
    """The values of some columns every row of a group lies inside: a column filters the
    group only when every budget of it names one (a global per-learner budget must not be
    narrowed to the tenant of another in its group); `learners` (what ingest touched)
    limits the learners."""
    values: dict[str, list[str]] = {}
    for column in ("tenant_id", "service", "learner_id"):
        named = [getattr(b.scope, column) for b in budgets]
        if named and all(named):
            values[column] = sorted(set(named))
    if learners is not None:
        values["learner_id"] = sorted(learners)
    return values


def scan_values(groups: Sequence[Group]) -> dict[str, list[str]]:
    """What a scan of several groups may filter on: a column only when every group filters it."""
    each = [group_values(g.members, g.learners) for g in groups]
    out: dict[str, list[str]] = {}
    for column in ("tenant_id", "service", "learner_id"):
        if each and all(column in v for v in each):
            out[column] = sorted({value for v in each for value in v[column]})
    return out


def measure_scan(
    db: ClickHouse, columns: tuple[str, ...], groups: Sequence[Group], now: datetime, *, crossing_only: bool = False
) -> list[Measured]:
    """Spend so far (and in the recent window) for every scope of several groups, in one query
    grouped by `columns` (`cover.group_query`; each group's rollup columns among them); one
    `Measured` per group, keyed by its own columns.

    With `crossing_only`, only the scopes that may cross a threshold come back
    (`crossing_keep`): almost every learner, and most budgets, are below every
    threshold, and moving them into Python would dominate the pass."""
    values = scan_values(groups)
    # at learner grain an hour's rollup rows are about as many as its events: read the
    # parts of days from the raw events alone
    learners = "learner_id" in columns or "learner_id" in values
    measures: list[Measure] = []
    for index, group in enumerate(groups):
        window = group.window
        end = min(window.end, now + timedelta(hours=1))
        params: dict[str, Any] = {}
        conditions: list[str] = []
        own = group_values(group.members, group.learners)
        if crossing_only and not group.per_learner:
            own = {}  # its rows are kept by key (`crossing_keep`), inside its own values
        for column, found in own.items():
            if set(found) != set(values.get(column, ())):  # narrower than the scan: filter its rows
                params[f"g{index}v_{column}"] = found
                conditions.append(f"{column} IN {{g{index}v_{column}:Array(String)}}")
        keep: str | None = None
        if crossing_only:
            conditions.append(f"({crossing_keep(window, group.members, now, params, f'g{index}')})")
            keep = " AND ".join(conditions)
        elif conditions:
            keep = " AND ".join([*conditions, "{any}"])
        total = cover(window.start, end, now, hours=not learners)
        recent = cover(recent_start(window, now), end, now, hours=not learners)
        measures.append(Measure(total, recent, keep, params))
    query = group_query(columns, measures, values, now.date())
    results = [Measured() for _ in groups]
    if not query.sql:
        return results
    width = len(columns)
    picks = [[columns.index(c) for c in group.columns] for group in groups]
    for row in db.query(query.sql, query.params, label="budgets.measure"):
        index = row[width]
        found = results[index].rows
        key = tuple(row[i] for i in picks[index])
        spend = found.get(key)
        if spend is None:
            found[key] = Spend(row[width + 1], row[width + 2])
        else:  # a query grouped finer than the group (`scans`): add up
            spend.total += row[width + 1]
            spend.recent += row[width + 2]
    return results


@dataclass
class Evaluation:
    """One budget (or one learner of a per-learner budget) in its window."""

    budget: Budget
    window: Window
    learner: str
    spend: Decimal
    forecast: Decimal
    tenant: str = ""
    forecast_ready: bool = True

    @property
    def limit(self) -> Decimal:
        return decimal_of(self.budget.limit_usd)

    def crossed(self) -> list[tuple[int, str]]:
        out: list[tuple[int, str]] = []
        limit = self.limit
        for threshold in self.budget.thresholds:
            if threshold.kind == "forecast" and not self.forecast_ready:
                continue
            amount = self.spend if threshold.kind == "actual" else self.forecast
            if amount * 100 >= limit * threshold.percent:
                out.append((threshold.percent, threshold.kind))
        return out


@dataclass
class Coverage:
    """What a pass evaluated, so it resolves or re-activates only those alerts: every
    budget (a full pass), or some budgets whole and per-learner budgets for some
    (tenant, learner) pairs only (a pass narrowed to what ingest touched)."""

    everything: bool = True
    whole: set[str] = field(default_factory=set)
    learners: dict[str, set[tuple[str, str]]] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)

    def covers(self, budget_id: str, tenant: str, learner: str) -> bool:
        if budget_id in self.failed:
            return False
        if self.everything or budget_id in self.whole:
            return True
        pairs = self.learners.get(budget_id)
        return pairs is not None and (tenant, learner) in pairs

    def budget_ids(self) -> set[str]:
        return (self.whole | set(self.learners)) - self.failed


@dataclass
class Group:
    """Budgets measured by one query: same rollup columns and window. Per-learner budgets and
    single-learner budgets of the same tenant (and service) and window share one."""

    columns: tuple[str, ...]
    window: Window
    members: list[Budget] = field(default_factory=list)
    learners: set[str] | None = None  # a narrowed pass's per-learner budgets: only these learners

    @property
    def per_learner(self) -> bool:
        return any(per_learner(b) for b in self.members)


def plan_groups(budgets: Sequence[Budget], now: datetime, touched: Touched | None) -> tuple[list[Group], Coverage]:
    """The enabled budgets in force at `now`, grouped by rollup columns and window; with
    `touched`, only those that what ingest wrote may have changed (and per-learner budgets
    only for the learners written to)."""
    groups: dict[tuple[tuple[str, ...], Window], Group] = {}
    coverage = Coverage(everything=touched is None)
    for budget in budgets:
        if not budget.enabled:
            continue
        window = budget_window(budget, now)
        if window is None:
            continue
        learners: set[str] | None = None
        if touched is not None:
            if per_learner(budget):
                pairs = touched.learners(budget)
                if not pairs:
                    continue
                coverage.learners[budget.budget_id] = pairs
                learners = {learner for _, learner in pairs}
            elif touched.matches(budget):
                coverage.whole.add(budget.budget_id)
            else:
                continue
        key = (group_columns(budget), window)
        group = groups.get(key)
        if group is None:
            group = groups[key] = Group(key[0], window)
        group.members.append(budget)
        if learners is not None:
            group.learners = (group.learners or set()) | learners
    for group in groups.values():
        if group.learners is not None:  # the group's single-learner budgets need their learners too
            group.learners |= {b.scope.learner_id for b in group.members if b.scope.learner_id}
    return list(groups.values()), coverage


def _budget_key(budget: Budget) -> tuple[str | None, str | None]:
    return (budget.scope.tenant_id or None, budget.scope.service or None)


@lru_cache(maxsize=65536)
def _floor(limit: str, thresholds: tuple[Threshold, ...], ready: bool) -> Floor:
    """`least_amounts` of one budget, by its limit and thresholds."""
    return _least([(limit, thresholds)], ready)


def may_cross(budget: Budget, spend: Spend, window: Window, now: datetime, ready: bool) -> bool:
    """A cheap over-approximation (see `Floor`): False only when no threshold can cross."""
    floor = _floor(budget.limit_usd, tuple(budget.thresholds), ready)
    if spend.total >= floor.actual:
        return True
    if floor.projected >= HUGE:
        return False
    a, b = forecast_factors(window, now)
    return spend.total * a + spend.recent * b >= floor.projected


SCOPES = ("tenant_id", "service")


def scans(groups: Sequence[Group]) -> dict[tuple[str, ...], list[Group]]:
    """Groups measured by one query each, by the columns the query groups by: groups keyed by
    learner, by their rollup columns; every other group (global, tenant, service, tenant and
    service) in one query by tenant and service, summed up to its own columns afterwards (a few
    rows per tenant)."""
    out: dict[tuple[str, ...], list[Group]] = {}
    for group in groups:
        out.setdefault(group.columns if "learner_id" in group.columns else SCOPES, []).append(group)
    return out


def evaluate_groups(
    db: ClickHouse, groups: Sequence[Group], now: datetime, *, crossing_only: bool = False
) -> tuple[list[Evaluation], set[str]]:
    """Measure the groups (one query per set of rollup columns) and make their evaluations; a
    query that fails (ClickHouse refused it) is logged and skipped, and its budgets' ids returned.
    With `crossing_only`, only the evaluations that may cross a threshold."""
    evaluations: list[Evaluation] = []
    failed: set[str] = set()
    for columns, scanned in scans(groups).items():
        try:
            measured = measure_scan(db, columns, scanned, now, crossing_only=crossing_only)
        except StorageUnavailable:
            count = sum(len(g.members) for g in scanned)
            log.exception("budget evaluation failed for %d budgets; the others go on", count)
            failed.update(b.budget_id for g in scanned for b in g.members)
            continue
        for group, found in zip(scanned, measured, strict=True):
            evaluations += group_evaluations(group, found, now, crossing_only=crossing_only)
    return evaluations, failed


def group_evaluations(group: Group, measured: Measured, now: datetime, *, crossing_only: bool) -> list[Evaluation]:
    window, members = group.window, group.members
    evaluations: list[Evaluation] = []
    ready = forecast_ready(window, now)
    templates = [b for b in members if per_learner(b)]
    if templates:
        # rows keyed (tenant_id, [service,] learner_id), bucketed by the (tenant, service) a budget may name
        by_scope: dict[tuple[str | None, str | None], list[tuple[tuple[str, ...], Spend]]] = defaultdict(list)
        for row_key, spend in measured.rows.items():
            if not row_key[-1]:
                continue
            tenant = row_key[0]
            service = row_key[1] if len(row_key) == 3 else None
            entry = (row_key, spend)
            by_scope[(None, None)].append(entry)
            by_scope[(tenant, None)].append(entry)
            if service is not None:
                by_scope[(None, service)].append(entry)
                by_scope[(tenant, service)].append(entry)
        for budget in templates:
            for row_key, spend in by_scope.get(_budget_key(budget), []):
                evaluations.append(
                    Evaluation(
                        budget,
                        window,
                        row_key[-1],
                        spend.total,
                        forecast(spend, window, now),
                        tenant=row_key[0],
                        forecast_ready=ready,
                    )
                )
    for budget in members:
        if per_learner(budget):
            continue
        found = measured.rows.get(scope_key(budget))
        if crossing_only and (found is None or not may_cross(budget, found, window, now, ready)):
            continue  # below every threshold (or no spend): nothing crosses
        spend = found or Spend()
        evaluations.append(
            Evaluation(budget, window, "", spend.total, forecast(spend, window, now), forecast_ready=ready)
        )
    return evaluations


def evaluate(
    db: ClickHouse,
    budgets: Sequence[Budget],
    now: datetime,
    *,
    crossing_only: bool = False,
    touched: Touched | None = None,
) -> tuple[list[Evaluation], int, set[str]]:
    """Spend and forecast for each enabled budget in force at `now`.

    With `crossing_only`, only budgets (and learners of per-learner budgets) that may
    cross a threshold are returned (the pass); without it, every one (status).
    Returns (evaluations, queries run, ids of budgets whose group failed).
    """
    groups, _ = plan_groups(budgets, now, touched)
    evaluations, failed = evaluate_groups(db, groups, now, crossing_only=crossing_only)
    return evaluations, len(scans(groups)), failed


def alert_row(
    evaluation: Evaluation,
    percent: int,
    kind: str,
    now: datetime,
    state: str = "active",
    *,
    identifier: str | None = None,
    channel_keys: list[str] | None = None,
) -> list[Any]:
    """A `budget_alerts` row; `identifier` and `channel_keys` when the caller has them already."""
    budget = evaluation.budget
    if channel_keys is None:
        channel_keys = [channel_key(target) for target in targets(budget.channels)]
    return [
        identifier or alert_id(budget, evaluation.window, percent, kind, evaluation.learner),
        budget.budget_id,
        budget.name,
        evaluation.tenant or budget.scope.tenant_id or "",
        budget.scope.service or "",
        evaluation.learner or budget.scope.learner_id or "",
        evaluation.window.start,
        evaluation.window.end,
        percent,
        kind,
        evaluation.spend,
        evaluation.forecast,
        evaluation.limit,
        percent_of(evaluation.spend, evaluation.limit),
        state,
        "pending" if budget.channels else "no_channels",
        channel_keys,
        now,
        now,
        1,
    ]


# -- the budget list, cached between passes ----------------------------------------------

FINGERPRINT_SQL = (
    "SELECT count(), sum(cityHash64(budget_id, v)), max(u) FROM "
    "(SELECT budget_id, max(version) AS v, max(updated_at) AS u FROM budgets GROUP BY budget_id)"
)


@dataclass
class _Loaded:
    fingerprint: tuple[Any, ...]
    budgets: list[Budget]
    read: int  # when it was read (a counter): an older read never replaces a newer one
    evaluated: tuple[Any, ...] | None = None  # the fingerprint of the last full pass


_loaded: dict[tuple[str, str], _Loaded] = {}
_loaded_lock = threading.Lock()
_reads = itertools.count()


def load_budgets(db: ClickHouse) -> tuple[list[Budget], tuple[Any, ...], bool]:
    """Every budget (FINAL), reused while the budgets table is unchanged: a cheap
    fingerprint (each budget's latest version and update time) decides. Returns
    (budgets, fingerprint, whether a full pass has evaluated exactly these budgets)."""
    key = (db.url, db.database)
    with _loaded_lock:
        read = next(_reads)
    fingerprint = tuple(db.query(FINGERPRINT_SQL, label="budgets.fingerprint")[0])
    with _loaded_lock:
        cached = _loaded.get(key)
    if cached is not None and cached.fingerprint == fingerprint:
        return cached.budgets, fingerprint, cached.evaluated == fingerprint
    budgets = BudgetStore(db).find(tenant_visible=None, filters={})
    with _loaded_lock:
        cached = _loaded.get(key)
        if cached is None or cached.read < read:
            if cached is None and len(_loaded) >= 16:
                _loaded.pop(next(iter(_loaded)))
            _loaded[key] = _Loaded(fingerprint, budgets, read)
    return budgets, fingerprint, False


def _evaluated_all(db: ClickHouse, fingerprint: tuple[Any, ...]) -> None:
    with _loaded_lock:
        cached = _loaded.get((db.url, db.database))
        if cached is not None and cached.fingerprint == fingerprint:
            cached.evaluated = fingerprint


# -- the pass ------------------------------------------------------------------------------

STATE_COLUMNS = ("alert_id", "budget_id", "tenant_id", "learner_id", "state")


def evaluate_budgets(
    db: ClickHouse,
    now: datetime | None = None,
    on_loaded: Callable[[list[Budget]], None] | None = None,
    touched: Touched | None = None,
    timings: dict[str, float] | None = None,
) -> tuple[EvaluationRun, list[str]]:
    """One pass: fire new alerts, resolve stale ones. Returns the run and the new alert ids.

    `touched` (from `BudgetWatch.drain`) limits the pass to the budgets whose scopes recent
    writes touched (and per-learner budgets to the learners written to); it resolves or
    re-activates only those budgets' (learners') alerts. None evaluates every budget; so
    does a pass that finds the budgets changed since the last full one. `timings`, when
    given, receives the seconds each step took."""
    started = time.perf_counter()
    clock = [started]

    def step(name: str) -> None:
        if timings is not None:
            moment = time.perf_counter()
            timings[name] = timings.get(name, 0.0) + moment - clock[0]
            clock[0] = moment

    now = now or datetime.now(UTC)
    store = BudgetStore(db)
    budgets, fingerprint, evaluated = load_budgets(db)
    if on_loaded is not None:
        on_loaded(budgets)
    if touched is not None and not evaluated:
        touched = None  # budgets changed since the last full pass: evaluate every one
    step("load")
    groups, coverage = plan_groups(budgets, now, touched)
    evaluations, failed = evaluate_groups(db, groups, now, crossing_only=True)
    coverage.failed = failed
    step("evaluate")
    crossing: dict[str, tuple[Evaluation, int, str]] = {}
    for evaluation in evaluations:
        for percent, kind in evaluation.crossed():
            identifier = alert_id(evaluation.budget, evaluation.window, percent, kind, evaluation.learner)
            crossing[identifier] = (evaluation, percent, kind)
    step("crossed")
    where = "period_end > {now:DateTime64(3, 'UTC')}"
    params: dict[str, Any] = {"now": now}
    if not coverage.everything:
        where += " AND budget_id IN {ids:Array(String)}"
        params["ids"] = sorted(coverage.budget_ids())
    existing: dict[str, tuple[Any, ...]] = {}
    if coverage.everything or params["ids"]:
        existing = {
            row[0]: row
            for row in db.query(
                f"SELECT {', '.join(STATE_COLUMNS)} FROM budget_alerts FINAL WHERE {where}",
                params,
                label="alerts.current",
            )
        }
    step("existing")
    keys: dict[str, list[str]] = {}  # channel keys per budget

    def row(identifier: str) -> list[Any]:
        evaluation, percent, kind = crossing[identifier]
        budget = evaluation.budget
        found = keys.get(budget.budget_id)
        if found is None:
            found = keys[budget.budget_id] = [channel_key(target) for target in targets(budget.channels)]
        return alert_row(evaluation, percent, kind, now, identifier=identifier, channel_keys=found)

    fresh = [row(key) for key in crossing if key not in existing]
    flips: dict[str, str] = {}
    for key, (_, budget_id, tenant, learner, state) in existing.items():
        if not coverage.covers(budget_id, tenant, learner):
            continue  # not evaluated this pass: leave its alerts as they are
        wanted = "active" if key in crossing else "resolved"
        if state != wanted:
            flips[key] = wanted
    changes = list(fresh)
    resolved = sum(1 for wanted in flips.values() if wanted == "resolved")
    if flips:
        for stored in store.alert_rows(
            "alert_id IN {flips:Array(String)}", {"flips": sorted(flips)}, label="alerts.flip"
        ):
            updated = [stored[name] for name in ALERT_COLUMNS]
            updated[ALERT_INDEX["state"]] = flips[stored["alert_id"]]
            updated[ALERT_INDEX["updated_at"]] = now
            updated[ALERT_INDEX["version"]] = int(stored["version"]) + 1
            changes.append(updated)
    step("diff")
    store.write_alerts(changes)
    step("write")
    if coverage.everything:
        _evaluated_all(db, fingerprint)
    run = EvaluationRun(
        budgets=len(budgets),
        queries=len(scans(groups)),
        fired=len(fresh),
        resolved=resolved,
        seconds=round(time.perf_counter() - started, 4),
    )
    return run, [row[0] for row in fresh]


ALERT_INDEX = {name: i for i, name in enumerate(ALERT_COLUMNS)}
