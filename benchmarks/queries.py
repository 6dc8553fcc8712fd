"""Cost-query latency through the rollups, against the same questions asked of the raw events.

Run by `make bench` as `.venv/bin/python benchmarks/queries.py`. In one process, on a
temporary chDB path (chDB allows one engine path per process):

1. Migrates a fresh database with the service's own migrations.
2. Bulk-loads `--events` synthetic events (default 10,000,000) spread over the last `--days`
   days (default 90): the tenants and the service/provider/model/token mix of
   `service.usage.demo`, `--learners` distinct learners in all (the largest tenant has a quarter
   of them), priced with the real `PriceBook` of the bundled catalog (price changes inside the
   window included). Rows are sampled from a pool of priced templates with fresh event ids,
   timestamps and learners, and written in time order with column-oriented INSERTs (the
   service's INSERT settings), so the materialized views fill `usage_hourly`, `usage_daily` and
   `usage_event_keys` as a real ingest does. Parts are left as the load leaves them (no
   OPTIMIZE): that is what a live service reads.
3. Times each cost endpoint's typical question through `CostService` (what the API runs, minus
   HTTP): 30-day cost by service (ending now, and day-aligned), the largest tenant's top 100
   learners over 30 days, and the 90-day daily summary, the last both from the rollups alone
   (before the first `cost_summaries` refresh) and after the refresh the service's job runs at
   start-up. Each is paired with one equivalent query over `usage_events` returning the same
   figures; runs alternate between the two, and the last answers of both must be equal to the
   last decimal.

Timings are printed, never asserted: a slow figure says "below target" and does not change the
exit code. The script exits non-zero only when it cannot measure, or when a rollup answer differs
from the raw one.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from bisect import bisect_right
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import anyio.to_thread
from tqdm import tqdm

from benchmarks.report import elapsed, render_table, say, verdict
from service.auth.principal import Principal, Role
from service.costs.query import COUNTS, CostQueries
from service.costs.schemas import CostSummary, CostTotals, LearnerBreakdown, ServiceBreakdown
from service.costs.service import CostService
from service.costs.summaries import refresh_cost_summaries
from service.errors import DomainError
from service.money import money_str
from service.pricing.calculator import Price, PriceBook
from service.pricing.catalog import CatalogPrice, load_bundled_catalog
from service.settings import CostSettings
from service.storage.clickhouse import ClickHouse
from service.storage.migrations import migrate
from service.usage.demo import TENANTS, synthetic_events
from service.usage.ingest import EVENT_COLUMNS, INSERT_SETTINGS

DATABASE = "bench"
# Shares of all learners per tenant, largest first (the demo's tenant order).
LEARNER_SHARES = (0.25, 0.20, 0.17, 0.15, 0.12, 0.11)
# A learner's pick is int(random() ** SKEW * n): some learners use the services far more than others.
LEARNER_SKEW = 1.6
METADATA = {"source": "finops-bench"}

# Targets.
P95_TARGET_MS = 50.0
SPEEDUP_TARGET = 10.0

A = TypeVar("A")
B = TypeVar("B")
Row = tuple[Any, ...]


def millis(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


# -- synthetic events ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Template:
    """One priced event shape; each sampled row gets its own id, timestamp and learner."""

    tenant_id: str
    service: str
    provider: str
    model: str
    region: str
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    batch: bool
    learners: tuple[str, ...]  # the tenant's learner ids; empty for events without a learner
    bounds: tuple[int, ...]  # epoch ms where the price in force changes, ascending
    costs: tuple[Decimal | None, ...]  # one per price period: len(bounds) + 1
    versions: tuple[str, ...]
    statuses: tuple[str, ...]


def learner_ids(total: int) -> dict[str, tuple[str, ...]]:
    """Globally distinct learner ids, shared out between the tenants by LEARNER_SHARES."""
    out: dict[str, tuple[str, ...]] = {}
    first = 0
    for index, tenant in enumerate(TENANTS):
        if index == len(TENANTS) - 1:
            count = total - first
        else:
            count = max(1, round(total * LEARNER_SHARES[index] / sum(LEARNER_SHARES[: len(TENANTS)])))
        out[tenant] = tuple(f"learner-{n:06d}" for n in range(first, first + count))
        first += count
    return out


def price_periods(
    book: PriceBook, prices: Sequence[CatalogPrice], key: tuple[str, str, str], start: datetime, end: datetime
) -> tuple[tuple[int, ...], tuple[Price | None, ...]]:
    """The prices in force for (provider, model, region) over [start, end), with the epoch ms
    where each takes over. A price can only change where some catalog entry takes effect."""
    provider, model, region = key
    found: list[Price | None] = [book.price_for(provider, model, region or None, start)]
    bounds: list[int] = []
    moments = sorted({p.effective_from.astimezone(UTC) for p in prices})
    for moment in moments:
        if start < moment < end:
            price = book.price_for(provider, model, region or None, moment)
            if price is not found[-1]:
                bounds.append(millis(moment))
                found.append(price)
    return tuple(bounds), tuple(found)


def templates(
    count: int,
    *,
    book: PriceBook,
    prices: Sequence[CatalogPrice],
    learners: dict[str, tuple[str, ...]],
    days: int,
    now: datetime,
    seed: int,
) -> list[Template]:
    """`count` event shapes from `service.usage.demo.synthetic_events` (its tenant, service,
    model and token mix), priced for every price period of the window."""
    start = now - timedelta(days=days)
    periods: dict[tuple[str, str, str], tuple[tuple[int, ...], tuple[Price | None, ...]]] = {}
    out: list[Template] = []
    for event in synthetic_events(count, seed=seed, days=days, now=now):
        key = (event.provider, event.model, event.region or "")
        if key not in periods:
            periods[key] = price_periods(book, prices, key, start, now)
        bounds, in_force = periods[key]
        costs: list[Decimal | None] = []
        versions: list[str] = []
        statuses: list[str] = []
        for price in in_force:
            cost = None if price is None else price.cost(event)
            costs.append(cost)
            versions.append("" if price is None or cost is None else price.version_id)
            statuses.append("unpriced" if cost is None else "priced")
        tenant = event.tenant_id or TENANTS[0]
        out.append(
            Template(
                tenant_id=tenant,
                service=event.service,
                provider=event.provider,
                model=event.model,
                region=event.region or "",
                input_tokens=event.input_tokens,
                output_tokens=event.output_tokens,
                cached_input_tokens=event.cached_input_tokens,
                batch=event.batch,
                learners=learners[tenant] if event.learner_id is not None else (),
                bounds=bounds,
                costs=tuple(costs),
                versions=tuple(versions),
                statuses=tuple(statuses),
            )
        )
    return out


def check_pricing(pool: Sequence[Template], book: PriceBook, rng: random.Random, start_ms: int, end_ms: int) -> int:
    """Re-price sampled (template, moment) pairs with `PriceBook.price_for` + `Price.cost` directly."""
    checked = 0
    for template in rng.sample(list(pool), min(2000, len(pool))):
        moments = [start_ms, end_ms - 1, *template.bounds, *(b - 1 for b in template.bounds)]
        for ms in moments:
            if not start_ms <= ms < end_ms:
                continue
            at = datetime.fromtimestamp(ms / 1000, UTC)
            price = book.price_for(template.provider, template.model, template.region or None, at)
            expected = None if price is None else price.cost(_Usage.of(template))
            slot = bisect_right(template.bounds, ms)
            if template.costs[slot] != expected:
                raise RuntimeError(
                    f"template pricing disagrees with PriceBook for {template.provider}/{template.model} at "
                    f"{at.isoformat()}: {template.costs[slot]} != {expected}"
                )
            checked += 1
    return checked


@dataclass(slots=True)
class _Usage:
    """A template's counts as the calculator reads them (`calculator.Metered`)."""

    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    batch: bool
    cache_write_tokens: int = 0
    input_characters: int = 0
    output_characters: int = 0
    images: int = 0

    @classmethod
    def of(cls, template: Template) -> _Usage:
        return cls(template.input_tokens, template.output_tokens, template.cached_input_tokens, template.batch)


