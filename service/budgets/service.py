"""Budget rules: who may manage which budget, validation, versions, status."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import anyio.to_thread
import msgspec

from service.alerts.channels import ChannelError, keep_secrets, public
from service.alerts.channels import validate as validate_channels
from service.alerts.delivery import DeliveryLog, overall_state
from service.audit import record_audit
from service.auth.principal import Principal, Role
from service.budgets.evaluate import (
    Evaluation,
    alert_id,
    budget_window,
    evaluate,
    percent_of,
)
from service.budgets.schemas import (
    DEFAULT_THRESHOLDS,
    Alert,
    AlertPage,
    Budget,
    BudgetIn,
    BudgetPage,
    BudgetStatus,
    ChannelDelivery,
    CrossedThreshold,
    LearnerUse,
    Scope,
)
from service.budgets.store import BudgetStore, alert_from_row, decode_cursor, encode_cursor
from service.errors import Forbidden, InvalidInput, NotFound, StorageUnavailable
from service.money import money_str, parse_money
from service.settings import AlertSettings

TOP_LEARNERS = 10
MIN_LIMIT = Decimal("0.01")
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)


def problem(field: str, reason: str) -> InvalidInput:
    return InvalidInput(f"{field}: {reason}", errors=[{"field": field, "reason": reason}])


def check_budget(data: BudgetIn, alerts: AlertSettings) -> None:
    """Rules a schema cannot express; 422 naming the field."""
    try:
        validate_channels(data.channels, alerts)
    except ChannelError as exc:
        raise problem(exc.field, exc.reason) from exc
    try:
        limit = parse_money(data.limit_usd)
    except ValueError as exc:
        raise problem("limit_usd", str(exc)) from exc
    if limit < MIN_LIMIT:
        raise problem("limit_usd", f"must be at least {MIN_LIMIT}")
    try:
        ZoneInfo(data.timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise problem("timezone", f"unknown time zone {data.timezone!r}") from exc
    if data.period == "custom":
        if data.period_start is None or data.period_end is None:
            raise problem("period_start", "a custom period needs period_start and period_end")
        if data.period_start >= data.period_end:
            raise problem("period_end", "must be after period_start")
        for name, value in (("period_start", data.period_start), ("period_end", data.period_end)):
            if not EARLIEST <= value <= LATEST:
                raise problem(name, f"must be between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d}")
    elif data.period_start is not None or data.period_end is not None:
        raise problem("period_start", "only a custom period takes period_start and period_end")
    if data.per_learner and data.scope and data.scope.learner_id:
        raise problem("per_learner", "a budget for one learner cannot also apply per learner")
    thresholds = data.thresholds if data.thresholds is not None else DEFAULT_THRESHOLDS
    if not thresholds:
        raise problem("thresholds", "at least one threshold")
    if len({(t.percent, t.kind) for t in thresholds}) != len(thresholds):
        raise problem("thresholds", "each (percent, kind) at most once")


class BudgetService:
    def __init__(self, store: BudgetStore, alerts: AlertSettings | None = None) -> None:
        self.store = store
        self.alert_settings = alerts or AlertSettings()
        self.deliveries = DeliveryLog(store.db)

    # -- who may do what ------------------------------------------------------

    @staticmethod
    def managed_scope(principal: Principal, scope: Scope | None) -> Scope:
        """The scope a caller may give a budget: admins any, tenant-admins their tenant."""
        scope = scope or Scope()
        if principal.role is Role.ADMIN:
            return scope
        if principal.role is Role.TENANT_ADMIN:
            if scope.tenant_id not in (None, principal.tenant_id):
                raise Forbidden("tenant-admins manage budgets of their own tenant only")
            return Scope(tenant_id=principal.tenant_id, service=scope.service, learner_id=scope.learner_id)
        raise Forbidden(f"role {principal.role} cannot manage budgets")

    @staticmethod
    def visible(principal: Principal, budget: Budget) -> bool:
        if principal.role is Role.ADMIN:
            return True
        return principal.tenant_id is not None and budget.scope.tenant_id == principal.tenant_id

    def _visible_or_404(self, principal: Principal, budget_id: str) -> Budget:
        budget = self.store.get(budget_id)
        if budget is None or not self.visible(principal, budget):
            raise NotFound(f"budget {budget_id!r} not found")
        return budget

    # -- CRUD -----------------------------------------------------------------

    async def create(self, principal: Principal, data: BudgetIn) -> Budget:
        check_budget(data, self.alert_settings)
        scope = self.managed_scope(principal, data.scope)
        now = datetime.now(UTC)
        budget = _from_input(f"bud_{uuid.uuid4().hex[:20]}", 1, data, scope, now, principal.subject, now)

        def write() -> None:
            self.store.write(budget)
            record_audit(
                self.store.db,
                principal,
                action="budget.create",
                target_type="budget",
                target_id=budget.budget_id,
                tenant_id=scope.tenant_id,
                after=answered(budget),
            )

        await anyio.to_thread.run_sync(write)
        return answered(budget)

    async def update(self, principal: Principal, budget_id: str, data: BudgetIn) -> Budget:
        def write() -> Budget:
            current = self._visible_or_404(principal, budget_id)
            self.managed_scope(principal, current.scope)
            scope = self.managed_scope(principal, data.scope)
            data.channels = keep_secrets(data.channels, current.channels)
            check_budget(data, self.alert_settings)
            budget = _from_input(
                budget_id,
                current.version + 1,
                data,
                scope,
                current.created_at,
                current.created_by,
                datetime.now(UTC),
                updated_by=principal.subject,
            )
            self.store.write(budget)
            record_audit(
                self.store.db,
                principal,
                action="budget.update",
                target_type="budget",
                target_id=budget_id,
                tenant_id=scope.tenant_id or current.scope.tenant_id,
                before=answered(current),
                after=answered(budget),
            )
            return answered(budget)

        return await anyio.to_thread.run_sync(write)

    async def delete(self, principal: Principal, budget_id: str) -> None:
        def write() -> None:
            current = self._visible_or_404(principal, budget_id)
            self.managed_scope(principal, current.scope)
            gone = _copy(
                current, version=current.version + 1, updated_at=datetime.now(UTC), updated_by=principal.subject
            )
            self.store.write(gone, deleted=True)
            record_audit(
                self.store.db,
                principal,
                action="budget.delete",
                target_type="budget",
                target_id=budget_id,
                tenant_id=current.scope.tenant_id,
                before=answered(current),
            )

        await anyio.to_thread.run_sync(write)

    async def get(self, principal: Principal, budget_id: str) -> Budget:
        self._readable(principal)
        return answered(await anyio.to_thread.run_sync(self._visible_or_404, principal, budget_id))

    async def list(self, principal: Principal, filters: dict[str, Any], limit: int, cursor: str | None) -> BudgetPage:
        self._readable(principal)
        tenant = None if principal.role is Role.ADMIN else principal.tenant_id
        if tenant is not None and filters.get("tenant_id") not in (None, tenant):
            raise Forbidden("tenant_id filter names a tenant outside your token's tenant")
        after = decode_cursor(cursor) if cursor else None
        items = await anyio.to_thread.run_sync(
            lambda: self.store.find(tenant_visible=tenant, filters=filters, limit=limit + 1, after=after)
        )
        more = len(items) > limit
        items = [answered(b) for b in items[:limit]]
        return BudgetPage(items=items, next_cursor=encode_cursor(items[-1].budget_id) if more and items else None)

    @staticmethod
    def _readable(principal: Principal) -> None:
        if principal.role is Role.SERVICE:
            raise Forbidden("role service cannot read budgets")

    # -- status ---------------------------------------------------------------

    async def status(self, principal: Principal, budget_id: str) -> BudgetStatus:
        self._readable(principal)

        def run() -> BudgetStatus:
            budget = self._visible_or_404(principal, budget_id)
            now = datetime.now(UTC)
            window = budget_window(budget, now)
            if window is None:
                raise problem("period", "this custom budget's period is not in force now")
            evaluations, _, failed = evaluate(self.store.db, [_copy(budget, enabled=True)], now)
            if failed:
                raise StorageUnavailable("could not measure this budget's spend; retry shortly")
            limit = Decimal(budget.limit_usd)
            per_learner = budget.per_learner and not budget.scope.learner_id
            if per_learner:
                spend = sum((e.spend for e in evaluations), Decimal(0))
                projected = sum((e.forecast for e in evaluations), Decimal(0))
                most = max((e.spend for e in evaluations), default=Decimal(0))
            else:
                spend = evaluations[0].spend if evaluations else Decimal(0)
                projected = evaluations[0].forecast if evaluations else Decimal(0)
                most = spend
            alerts = {
                row["alert_id"]
                for row in self.store.alert_rows(
                    "budget_id = {id:String} AND period_start = {start:DateTime64(3, 'UTC')} AND state = 'active'",
                    {"id": budget_id, "start": window.start},
                    label="alerts.status",
                )
            }
            crossed: list[CrossedThreshold] = []
            if not per_learner and evaluations:
                for percent, kind in evaluations[0].crossed():
                    identifier = alert_id(budget, window, percent, kind, "")
                    crossed.append(CrossedThreshold(percent, kind, identifier if identifier in alerts else None))  # type: ignore[arg-type]
            top = None
            if per_learner:
                ranked = sorted(evaluations, key=lambda e: (-e.spend, e.learner))[:TOP_LEARNERS]
                top = [_learner_use(e, limit) for e in ranked]
                for e in evaluations:
                    for percent, kind in e.crossed():
                        if (percent, kind) not in {(c.percent, c.kind) for c in crossed}:
                            crossed.append(CrossedThreshold(percent, kind, None))  # type: ignore[arg-type]
            return BudgetStatus(
                budget_id=budget_id,
                period_start=window.start,
                period_end=window.end,
                spend_usd=money_str(spend),
                # per learner: the learner closest to (or furthest over) the limit
                percent_used=money_str(percent_of(most, limit)),
                remaining_usd=money_str(limit - most),
                forecast_usd=money_str(projected),
                thresholds_crossed=sorted(crossed, key=lambda c: (c.kind, c.percent)),
                top_learners=top,
            )

        return await anyio.to_thread.run_sync(run)

    # -- alerts ---------------------------------------------------------------

    async def alerts(self, principal: Principal, filters: dict[str, Any], limit: int, cursor: str | None) -> AlertPage:
        self._readable(principal)
        where = ["1"]
        params: dict[str, Any] = {}
        tenant = filters.get("tenant_id")
        if principal.role is not Role.ADMIN:
            if tenant not in (None, principal.tenant_id):
                raise Forbidden("tenant_id filter names a tenant outside your token's tenant")
            tenant = principal.tenant_id
        if tenant is not None:
            where.append("tenant_id = {tenant:String}")
            params["tenant"] = tenant
        for name, column in (("budget_id", "budget_id"), ("kind", "kind"), ("state", "state")):
            if filters.get(name):
                where.append(f"{column} = {{{name}:String}}")
                params[name] = filters[name]
        if filters.get("start"):
            where.append("created_at >= {start:DateTime64(3, 'UTC')}")
            params["start"] = filters["start"]
        if filters.get("end"):
            where.append("created_at < {end:DateTime64(3, 'UTC')}")
            params["end"] = filters["end"]
        if cursor:
            try:
                stamp, identifier = decode_cursor(cursor).split("|", 1)
                params["c_time"] = datetime.fromisoformat(stamp)
            except ValueError as exc:
                raise problem("cursor", "malformed") from exc
            where.append("(created_at, alert_id) < ({c_time:DateTime64(3, 'UTC')}, {c_id:String})")
            params["c_id"] = identifier
        params["limit"] = limit + 1
        rows = await anyio.to_thread.run_sync(
            lambda: self.store.alert_rows(
                " AND ".join(where) + " ORDER BY created_at DESC, alert_id DESC LIMIT {limit:UInt32}",
                params,
                label="alerts.list",
            )
        )
        rows = rows[:limit]
        states = await anyio.to_thread.run_sync(self.deliveries.channel_states, [row["alert_id"] for row in rows])
        items = [_with_delivery(row, states.get(row["alert_id"], {})) for row in rows]
        next_cursor = None
        if len(rows) > limit and items:
            next_cursor = encode_cursor(f"{items[-1].created_at.isoformat()}|{items[-1].alert_id}")
        return AlertPage(items=items, next_cursor=next_cursor)

    async def alert(self, principal: Principal, alert_id_: str) -> Alert:
        self._readable(principal)
        rows = await anyio.to_thread.run_sync(
            lambda: self.store.alert_rows("alert_id = {id:String}", {"id": alert_id_}, label="alerts.get")
        )
        if not rows:
            raise NotFound(f"alert {alert_id_!r} not found")
        found = alert_from_row(rows[0])
        if principal.role is not Role.ADMIN and found.tenant_id != principal.tenant_id:
            raise NotFound(f"alert {alert_id_!r} not found")
        states = await anyio.to_thread.run_sync(self.deliveries.channel_states, [alert_id_])
        return _with_delivery(rows[0], states.get(alert_id_, {}), detail=True)


def answered(budget: Budget) -> Budget:
    """A budget as responses and the audit log show it: webhook secrets masked."""
    return _copy(budget, channels=public(budget.channels))


def _with_delivery(row: dict[str, Any], states: dict[str, ChannelDelivery], *, detail: bool = False) -> Alert:
    """An alert with its delivery state worked out from the delivery log; with `detail`,
    one entry per channel (channels not yet attempted are pending)."""
    alert = alert_from_row(row)
    keys = list(row.get("channel_keys") or [])
    state = overall_state(row["delivery_state"], keys, states)
    deliveries = None
    if detail:
        deliveries = [
            states.get(key)
            or ChannelDelivery(
                channel_key=key,
                type=key.split(":", 1)[0],
                target="",
                state="pending",
                attempts=0,
                last_response_code=None,
                last_error=None,
                last_attempt_at=None,
                delivery_id=None,
                digest_size=None,
            )
            for key in keys
        ]
    return msgspec.structs.replace(alert, delivery_state=state, deliveries=deliveries)


def _learner_use(evaluation: Evaluation, limit: Decimal) -> LearnerUse:
    return LearnerUse(
        learner_id=evaluation.learner,
        spend_usd=money_str(evaluation.spend),
        percent_used=money_str(percent_of(evaluation.spend, limit)),
        forecast_usd=money_str(evaluation.forecast),
    )


def _from_input(
    budget_id: str,
    version: int,
    data: BudgetIn,
    scope: Scope,
    created_at: datetime,
    created_by: str,
    updated_at: datetime,
    updated_by: str | None = None,
) -> Budget:
    return Budget(
        budget_id=budget_id,
        version=version,
        name=data.name,
        scope=scope,
        per_learner=data.per_learner,
        period=data.period,
        timezone=data.timezone,
        period_start=data.period_start.astimezone(UTC) if data.period_start else None,
        period_end=data.period_end.astimezone(UTC) if data.period_end else None,
        limit_usd=money_str(parse_money(data.limit_usd)),
        thresholds=list(data.thresholds if data.thresholds is not None else DEFAULT_THRESHOLDS),
        channels=data.channels,
        enabled=data.enabled,
        created_at=created_at,
        created_by=created_by,
        updated_at=updated_at,
        updated_by=updated_by or created_by,
    )


def _copy(budget: Budget, **changes: Any) -> Budget:
    return msgspec.structs.replace(budget, **changes)
