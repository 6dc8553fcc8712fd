"""Cost questions: validation, the rollup queries, and shaping the answers."""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import anyio.to_thread
import msgspec

from service.auth.principal import Principal, Role
from service.costs.periods import Period, next_period, period_start, previous_period
from service.costs.plan import UTC_NAMES, Granularity
from service.costs.query import COUNTS, DIMENSIONS, ORDERS, CostFilter, CostQueries, CostRow, PeriodRow, Totals
from service.costs.schemas import (
    CostQueryResult,
    CostSummary,
    CostTotals,
    LearnerBreakdown,
    LearnerShare,
    PeriodSummary,
    Ranked,
    ServiceBreakdown,
    ServiceShare,
    ShareRow,
)
from service.costs.schemas import CostRow as CostRowOut
from service.costs.summaries import DEFAULT_SLACK
from service.errors import InvalidInput
from service.money import money_str

HUNDRED = Decimal(100)
SUMMARY_DIMENSIONS = frozenset({"tenant_id", "service", "provider", "model"})
TWO_PLACES = Decimal("0.01")
TOP_N = 5


def problem(field: str, reason: str) -> InvalidInput:
    return InvalidInput(f"{field}: {reason}", errors=[{"field": field, "reason": reason}])


def parse_zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise problem("tz", f"unknown time zone {tz!r} (use an IANA name such as Europe/Paris)") from exc


@dataclass(frozen=True)
class Range:
    start: datetime
    end: datetime


def check_range(start: datetime | None, end: datetime | None, max_days: int, default_days: int = 30) -> Range:
    """A half-open [start, end) in UTC; defaults to the last `default_days` days."""
    for name, value in (("start", start), ("end", end)):
        if value is not None and value.tzinfo is None:
            raise problem(name, "needs a UTC offset or Z (RFC 3339)")
    end_utc = (end or datetime.now(UTC)).astimezone(UTC)
    start_utc = (start or end_utc - timedelta(days=default_days)).astimezone(UTC)
    if start_utc >= end_utc:
        raise problem("end", "must be after start")
    if end_utc - start_utc > timedelta(days=max_days):
        raise problem("start", f"range is longer than the maximum of {max_days} days")
    return Range(start_utc, end_utc)


def split_values(values: Sequence[str] | None) -> list[str]:
    """Repeated parameters, each possibly comma-separated."""
    out: list[str] = []
    for value in values or []:
        out.extend(part.strip() for part in value.split(",") if part.strip())
    return out


def check_group_by(values: Sequence[str] | None) -> list[str]:
    groups = split_values(values)
    for group in groups:
        if group not in DIMENSIONS:
            raise problem("group_by", f"unknown group {group!r}; use any of {', '.join(DIMENSIONS)}")
    return list(dict.fromkeys(groups))


def totals_out(totals: Totals) -> CostTotals:
    return CostTotals(cost_usd=money_str(totals.cost_usd), **totals.counts)


def pct(part: Decimal, whole: Decimal) -> str:
    if whole.is_zero():
        return "0"
    return money_str((part / whole * HUNDRED).quantize(TWO_PLACES, rounding=ROUND_HALF_EVEN))


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


# -- cursors -----------------------------------------------------------------


def encode_cursor(offset: int, fingerprint: str) -> str:
    return base64.urlsafe_b64encode(msgspec.json.encode([offset, fingerprint])).decode().rstrip("=")


def decode_cursor(cursor: str, fingerprint: str) -> int:
    try:
        offset, seen = msgspec.json.decode(
            base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)), type=tuple[int, str]
        )
    except (binascii.Error, msgspec.DecodeError, ValueError) as exc:
        raise problem("cursor", "malformed") from exc
    if seen != fingerprint or offset < 0:
        raise problem("cursor", "belongs to a different query")
    return offset


def fingerprint(*parts: Any) -> str:
    return hashlib.sha256(msgspec.json.encode(parts)).hexdigest()[:16]


