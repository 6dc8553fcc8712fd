"""Business gauges read from ClickHouse, so every replica exports the same values.

Refreshed every METRICS_REFRESH_INTERVAL seconds by each API process and
served from the last snapshot on each scrape:

- `finops_total_cost_usd`: every priced event so far.
- `finops_cost_by_provider_usd{provider}`, `finops_cost_by_service_usd{service}`:
  the same split by provider and by service (label sets bounded by what the
  platform calls).
- `finops_tokens_total{kind}`: input, output, cached input and cache-write tokens.
- `finops_cost_by_learner_usd{tenant_id, learner_id}`: this UTC month's top
  METRICS_LEARNER_TOP_N learners (none by default: learner ids are unbounded).
- `finops_budget_percentage_used{budget_id, name}`: the METRICS_BUDGET_TOP_N
  most used budgets in their current period (per-learner budgets: the learner
  nearest its limit, among learners near any threshold).
- `finops_budget_alerts_active{kind}`: active alerts of current periods.

Values stay exact decimals here; the Prometheus client writes them out in its
text format, which carries floats.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

from prometheus_client.core import REGISTRY, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from service.budgets.evaluate import evaluate, per_learner, percent_of
from service.budgets.store import BudgetStore
from service.settings import OperationsSettings
from service.storage.clickhouse import ClickHouse

log = logging.getLogger("finops.metrics")
TOKEN_KINDS = ("input_tokens", "output_tokens", "cached_input_tokens", "cache_write_tokens")


@dataclass
class Snapshot:
    total: Decimal = Decimal(0)
    by_provider: dict[str, Decimal] = field(default_factory=dict)
    by_service: dict[str, Decimal] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    by_learner: list[tuple[str, str, Decimal]] = field(default_factory=list)
    budgets: list[tuple[str, str, Decimal]] = field(default_factory=list)
    alerts_active: dict[str, int] = field(default_factory=dict)


def read_snapshot(db: ClickHouse, settings: OperationsSettings, now: datetime | None = None) -> Snapshot:
    now = now or datetime.now(UTC)
    snap = Snapshot()
    sums = ", ".join(f"sum({kind})" for kind in TOKEN_KINDS)
    rows = db.query(
        f"SELECT provider, service, sum(cost_usd), {sums} FROM usage_daily_totals GROUP BY provider, service",
        label="metrics.totals",
    )
    snap.tokens = dict.fromkeys(TOKEN_KINDS, 0)
    for provider, service, cost, *tokens in rows:
        snap.total += cost
        snap.by_provider[provider] = snap.by_provider.get(provider, Decimal(0)) + cost
        snap.by_service[service] = snap.by_service.get(service, Decimal(0)) + cost
        for kind, count in zip(TOKEN_KINDS, tokens, strict=True):
            snap.tokens[kind] += int(count)
    if settings.metrics_learner_top_n > 0:
        month = datetime(now.year, now.month, 1, tzinfo=UTC)
        snap.by_learner = [
            (row[0], row[1], row[2])
            for row in db.query(
                "SELECT tenant_id, learner_id, sum(cost_usd) AS cost FROM usage_daily"
                " WHERE bucket >= {month:Date} AND learner_id != '' GROUP BY tenant_id, learner_id"
                " ORDER BY cost DESC, tenant_id, learner_id LIMIT {n:UInt32}",
                {"month": month.date(), "n": settings.metrics_learner_top_n},
                label="metrics.learners",
            )
        ]
    if settings.metrics_budget_top_n > 0:
        budgets = BudgetStore(db).find(tenant_visible=None, filters={"status": "enabled"})
        learners = [b for b in budgets if per_learner(b)]
        whole = [b for b in budgets if not per_learner(b)]
        # every whole budget; of per-learner ones only learners near a threshold (there may be 100,000)
        evaluations = evaluate(db, whole, now)[0] + evaluate(db, learners, now, crossing_only=True)[0]
        most: dict[str, tuple[str, Decimal]] = {}
        for e in evaluations:
            used = percent_of(e.spend, e.limit)
            if e.budget.budget_id not in most or used > most[e.budget.budget_id][1]:
                most[e.budget.budget_id] = (e.budget.name, used)
        ranked = sorted(most.items(), key=lambda item: (-item[1][1], item[0]))[: settings.metrics_budget_top_n]
        snap.budgets = [(budget_id, name, used) for budget_id, (name, used) in ranked]
    snap.alerts_active = {
        str(kind): int(count)
        for kind, count in db.query(
            "SELECT kind, count() FROM budget_alerts FINAL"
            " WHERE state = 'active' AND period_end > {now:DateTime64(3, 'UTC')} GROUP BY kind",
            {"now": now},
            label="metrics.alerts",
        )
    }
    return snap


class BusinessCollector(Collector):
    """Serves the last snapshot; one per process, registered on import."""

    def __init__(self) -> None:
        self.snapshot: Snapshot | None = None
        self.lock = threading.Lock()

    def update(self, snapshot: Snapshot) -> None:
        with self.lock:
            self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        with self.lock:
            snap = self.snapshot
        if snap is None:
            return
        total = GaugeMetricFamily("finops_total_cost_usd", "Cost of every priced event so far, in USD.")
        total.add_metric([], snap.total)  # type: ignore[arg-type]  # the library turns it into text
        yield total
        yield _family(
            "finops_cost_by_provider_usd",
            "Cost so far by provider, in USD.",
            ["provider"],
            (([p], v) for p, v in sorted(snap.by_provider.items())),
        )
        yield _family(
            "finops_cost_by_service_usd",
            "Cost so far by service, in USD.",
            ["service"],
            (([s], v) for s, v in sorted(snap.by_service.items())),
        )
        tokens = GaugeMetricFamily("finops_tokens_total", "Tokens so far by kind.", labels=["kind"])
        for kind, count in snap.tokens.items():
            tokens.add_metric([kind.removesuffix("_tokens")], count)
        yield tokens
        yield _family(
            "finops_cost_by_learner_usd",
            "This UTC month's cost of the top learners, in USD.",
            ["tenant_id", "learner_id"],
            (([t, learner], v) for t, learner, v in snap.by_learner),
        )
        yield _family(
            "finops_budget_percentage_used",
            "Percent of its limit each budget has used this period.",
            ["budget_id", "name"],
            (([b, n], v) for b, n, v in snap.budgets),
        )
        active = GaugeMetricFamily("finops_budget_alerts_active", "Active alerts of current periods.", labels=["kind"])
        for kind in ("actual", "forecast"):
            active.add_metric([kind], snap.alerts_active.get(kind, 0))
        yield active


def _family(name: str, doc: str, labels: list[str], samples: Iterable[tuple[list[str], Decimal]]) -> Metric:
    family = GaugeMetricFamily(name, doc, labels=labels)
    for values, value in samples:
        family.add_metric(values, value)  # type: ignore[arg-type]
    return family


COLLECTOR = BusinessCollector()
REGISTRY.register(COLLECTOR)


def refresh(db: ClickHouse, settings: OperationsSettings) -> dict[str, int]:
    """The refresh job: read a new snapshot and serve it."""
    snap = read_snapshot(db, settings)
    COLLECTOR.update(snap)
    return {"providers": len(snap.by_provider), "services": len(snap.by_service), "budgets": len(snap.budgets)}
