"""Budget evaluation: one full pass over every budget, and ingest-to-alert latency in embedded mode.

Run by `make bench` as `.venv/bin/python benchmarks/budgets.py`. In one process, on a temporary
chDB path (chDB allows one engine path per process), or on `--data DIR`, which keeps the loaded
events for later runs: a run on a reused load skips step 1 and starts from a freshly opened engine,
as the service does after a restart (budgets, alerts, deliveries and audit rows are emptied first):

1. Migrates a fresh database and bulk-loads `--events` synthetic priced events (default
   10,000,000) over the last `--days` days (default 90) across the demo's 6 tenants and
   `--learners` distinct learners (default 100,000), with the loader of `benchmarks/queries.py`
   (column-oriented INSERTs through the materialized views, as a real ingest fills the rollups).
2. Writes `--budgets` budgets (default 10,000) with one INSERT of `budget_row`s: a few global
   ones; per tenant monthly, weekly and daily in UTC, America/New_York, Europe/Paris and
   Asia/Tokyo, plus a custom period; per (tenant, service) and per service; one per-learner
   template per tenant (monthly UTC, applying to every learner of the tenant: ~all learners are
   evaluated); and single-learner budgets for the rest, spread over the learners. Limits are
   calibrated from the spend the service itself measures (one untimed `evaluate`), so some but
   not all thresholds cross.
3. Times `evaluate_budgets(db)` `--passes` times (the first reads the budgets and fires alerts, later
   ones are steady state, the budget list cached behind its fingerprint), each with the time of its
   ClickHouse calls, then one instrumented pass (`evaluate_budgets(db, timings=...)`: the service's
   own step timings, every measure query named by its groups (one query per set of rollup columns,
   all their windows in one scan), and the slowest once more, wrapped in `count()`, to separate the
   engine's time from moving rows into Python, with each UNION ALL branch's scan alone). Checks: spend of a
   sample of budgets against the raw events; the pass's crossing filter (floors in SQL and before
   any forecast) yields exactly the crossings of checking every budget and learner in Decimal; every
   learner with events evaluated by its tenant's template; and a template evaluated alongside a
   single-learner budget of the same tenant and window still sees all its learners.
4. Ingest-to-alert latency over `--crossings` crossings: builds the real app
   (`service.app.create_app`, embedded mode, same chDB path and database) and drives it with
   Litestar's TestClient in this process. `--crossings` budgets of 1 USD with one 100 % actual
   threshold are added first (scope: tenant and a service of their own); for each, one event of
   1.5 USD is POSTed to /usage-events and GET /alerts?budget_id=... is polled until the alert
   exists. Latency = alert seen - ack; the alert's created_at (the evaluation pass's start)
   splits it into ack -> pass start and pass start -> seen. The write triggers the app's
   `evaluate_touched` job, which evaluates only the budgets whose scope the event matches (the
   global ones, its tenant's, its own), so latency ~ BUDGET_TRIGGER_DELAY_MS + one narrowed pass.

Timings are printed, never asserted: a slow figure says "below target" and does not change the exit
code. The script exits non-zero only when it cannot measure, or when an evaluation answer is wrong
(spend differing from the raw events, a per-learner template missing learners).
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import re
import resource
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgspec
from litestar import Litestar
from litestar.testing import TestClient
from prometheus_client import REGISTRY
from tqdm import tqdm

from benchmarks.queries import LoadFigures, learner_ids, load, remember, reusable
from benchmarks.report import elapsed, render_table, say, verdict
from service.auth.principal import Role
from service.auth.tokens import issue_token
from service.budgets import evaluate as evaluate_module
from service.budgets.evaluate import (
    Evaluation,
    Group,
    Measured,
    Window,
    alert_id,
    budget_window,
    evaluate,
    evaluate_budgets,
)
from service.budgets.schemas import DEFAULT_THRESHOLDS, Budget, EvaluationRun, PeriodName, Scope, Threshold
from service.budgets.store import BUDGET_COLUMNS, budget_row
from service.errors import DomainError
from service.money import money_str
from service.settings import AuthSettings, DatabaseSettings, ServerSettings, Settings
from service.storage.clickhouse import ClickHouse
from service.storage.migrations import migrate
from service.usage.demo import TENANTS, TRAFFIC

DATABASE = "bench"
JWT_SECRET = "finops-bench-" + "0123456789abcdef" * 3
ZONES = ("UTC", "America/New_York", "Europe/Paris", "Asia/Tokyo")
SERVICES = tuple(dict.fromkeys(t[0] for t in TRAFFIC))
CENT = Decimal("0.01")
POLL_S = 0.05  # how often the latency phase asks GET /alerts
CROSSING_TIMEOUT_S = 60.0
MIN_CROSSINGS = 20  # the latency phase stops early, after its time budget, but never before this many
STARTUP_TIMEOUT_S = 900.0

# Emptied before a run on a reused load (--data): what the run itself writes.
RESET_TABLES = ("budgets", "budget_alerts", "alert_deliveries", "audit_log")

# Targets.
PASS_TARGET_S = 2.0
LATENCY_P95_TARGET_S = 2.0

# Single-learner budgets: (period, zone, share).
SINGLE_MIX: tuple[tuple[PeriodName, str, float], ...] = (
    ("monthly", "UTC", 0.30),
    ("monthly", "America/New_York", 0.20),
    ("monthly", "Europe/Paris", 0.15),
    ("monthly", "Asia/Tokyo", 0.10),
    ("weekly", "UTC", 0.15),
    ("daily", "UTC", 0.10),
)
TEMPLATE_THRESHOLDS = [Threshold(80, "actual"), Threshold(100, "actual"), Threshold(100, "forecast")]
FIXED_MIN = 200  # budgets below which the mix is not worth the name
TENANT_PERIODS: tuple[PeriodName, ...] = ("monthly", "weekly", "daily")


def now_ms() -> datetime:
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond - now.microsecond % 1000)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# -- a ClickHouse that records every call ------------------------------------------


@dataclass
class Call:
    label: str
    sql: str
    parameters: dict[str, Any]
    started: float
    seconds: float
    rows: int


class RecordingClickHouse(ClickHouse):
    """The service's client, with each call's label, SQL, start and duration kept in `calls`."""

    def __init__(self, url: str, database: str) -> None:
        super().__init__(url, database)
        self.calls: list[Call] = []

    def _record(self, label: str, sql: str, parameters: dict[str, Any] | None, began: float, rows: int) -> None:
        self.calls.append(Call(label, sql, dict(parameters or {}), began, time.perf_counter() - began, rows))

    def query(self, sql: str, parameters: dict[str, Any] | None = None, *, label: str) -> list[tuple[Any, ...]]:
        began = time.perf_counter()
        rows = super().query(sql, parameters, label=label)
        self._record(label, sql, parameters, began, len(rows))
        return rows

    def query_dicts(self, sql: str, parameters: dict[str, Any] | None = None, *, label: str) -> list[dict[str, Any]]:
        began = time.perf_counter()
        rows = super().query_dicts(sql, parameters, label=label)
        self._record(label, sql, parameters, began, len(rows))
        return rows

    def insert(
        self,
        table: str,
        data: Sequence[Sequence[Any]],
        column_names: Sequence[str],
        *,
        label: str,
        column_oriented: bool = False,
        settings: dict[str, Any] | None = None,
    ) -> None:
        began = time.perf_counter()
        super().insert(table, data, column_names, label=label, column_oriented=column_oriented, settings=settings)
        rows = len(data[0]) if column_oriented and data else len(data)
        self._record(label, f"INSERT INTO {table}", None, began, rows)

    def take(self) -> list[Call]:
        calls, self.calls = self.calls, []
        return calls


# -- budgets ---------------------------------------------------------------------------


@dataclass
class BudgetMix:
    budgets: list[Budget]
    kinds: dict[str, str]  # budget_id -> kind
    learners: dict[str, tuple[str, ...]]

    def count(self) -> Counter[str]:
        return Counter(self.kinds.values())


def new_budget(
    rng: random.Random,
    created: datetime,
    name: str,
    scope: Scope,
    *,
    period: PeriodName = "monthly",
    zone: str = "UTC",
    per_learner: bool = False,
    thresholds: Sequence[Threshold] | None = None,
    enabled: bool = True,
    start: datetime | None = None,
    end: datetime | None = None,
) -> Budget:
    return Budget(
        budget_id=f"bud_{rng.getrandbits(80):020x}",
        version=1,
        name=name,
        scope=scope,
        per_learner=per_learner,
        period=period,
        timezone=zone,
        period_start=start,
        period_end=end,
        limit_usd="1",  # calibrated later
        thresholds=list(thresholds if thresholds is not None else DEFAULT_THRESHOLDS),
        channels=[],
        enabled=enabled,
        created_at=created,
        created_by="finops-bench",
        updated_at=created,
        updated_by="finops-bench",
    )


def budget_mix(total: int, learners: dict[str, tuple[str, ...]], now: datetime, seed: int) -> BudgetMix:
    """`total` budgets: the fixed kinds below, then single-learner budgets for the rest."""
    rng = random.Random(seed)
    out: list[Budget] = []
    kinds: dict[str, str] = {}

    def add(kind: str, budget: Budget) -> None:
        out.append(budget)
        kinds[budget.budget_id] = kind

    add("global", new_budget(rng, now, "platform monthly", Scope()))
    add("global", new_budget(rng, now, "platform weekly", Scope(), period="weekly"))
    add("global", new_budget(rng, now, "platform monthly NY", Scope(), zone="America/New_York"))
    custom_start = (now - timedelta(days=10)).replace(minute=17, second=0, microsecond=0)
    for tenant in TENANTS:
        for period in TENANT_PERIODS:
            for zone in ZONES:
                name = f"{tenant} {period} {zone}"
                add("tenant", new_budget(rng, now, name, Scope(tenant), period=period, zone=zone))
        add(
            "tenant custom",
            new_budget(
                rng,
                now,
                f"{tenant} term",
                Scope(tenant),
                period="custom",
                start=custom_start,
                end=custom_start + timedelta(days=30),
            ),
        )
        for service in SERVICES:
            add("tenant+service", new_budget(rng, now, f"{tenant} {service}", Scope(tenant, service)))
            add(
                "tenant+service",
                new_budget(
                    rng, now, f"{tenant} {service} weekly", Scope(tenant, service), period="weekly", zone="Europe/Paris"
                ),
            )
        add(
            "per-learner template",
            new_budget(
                rng,
                now,
                f"{tenant} each learner",
                Scope(tenant),
                per_learner=True,
                thresholds=TEMPLATE_THRESHOLDS,
            ),
        )
    for service in SERVICES:
        add("service", new_budget(rng, now, f"{service} all tenants", Scope(service=service)))
    singles = max(0, total - len(out))
    owners = [(tenant, learner) for tenant, ids in learners.items() for learner in ids]
    picked = rng.sample(owners, min(singles, len(owners)))
    cumulative: list[tuple[float, PeriodName, str]] = []
    acc = 0.0
    for period, zone, share in SINGLE_MIX:
        acc += share
        cumulative.append((acc, period, zone))
    for tenant, learner in picked:
        draw = rng.random() * acc
        period, zone = next((p, z) for edge, p, z in cumulative if draw < edge)
        add(
            "single learner",
            new_budget(
                rng,
                now,
                f"{learner} {period}",
                Scope(tenant, learner_id=learner),
                period=period,
                zone=zone,
                enabled=rng.random() >= 0.01,
            ),
        )
    return BudgetMix(out, kinds, learners)


def calibrate(db: ClickHouse, mix: BudgetMix, now: datetime, seed: int) -> tuple[list[Budget], float, int]:
    """Limits from the spend `evaluate` measures now: per-learner templates at their tenant's 95th
    percentile learner / 0.8; every other budget so its share used is lognormal around 45 %."""
    rng = random.Random(seed + 1)
    began = time.perf_counter()
    result = evaluate(db, mix.budgets, now)
    seconds = time.perf_counter() - began
    evaluations, queries = result[0], int(result[1])
    spends: dict[str, list[Decimal]] = defaultdict(list)
    for evaluation in evaluations:
        spends[evaluation.budget.budget_id].append(evaluation.spend)
    out: list[Budget] = []
    for budget in mix.budgets:
        found = sorted(spends.get(budget.budget_id, []))
        if budget.per_learner and found:
            limit = found[int(0.95 * (len(found) - 1))] / Decimal("0.8")
        elif found and found[0] > 0:
            limit = found[0] / Decimal(str(max(0.05, rng.lognormvariate(-0.8, 0.5))))
        else:
            limit = Decimal(5)
        limit = max(CENT, limit.quantize(CENT, rounding=ROUND_HALF_EVEN))
        out.append(msgspec.structs.replace(budget, limit_usd=money_str(limit)))
    return out, seconds, queries


def write_budgets(db: ClickHouse, budgets: Sequence[Budget]) -> float:
    began = time.perf_counter()
    db.insert("budgets", [budget_row(b) for b in budgets], BUDGET_COLUMNS, label="bench.budgets")
    return time.perf_counter() - began


# -- timed passes ----------------------------------------------------------------------


@dataclass
class PassFigures:
    run: EvaluationRun
    wall: float
    calls: list[Call]

    def seconds_of(self, label: str) -> float:
        return sum(c.seconds for c in self.calls if c.label == label)

    @property
    def measures(self) -> list[Call]:
        return [c for c in self.calls if c.label == "budgets.measure"]

    @property
    def python(self) -> float:
        return self.wall - sum(c.seconds for c in self.calls)

    def describe(self) -> str:
        measures = self.measures
        slowest = max((c.seconds for c in measures), default=0.0)
        return (
            f"{self.run.seconds:.3f}s: {self.run.budgets:,} budgets, {self.run.queries} queries, "
            f"fired {self.run.fired:,}, resolved {self.run.resolved:,} | budgets read "
            f"{self.seconds_of('budgets.list'):.3f}s, measure queries {sum(c.seconds for c in measures):.3f}s "
            f"(slowest {slowest:.3f}s), alerts read {self.seconds_of('alerts.current'):.3f}s, alert write "
            f"{self.seconds_of('alerts.write'):.3f}s, Python {self.python:.3f}s"
        )


def timed_passes(db: RecordingClickHouse, passes: int) -> list[PassFigures]:
    out: list[PassFigures] = []
    for index in range(passes):
        db.take()
        began = time.perf_counter()
        run, _ = evaluate_budgets(db)
        wall = time.perf_counter() - began
        figures = PassFigures(run, wall, db.take())
        out.append(figures)
        say(f"pass {index + 1}/{passes}{' (fires alerts)' if index == 0 else ''}: {figures.describe()}")
    return out


@dataclass
class GroupQuery:
    """One measure query: the groups (windows) of one set of rollup columns."""

    columns: tuple[str, ...]
    windows: int
    label: str  # "monthly UTC", ...
    members: int
    per_learner: int
    rows: int
    seconds: float
    sources: str
    learner_filter: int


@dataclass
class Rerun:
    """One measure query run again: as the pass ran it, wrapped in count(), and each UNION ALL branch's scan."""

    why: str
    rows: int
    seconds: float
    counted: float
    branches: list[tuple[str, float]]


