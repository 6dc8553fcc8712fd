"""Keeping prices current: runs of price sources, imports, the change log.

A run takes what one source fetched (`SourceResult`) and, for each price:

1. validates it — rates non-negative and finite; no unit mix-ups (a rate far
   outside what any provider charges per unit); and no absurd jump: a rate
   more than PRICING_MAX_CHANGE_FACTOR times above or below the rate in force
   now for the same (provider, model, region) is **quarantined** — logged in
   `pricing_changes` with the reason, never applied;
2. diffs it against the price in force now: the same rates change nothing; a
   new (provider, model, region) is **added**; different rates are
   **changed** — a new effective-dated row from the fetch time, so history is
   never overwritten and events keep the price of their own time;
3. records the run in `pricing_runs` and each change in `pricing_changes`.

A source that fails leaves prices as they were: the run is recorded as
failed, counted in `finops_pricing_runs_total{source, outcome="failed"}`, and
shown in GET /health. After the runs, models seen in the last week's traffic
that are still unpriced are listed, and admins are told (PRICING_ALERT_CHANNELS)
about changes, quarantines and unpriced models.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import msgspec

from service.metrics import PRICING_RUNS
from service.pricing.calculator import PriceBook
from service.pricing.catalog import (
    PRICING_COLUMNS,
    CatalogPrice,
    StoredPrice,
    check_rates,
    read_prices,
    to_row,
)
from service.pricing.catalog import (
    RATE_COLUMNS as RATE_FIELDS,
)
from service.pricing.overrides import PricingState, TenantPrices, read_overrides
from service.pricing.sources.base import SourceError, SourceResult
from service.storage.clickhouse import ClickHouse

log = logging.getLogger("finops.pricing")

# A rate outside these bounds is read in the wrong unit, not a price.
UNIT_BOUNDS = {"mtok": Decimal(10_000), "kchar": Decimal(100), "image": Decimal(100)}
RUN_COLUMNS = (
    "run_id",
    "source",
    "started_at",
    "finished_at",
    "status",
    "prices_seen",
    "added",
    "changed",
    "quarantined",
    "unchanged",
    "discovered",
    "error",
)
CHANGE_COLUMNS = (
    "run_id",
    "source",
    "change",
    "provider",
    "model",
    "region",
    "tenant_id",
    "effective_from",
    "before",
    "after",
    "reason",
    "created_at",
)


class PriceChange(msgspec.Struct):
    change: str
    provider: str
    model: str
    region: str
    effective_from: datetime
    before: dict[str, str] | None
    after: dict[str, str] | None
    reason: str


class RunReport(msgspec.Struct):
    run_id: str
    source: str
    status: str
    prices_seen: int = 0
    added: int = 0
    changed: int = 0
    quarantined: int = 0
    unchanged: int = 0
    discovered_unpriced: list[str] = msgspec.field(default_factory=list)
    problems: list[str] = msgspec.field(default_factory=list)
    error: str | None = None
    changes: list[PriceChange] = msgspec.field(default_factory=list)


def rates_of(price: CatalogPrice) -> dict[str, str]:
    """The figures that make a price what it is (not its dates, aliases or source)."""
    out = {name: format(value.normalize(), "f") for name in RATE_FIELDS if (value := getattr(price, name)) is not None}
    if price.batch_discount_pct is not None:
        out["batch_discount_pct"] = format(price.batch_discount_pct.normalize(), "f")
    if price.long_context is not None:
        lc = price.long_context
        out["long_context.threshold_tokens"] = str(lc.threshold_tokens)
        for name in (
            "input_per_mtok",
            "output_per_mtok",
            "cached_input_per_mtok",
            "input_per_kchar",
            "output_per_kchar",
            "per_image",
        ):
            if (value := getattr(lc, name)) is not None:
                out[f"long_context.{name}"] = format(value.normalize(), "f")
    return out


def _unit(name: str) -> str:
    return "kchar" if "kchar" in name else "image" if "image" in name else "mtok"


def quarantine_reason(price: CatalogPrice, current: CatalogPrice | None, factor: int) -> str | None:
    """Why a fetched price must not be applied, or None."""
    try:
        check_rates(price)
    except ValueError as exc:
        return str(exc)
    new = rates_of(price)
    if not any(k in new for k in RATE_FIELDS):
        return "no rate at all"
    for name, text in new.items():
        if name.endswith("threshold_tokens") or name == "batch_discount_pct":
            continue
        value = Decimal(text)
        bound = UNIT_BOUNDS[_unit(name)]
        if value > bound:
            return f"{name} {text} is above {bound} per unit: a unit mix-up, not a price"
    if current is None:
        return None
    old = rates_of(current)
    for name, text in new.items():
        if name not in old or name.endswith("threshold_tokens") or name == "batch_discount_pct":
            continue
        before, after = Decimal(old[name]), Decimal(text)
        if before == 0 or after == 0:
            if before != after:
                return f"{name} goes from {old[name]} to {text}"
            continue
        if after > before * factor or after * factor < before:
            return f"{name} goes from {old[name]} to {text}: more than {factor}x"
    return None


def in_force(stored: Sequence[StoredPrice], now: datetime) -> dict[tuple[str, str, str], CatalogPrice]:
    """The price in force at `now` for each (provider, model, region)."""
    current: dict[tuple[str, str, str], CatalogPrice] = {}
    for item in sorted(stored, key=lambda s: s.price.effective_from):
        price = item.price
        if price.effective_from <= now:
            current[(price.provider, price.model, price.region)] = price
    return current


def apply_prices(
    db: ClickHouse,
    source: str,
    prices: Sequence[CatalogPrice],
    factor: int,
    *,
    now: datetime | None = None,
    keep_dates: bool = False,
) -> RunReport:
    """Validate, diff and write `prices` as `source`. With `keep_dates` (imports) each price
    keeps its own effective date; else a changed price takes effect at `now`."""
    now = now or datetime.now(UTC)
    report = RunReport(run_id=f"prun_{uuid.uuid4().hex[:20]}", source=source, status="ok", prices_seen=len(prices))
    stored = read_prices(db)
    current = in_force(stored, now)
    existing_keys = {s.price.key for s in stored}
    versions = {s.price.key: s.version for s in stored}
    rows: list[list[Any]] = []
    for price in prices:
        key = (price.provider, price.model, price.region)
        before = current.get(key)
        if not keep_dates:
            price = msgspec.structs.replace(price, effective_from=max(price.effective_from, now))
            price = carry_over(price, before)
        reason = quarantine_reason(price, before, factor)
        if reason is not None:
            report.quarantined += 1
            report.changes.append(_change("quarantined", price, before, reason))
            continue
        if before is not None and rates_of(before) == rates_of(price) and not keep_dates:
            report.unchanged += 1
            continue
        if price.key in existing_keys and keep_dates:
            stored_price = next(s.price for s in stored if s.price.key == price.key)
            if rates_of(stored_price) == rates_of(price):
                report.unchanged += 1
                continue
        rows.append(to_row(price, origin=source, version=versions.get(price.key, 0) + 1))
        kind = "added" if before is None else "changed"
        if kind == "added":
            report.added += 1
        else:
            report.changed += 1
        report.changes.append(_change("imported" if keep_dates else kind, price, before, ""))
    if rows:
        db.insert("provider_pricing", rows, PRICING_COLUMNS, label="pricing.write")
    record_run(db, report, now)
    return report


def carry_over(price: CatalogPrice, before: CatalogPrice | None) -> CatalogPrice:
    """A source's price with what it does not state taken from the price in force: a map
    that lists no batch discount or cache rate does not take ours away. Aliases are merged."""
    if before is None:
        return price
    changes: dict[str, Any] = {
        name: getattr(before, name)
        for name in (*RATE_FIELDS, "batch_discount_pct", "long_context")
        if getattr(price, name) is None and getattr(before, name) is not None
    }
    aliases = sorted(set(before.aliases) | set(price.aliases))
    if aliases != sorted(price.aliases):
        changes["aliases"] = aliases
    return msgspec.structs.replace(price, **changes) if changes else price


def _change(kind: str, price: CatalogPrice, before: CatalogPrice | None, reason: str) -> PriceChange:
    return PriceChange(
        change=kind,
        provider=price.provider,
        model=price.model,
        region=price.region,
        effective_from=price.effective_from.astimezone(UTC),
        before=rates_of(before) if before is not None else None,
        after=rates_of(price),
        reason=reason,
    )


def record_run(db: ClickHouse, report: RunReport, started: datetime, tenant_id: str = "") -> None:
    finished = datetime.now(UTC)
    db.insert(
        "pricing_runs",
        [
            [
                report.run_id,
                report.source,
                started,
                finished,
                report.status,
                report.prices_seen,
                report.added,
                report.changed,
                report.quarantined,
                report.unchanged,
                len(report.discovered_unpriced),
                report.error or "",
            ]
        ],
        RUN_COLUMNS,
        label="pricing.run_log",
    )
    if report.changes:
        db.insert(
            "pricing_changes",
            [
                [
                    report.run_id,
                    report.source,
                    change.change,
                    change.provider,
                    change.model,
                    change.region,
                    tenant_id,
                    change.effective_from,
                    msgspec.json.encode(change.before).decode() if change.before is not None else "",
                    msgspec.json.encode(change.after).decode() if change.after is not None else "",
                    change.reason,
                    finished,
                ]
                for change in report.changes
            ],
            CHANGE_COLUMNS,
            label="pricing.change_log",
        )
    PRICING_RUNS.labels(report.source, report.status).inc()


def run_source(
    db: ClickHouse, name: str, fetch: Callable[[], SourceResult], factor: int, book: PriceBook | None = None
) -> RunReport:
    """Fetch one source and apply what it found; a failure changes no price."""
    started = datetime.now(UTC)
    try:
        result = fetch()
    except SourceError as exc:
        report = RunReport(run_id=f"prun_{uuid.uuid4().hex[:20]}", source=name, status="failed", error=str(exc))
        log.warning("price source %s failed; prices stay as they were: %s", name, exc)
        record_run(db, report, started)
        return report
    report = apply_prices(db, name, result.prices, factor, now=result.fetched_at)
    report.problems = list(result.problems)
    if book is not None:
        report.discovered_unpriced = sorted(
            f"{provider}/{model}"
            for provider, model in result.discovered_models
            if book.resolve_model(provider, model) is None
        )
    return report


def unpriced_in_traffic(db: ClickHouse, book: PriceBook, days: int = 7) -> list[str]:
    """Models with unpriced events in the last `days` that the current book still cannot price."""
    since = (datetime.now(UTC) - timedelta(days=days)).date()
    rows = db.query(
        "SELECT provider, model, sum(unpriced_events) AS n FROM usage_daily_totals"
        " WHERE bucket >= {since:Date} GROUP BY provider, model HAVING n > 0 ORDER BY n DESC",
        {"since": since},
        label="pricing.unpriced_traffic",
    )
    return [f"{p}/{m} ({int(n)} events)" for p, m, n in rows if book.resolve_model(p, m) is None]


def load_state(db: ClickHouse, bedrock_default_region: str = "us-east-1") -> PricingState:
    """The price book and every tenant's overrides, as stored now."""
    book = PriceBook.from_catalog(
        [(s.price, s.version) for s in read_prices(db)], bedrock_default_region=bedrock_default_region
    )
    return PricingState(book, TenantPrices(read_overrides(db), book))


def pricing_fingerprint(db: ClickHouse) -> tuple[Any, ...]:
    """Changes whenever a price or override is written (cheap: for replicas to notice)."""
    rows = db.query(
        "SELECT (SELECT count() FROM provider_pricing), (SELECT max(updated_at) FROM provider_pricing),"
        " (SELECT count() FROM pricing_overrides), (SELECT max(created_at) FROM pricing_overrides)",
        label="pricing.fingerprint",
    )
    return tuple(rows[0]) if rows else ()
