"""Repricing: correct the costs of stored events when prices change, keeping rollups right.

`usage_events` stays append-only. For each usage event in the range (and
filters) that the service priced — not those whose caller gave the cost —
the current cost is its stored cost plus every correction already written
for it; the new cost is what the prices in force at the event's time (with
the tenant's overrides) say now. When they differ, one correction row is
appended: `record_type = 'correction'`, `corrects_event_id` = the event,
the event's dimensions and time (so it lands in the same rollup buckets),
zero counts, and `cost_usd` = the difference. An event stored unpriced that
can now be priced gets a correction marked `resolves_unpriced`, which also
takes it out of the unpriced counts. The materialized views fold corrections
into every rollup, so cost queries, summaries and budgets see corrected
totals. Running the same repricing again finds nothing to correct.
"""

from __future__ import annotations

import hashlib
import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import msgspec

from service.pricing.overrides import PricingState
from service.storage.clickhouse import ClickHouse, as_utc
from service.usage.ingest import EVENT_COLUMNS, INSERT_SETTINGS

CHUNK = 5000
COLUMNS = (*EVENT_COLUMNS, "record_type", "corrects_event_id")
_lock = threading.Lock()  # one repricing at a time in a process: two would both correct the same events


class RepriceIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    start: datetime
    end: datetime
    provider: str | None = None
    model: str | None = None
    tenant_id: str | None = None


class TenantDelta(msgspec.Struct):
    tenant_id: str
    events: int
    cost_delta_usd: str


class RepriceSummary(msgspec.Struct):
    start: datetime
    end: datetime
    events_examined: int
    events_corrected: int
    unpriced_resolved: int
    cost_delta_usd: str
    by_tenant: list[TenantDelta]


@dataclass(slots=True)
class _Usage:
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    cache_write_tokens: int
    input_characters: int
    output_characters: int
    images: int
    batch: bool


def _money(value: Decimal) -> str:
    return "0" if value.is_zero() else format(value.normalize(), "f")


def reprice(
    db: ClickHouse,
    pricing: PricingState,
    request: RepriceIn,
    progress: Callable[[int], None] | None = None,
) -> RepriceSummary:
    """Write the corrections `request` calls for; `progress` gets the events examined so far."""
    if request.end <= request.start:
        raise ValueError("end must be after start")
    where = [
        "e.record_type = 'usage'",
        "e.pricing_status != 'provided'",
        "e.event_time >= {start:DateTime64(3, 'UTC')}",
        "e.event_time < {end:DateTime64(3, 'UTC')}",
    ]
    inner = [
        "record_type = 'correction'",
        "event_time >= {start:DateTime64(3, 'UTC')}",
        "event_time < {end:DateTime64(3, 'UTC')}",
    ]
    params: dict[str, Any] = {"start": request.start, "end": request.end}
    for name in ("provider", "model", "tenant_id"):
        value = getattr(request, name)
        if value:
            where.append(f"e.{name} = {{{name}:String}}")
            inner.append(f"{name} = {{{name}:String}}")
            params[name] = value
    sql = (
        "SELECT e.event_id, e.event_time, e.tenant_id, e.service, e.learner_id, e.provider, e.model, e.region,"
        " e.input_tokens, e.output_tokens, e.cached_input_tokens, e.cache_write_tokens, e.input_characters,"
        " e.output_characters, e.images, e.batch, e.cost_usd, toString(e.pricing_status),"
        " ifNull(c.delta, toDecimal128(0, 12)), ifNull(c.resolved, 0)"
        " FROM usage_events AS e LEFT JOIN ("
        "   SELECT tenant_id, corrects_event_id AS event_id, toDecimal128(sum(cost_usd), 12) AS delta,"
        "          max(metadata['resolves_unpriced'] = '1') AS resolved"
        f"   FROM usage_events WHERE {' AND '.join(inner)} GROUP BY tenant_id, event_id"
        " ) AS c ON c.tenant_id = e.tenant_id AND c.event_id = e.event_id"
        f" WHERE {' AND '.join(where)}"
    )
    examined = corrected = resolved = 0
    total = Decimal(0)
    by_tenant: dict[str, list[Any]] = defaultdict(lambda: [0, Decimal(0)])
    now = datetime.now(UTC)
    pending: list[list[Any]] = []
    with _lock:
        with db.stream_rows(sql, params, label="pricing.reprice_scan") as blocks:
            for block in blocks:
                for row in block:
                    examined += 1
                    correction = _correction(pricing, row, now)
                    if correction is not None:
                        pending.append(correction)
                        corrected += 1
                        delta = correction[COLUMNS.index("cost_usd")]
                        total += delta
                        by_tenant[row[2]][0] += 1
                        by_tenant[row[2]][1] += delta
                        resolved += correction[COLUMNS.index("metadata")].get("resolves_unpriced") == "1"
                if progress is not None:
                    progress(examined)
        for i in range(0, len(pending), CHUNK):
            db.insert(
                "usage_events", pending[i : i + CHUNK], COLUMNS, label="pricing.reprice_write", settings=INSERT_SETTINGS
            )
    return RepriceSummary(
        start=request.start,
        end=request.end,
        events_examined=examined,
        events_corrected=corrected,
        unpriced_resolved=resolved,
        cost_delta_usd=_money(total),
        by_tenant=[TenantDelta(t, n, _money(d)) for t, (n, d) in sorted(by_tenant.items())],
    )


def _correction(pricing: PricingState, row: Any, now: datetime) -> list[Any] | None:
    event_id, when, tenant, service, learner, provider, model, region = row[:8]
    stored, status, delta, was_resolved = row[16], row[17], row[18], bool(row[19])
    when = as_utc(when)
    counts = [int(n) for n in row[8:15]]
    usage = _Usage(counts[0], counts[1], counts[2], counts[3], counts[4], counts[5], counts[6], bool(row[15]))
    cost, version = pricing.cost(tenant, provider, model, region or None, when, usage)
    if cost is None:
        return None  # still cannot price it: leave it as it is
    unpriced = status == "unpriced" and not was_resolved
    current = (stored or Decimal(0)) + delta
    if not unpriced and cost == current:
        return None
    difference = cost - current
    digest = hashlib.sha256(f"{tenant}|{event_id}|{cost}|{version}|{current}".encode()).hexdigest()[:24]
    return [
        f"corr_{digest}",
        when,
        now,
        tenant,
        service,
        learner,
        provider,
        model,
        region,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        False,
        difference,
        "priced",
        version or "",
        {"resolves_unpriced": "1"} if unpriced else {},
        "correction",
        event_id,
    ]
