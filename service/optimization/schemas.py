"""Response shapes for optimization suggestions. Money is a decimal string."""

from __future__ import annotations

from typing import Literal

import msgspec

Kind = Literal["model_selection", "batch_processing", "token_optimization", "provider_switching", "usage_patterns"]
Confidence = Literal["high", "medium", "low"]
Figure = str | int


class SuggestionScope(msgspec.Struct, omit_defaults=True):
    """What the suggestion is about: always one tenant; the other fields narrow it."""

    tenant_id: str
    service: str | None = None
    learner_id: str | None = None
    provider: str | None = None
    model: str | None = None
    region: str | None = None


class EvidenceQuery(msgspec.Struct):
    """The `/costs/query` request whose answer holds the evidence's volumes and costs."""

    path: str
    params: dict[str, str]


class Suggestion(msgspec.Struct):
    id: str
    """Stable: the same finding for the same scope keeps its id across refreshes."""
    kind: Kind
    rule: str
    scope: SuggestionScope
    title: str
    explanation: str
    evidence: dict[str, Figure]
    """Volumes, averages and the prices used; money and rates are decimal strings."""
    estimated_monthly_savings_usd: str
    confidence: Confidence
    query: EvidenceQuery


class SuggestionList(msgspec.Struct):
    tenant_id: str | None
    service: str | None
    window_days: int
    window_start: str
    window_end: str
    computed_at: str
    source: Literal["cache", "computed"]
    """`cache`: read from `optimization_suggestions`; `computed`: computed for this request."""
    fresh_until: str
    """The cache serves this answer until then at the latest (sooner if prices change or new events arrive)."""
    suggestions: list[Suggestion]
    """Ranked by savings. Each is estimated on its own: two suggestions about the same traffic do not add up."""


class RefreshResult(msgspec.Struct):
    window_days: int
    computed_at: str
    tenants: int
    suggestions: int
    seconds: float