@dataclass
class Steps:
    """One instrumented pass: evaluate_budgets itself, with its `timings` and each measure query recorded."""

    now: datetime
    run: EvaluationRun
    timings: dict[str, float]
    calls: list[Call]
    groups: list[GroupQuery]
    reruns: list[Rerun] = field(default_factory=list)

    def seconds_of(self, *labels: str) -> float:
        return sum(c.seconds for c in self.calls if c.label in labels)

    @property
    def measure_total(self) -> float:
        return self.seconds_of("budgets.measure")

    @property
    def total(self) -> float:
        return sum(self.timings.values())


def window_label(budgets: Sequence[Budget]) -> str:
    kinds = sorted({f"{b.period} {b.timezone}" for b in budgets})
    return kinds[0] if len(kinds) == 1 else f"{kinds[0]} +{len(kinds) - 1}"


def rerun(db: RecordingClickHouse, call: Call, why: str) -> Rerun:
    def timed(sql: str) -> float:  # best of 3: the figure least disturbed by anything else on the machine
        best = float("inf")
        for _ in range(3):
            began = time.perf_counter()
            db.query(sql, call.parameters, label="bench.rerun")
            best = min(best, time.perf_counter() - began)
        return best

    seconds = timed(call.sql)
    counted = timed(f"SELECT count() FROM ({call.sql})")
    branches: list[tuple[str, float]] = []
    parts = call.sql.split("\nUNION ALL\n")
    parts[0] = parts[0][parts[0].rindex("FROM (SELECT ") + len("FROM (") :]
    ends = [i for i in (parts[-1].find(") GROUP BY "), parts[-1].find(") HAVING ")) if i >= 0]
    parts[-1] = parts[-1][: min(ends)]
    for branch in parts:
        source = branch.split(" FROM ", 1)[1].split(" ", 1)[0]
        branches.append((source, timed(f"SELECT count() FROM ({branch})")))
    db.take()
    return Rerun(why, call.rows, seconds, counted, branches)


