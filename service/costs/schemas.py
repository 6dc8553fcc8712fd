"""Response shapes for cost questions. Money is a decimal string."""

from __future__ import annotations

import msgspec
from msgspec import UNSET, UnsetType


class CostTotals(msgspec.Struct):
    cost_usd: str
    events: int
    unpriced_events: int
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    cache_write_tokens: int
    input_characters: int
    output_characters: int
    images: int


class CostRow(CostTotals, omit_defaults=True):
    """One group (and bucket): only the dimensions asked for appear."""

    bucket: str | UnsetType = UNSET
    tenant_id: str | UnsetType | None = UNSET
    service: str | UnsetType | None = UNSET
    learner_id: str | UnsetType | None = UNSET
    provider: str | UnsetType | None = UNSET
    model: str | UnsetType | None = UNSET
    region: str | UnsetType | None = UNSET


class CostQueryResult(msgspec.Struct):
    start: str
    end: str
    rows: list[CostRow]
    total: CostTotals
    next_cursor: str | None


class ShareRow(msgspec.Struct):
    cost_usd: str
    share_pct: str
    events: int
    input_tokens: int
    output_tokens: int


class ServiceShare(ShareRow, kw_only=True):
    service: str


class ServiceBreakdown(msgspec.Struct):
    start: str
    end: str
    services: list[ServiceShare]
    total: CostTotals


class LearnerShare(ShareRow, kw_only=True):
    learner_id: str


class LearnerBreakdown(msgspec.Struct):
    start: str
    end: str
    tenant_id: str
    learners: list[LearnerShare]
    all_others: ShareRow
    total: CostTotals


class Ranked(msgspec.Struct):
    name: str
    cost_usd: str


class PeriodSummary(msgspec.Struct):
    period_start: str
    period_end: str
    cost_usd: str
    events: int
    input_tokens: int
    output_tokens: int
    change_usd: str
    change_pct: str | None
    top_services: list[Ranked]
    top_models: list[Ranked]


class CostSummary(msgspec.Struct):
    start: str
    end: str
    period: str
    tz: str
    periods: list[PeriodSummary]
    total: CostTotals
    precomputed_until: str | None = None
    """Periods before this instant were read from cost_summaries."""