def chunk_columns(rng: random.Random, pool: Sequence[Template], lo_ms: int, hi_ms: int, n: int) -> list[list[Any]]:
    """`n` events with timestamps in [lo_ms, hi_ms), as columns in EVENT_COLUMNS order."""
    rand = rng.random
    bits = rng.getrandbits
    span = hi_ms - lo_ms
    picks = rng.choices(pool, k=n)
    times = [lo_ms + int(rand() * span) for _ in range(n)]
    slots = [bisect_right(t.bounds, ms) if t.bounds else 0 for t, ms in zip(picks, times, strict=True)]
    zeros = [0] * n
    columns: dict[str, list[Any]] = {
        "event_id": [f"{bits(128):032x}" for _ in range(n)],
        "event_time": times,
        "received_at": [ms + 150 + ms % 850 for ms in times],
        "tenant_id": [t.tenant_id for t in picks],
        "service": [t.service for t in picks],
        "learner_id": [t.learners[int(rand() ** LEARNER_SKEW * len(t.learners))] if t.learners else "" for t in picks],
        "provider": [t.provider for t in picks],
        "model": [t.model for t in picks],
        "region": [t.region for t in picks],
        "input_tokens": [t.input_tokens for t in picks],
        "output_tokens": [t.output_tokens for t in picks],
        "cached_input_tokens": [t.cached_input_tokens for t in picks],
        "cache_write_tokens": zeros,
        "input_characters": zeros,
        "output_characters": zeros,
        "images": zeros,
        "batch": [t.batch for t in picks],
        "cost_usd": [t.costs[s] for t, s in zip(picks, slots, strict=True)],
        "pricing_status": [t.statuses[s] for t, s in zip(picks, slots, strict=True)],
        "price_version": [t.versions[s] for t, s in zip(picks, slots, strict=True)],
        "metadata": [METADATA] * n,
    }
    return [columns[name] for name in EVENT_COLUMNS]