def instrumented_pass(db: RecordingClickHouse) -> Steps:
    """evaluate_budgets(db, timings=...): the service's own step timings; `measure_scan` is wrapped for
    the duration of the pass to name each query's groups (their columns, windows and budgets)."""
    db.take()
    now = datetime.now(UTC)
    described: list[GroupQuery] = []
    original = evaluate_module.measure_scan
    recorder = db  # the wrapper's own `db` parameter is evaluate_groups'

    def measured(
        db: ClickHouse, columns: tuple[str, ...], groups: Sequence[Group], now: datetime, **options: Any
    ) -> list[Measured]:
        before = len(recorder.calls)
        try:
            return original(db, columns, groups, now, **options)
        finally:
            calls = [c for c in recorder.calls[before:] if c.label == "budgets.measure"]
            budgets = [b for g in groups for b in g.members]
            filtered = [g.learners for g in groups if g.learners is not None]
            described.append(
                GroupQuery(
                    columns=columns,
                    windows=len(groups),
                    label=window_label(budgets),
                    members=len(budgets),
                    per_learner=sum(1 for b in budgets if b.per_learner and not b.scope.learner_id),
                    rows=sum(c.rows for c in calls),
                    seconds=sum(c.seconds for c in calls),
                    sources="+".join(dict.fromkeys(re.findall(r" FROM (usage_\w+)", " ".join(c.sql for c in calls)))),
                    learner_filter=len(set().union(*filtered)) if filtered else 0,
                )
            )

    timings: dict[str, float] = {}
    evaluate_module.measure_scan = measured  # type: ignore[assignment]
    try:
        run, _ = evaluate_budgets(db, now=now, timings=timings)
    finally:
        evaluate_module.measure_scan = original
    steps = Steps(now=now, run=run, timings=timings, calls=db.take(), groups=described)
    measure_calls = [c for c in steps.calls if c.label == "budgets.measure"]
    if measure_calls:
        slowest = max(measure_calls, key=lambda c: c.seconds)
        steps.reruns.append(rerun(db, slowest, "slowest"))
        largest = max(measure_calls, key=lambda c: c.rows)
        if largest is not slowest:
            steps.reruns.append(rerun(db, largest, "most rows"))
    return steps


