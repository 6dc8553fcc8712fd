"""Budget and alert shapes (msgspec Structs). Money is a decimal string."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

from service.alerts.channels import Channel

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f]+$")]
PeriodName = Literal["daily", "weekly", "monthly", "quarterly", "yearly", "custom"]
ThresholdKind = Literal["actual", "forecast"]


class Threshold(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    percent: Annotated[int, msgspec.Meta(ge=1, le=1000)]
    kind: ThresholdKind = "actual"


DEFAULT_THRESHOLDS = [
    Threshold(50, "actual"),
    Threshold(80, "actual"),
    Threshold(100, "actual"),
    Threshold(100, "forecast"),
]


class Scope(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Empty means global; set fields narrow the budget (any combination)."""

    tenant_id: Name | None = None
    service: Name | None = None
    learner_id: Name | None = None


class BudgetIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    limit_usd: str
    scope: Scope | None = None
    per_learner: bool = False
    period: PeriodName = "monthly"
    timezone: str = "UTC"
    period_start: Annotated[datetime, msgspec.Meta(tz=True)] | None = None
    period_end: Annotated[datetime, msgspec.Meta(tz=True)] | None = None
    thresholds: Annotated[list[Threshold], msgspec.Meta(max_length=20)] | None = None
    channels: Annotated[list[Channel], msgspec.Meta(max_length=20)] = msgspec.field(default_factory=list)
    enabled: bool = True


class Budget(msgspec.Struct, kw_only=True):
    budget_id: str
    version: int
    name: str
    scope: Scope
    per_learner: bool
    period: PeriodName
    timezone: str
    period_start: datetime | None
    period_end: datetime | None
    limit_usd: str
    thresholds: list[Threshold]
    channels: list[Channel]
    enabled: bool
    created_at: datetime
    created_by: str
    updated_at: datetime
    updated_by: str


class BudgetPage(msgspec.Struct):
    items: list[Budget]
    next_cursor: str | None


class CrossedThreshold(msgspec.Struct):
    percent: int
    kind: ThresholdKind
    alert_id: str | None


class LearnerUse(msgspec.Struct):
    learner_id: str
    spend_usd: str
    percent_used: str
    forecast_usd: str


class BudgetStatus(msgspec.Struct):
    budget_id: str
    period_start: datetime
    period_end: datetime
    spend_usd: str
    percent_used: str
    remaining_usd: str
    forecast_usd: str
    thresholds_crossed: list[CrossedThreshold]
    top_learners: list[LearnerUse] | None = None


class Alert(msgspec.Struct, kw_only=True):
    alert_id: str
    budget_id: str
    budget_name: str
    tenant_id: str | None
    scope: Scope
    period_start: datetime
    period_end: datetime
    threshold_percent: int
    kind: ThresholdKind
    spend_usd: str
    forecast_usd: str
    limit_usd: str
    percent_used: str
    state: Literal["active", "resolved"]
    delivery_state: Literal["pending", "delivered", "failed", "no_channels"]
    created_at: datetime
    updated_at: datetime
    deliveries: list[ChannelDelivery] | None = None


class ChannelDelivery(msgspec.Struct):
    """Where one channel's delivery of an alert stands (GET /alerts/{alert_id})."""

    channel_key: str
    type: str
    target: str
    state: Literal["pending", "retrying", "delivered", "failed"]
    attempts: int
    last_response_code: int | None
    last_error: str | None
    last_attempt_at: datetime | None
    delivery_id: str | None
    digest_size: int | None


class AlertPage(msgspec.Struct):
    items: list[Alert]
    next_cursor: str | None


class EvaluationRun(msgspec.Struct):
    budgets: int
    queries: int
    fired: int
    resolved: int
    seconds: float
    deliveries_started: int = 0