def chunk_plan(events: int, chunk: int, start_ms: int, end_ms: int) -> Iterator[tuple[int, int, int]]:
    """(rows, lo_ms, hi_ms) per INSERT: consecutive time slices, as events arrive in time order."""
    chunks = max(1, -(-events // chunk))
    for index in range(chunks):
        rows = events // chunks + (1 if index < events % chunks else 0)
        lo = start_ms + (end_ms - start_ms) * index // chunks
        hi = start_ms + (end_ms - start_ms) * (index + 1) // chunks
        yield rows, lo, hi


@dataclass
class LoadFigures:
    events: int
    seconds: float
    insert_seconds: float
    generate_seconds: float
    chunks: int
    largest_tenant: str
    largest_tenant_learners: int
    tenant_events: dict[str, int]

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    @property
    def insert_rate(self) -> float:
        return self.events / self.insert_seconds if self.insert_seconds else 0.0


def load(db: ClickHouse, args: argparse.Namespace, now: datetime) -> LoadFigures:
    prices = load_bundled_catalog()
    book = PriceBook.from_catalog([(p, 1) for p in prices])
    start = now - timedelta(days=args.days)
    start_ms, end_ms = millis(start), millis(now)
    learners = learner_ids(args.learners)
    pool_size = min(args.templates, max(1000, args.events))
    say(f"load: pricing {pool_size:,} event templates with the bundled catalog ({len(prices)} prices)")
    pool = templates(pool_size, book=book, prices=prices, learners=learners, days=args.days, now=now, seed=args.seed)
    rng = random.Random(args.seed)
    checked = check_pricing(pool, book, rng, start_ms, end_ms)
    changes = sorted({(t.model, b) for t in pool for b in t.bounds})
    for model, bound in changes:
        moment = datetime.fromtimestamp(bound / 1000, UTC)
        say(f"load: price change inside the window: {model} from {moment:%Y-%m-%d %H:%M}Z")
    unpriced = sum(1 for t in pool if None in t.costs)
    say(f"load: template prices match PriceBook at {checked:,} sampled moments; {unpriced} templates unpriced")

    plan = list(chunk_plan(args.events, args.chunk, start_ms, end_ms))
    say(
        f"load: {args.events:,} events over {args.days} days in {len(plan)} column-oriented INSERTs "
        f"of ~{plan[0][0]:,} rows, {len(TENANTS)} tenants, {args.learners:,} learners"
    )
    tenant_events: Counter[str] = Counter()
    generate_seconds = insert_seconds = 0.0
    tenant_column = EVENT_COLUMNS.index("tenant_id")

    def generate(rows: int, lo: int, hi: int) -> tuple[list[list[Any]], float]:
        began = time.perf_counter()
        columns = chunk_columns(rng, pool, lo, hi, rows)
        tenant_events.update(columns[tenant_column])
        return columns, time.perf_counter() - began

    started = time.perf_counter()
    # The next chunk is generated on a worker thread while chDB writes the current one.
    with (
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="bench-generate") as executor,
        tqdm(total=args.events, unit="ev", unit_scale=True, desc="load", mininterval=2.0) as bar,
    ):
        upcoming = executor.submit(generate, *plan[0])
        for index in range(len(plan)):
            columns, spent = upcoming.result()
            generate_seconds += spent
            if index + 1 < len(plan):
                upcoming = executor.submit(generate, *plan[index + 1])
            began = time.perf_counter()
            db.insert(
                "usage_events",
                columns,
                EVENT_COLUMNS,
                column_oriented=True,
                label="bench.load",
                settings=INSERT_SETTINGS,
            )
            insert_seconds += time.perf_counter() - began
            del columns
            bar.update(plan[index][0])
    seconds = time.perf_counter() - started
    largest = max(tenant_events, key=lambda t: tenant_events[t])
    figures = LoadFigures(
        args.events,
        seconds,
        insert_seconds,
        generate_seconds,
        len(plan),
        largest,
        len(learners[largest]),
        dict(tenant_events),
    )
    say(
        f"load: {args.events:,} events in {seconds:.1f}s = {figures.rate:,.0f} events/s "
        f"(generating {generate_seconds:.1f}s on a worker thread, overlapped; INSERT calls {insert_seconds:.1f}s "
        f"= {figures.insert_rate:,.0f} events/s)"
    )
    shares = ", ".join(f"{t} {n / args.events:.0%}" for t, n in sorted(tenant_events.items(), key=lambda i: -i[1]))
    say(f"load: events per tenant: {shares}")
    return figures


@dataclass
class TableParts:
    table: str
    parts: int
    rows: int
    bytes_on_disk: int


def table_parts(db: ClickHouse) -> list[TableParts]:
    rows = db.query(
        "SELECT table, count(), sum(rows), sum(bytes_on_disk) FROM system.parts "
        "WHERE database = {db:String} AND active AND table IN {tables:Array(String)} "
        "GROUP BY table ORDER BY table",
        {"db": db.database, "tables": ["usage_events", "usage_hourly", "usage_daily", "usage_event_keys"]},
        label="bench.parts",
    )
    return [TableParts(str(t), int(p), int(r), int(b)) for t, p, r, b in rows]


# -- the questions, through the service and from the raw table -----------------

_RAW_MEASURES = ", ".join(
    [
        "sum(ifNull(cost_usd, 0)) AS g_cost_usd",
        "countIf(record_type = 'usage') AS g_events",
        "countIf(record_type = 'usage' AND pricing_status = 'unpriced') AS g_unpriced_events",
        *(f"sum({name}) AS g_{name}" for name in COUNTS[2:]),
    ]
)
_RAW_TOTALS = ", ".join(f"sum(g_{name}) OVER () AS t_{name}" for name in ("cost_usd", *COUNTS))
_RAW_RANGE = "event_time >= {start:DateTime64(3, 'UTC')} AND event_time < {end:DateTime64(3, 'UTC')}"

RAW_BY_SERVICE = (
    f"SELECT service, {_RAW_MEASURES} FROM usage_events WHERE {_RAW_RANGE} "
    "GROUP BY service ORDER BY g_cost_usd DESC, service"
)
RAW_BY_LEARNER = (
    f"SELECT * FROM (SELECT learner_id, {_RAW_MEASURES}, {_RAW_TOTALS} FROM usage_events "
    f"WHERE tenant_id = {{tenant:String}} AND {_RAW_RANGE} GROUP BY learner_id) "
    "WHERE learner_id != '' ORDER BY g_cost_usd DESC, learner_id LIMIT {limit:UInt64}"
)
RAW_DAILY = (
    f"SELECT toDate(event_time) AS day, service, model, {_RAW_MEASURES} FROM usage_events "
    f"WHERE {_RAW_RANGE} GROUP BY day, service, model"
)
MEASURES = len(COUNTS) + 1  # cost, then COUNTS
TOP_N = 5


def totals_row(totals: CostTotals) -> Row:
    return ("total", Decimal(totals.cost_usd), *(getattr(totals, name) for name in COUNTS))


def by_service_answer(result: ServiceBreakdown) -> list[Row]:
    rows: list[Row] = [
        ("service", s.service, Decimal(s.cost_usd), s.events, s.input_tokens, s.output_tokens) for s in result.services
    ]
    return [*rows, totals_row(result.total)]


def raw_by_service(db: ClickHouse, start: datetime, end: datetime) -> list[Row]:
    found = db.query(RAW_BY_SERVICE, {"start": start, "end": end}, label="bench.raw_by_service")
    totals = [sum((r[1 + i] for r in found), Decimal(0) if i == 0 else 0) for i in range(MEASURES)]
    rows: list[Row] = [("service", r[0], r[1], r[2], r[4], r[5]) for r in found]
    return [*rows, ("total", *totals)]


def by_learner_answer(result: LearnerBreakdown) -> list[Row]:
    rows: list[Row] = [
        ("learner", s.learner_id, Decimal(s.cost_usd), s.events, s.input_tokens, s.output_tokens)
        for s in result.learners
    ]
    return [*rows, totals_row(result.total)]


def raw_by_learner(db: ClickHouse, tenant: str, start: datetime, end: datetime, limit: int) -> list[Row]:
    found = db.query(
        RAW_BY_LEARNER,
        {"tenant": tenant, "start": start, "end": end, "limit": limit},
        label="bench.raw_by_learner",
    )
    rows: list[Row] = [("learner", r[0], r[1], r[2], r[4], r[5]) for r in found]
    totals: Row = ("total", *found[0][1 + MEASURES :]) if found else ("total",)
    return [*rows, totals]


def summary_answer(result: CostSummary) -> list[Row]:
    rows: list[Row] = [
        (
            "day",
            datetime.fromisoformat(p.period_start).date(),
            Decimal(p.cost_usd),
            p.events,
            p.input_tokens,
            p.output_tokens,
            Decimal(p.change_usd),
            tuple((r.name, Decimal(r.cost_usd)) for r in p.top_services),
            tuple((r.name, Decimal(r.cost_usd)) for r in p.top_models),
        )
        for p in result.periods
    ]
    return [*rows, totals_row(result.total)]


def _top(costs: dict[str, Decimal]) -> tuple[tuple[str, Decimal], ...]:
    ranked = sorted(costs.items(), key=lambda item: (-item[1], item[0]))
    return tuple(ranked[:TOP_N])


def raw_summary(db: ClickHouse, start: datetime, end: datetime) -> list[Row]:
    """The daily summary (UTC) of [start, end), from one GROUP BY day, service, model."""
    first = start.date()
    found = db.query(
        RAW_DAILY,
        {"start": datetime.combine(first - timedelta(days=1), datetime.min.time(), UTC), "end": end},
        label="bench.raw_summary",
    )
    per_day: dict[date, list[Any]] = defaultdict(lambda: [Decimal(0), *([0] * len(COUNTS))])
    services: dict[date, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    models: dict[date, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for day, service, model, *measures in found:
        sums = per_day[day]
        for i, value in enumerate(measures):
            sums[i] += value
        services[day][service] += measures[0]
        models[day][model] += measures[0]
    rows: list[Row] = []
    totals: list[Any] = [Decimal(0), *([0] * len(COUNTS))]
    day = first
    while datetime.combine(day, datetime.min.time(), UTC) < end:
        sums = per_day.get(day) or [Decimal(0), *([0] * len(COUNTS))]
        prior = per_day.get(day - timedelta(days=1))
        change = sums[0] - (prior[0] if prior else Decimal(0))
        rows.append(
            (
                "day",
                day,
                sums[0],
                sums[1],
                sums[3],
                sums[4],
                Decimal(money_str(change)),
                _top(services.get(day, {})),
                _top(models.get(day, {})),
            )
        )
        totals = [a + b for a, b in zip(totals, sums, strict=True)]
        day += timedelta(days=1)
    return [*rows, ("total", *totals)]


def compare(rollup: list[Row], raw: list[Row]) -> str:
    """ "equal", or where the two answers first differ."""
    if rollup == raw:
        return "equal"
    for index, (a, b) in enumerate(zip(rollup, raw, strict=False)):
        if a != b:
            return f"MISMATCH at row {index}: rollup {a!r} != raw {b!r}"
    return f"MISMATCH: rollup has {len(rollup)} rows, raw {len(raw)}"


# -- timing ---------------------------------------------------------------------


@dataclass
class Timing:
    seconds: list[float]

    def percentile_ms(self, q: float) -> float:
        ordered = sorted(self.seconds)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000

    @property
    def p50(self) -> float:
        return self.percentile_ms(0.5)

    @property
    def p95(self) -> float:
        return self.percentile_ms(0.95)

    def describe(self) -> str:
        return f"p50 {self.p50:.1f} ms, p95 {self.p95:.1f} ms (min {min(self.seconds) * 1000:.1f} ms)"


@dataclass
class Question:
    name: str
    detail: str
    rollup: Timing
    raw: Timing
    answer: str
    speedup_target: bool

    @property
    def ratio(self) -> float:
        return self.raw.p50 / self.rollup.p50 if self.rollup.p50 else 0.0


MIN_RUNS = 5


async def alternate(
    rollup: Callable[[], Awaitable[A]], raw: Callable[[], B], warmup: int, runs: int, budget_s: float
) -> tuple[Timing, Timing, A, B]:
    """Run the service call and the raw query in turn; both hop to a worker thread as the API does.

    Timed runs stop early (after at least MIN_RUNS) once they have taken `budget_s`, so a slow
    machine still finishes; the run count is reported."""
    rollup_times: list[float] = []
    raw_times: list[float] = []
    rollup_answer: A | None = None
    raw_answer: B | None = None
    timed_since = 0.0
    for index in range(warmup + runs):
        if index == warmup:
            timed_since = time.perf_counter()
        elif index > warmup and len(rollup_times) >= MIN_RUNS and time.perf_counter() - timed_since > budget_s:
            break
        began = time.perf_counter()
        rollup_answer = await rollup()
        middle = time.perf_counter()
        raw_answer = await anyio.to_thread.run_sync(raw)
        ended = time.perf_counter()
        if index >= warmup:
            rollup_times.append(middle - began)
            raw_times.append(ended - middle)
    if rollup_answer is None or raw_answer is None:
        raise RuntimeError("no runs")
    return Timing(rollup_times), Timing(raw_times), rollup_answer, raw_answer


async def ask(
    name: str,
    detail: str,
    rollup: Callable[[], Awaitable[list[Row]]],
    raw: Callable[[], list[Row]],
    args: argparse.Namespace,
    *,
    speedup_target: bool = False,
) -> Question:
    say(f"query {name}: {detail}; {args.warmup} warm-up + {args.runs} timed runs each, alternating")
    rollup_t, raw_t, rollup_answer, raw_answer = await alternate(rollup, raw, args.warmup, args.runs, args.budget)
    if len(rollup_t.seconds) < args.runs:
        say(f"query {name}: stopped after {len(rollup_t.seconds)} timed runs (--budget {args.budget:.0f}s)")
    question = Question(name, detail, rollup_t, raw_t, compare(rollup_answer, raw_answer), speedup_target)
    say(f"query {name}: rollup {rollup_t.describe()}")
    say(f"query {name}: raw    {raw_t.describe()}; raw/rollup p50 = {question.ratio:.1f}x")
    say(f"query {name}: answers {question.answer} ({len(rollup_answer) - 1} rows + total)")
    return question


@dataclass
class Refresh:
    """The cost_summaries job's first run over the loaded data."""

    seconds: float
    days: int
    rows: int


async def questions(
    db: ClickHouse, load_figures: LoadFigures, args: argparse.Namespace, loaded_at: datetime | None = None
) -> tuple[list[Question], Refresh]:
    settings = CostSettings()
    slack = timedelta(seconds=settings.summary_slack_s)
    costs = CostService(CostQueries(db), settings.max_range_days, slack)
    admin = Principal(subject="finops-bench", role=Role.ADMIN, tenant_id=None)
    # One "now" for every run, so each run asks the same question; a reused load keeps its own.
    now = loaded_at or datetime.now(UTC)
    month_ago = now - timedelta(days=30)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    tenant = load_figures.largest_tenant
    say(f"queries: now = {now.isoformat()}; tenant for by-learner: {tenant}")
    precomputed: list[str | None] = [None]

    async def by_service(start: datetime, end: datetime) -> list[Row]:
        return by_service_answer(await costs.by_service(admin, start, end, {}))

    async def by_learner() -> list[Row]:
        return by_learner_answer(await costs.by_learner(admin, month_ago, now, {"tenant_id": [tenant]}, 100, None))

    async def summary() -> list[Row]:
        start = now - timedelta(days=args.days)
        result = await costs.summary(admin, start=start, end=now, period="day", tz="UTC", values={})
        precomputed[0] = result.precomputed_until
        return summary_answer(result)

    asked = [
        await ask(
            "by-service 30d",
            "CostService.by_service, now-30d .. now (raw edges + hourly + daily)",
            lambda: by_service(month_ago, now),
            lambda: raw_by_service(db, month_ago, now),
            args,
            speedup_target=True,
        ),
        await ask(
            "by-service 30d day-aligned",
            "CostService.by_service, 30 whole UTC days (daily only)",
            lambda: by_service(midnight - timedelta(days=30), midnight),
            lambda: raw_by_service(db, midnight - timedelta(days=30), midnight),
            args,
            speedup_target=True,
        ),
        await ask(
            "by-learner top-100 30d",
            f"CostService.by_learner limit=100, tenant {tenant} ({load_figures.largest_tenant_learners:,} learners)",
            by_learner,
            lambda: raw_by_learner(db, tenant, month_ago, now, 100),
            args,
        ),
        await ask(
            f"summary day {args.days}d, rollups",
            f"CostService.summary period=day tz=UTC, now-{args.days}d .. now, before the first cost_summaries "
            "refresh (also the path for other zones and learner/region filters)",
            summary,
            lambda: raw_summary(db, now - timedelta(days=args.days), now),
            args,
        ),
    ]
    if precomputed[0] is not None:
        raise RuntimeError(f"summary read cost_summaries before any refresh (until {precomputed[0]})")

    say("cost_summaries: first refresh over the loaded data, as the service's job runs it at start-up")
    began = time.perf_counter()
    run = await anyio.to_thread.run_sync(lambda: refresh_cost_summaries(db, slack))
    refresh = Refresh(time.perf_counter() - began, run.days, run.rows)
    say(f"cost_summaries: {run.days} days, {run.rows:,} rows written in {refresh.seconds:.1f}s")

    asked.append(
        await ask(
            f"summary day {args.days}d, refreshed",
            f"CostService.summary period=day tz=UTC, now-{args.days}d .. now, after the refresh "
            "(cost_summaries for whole days, rollups for today)",
            summary,
            lambda: raw_summary(db, now - timedelta(days=args.days), now),
            args,
        )
    )
    say(f"cost_summaries: the summary read pre-computed days until {precomputed[0]}")
    if precomputed[0] is None:
        say("cost_summaries: NOTE the summary did not use cost_summaries after the refresh")
    return asked, refresh


# -- report ---------------------------------------------------------------------


def summary_table(
    load_figures: LoadFigures,
    parts: list[TableParts],
    asked: list[Question],
    refresh: Refresh,
    args: argparse.Namespace,
) -> str:
    rows: list[tuple[str, str, str, str]] = [
        (
            "load: generate + INSERT",
            f"{load_figures.rate:,.0f} ev/s",
            f"{load_figures.events:,} events in {load_figures.seconds:.1f}s",
            "",
        ),
        (
            "load: INSERT only",
            f"{load_figures.insert_rate:,.0f} ev/s",
            f"{load_figures.chunks} INSERTs through every materialized view",
            "",
        ),
    ]
    for part in parts:
        rows.append(
            (
                f"parts: {part.table}",
                f"{part.parts} active parts",
                f"{part.rows:,} rows, {part.bytes_on_disk / 2**20:,.0f} MiB",
                "",
            )
        )
    rows.append(
        (
            "cost_summaries: first refresh",
            f"{refresh.seconds:.1f} s",
            f"{refresh.days} days, {refresh.rows:,} rows",
            "",
        )
    )
    for question in asked:
        rows.append(
            (
                f"{question.name}: rollup",
                f"p50 {question.rollup.p50:.1f} ms / p95 {question.rollup.p95:.1f} ms",
                f"p95 <= {P95_TARGET_MS:.0f} ms",
                verdict(question.rollup.p95 <= P95_TARGET_MS),
            )
        )
        rows.append(
            (
                f"{question.name}: raw",
                f"p50 {question.raw.p50:.1f} ms / p95 {question.raw.p95:.1f} ms",
                f"{len(question.raw.seconds)} timed runs each",
                "",
            )
        )
        rows.append(
            (
                f"{question.name}: raw / rollup",
                f"{question.ratio:.1f}x",
                f">= {SPEEDUP_TARGET:.0f}x" if question.speedup_target else "(context)",
                verdict(question.ratio >= SPEEDUP_TARGET) if question.speedup_target else "",
            )
        )
        rows.append((f"{question.name}: answers", question.answer[:60], "rollup = raw", ""))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    rows.append(("peak memory (this process)", f"{peak:.2f} GiB", "", ""))
    return render_table(
        rows,
        f"{os.cpu_count() or 0} CPU cores; chDB embedded in this process; {load_figures.events:,} events over "
        f"{args.days} days, {len(TENANTS)} tenants, {args.learners:,} learners; rollup figures are "
        f"CostService calls (admin), the API's path minus HTTP",
    )


# -- entry point ------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=10_000_000, help="synthetic events to load")
    parser.add_argument("--days", type=int, default=90, help="days the events span, ending now")
    parser.add_argument("--runs", type=int, default=30, help="timed runs per query")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs per query first")
    parser.add_argument(
        "--budget", type=float, default=90.0, help="seconds of timed runs per question before it stops early"
    )
    parser.add_argument("--learners", type=int, default=100_000, help="distinct learners over all tenants")
    parser.add_argument("--chunk", type=int, default=500_000, help="rows per INSERT")
    parser.add_argument("--templates", type=int, default=50_000, help="distinct priced event templates")
    parser.add_argument("--seed", type=int, default=11, help="random seed")
    parser.add_argument("--keep", action="store_true", help="keep the temporary chDB directory")
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="chDB directory to keep the loaded events in and reuse on later runs (pending migrations are "
        "applied and cost_summaries is emptied; the questions use the load's 'now')",
    )
    args = parser.parse_args(argv)
    if args.events < 1 or args.days < 31 or args.runs < 1 or args.chunk < 1 or args.learners < len(TENANTS):
        parser.error("need --events >= 1, --days >= 31, --runs >= 1, --chunk >= 1, --learners >= 6")
    return args


LOADED = "loaded.json"


def reusable(workdir: Path, args: argparse.Namespace) -> dict[str, Any] | None:
    """The figures of an earlier load into `workdir` with the same options, if there is one."""
    path = workdir / LOADED
    if not path.exists():
        return None
    saved: dict[str, Any] = json.loads(path.read_text())
    same = {k: getattr(args, k) for k in ("events", "days", "learners", "templates", "seed", "chunk")}
    if saved.get("options") != same:
        raise RuntimeError(f"{path} holds a load with other options: {saved.get('options')}; use another --data")
    return saved


def remember(workdir: Path, args: argparse.Namespace, figures: LoadFigures, now: datetime) -> None:
    options = {k: getattr(args, k) for k in ("events", "days", "learners", "templates", "seed", "chunk")}
    (workdir / LOADED).write_text(
        json.dumps({"options": options, "now": now.isoformat(), "figures": dataclasses.asdict(figures)})
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = args.data or Path(tempfile.mkdtemp(prefix="finops-bench-queries-"))
    workdir.mkdir(parents=True, exist_ok=True)
    db = ClickHouse(f"chdb://{workdir.resolve() / 'ch'}", DATABASE)
    say(f"finops-svc cost-query benchmark; {'data' if args.data else 'scratch'} dir {workdir}")
    asked: list[Question] = []
    try:
        saved = reusable(workdir, args)
        say("migrate: applying pending migrations")
        applied = migrate(db)
        say(f"migrate: {len(applied)} migrations applied")
        if saved is None:
            now = datetime.now(UTC)
            now = now.replace(microsecond=now.microsecond - now.microsecond % 1000)
            load_figures = load(db, args, now)
            if args.data:
                remember(workdir, args, load_figures, now)
        else:
            now = datetime.fromisoformat(saved["now"])
            load_figures = LoadFigures(**saved["figures"])
            say(f"load: reusing {load_figures.events:,} events loaded at {now.isoformat()} (their 'now')")
            for table in ("cost_summaries", "cost_summary_runs"):
                db.command(f"TRUNCATE TABLE {table}", label="bench.reset")
        parts = table_parts(db)
        for part in parts:
            say(f"parts: {part.table}: {part.parts} active parts, {part.rows:,} rows")
        asked, refresh = asyncio.run(questions(db, load_figures, args, now if saved else None))
        parts_after = table_parts(db)
        say("parts after the queries (background merges): " + ", ".join(f"{p.table} {p.parts}" for p in parts_after))
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
    print(summary_table(load_figures, parts, asked, refresh, args), flush=True)
    say(f"done in {elapsed():.0f}s")
    mismatches = [q.name for q in asked if q.answer != "equal"]
    if mismatches:
        say(f"rollup and raw answers differ for: {', '.join(mismatches)}")
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