class CostService:
    def __init__(self, queries: CostQueries, max_range_days: int, summary_slack: timedelta = DEFAULT_SLACK) -> None:
        self.queries = queries
        self.max_range_days = max_range_days
        self.summary_slack = summary_slack

    def cost_filter(
        self, principal: Principal, start: datetime | None, end: datetime | None, values: dict[str, list[str]]
    ) -> CostFilter:
        """The filter with the caller's tenant scope applied (403 for another tenant)."""
        tenants = values.get("tenant_id") or []
        if principal.role is not Role.ADMIN:
            for tenant in tenants:
                principal.read_scope(tenant)
        scope = principal.read_scope(tenants[0] if len(tenants) == 1 else None)
        span = check_range(start, end, self.max_range_days)
        return CostFilter(scope=scope, start=span.start, end=span.end, values=values)

    async def query(
        self,
        principal: Principal,
        *,
        start: datetime | None,
        end: datetime | None,
        group_by: list[str],
        granularity: Granularity,
        tz: str,
        values: dict[str, list[str]],
        order_by: str,
        limit: int,
        cursor: str | None,
    ) -> CostQueryResult:
        zone = parse_zone(tz)
        if order_by not in ORDERS:
            raise problem("order_by", f"use one of {', '.join(ORDERS)}")
        filters = self.cost_filter(principal, start, end, values)
        key = fingerprint(
            filters.start.isoformat(),
            filters.end.isoformat(),
            group_by,
            granularity,
            tz,
            values,
            order_by,
            filters.scope.tenant_id,
        )
        offset = decode_cursor(cursor, key) if cursor else 0

        def run() -> tuple[list[CostRow], Totals]:
            rows = self.queries.grouped(
                filters, group_by, granularity, tz, order_by=order_by, limit=limit + 1, offset=offset
            )
            return rows, self.queries.total(filters)

        rows, totals = await anyio.to_thread.run_sync(run)
        more = len(rows) > limit
        return CostQueryResult(
            start=iso(filters.start),
            end=iso(filters.end),
            rows=[row_out(row, zone) for row in rows[:limit]],
            total=totals_out(totals),
            next_cursor=encode_cursor(offset + limit, key) if more else None,
        )

    def export_filter(
        self,
        principal: Principal,
        start: datetime | None,
        end: datetime | None,
        tz: str,
        values: dict[str, list[str]],
        order_by: str,
    ) -> tuple[CostFilter, ZoneInfo]:
        """The checked filter and zone for a CSV export of every row."""
        zone = parse_zone(tz)
        if order_by not in ORDERS:
            raise problem("order_by", f"use one of {', '.join(ORDERS)}")
        return self.cost_filter(principal, start, end, values), zone

    async def by_service(
        self, principal: Principal, start: datetime | None, end: datetime | None, values: dict[str, list[str]]
    ) -> ServiceBreakdown:
        filters = self.cost_filter(principal, start, end, values)

        rows = await anyio.to_thread.run_sync(lambda: self.queries.grouped(filters, ["service"], "none", "UTC"))
        totals = add(Totals(Decimal(0), dict.fromkeys(COUNTS, 0)), *rows)  # every row is there: no limit
        return ServiceBreakdown(
            start=iso(filters.start),
            end=iso(filters.end),
            services=[
                ServiceShare(service=row.keys["service"] or "", **share(row.cost_usd, row.counts, totals.cost_usd))
                for row in rows
            ],
            total=totals_out(totals),
        )

    async def by_learner(
        self,
        principal: Principal,
        start: datetime | None,
        end: datetime | None,
        values: dict[str, list[str]],
        limit: int,
        search: str | None,
    ) -> LearnerBreakdown:
        tenants = values.get("tenant_id") or []
        if principal.role is Role.ADMIN and len(tenants) != 1:
            raise problem("tenant_id", "name exactly one tenant")
        filters = self.cost_filter(principal, start, end, values)
        tenant = filters.scope.tenant_id or tenants[0]
        filters.values = {**values, "tenant_id": [tenant]}
        ranked = CostFilter(filters.scope, filters.start, filters.end, dict(filters.values), search or None)

        def run() -> tuple[list[CostRow], Totals]:
            if ranked.learner_search is None:  # the ranking and the total in one query
                return self.queries.ranked_with_total(filters, "learner_id", limit + 1, narrow=True)
            rows = self.queries.grouped(ranked, ["learner_id"], "none", "UTC", limit=limit + 1)
            return rows, self.queries.total(filters)

        rows, totals = await anyio.to_thread.run_sync(run)
        top = [row for row in rows if row.keys["learner_id"]][:limit]
        top_cost = sum((row.cost_usd for row in top), Decimal(0))
        rest_counts = {name: totals.counts[name] - sum(row.counts[name] for row in top) for name in COUNTS}
        return LearnerBreakdown(
            start=iso(filters.start),
            end=iso(filters.end),
            tenant_id=tenant,
            learners=[
                LearnerShare(
                    learner_id=row.keys["learner_id"] or "",
                    **share(row.cost_usd, row.counts, totals.cost_usd),
                )
                for row in top
            ],
            all_others=ShareRow(**share(totals.cost_usd - top_cost, rest_counts, totals.cost_usd)),
            total=totals_out(totals),
        )

    async def summary(
        self,
        principal: Principal,
        *,
        start: datetime | None,
        end: datetime | None,
        period: Period,
        tz: str,
        values: dict[str, list[str]],
    ) -> CostSummary:
        zone = parse_zone(tz)
        filters = self.cost_filter(principal, start, end, values)
        first = period_start(filters.start, period, zone)
        begins = [first]
        while (following := next_period(begins[-1], period, zone)) < filters.end:
            begins.append(following)
        # whole periods from the one before `first` (for the change); the last is cut at `end`
        before = previous_period(first, period, zone)
        granularity: Granularity = period  # type: ignore[assignment]

        # Whole UTC periods that ended before the last summary refresh come from
        # cost_summaries, the rest (and every other zone or filter) from the rollups:
        # one query for the sums and top services and models of every period.
        precomputed = tz in UTC_NAMES and set(filters.values) <= SUMMARY_DIMENSIONS
        answer, split = await anyio.to_thread.run_sync(
            lambda: self.queries.summary_periods(
                CostFilter(filters.scope, before, filters.end, filters.values),
                granularity,
                tz,
                period,
                TOP_N,
                self.summary_slack if precomputed else None,
            )
        )
        by_bucket = {row.bucket: row for row in answer}
        totals = add(
            Totals(Decimal(0), dict.fromkeys(COUNTS, 0)), *(r for r in answer if r.bucket >= int(first.timestamp()))
        )
        periods = []
        prior = by_bucket.get(int(before.timestamp()))
        for begin in begins:
            found = by_bucket.get(int(begin.timestamp()))
            cost = found.cost_usd if found else Decimal(0)
            prior_cost = prior.cost_usd if prior else Decimal(0)
            change = cost - prior_cost
            periods.append(
                PeriodSummary(
                    period_start=begin.astimezone(zone).isoformat(),
                    period_end=min(next_period(begin, period, zone), filters.end).astimezone(zone).isoformat(),
                    cost_usd=money_str(cost),
                    events=found.counts["events"] if found else 0,
                    input_tokens=found.counts["input_tokens"] if found else 0,
                    output_tokens=found.counts["output_tokens"] if found else 0,
                    change_usd=money_str(change),
                    change_pct=None if prior_cost.is_zero() else pct(change, prior_cost),
                    top_services=[Ranked(name, money_str(spent)) for name, spent in found.top_services]
                    if found
                    else [],
                    top_models=[Ranked(name, money_str(spent)) for name, spent in found.top_models] if found else [],
                )
            )
            prior = found
        return CostSummary(
            start=iso(first),
            end=iso(filters.end),
            period=period,
            tz=tz,
            periods=periods,
            total=totals_out(totals),
            precomputed_until=iso(split) if split > before else None,
        )


def add(totals: Totals, *more: Totals | CostRow | PeriodRow) -> Totals:
    cost = totals.cost_usd + sum((m.cost_usd for m in more), Decimal(0))
    counts = {name: totals.counts[name] + sum(m.counts[name] for m in more) for name in COUNTS}
    return Totals(cost, counts)


def share(cost: Decimal, counts: dict[str, int], total: Decimal) -> dict[str, Any]:
    return {
        "cost_usd": money_str(cost),
        "share_pct": pct(cost, total),
        "events": counts["events"],
        "input_tokens": counts["input_tokens"],
        "output_tokens": counts["output_tokens"],
    }


def row_out(row: CostRow, zone: ZoneInfo) -> CostRowOut:
    fields: dict[str, Any] = {**row.keys, **row.counts, "cost_usd": money_str(row.cost_usd)}
    if row.bucket is not None:
        fields["bucket"] = datetime.fromtimestamp(row.bucket, zone).isoformat()
    return CostRowOut(**fields)