def report_steps(steps: Steps) -> None:
    t = steps.timings
    say(
        f"instrumented pass: {steps.total:.3f}s over {steps.run.budgets:,} budgets, {steps.run.queries} queries "
        "(evaluate_budgets' own step timings):"
    )
    say(
        f"  load budgets: {t.get('load', 0):.3f}s (fingerprint {steps.seconds_of('budgets.fingerprint'):.3f}s, "
        f"budgets read {steps.seconds_of('budgets.list'):.3f}s: the list is cached while the fingerprint holds)"
    )
    say(
        f"  evaluate: {t.get('evaluate', 0):.3f}s = {len(steps.groups)} measure queries {steps.measure_total:.3f}s "
        f"+ Python {t.get('evaluate', 0) - steps.measure_total:.3f}s (grouping, floors, forecasts)"
    )
    say(f"  crossed() + alert ids: {t.get('crossed', 0):.3f}s")
    say(
        f"  current alerts read: {t.get('existing', 0):.3f}s; diff {t.get('diff', 0):.3f}s; "
        f"alert write {t.get('write', 0):.3f}s"
    )
    say("  measure queries, slowest first: seconds | rows | columns | windows | budgets | learner filter | sources")
    for group in sorted(steps.groups, key=lambda g: -g.seconds):
        templates = f" ({group.per_learner} per-learner)" if group.per_learner else ""
        say(
            f"    {group.seconds:6.3f}s {group.rows:>7,} rows  ({', '.join(group.columns) or 'global'})  "
            f"{group.windows} windows ({group.label})  {group.members:,} budgets{templates}  "
            f"IN[{group.learner_filter:,}]  {group.sources}"
        )
    for again in steps.reruns:
        branches = ", ".join(f"{source} {seconds:.3f}s" for source, seconds in again.branches)
        say(
            f"  {again.why} measure query again, best of 3 ({again.rows:,} rows): {again.seconds:.3f}s; as SELECT "
            f"count() (same scan and GROUP BY, one row back): {again.counted:.3f}s; each UNION ALL branch alone: "
            f"{branches}"
        )


# -- correctness checks ----------------------------------------------------------------


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def raw_spend(db: ClickHouse, budget: Budget, window: Window, now: datetime) -> Decimal:
    where = ["event_time >= {s:DateTime64(3, 'UTC')}", "event_time < {e:DateTime64(3, 'UTC')}"]
    params: dict[str, Any] = {"s": window.start, "e": min(window.end, now + timedelta(hours=1))}
    for column in ("tenant_id", "service", "learner_id"):
        value = getattr(budget.scope, column)
        if value:
            where.append(f"{column} = {{{column}:String}}")
            params[column] = value
    rows = db.query(
        f"SELECT sum(ifNull(cost_usd, 0)) FROM usage_events WHERE {' AND '.join(where)}", params, label="bench.raw"
    )
    return Decimal(rows[0][0] or 0)


