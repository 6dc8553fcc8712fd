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
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Decimal
from typing import Any
from zoneinfo import ZoneInfo

from service.alerts.channels import channel_key, targets
from service.auth.principal import TenantScope
from service.budgets.schemas import Budget, EvaluationRun
from service.budgets.store import ALERT_COLUMNS, BudgetStore
from service.budgets.watch import Touched
from service.costs.periods import Period, next_period, period_start
from service.costs.plan import plan
from service.costs.query import CostFilter, union_sql
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
    zone = ZoneInfo(budget.timezone)
    start = period_start(now, PERIODS[budget.period], zone)
    return Window(start, next_period(start, PERIODS[budget.period], zone))


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


def forecast(spend: Spend, window: Window, now: datetime) -> Decimal:
    elapsed = Decimal((now - window.start).total_seconds())
    remaining = Decimal(max((window.end - now).total_seconds(), 0))
    if elapsed <= 0:
        return spend.total
    recent_span = Decimal((now - recent_start(window, now)).total_seconds())
    period_rate = spend.total / elapsed
    recent_rate = spend.recent / recent_span if recent_span > 0 else period_rate
    return (spend.total + (period_rate + recent_rate) / 2 * remaining).quantize(TWELVE, rounding=ROUND_HALF_EVEN)


MAX_PERCENT = Decimal("99999999999999.9999")  # what Decimal(18, 4) holds


def percent_of(amount: Decimal, limit: Decimal) -> Decimal:
    if limit <= 0:
        return Decimal(0)
    return min((amount / limit * 100).quantize(FOUR, rounding=ROUND_HALF_EVEN), MAX_PERCENT)


def alert_id(budget: Budget, window: Window, percent: int, kind: str, learner: str) -> str:
    parts = f"{budget.budget_id}|{window.start.isoformat()}|{percent}|{kind}|{Decimal(budget.limit_usd)}|{learner}"
    return "alt_" + hashlib.sha256(parts.encode()).hexdigest()[:24]


def learner_floor(
    budgets: Sequence[Budget], window: Window, now: datetime
) -> tuple[Decimal | None, Decimal | None, Decimal, Decimal]:
    """For per-learner budgets: (least actual, least forecast, a, b). A learner can
    cross no threshold of any of them unless spend >= least actual, or
    a * spend + b * recent >= least forecast.

    `a * spend + b * recent` is the forecast (see `forecast`) with a and b rounded
    up, so the filter only ever lets through more learners than cross; the exact
    check happens afterwards in Decimal.
    """
    ready = forecast_ready(window, now)

    def least(kind: str) -> Decimal | None:
        amounts = [Decimal(b.limit_usd) * t.percent / 100 for b in budgets for t in b.thresholds if t.kind == kind]
        return min(amounts) if amounts else None

    elapsed = Decimal(max((now - window.start).total_seconds(), 1))
    remaining = Decimal(max((window.end - now).total_seconds(), 0))
    span = Decimal(max((now - recent_start(window, now)).total_seconds(), 1))
    up = Decimal("0.000000001")
    a = (1 + remaining / (2 * elapsed)).quantize(up, rounding=ROUND_CEILING)
    b = (remaining / (2 * span)).quantize(up, rounding=ROUND_CEILING)
    return least("actual"), least("forecast") if ready else None, a, b


def measure_group(
    db: ClickHouse,
    columns: tuple[str, ...],
    window: Window,
    budgets: Sequence[Budget],
    now: datetime,
    *,
    crossing_only: bool = False,
) -> Measured:
    """Spend so far (and in the recent window) for every scope in the group, in one query.

    With `crossing_only`, a per-learner group returns only the learners that may
    cross a threshold (`learner_floor`): with many learners almost all are
    below every threshold, and moving them into Python would dominate the pass.
    """
    values: dict[str, list[str]] = defaultdict(list)
    for budget in budgets:
        for column in ("tenant_id", "service", "learner_id"):
            value = getattr(budget.scope, column)
            if value:
                values[column].append(value)
    filters = CostFilter(TenantScope(None), window.start, min(window.end, now + timedelta(hours=1)), dict(values))
    segments = plan(filters.start, filters.end, "none", "UTC")
    if not segments:
        return Measured()
    params: dict[str, Any] = {"recent": recent_start(window, now)}
    select = ", ".join([*columns, "sum(cost_usd)", "sumIf(cost_usd, t >= {recent:DateTime64(3, 'UTC')})"])
    sql = f"SELECT {select} FROM ({union_sql(segments, columns, filters, params)})"
    if columns:
        sql += f" GROUP BY {', '.join(columns)}"
    if crossing_only and "learner_id" in columns and budgets and all(per_learner(b) for b in budgets):
        actual, projected, a, b = learner_floor(budgets, window, now)
        conditions = []
        if actual is not None:
            conditions.append("sum(cost_usd) >= {actual:Decimal(38, 12)}")
            params["actual"] = actual
        if projected is not None:
            conditions.append(
                "sum(cost_usd) * {a:Decimal(18, 9)} + sumIf(cost_usd, t >= {recent:DateTime64(3, 'UTC')})"
                " * {b:Decimal(18, 9)} >= {projected:Decimal(38, 12)}"
            )
            params.update({"projected": projected, "a": a, "b": b})
        sql += " HAVING " + (" OR ".join(conditions) or "0")
    result = Measured()
    width = len(columns)
    for row in db.query(sql, params, label="budgets.measure"):
        result.rows[tuple(row[:width])] = Spend(row[width], row[width + 1])
    return result


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
        return Decimal(self.budget.limit_usd)

    def crossed(self) -> list[tuple[int, str]]:
        out: list[tuple[int, str]] = []
        for threshold in self.budget.thresholds:
            if threshold.kind == "forecast" and not self.forecast_ready:
                continue
            amount = self.spend if threshold.kind == "actual" else self.forecast
            if amount * 100 >= self.limit * threshold.percent:
                out.append((threshold.percent, threshold.kind))
        return out


