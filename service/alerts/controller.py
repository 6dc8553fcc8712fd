"""POST /alerts/test: send a clearly marked test alert and answer with each channel's outcome."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

import anyio.to_thread
import msgspec
from litestar import Request, post
from litestar.di import NamedDependency
from litestar.openapi.spec import Reference

from service.alerts.channels import Channel, ChannelError, channel_key, channel_type, mask_target, targets, validate
from service.alerts.delivery import DeliveryLog
from service.alerts.notice import AlertFacts, Notice
from service.alerts.senders import Senders
from service.audit import audit_action
from service.auth.guards import principal_of, require_roles
from service.auth.principal import Principal, Role
from service.bodies import decode_body
from service.budgets.schemas import Budget
from service.budgets.service import BudgetService, problem
from service.openapi import REF_TEMPLATE, json_body_operation


class AlertTestIn(msgspec.Struct, forbid_unknown_fields=True):
    """Either a budget whose channels get the test, or channel configs to try."""

    budget_id: str | None = None
    channels: list[Channel] | None = None


class AlertTestResult(msgspec.Struct):
    type: str
    target: str
    outcome: Literal["delivered", "failed"]
    response_code: int | None
    error: str | None


class AlertTestOut(msgspec.Struct):
    test_id: str
    results: list[AlertTestResult]


_decoder = msgspec.json.Decoder(AlertTestIn)
AlertTestBody = json_body_operation("AlertTestBody", Reference(REF_TEMPLATE.format(name="AlertTestIn")))


def sample_notice(budget: Budget | None, test_id: str, dashboard_url: str) -> Notice:
    """A test notice with made-up figures: 80 % of the budget's limit (or of $100)."""
    now = datetime.now(UTC)
    limit = Decimal(budget.limit_usd) if budget else Decimal(100)
    spend = (limit * Decimal("0.8")).quantize(Decimal("0.01"))
    scope = budget.scope if budget else None
    facts = AlertFacts(
        alert_id=test_id,
        threshold_percent=80,
        kind="actual",
        spend_usd=spend,
        forecast_usd=limit,
        limit_usd=limit,
        percent_used=Decimal(80),
        tenant_id=(scope.tenant_id if scope else None) or "",
        service=(scope.service if scope else None) or "",
        learner_id=(scope.learner_id if scope else None) or "",
        period_start=now.replace(day=1, hour=0, minute=0, second=0, microsecond=0),
        period_end=now,
        created_at=now,
    )
    return Notice(
        budget_id=budget.budget_id if budget else "test",
        budget_name=budget.name if budget else "Test budget",
        tenant_id=facts.tenant_id,
        service=facts.service,
        learner_id=facts.learner_id,
        per_learner=budget.per_learner if budget else False,
        period=budget.period if budget else "monthly",
        timezone=budget.timezone if budget else "UTC",
        limit_usd=limit,
        alerts=[facts],
        dashboard_url=dashboard_url,
        test=True,
    )


def send_test(budgets: BudgetService, senders: Senders, principal: Principal, data: AlertTestIn) -> AlertTestOut:
    if (data.budget_id is None) == (data.channels is None):
        raise problem("budget_id", "give either budget_id or channels")
    budget: Budget | None = None
    if data.budget_id is not None:
        budget = budgets._visible_or_404(principal, data.budget_id)
        budgets.managed_scope(principal, budget.scope)
        channels: list[Channel] = budget.channels
        if not channels:
            raise problem("budget_id", "this budget has no channels")
    else:
        channels = data.channels or []
        if not channels:
            raise problem("channels", "at least one channel")
        try:
            validate(channels, senders.settings)
        except ChannelError as exc:
            raise problem(exc.field, exc.reason) from exc
    test_id = f"test_{uuid.uuid4().hex[:20]}"
    notice = sample_notice(budget, test_id, senders.settings.dashboard_url)
    log = DeliveryLog(budgets.store.db)
    results: list[AlertTestResult] = []
    for target in targets(channels):
        outcome = senders.send(target, notice)
        delivered = outcome.status == "delivered"
        masked = mask_target(target, senders.settings)
        log.write(
            test_id,
            channel_key(target),
            masked,
            notice.alerts,
            notice.budget_id,
            notice.tenant_id or (principal.tenant_id or ""),
            1,
            "delivered" if delivered else "failed",
            outcome,
            test=True,
        )
        results.append(
            AlertTestResult(
                type=channel_type(target),
                target=masked,
                outcome="delivered" if delivered else "failed",
                response_code=outcome.code or None,
                error=outcome.error or None,
            )
        )
    return AlertTestOut(test_id=test_id, results=results)


@post(
    "/alerts/test",
    operation_id="sendTestAlert",
    guards=[require_roles(Role.ADMIN, Role.TENANT_ADMIN)],
    status_code=200,
    tags=["alerts"],
    operation_class=AlertTestBody,
    summary="Send a test alert",
    description=(
        'Body: `{"budget_id": "..."}` to try a budget\'s channels, or `{"channels": [...]}` to try channel '
        "configs before saving them. Each channel gets one clearly marked test message (one attempt, no "
        "retries); the answer gives each channel's outcome, and the attempts are in the delivery log. "
        "Auth: bearer JWT with role `admin`, or `tenant-admin` for its tenant's budgets."
    ),
)
async def send_test_alert(
    request: Request[Any, Any, Any], budgets: NamedDependency[BudgetService], senders: NamedDependency[Senders]
) -> AlertTestOut:
    data = decode_body(_decoder, await request.body(), "test alert")
    principal = principal_of(request)
    result = await anyio.to_thread.run_sync(send_test, budgets, senders, principal, data)
    await audit_action(
        budgets.store.db,
        principal,
        "alerts.test",
        "budget" if data.budget_id else "channels",
        data.budget_id or result.test_id,
        after=result,
    )
    return result