def raw_learners(db: ClickHouse, tenant: str, window: Window, now: datetime) -> int:
    rows = db.query(
        "SELECT uniqExact(learner_id) FROM usage_events WHERE tenant_id = {t:String} AND learner_id != '' "
        "AND event_time >= {s:DateTime64(3, 'UTC')} AND event_time < {e:DateTime64(3, 'UTC')}",
        {"t": tenant, "s": window.start, "e": min(window.end, now + timedelta(hours=1))},
        label="bench.raw",
    )
    return int(rows[0][0])


def templates_of(mix: BudgetMix) -> list[Budget]:
    return [b for b in mix.budgets if b.per_learner and b.enabled]


def checks(db: ClickHouse, steps: Steps, mix: BudgetMix, seed: int) -> list[Check]:
    rng = random.Random(seed + 2)
    now = steps.now
    out: list[Check] = []
    # 1. spend of sampled budgets (every kind) against the raw events; every budget measured without the
    # pass's crossing filter (as its status is)
    unfiltered = evaluate(db, mix.budgets, now)[0]
    by_kind: dict[str, list[Evaluation]] = defaultdict(list)
    for evaluation in unfiltered:
        if not evaluation.learner:
            by_kind[mix.kinds.get(evaluation.budget.budget_id, "other")].append(evaluation)
    sample = [e for kind in sorted(by_kind) for e in rng.sample(by_kind[kind], min(6, len(by_kind[kind])))]
    wrong = [
        f"{e.budget.name}: {e.spend} != {raw}"
        for e in sample
        if (raw := raw_spend(db, e.budget, e.window, now)) != e.spend
    ]
    out.append(
        Check(
            "spend = raw events",
            not wrong,
            f"{len(sample) - len(wrong)}/{len(sample)} sampled budgets equal" + (f"; {wrong[0]}" if wrong else ""),
        )
    )

    # 2. the pass's crossing filter (floors in SQL and before any forecast) drops no crossing: the same alerts,
    # amounts included, as every budget and learner checked in Decimal
    def crossings(evaluations: Sequence[Evaluation]) -> dict[str, tuple[Decimal, Decimal]]:
        return {
            alert_id(e.budget, e.window, percent, kind, e.learner): (e.spend, e.forecast)
            for e in evaluations
            for percent, kind in e.crossed()
        }

    everything = crossings(unfiltered) | crossings(evaluate(db, templates_of(mix), now)[0])
    filtered = crossings(evaluate(db, mix.budgets, now, crossing_only=True)[0])
    out.append(
        Check(
            "crossing filter exact",
            filtered == everything,
            f"{len(filtered):,} crossings with the filter, {len(everything):,} checking every scope, "
            f"{len(set(filtered) ^ set(everything))} differ",
        )
    )
    # 3. each per-learner template, measured without the pass's crossing filter (as its status
    # is), sees every learner with events in its window
    templates = templates_of(mix)
    every = evaluate(db, templates, now)[0]
    counted = Counter(e.budget.budget_id for e in every if e.learner)
    missing: list[str] = []
    expected_total = 0
    for template in templates:
        window = budget_window(template, now)
        if window is None or template.scope.tenant_id is None:
            continue
        expected = raw_learners(db, template.scope.tenant_id, window, now)
        expected_total += expected
        if counted[template.budget_id] != expected:
            missing.append(f"{template.scope.tenant_id}: {counted[template.budget_id]:,} of {expected:,}")
    out.append(
        Check(
            "template learners",
            not missing,
            f"{sum(counted[t.budget_id] for t in templates):,} learner evaluations, {expected_total:,} learners "
            "with events" + (f"; {missing[0]}" if missing else ""),
        )
    )
    # 4. a template and one single-learner budget of the same tenant in the same (monthly UTC) window
    if templates:
        template = templates[0]
        window = budget_window(template, now)
        tenant = template.scope.tenant_id
        if window is not None and tenant is not None:
            alone = [e for e in evaluate(db, [template], now)[0] if e.budget.budget_id == template.budget_id]
            single = new_budget(
                rng, now, "probe", Scope(tenant, learner_id=mix.learners[tenant][0]), thresholds=[Threshold(100)]
            )
            together = [e for e in evaluate(db, [template, single], now)[0] if e.budget.budget_id == template.budget_id]
            out.append(
                Check(
                    "template + single-learner group",
                    len(together) == len(alone),
                    f"{tenant}: {len(alone):,} learners alone, {len(together):,} with a single-learner budget "
                    "in the same window",
                )
            )
    return out


# -- ingest-to-alert latency (embedded app) -------------------------------------------


@dataclass
class Crossing:
    ack: float  # wall clock (time.time) when POST /usage-events answered
    post_seconds: float
    created: float  # the alert's created_at: the start of the pass that fired it
    seen: float  # wall clock when GET /alerts first showed it
    polls: int

    @property
    def latency(self) -> float:
        return self.seen - self.ack

    @property
    def to_created(self) -> float:
        return self.created - self.ack

    @property
    def created_to_seen(self) -> float:
        return self.seen - self.created


@dataclass
class LatencyFigures:
    crossings: list[Crossing]
    missed: int
    delay_ms: int
    passes: int
    pass_seconds: float
    budgets: int
    startup_seconds: float
    startup_evaluation: float
    startup_summaries: float
    requested: int
    drain_seconds: float
    drain_run: EvaluationRun | None
    full_passes: int = 0

    def p(self, values: Sequence[float], q: float) -> float:
        return percentile(values, q) if values else float("nan")


def sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def job_runs(job: str) -> float:
    return sum(sample("finops_job_runs_total", {"job": job, "outcome": o}) for o in ("succeeded", "failed"))


def job_seconds(job: str) -> tuple[float, float]:
    return sample("finops_job_seconds_sum", {"job": job}), sample("finops_job_seconds_count", {"job": job})


