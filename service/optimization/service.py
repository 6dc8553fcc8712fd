"""Optimization suggestions: computing them, caching them, and answering from the cache while it is fresh.

A run computes every suggestion of one tenant, or of every tenant, over the
`window_days` ending at the next whole hour, and stores them with the run
(`store.py`). The job runs it for every tenant and the default window every
OPTIMIZATION_REFRESH_INTERVAL seconds; a request the cache cannot answer
computes its own run (for its tenant, or every tenant for an admin without
`tenant_id`) and stores it for the next request.

A request reads the newest run that covers it (its tenant's own run, or a run
for every tenant) unless that run is stale:

- it is older than OPTIMIZATION_MAX_AGE seconds (the window has slid), or
- a price was added or changed after it was computed, or
- it is older than OPTIMIZATION_NEW_EVENTS_GRACE seconds and an event in the
  request's tenant (any tenant for a global request) was received after it was
  computed (less COST_SUMMARY_SLACK_SECONDS for writes in flight), per the
  daily rollup's `last_received_at` for the days of its window.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import anyio.to_thread

from service.auth.principal import Principal, TenantScope
from service.errors import InvalidInput
from service.optimization.analysis import analyse, iso, rank
from service.optimization.data import read_window
from service.optimization.pricing import Prices
from service.optimization.schemas import RefreshResult, Suggestion, SuggestionList
from service.optimization.store import (
    ALL_TENANTS,
    Run,
    last_received,
    latest_run,
    prices_changed,
    read_suggestions,
    write_run,
)
from service.pricing.catalog import read_prices
from service.settings import OptimizationSettings, Settings
from service.storage.clickhouse import ClickHouse

HOUR = timedelta(hours=1)


def window_for(now: datetime, window_days: int) -> tuple[datetime, datetime]:
    """[start, end): `window_days` days ending at the next whole hour (whole hours read only rollups)."""
    floored = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    end = floored if floored == now else floored + HOUR
    return end - timedelta(days=window_days), end


@dataclass(frozen=True)
class Computed:
    run: Run
    suggestions: list[Suggestion]
    seconds: float


class OptimizationService:
    def __init__(self, db: ClickHouse, settings: Settings, optimization: OptimizationSettings) -> None:
        self.db = db
        self.settings = settings
        self.optimization = optimization
        self.slack = timedelta(seconds=settings.costs.summary_slack_s)

    def compute(self, scope: TenantScope, window_days: int) -> Computed:
        """Every suggestion in `scope` over the window ending now, stored as a run."""
        started = time.perf_counter()
        now = datetime.now(UTC)
        computed_at = now.replace(microsecond=now.microsecond // 1000 * 1000)  # stored to the millisecond
        start, end = window_for(computed_at, window_days)
        prices = Prices(read_prices(self.db), computed_at, self.settings.ingest.bedrock_default_region)
        data = read_window(self.db, scope, start, end, prices.long_context_thresholds)
        suggestions = analyse(data, prices, window_days)
        run = Run(window_days, scope.tenant_id or ALL_TENANTS, computed_at, start, end)
        seconds = round(time.perf_counter() - started, 3)
        write_run(self.db, run, suggestions, seconds)
        return Computed(run, suggestions, seconds)

    def refresh(self, window_days: int | None = None) -> RefreshResult:
        """The job: recompute every tenant's suggestions for the default window."""
        done = self.compute(TenantScope(None), window_days or self.optimization.default_window_days)
        return RefreshResult(
            window_days=done.run.window_days,
            computed_at=iso(done.run.computed_at),
            tenants=len({s.scope.tenant_id for s in done.suggestions}),
            suggestions=len(done.suggestions),
            seconds=done.seconds,
        )

    def fresh_run(self, tenant_id: str | None, window_days: int, now: datetime) -> Run | None:
        """The newest run covering `tenant_id` (None: every tenant), unless it is stale."""
        scopes = [ALL_TENANTS] if tenant_id is None else [tenant_id, ALL_TENANTS]
        run = latest_run(self.db, window_days, scopes)
        if run is None:
            return None
        age = now - run.computed_at
        if age > timedelta(seconds=self.optimization.max_age_s):
            return None
        changed = prices_changed(self.db)
        if changed is not None and changed > run.computed_at:
            return None
        if age > timedelta(seconds=self.optimization.new_events_grace_s):
            received = last_received(self.db, tenant_id, run.window_start.date())
            if received is not None and received >= run.computed_at - self.slack:
                return None
        return run

    def answer(self, tenant_id: str | None, service: str | None, window_days: int) -> SuggestionList:
        """From the cache when fresh, else computed now (and cached)."""
        now = datetime.now(UTC)
        run = self.fresh_run(tenant_id, window_days, now)
        source: Literal["cache", "computed"] = "cache"
        if run is not None:
            suggestions = read_suggestions(self.db, run, tenant_id, service)
        else:
            done = self.compute(TenantScope(tenant_id), window_days)
            run = done.run
            suggestions = [s for s in done.suggestions if service is None or s.scope.service == service]
            source = "computed"
        return SuggestionList(
            tenant_id=tenant_id,
            service=service,
            window_days=window_days,
            window_start=iso(run.window_start),
            window_end=iso(run.window_end),
            computed_at=iso(run.computed_at),
            source=source,
            fresh_until=iso(run.computed_at + timedelta(seconds=self.optimization.max_age_s)),
            suggestions=rank(suggestions),
        )

    async def suggestions(
        self, principal: Principal, tenant_id: str | None, service: str | None, window_days: int | None
    ) -> SuggestionList:
        """The caller's suggestions: admins any tenant (or all), others their own tenant only (403 otherwise)."""
        scope = principal.read_scope(tenant_id)
        days = window_days or self.optimization.default_window_days
        if days > self.settings.costs.max_range_days:
            raise InvalidInput(
                f"window_days: at most {self.settings.costs.max_range_days}",
                errors=[{"field": "window_days", "reason": f"at most {self.settings.costs.max_range_days}"}],
            )
        return await anyio.to_thread.run_sync(lambda: self.answer(scope.tenant_id, service or None, days))