def evaluate(
    db: ClickHouse, budgets: Sequence[Budget], now: datetime, *, crossing_only: bool = False
) -> tuple[list[Evaluation], int, set[str]]:
    """Spend and forecast for each enabled budget in force at `now`.

    With `crossing_only`, per-learner budgets yield only learners that may cross
    a threshold (the pass); without it, every learner (status).
    Returns (evaluations, queries run, ids of budgets whose group failed). A
    group that fails (ClickHouse refused it) is logged and skipped; the others
    are still evaluated.
    """
    groups: dict[tuple[tuple[str, ...], bool, Window], list[Budget]] = defaultdict(list)
    for budget in budgets:
        if not budget.enabled:
            continue
        window = budget_window(budget, now)
        if window is not None:
            groups[(group_columns(budget), per_learner(budget), window)].append(budget)
    evaluations: list[Evaluation] = []
    failed: set[str] = set()
    for (columns, learners, window), members in groups.items():
        try:
            measured = measure_group(db, columns, window, members, now, crossing_only=crossing_only)
        except StorageUnavailable:
            log.exception("budget evaluation failed for %d budgets; the others go on", len(members))
            failed.update(b.budget_id for b in members)
            continue
        ready = forecast_ready(window, now)
        by_scope: dict[tuple[str, ...], list[tuple[tuple[str, ...], Spend]]] = defaultdict(list)
        if learners:  # rows keyed (tenant_id, [service,] learner_id), bucketed by what a budget may name
            for row_key, spend in measured.rows.items():
                if row_key[-1]:
                    by_scope[()].append((row_key, spend))
                    by_scope[row_key[:1]].append((row_key, spend))
                    if len(row_key) == 3:
                        by_scope[row_key[:2]].append((row_key, spend))
        for budget in members:
            if learners:
                for row_key, spend in by_scope.get(scope_key(budget), []):
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
            else:
                spend = measured.rows.get(scope_key(budget), Spend())
                evaluations.append(
                    Evaluation(budget, window, "", spend.total, forecast(spend, window, now), forecast_ready=ready)
                )
    return evaluations, len(groups), failed


def alert_row(evaluation: Evaluation, percent: int, kind: str, now: datetime, state: str = "active") -> list[Any]:
    budget = evaluation.budget
    return [
        alert_id(budget, evaluation.window, percent, kind, evaluation.learner),
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
        [channel_key(target) for target in targets(budget.channels)],
        now,
        now,
        1,
    ]


def evaluate_budgets(
    db: ClickHouse,
    now: datetime | None = None,
    on_loaded: Callable[[list[Budget]], None] | None = None,
    touched: Touched | None = None,  # noqa: ARG001 (narrowing comes next)
) -> tuple[EvaluationRun, list[str]]:
    """One pass: fire new alerts, resolve stale ones. Returns the run and the new alert ids.

    `touched` (from `BudgetWatch.drain`) limits the pass to the budgets whose scopes recent
    writes touched; None evaluates every budget."""
    started = time.perf_counter()
    now = now or datetime.now(UTC)
    store = BudgetStore(db)
    budgets = store.find(tenant_visible=None, filters={})
    if on_loaded is not None:
        on_loaded(budgets)
    evaluations, queries, failed = evaluate(db, budgets, now, crossing_only=True)
    crossing: dict[str, list[Any]] = {}
    for evaluation in evaluations:
        for percent, kind in evaluation.crossed():
            row = alert_row(evaluation, percent, kind, now)
            crossing[row[0]] = row
    existing = {
        row["alert_id"]: row
        for row in store.alert_rows("period_end > {now:DateTime64(3, 'UTC')}", {"now": now}, label="alerts.current")
    }
    fresh = [row for key, row in crossing.items() if key not in existing]
    changes = list(fresh)
    index = {name: i for i, name in enumerate(ALERT_COLUMNS)}
    resolved = 0
    for key, stored in existing.items():
        if stored["budget_id"] in failed:
            continue  # not evaluated this pass: leave its alerts as they are
        wanted = "active" if key in crossing else "resolved"
        if stored["state"] != wanted:
            updated = [stored[name] for name in ALERT_COLUMNS]
            updated[index["state"]] = wanted
            updated[index["updated_at"]] = now
            updated[index["version"]] = int(stored["version"]) + 1
            changes.append(updated)
            resolved += wanted == "resolved"
    store.write_alerts(changes)
    run = EvaluationRun(
        budgets=len(budgets),
        queries=queries,
        fired=len(fresh),
        resolved=resolved,
        seconds=round(time.perf_counter() - started, 4),
    )
    return run, [row[0] for row in fresh]