def crossing_budgets(db: ClickHouse, count: int, now: datetime, seed: int) -> list[Budget]:
    rng = random.Random(seed + 3)
    budgets = [
        new_budget(
            rng,
            now,
            f"bench crossing {i}",
            Scope(TENANTS[i % len(TENANTS)], f"bench-svc-{i}"),
            thresholds=[Threshold(100, "actual")],
        )
        for i in range(count)
    ]
    budgets = [msgspec.structs.replace(b, limit_usd="1") for b in budgets]
    write_budgets(db, budgets)
    return budgets


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.1)


def latency_phase(workdir: Path, crossing: Sequence[Budget], total_budgets: int, budget_s: float) -> LatencyFigures:
    from service.app import create_app

    settings = Settings(
        server=ServerSettings(environment="development"),
        database=DatabaseSettings(url=f"chdb://{workdir / 'ch'}", database=DATABASE),
        auth=AuthSettings(jwt_secret=JWT_SECRET),
    )
    delay_ms = settings.budgets.trigger_delay_ms
    token = issue_token(JWT_SECRET, role=Role.ADMIN, subject="finops-bench", minutes=240)
    headers = {"Authorization": f"Bearer {token}"}
    # the triggered job waits for a trigger: start-up runs the full pass and the summary refresh
    startup_jobs = ("evaluate_budgets", "cost_summaries")
    runs_before = {job: job_runs(job) for job in startup_jobs}
    seconds_before = {job: job_seconds(job)[0] for job in startup_jobs}
    say(
        f"latency: create_app (embedded: JobRunner, GroupCommitBuffer(on_written=watch.notify)) on the same chDB "
        f"path and database; BUDGET_TRIGGER_DELAY_MS={delay_ms}, BUDGET_CHECK_INTERVAL="
        f"{settings.budgets.check_interval_s}s"
    )
    app: Litestar = create_app(settings)
    began = time.perf_counter()
    run = uuid.uuid4().hex[:8]
    results: list[Crossing] = []
    missed = 0
    with TestClient(app=app) as client:
        logging.getLogger("httpx").setLevel(logging.WARNING)  # Litestar's logging config logs every request at INFO
        say(
            "latency: app started; waiting for its start-up jobs (the scheduled full evaluation pass and the "
            "cost_summaries refresh)"
        )
        wait_until(
            lambda: all(job_runs(job) > runs_before[job] for job in runs_before),
            STARTUP_TIMEOUT_S,
            "the start-up jobs",
        )
        startup = time.perf_counter() - began
        startup_eval = job_seconds("evaluate_budgets")[0] - seconds_before["evaluate_budgets"]
        startup_sum = job_seconds("cost_summaries")[0] - seconds_before["cost_summaries"]
        say(
            f"latency: start-up jobs done after {startup:.1f}s (evaluation pass {startup_eval:.2f}s, "
            f"cost_summaries refresh {startup_sum:.1f}s, concurrently)"
        )
        pass_sum0, pass_count0 = job_seconds("evaluate_touched")
        full_count0 = job_seconds("evaluate_budgets")[1]
        phase_began = time.perf_counter()
        with tqdm(total=len(crossing), unit="alert", desc="crossings", mininterval=2.0) as bar:
            for index, budget in enumerate(crossing):
                if index >= MIN_CROSSINGS and time.perf_counter() - phase_began > budget_s:
                    bar.close()
                    say(f"latency: stopped after {index}/{len(crossing)} crossings (--latency-budget {budget_s:.0f})")
                    break
                body = {
                    "event_id": f"bench-cross-{run}-{index}",
                    "tenant_id": budget.scope.tenant_id,
                    "service": budget.scope.service,
                    "provider": "openai",
                    "model": "gpt-4o-mini",
                    "input_tokens": 1000,
                    "output_tokens": 100,
                    "cost_usd": "1.5",
                    "timestamp": datetime.now(UTC).isoformat(),
                    "metadata": {"source": "finops-bench"},
                }
                posted = time.perf_counter()
                response = client.post("/usage-events", json=body, headers=headers)
                ack = time.time()
                post_seconds = time.perf_counter() - posted
                if response.status_code != 201:
                    raise RuntimeError(f"POST /usage-events answered {response.status_code}: {response.text[:300]}")
                polls = 0
                deadline = time.monotonic() + CROSSING_TIMEOUT_S
                found: dict[str, Any] | None = None
                while time.monotonic() < deadline:
                    polls += 1
                    page = client.get("/alerts", params={"budget_id": budget.budget_id}, headers=headers)
                    if page.status_code != 200:
                        raise RuntimeError(f"GET /alerts answered {page.status_code}: {page.text[:300]}")
                    items = page.json()["items"]
                    if items:
                        found = items[0]
                        break
                    time.sleep(POLL_S)
                seen = time.time()
                if found is None:
                    missed += 1
                    say(f"latency: no alert for crossing {index} within {CROSSING_TIMEOUT_S:.0f}s")
                    if missed >= 5:
                        raise RuntimeError("5 crossings produced no alert; the trigger path is not working")
                else:
                    created = datetime.fromisoformat(found["created_at"]).timestamp()
                    results.append(Crossing(ack, post_seconds, created, seen, polls))
                bar.update(1)
        pass_sum1, pass_count1 = job_seconds("evaluate_touched")
        full_passes = int(job_seconds("evaluate_budgets")[1] - full_count0)
        # POST /budgets/evaluate waits for a pass in flight (a scheduled one may have queued behind the last
        # crossing's), then runs one: the app then stops with no pass running.
        began_drain = time.perf_counter()
        answer = client.post("/budgets/evaluate", headers=headers)
        drain_seconds = time.perf_counter() - began_drain
        drain_run = msgspec.convert(answer.json(), EvaluationRun) if answer.status_code == 200 else None
        say(
            f"latency: POST /budgets/evaluate (waits for any pass in flight, then runs one): {drain_seconds:.2f}s, "
            + (msgspec.json.encode(drain_run).decode() if drain_run else f"status {answer.status_code}")
        )
    passes = int(pass_count1 - pass_count0)
    return LatencyFigures(
        crossings=results,
        missed=missed,
        delay_ms=delay_ms,
        passes=passes,
        pass_seconds=(pass_sum1 - pass_sum0) / passes if passes else 0.0,
        budgets=total_budgets,
        startup_seconds=startup,
        startup_evaluation=startup_eval,
        startup_summaries=startup_sum,
        requested=len(crossing),
        drain_seconds=drain_seconds,
        drain_run=drain_run,
        full_passes=full_passes,
    )


def report_latency(figures: LatencyFigures) -> None:
    latencies = [c.latency for c in figures.crossings]
    to_created = [c.to_created for c in figures.crossings]
    to_seen = [c.created_to_seen for c in figures.crossings]
    posts = [c.post_seconds for c in figures.crossings]
    p = figures.p
    say(
        f"latency: {len(figures.crossings)} alerts seen ({figures.missed} missed); ack -> alert seen p50 "
        f"{p(latencies, 0.5):.3f}s, p95 {p(latencies, 0.95):.3f}s, max {max(latencies, default=0):.3f}s"
    )
    say(
        f"latency: ack -> alert created_at (pass start) p50 {p(to_created, 0.5):.3f}s, p95 {p(to_created, 0.95):.3f}s; "
        f"created_at -> seen p50 {p(to_seen, 0.5):.3f}s, p95 {p(to_seen, 0.95):.3f}s"
    )
    say(
        f"latency: {figures.passes} triggered passes (evaluate_touched: the budgets the ingested event's scope "
        f"matches) during the crossings, mean {figures.pass_seconds:.3f}s each, of {figures.budgets:,} budgets; "
        f"{figures.full_passes} scheduled full passes meanwhile; expected ~ trigger delay "
        f"{figures.delay_ms / 1000:.3f}s + one pass "
        f"{figures.pass_seconds:.3f}s + half a poll {POLL_S / 2:.3f}s = "
        f"{figures.delay_ms / 1000 + figures.pass_seconds + POLL_S / 2:.3f}s"
    )
    say(f"latency: POST /usage-events p50 {p(posts, 0.5) * 1000:.1f} ms (ack includes the group-commit write)")


# -- report ----------------------------------------------------------------------------


def summary_table(
    args: argparse.Namespace,
    events: int,
    load_seconds: float,
    mix: BudgetMix,
    passes: list[PassFigures],
    steps: Steps,
    found: list[Check],
    latency: LatencyFigures | None,
) -> str:
    rows: list[tuple[str, str, str, str]] = [
        ("load: generate + INSERT", f"{events / load_seconds:,.0f} ev/s", f"{events:,} events", ""),
        (
            "budgets",
            f"{len(mix.budgets):,}",
            ", ".join(f"{kind} {n:,}" for kind, n in sorted(mix.count().items(), key=lambda i: -i[1])),
            "",
        ),
    ]
    first, steady = passes[0], passes[1:]
    rows.append(
        (
            "full pass 1 (fires alerts)",
            f"{first.run.seconds:.3f} s",
            f"<= {PASS_TARGET_S:.0f} s; {first.run.queries} queries, fired {first.run.fired:,}",
            verdict(first.run.seconds <= PASS_TARGET_S),
        )
    )
    if steady:
        worst = max(p.run.seconds for p in steady)
        rows.append(
            (
                f"full pass 2..{len(passes)} (steady)",
                f"max {worst:.3f} s",
                f"<= {PASS_TARGET_S:.0f} s; min {min(p.run.seconds for p in steady):.3f} s",
                verdict(worst <= PASS_TARGET_S),
            )
        )
    last = passes[-1]
    measures = last.measures
    rows += [
        (
            "  load budgets",
            f"{steps.timings.get('load', 0):.3f} s",
            f"instrumented pass; fingerprint {steps.seconds_of('budgets.fingerprint'):.3f} s, list cached",
            "",
        ),
        (
            "  measure queries",
            f"{steps.measure_total:.3f} s",
            f"{len(measures)} queries; slowest {max((c.seconds for c in measures), default=0):.3f} s",
            "",
        ),
        (
            "  evaluate Python",
            f"{steps.timings.get('evaluate', 0) - steps.measure_total:.3f} s",
            "grouping, floors, forecasts of the scopes that may cross",
            "",
        ),
        ("  crossed() + alert ids", f"{steps.timings.get('crossed', 0):.3f} s", "", ""),
        (
            "  current alerts read + diff",
            f"{steps.timings.get('existing', 0) + steps.timings.get('diff', 0):.3f} s",
            f"{steps.seconds_of('alerts.current'):.3f} s reading",
            "",
        ),
        ("  alert write (pass 1)", f"{first.seconds_of('alerts.write'):.3f} s", f"{first.run.fired:,} rows", ""),
    ]
    for check in found:
        rows.append((f"check: {check.name}", "ok" if check.ok else "WRONG", check.detail[:100], ""))
    if latency is not None and latency.crossings:
        values = [c.latency for c in latency.crossings]
        rows.append(
            (
                "ingest -> alert seen",
                f"p50 {latency.p(values, 0.5):.3f} s / p95 {latency.p(values, 0.95):.3f} s",
                f"p95 <= {LATENCY_P95_TARGET_S:.0f} s; {len(values)}/{latency.requested} crossings, "
                f"{latency.missed} missed",
                verdict(latency.p(values, 0.95) <= LATENCY_P95_TARGET_S),
            )
        )
        created = [c.to_created for c in latency.crossings]
        rows.append(
            (
                "ingest -> alert created_at",
                f"p50 {latency.p(created, 0.5):.3f} s / p95 {latency.p(created, 0.95):.3f} s",
                f"trigger delay {latency.delay_ms} ms + waiting for a running pass",
                "",
            )
        )
        rows.append(
            (
                "triggered pass (app)",
                f"{latency.pass_seconds:.3f} s mean",
                f"{latency.passes} evaluate_touched passes, of {latency.budgets:,} budgets",
                "",
            )
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    rows.append(("peak memory (this process)", f"{peak:.2f} GiB", "", ""))
    footer = (
        f"{os.cpu_count() or 0} CPU cores; chDB embedded in this process; {events:,} events over {args.days} days, "
        f"{len(TENANTS)} tenants, {args.learners:,} learners; passes are evaluate_budgets(db) calls, the latency "
        "phase the real app through Litestar's TestClient"
    )
    return render_table(rows, footer)


# -- entry point -----------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=10_000_000, help="synthetic events to load")
    parser.add_argument("--budgets", type=int, default=10_000, help=f"budgets to create (>= {FIXED_MIN})")
    parser.add_argument("--learners", type=int, default=100_000, help="distinct learners over all tenants")
    parser.add_argument("--crossings", type=int, default=100, help="ingest-to-alert crossings (0 skips the phase)")
    parser.add_argument(
        "--latency-budget",
        type=float,
        default=360.0,
        help=f"seconds of crossings before the latency phase stops early (after at least {MIN_CROSSINGS})",
    )
    parser.add_argument("--passes", type=int, default=5, help="timed evaluate_budgets passes")
    parser.add_argument("--days", type=int, default=90, help="days the events span, ending now")
    parser.add_argument("--chunk", type=int, default=500_000, help="rows per INSERT while loading")
    parser.add_argument("--templates", type=int, default=50_000, help="distinct priced event templates")
    parser.add_argument("--seed", type=int, default=11, help="random seed")
    parser.add_argument("--keep", action="store_true", help="keep the temporary chDB directory")
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="chDB directory to keep the loaded events in and reuse on later runs (a run on a reused load "
        "starts from a freshly opened engine, as after a restart; budgets, alerts and deliveries are emptied)",
    )
    args = parser.parse_args(argv)
    if (
        args.events < 1
        or args.budgets < FIXED_MIN
        or args.learners < len(TENANTS)
        or args.crossings < 0
        or args.passes < 1
        or args.days < 31
    ):
        parser.error(
            f"need --events >= 1, --budgets >= {FIXED_MIN}, --learners >= 6, --crossings >= 0, --passes >= 1, "
            "--days >= 31"
        )
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = (args.data or Path(tempfile.mkdtemp(prefix="finops-bench-budgets-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    db = RecordingClickHouse(f"chdb://{workdir / 'ch'}", DATABASE)
    say(f"finops-svc budget benchmark; {'data' if args.data else 'scratch'} dir {workdir}")
    latency: LatencyFigures | None = None
    try:
        saved = reusable(workdir, args)
        say("migrate: applying pending migrations")
        say(f"migrate: {len(migrate(db))} migrations applied")
        if saved is None:
            now = now_ms()
            figures = load(db, args, now)
            if args.data:
                remember(workdir, args, figures, now)
        else:
            figures = LoadFigures(**saved["figures"])
            loaded_at = datetime.fromisoformat(saved["now"])
            say(f"load: reusing {figures.events:,} events loaded at {loaded_at.isoformat()} (the engine just opened)")
            for table in RESET_TABLES:
                db.command(f"TRUNCATE TABLE {table}", label="bench.reset")
        learners = learner_ids(args.learners)

        mix = budget_mix(args.budgets, learners, now_ms(), args.seed)
        say(
            f"budgets: {len(mix.budgets):,} = "
            + ", ".join(f"{kind} {n:,}" for kind, n in sorted(mix.count().items(), key=lambda i: -i[1]))
        )
        calibrated, seconds, queries = calibrate(db, mix, now_ms(), args.seed)
        mix.budgets = calibrated
        say(f"budgets: limits calibrated from one untimed evaluate() ({queries} queries, {seconds:.2f}s)")
        say(f"budgets: one INSERT of {len(mix.budgets):,} budget_rows in {write_budgets(db, mix.budgets):.2f}s")

        say(f"passes: evaluate_budgets(db) x {args.passes}")
        passes = timed_passes(db, args.passes)
        steps = instrumented_pass(db)
        report_steps(steps)
        found = checks(db, steps, mix, args.seed)
        for check in found:
            say(f"check {check.name}: {'ok' if check.ok else 'WRONG'}: {check.detail}")

        if args.crossings:
            crossing = crossing_budgets(db, args.crossings, now_ms(), args.seed)
            say(f"latency: {len(crossing)} budgets of 1 USD (tenant + own service, 100 % actual) added")
            latency = latency_phase(workdir, crossing, len(mix.budgets) + len(crossing), args.latency_budget)
            report_latency(latency)
    except (RuntimeError, OSError, DomainError) as exc:
        say(f"FAILED: {exc}")
        return 1
    finally:
        db.close()
        if args.keep or args.data:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(summary_table(args, figures.events, figures.seconds, mix, passes, steps, found, latency), flush=True)
    say(f"done in {elapsed():.0f}s")
    wrong = [c.name for c in found if not c.ok]
    if wrong:
        say(f"wrong evaluation answers: {', '.join(wrong)}")
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
