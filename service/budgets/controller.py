"""HTTP routes for budgets and their alerts."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, delete, get, post, put
from litestar.di import NamedDependency
from litestar.openapi.spec import Reference
from litestar.params import FromPath, FromQuery, QueryParameter
from litestar.status_codes import HTTP_201_CREATED, HTTP_204_NO_CONTENT

from service.audit import audit_action
from service.auth.guards import principal_of, require_roles
from service.auth.principal import READERS, Role
from service.bodies import decode_body
from service.budgets.schemas import (
    Alert,
    AlertPage,
    Budget,
    BudgetIn,
    BudgetPage,
    BudgetStatus,
    EvaluationRun,
)
from service.budgets.service import BudgetService
from service.budgets.watch import BudgetWatch
from service.openapi import REF_TEMPLATE, json_body_operation
from service.queue import Jobs
from service.storage.clickhouse import ClickHouse

MANAGE = "Auth: bearer JWT with role `admin` (any budget) or `tenant-admin` (its tenant's budgets)."
READ = "Auth: bearer JWT with role `admin` (every budget), `tenant-admin` or `user` (its tenant's budgets)."
BudgetBody = json_body_operation("BudgetBody", Reference(REF_TEMPLATE.format(name="BudgetIn")))
_decoder = msgspec.json.Decoder(BudgetIn)


def decode_budget(body: bytes) -> BudgetIn:
    return decode_body(_decoder, body, "budget")


class BudgetController(Controller):
    path = "/budgets"
    tags = ["budgets"]

    @post(
        "/",
        operation_id="createBudget",
        guards=[require_roles(Role.ADMIN, Role.TENANT_ADMIN)],
        status_code=HTTP_201_CREATED,
        operation_class=BudgetBody,
        summary="Create a budget",
        description=(
            "An empty or absent scope means global (admins only); `per_learner` applies the limit to each "
            "learner in the scope; `period_start`/`period_end` only for `custom`. Thresholds default to 50, 80 "
            "and 100 % actual and 100 % forecast. " + MANAGE
        ),
    )
    async def create(
        self,
        request: Request[Any, Any, Any],
        budgets: NamedDependency[BudgetService],
        watch: NamedDependency[BudgetWatch],
    ) -> Budget:
        budget = await budgets.create(principal_of(request), decode_budget(await request.body()))
        watch.changed()
        return budget

    @get(
        "/",
        operation_id="listBudgets",
        guards=[require_roles(*READERS)],
        summary="List budgets",
        description=(
            "Filters: `scope` (global, tenant, service, learner), `tenant_id`, `service`, `learner_id`, "
            "`status` (enabled, disabled). " + READ
        ),
    )
    async def list_budgets(
        self,
        request: Request[Any, Any, Any],
        budgets: NamedDependency[BudgetService],
        scope_kind: Annotated[
            Literal["global", "tenant", "service", "learner"] | None, QueryParameter(name="scope")
        ] = None,
        tenant_id: FromQuery[str | None] = None,
        service: FromQuery[str | None] = None,
        learner_id: FromQuery[str | None] = None,
        status: FromQuery[Literal["enabled", "disabled"] | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
        cursor: FromQuery[str | None] = None,
    ) -> BudgetPage:
        filters = {
            "scope": scope_kind,
            "tenant_id": tenant_id,
            "service": service,
            "learner_id": learner_id,
            "status": status,
        }
        return await budgets.list(principal_of(request), filters, limit, cursor)

    @get(
        "/{budget_id:str}",
        operation_id="getBudget",
        guards=[require_roles(*READERS)],
        summary="One budget",
        description="404 when it does not exist or is outside your tenant. " + READ,
    )
    async def get_budget(
        self, request: Request[Any, Any, Any], budgets: NamedDependency[BudgetService], budget_id: FromPath[str]
    ) -> Budget:
        return await budgets.get(principal_of(request), budget_id)

    @put(
        "/{budget_id:str}",
        operation_id="updateBudget",
        guards=[require_roles(Role.ADMIN, Role.TENANT_ADMIN)],
        operation_class=BudgetBody,
        summary="Replace a budget (a new version)",
        description="The budget's alerts are re-evaluated against the new limit. " + MANAGE,
    )
    async def update(
        self,
        request: Request[Any, Any, Any],
        budgets: NamedDependency[BudgetService],
        watch: NamedDependency[BudgetWatch],
        budget_id: FromPath[str],
    ) -> Budget:
        budget = await budgets.update(principal_of(request), budget_id, decode_budget(await request.body()))
        watch.changed()
        return budget

    @delete(
        "/{budget_id:str}",
        operation_id="deleteBudget",
        guards=[require_roles(Role.ADMIN, Role.TENANT_ADMIN)],
        status_code=HTTP_204_NO_CONTENT,
        summary="Delete a budget (a deleted version)",
        description="Its active alerts are resolved by the next evaluation. " + MANAGE,
    )
    async def remove(
        self,
        request: Request[Any, Any, Any],
        budgets: NamedDependency[BudgetService],
        watch: NamedDependency[BudgetWatch],
        budget_id: FromPath[str],
    ) -> None:
        await budgets.delete(principal_of(request), budget_id)
        watch.changed()

    @get(
        "/{budget_id:str}/status",
        operation_id="budgetStatus",
        guards=[require_roles(*READERS)],
        summary="Spend, forecast and thresholds crossed in the current period",
        description=(
            "Forecast: spend so far plus the time left at a rate blending the period's average with the last "
            "three days', half each. Per-learner budgets list their top learners. " + READ
        ),
    )
    async def status(
        self, request: Request[Any, Any, Any], budgets: NamedDependency[BudgetService], budget_id: FromPath[str]
    ) -> BudgetStatus:
        return await budgets.status(principal_of(request), budget_id)


class AlertController(Controller):
    path = "/alerts"
    tags = ["alerts"]
    guards = [require_roles(*READERS)]

    @get(
        "/",
        operation_id="listAlerts",
        summary="Budget alerts, newest first",
        description="Filters: `budget_id`, `tenant_id`, `kind`, `state`, `start`, `end` (creation time). " + READ,
    )
    async def list_alerts(
        self,
        request: Request[Any, Any, Any],
        budgets: NamedDependency[BudgetService],
        budget_id: FromQuery[str | None] = None,
        tenant_id: FromQuery[str | None] = None,
        kind: FromQuery[Literal["actual", "forecast"] | None] = None,
        alert_state: Annotated[Literal["active", "resolved"] | None, QueryParameter(name="state")] = None,
        start: FromQuery[datetime | None] = None,
        end: FromQuery[datetime | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
        cursor: FromQuery[str | None] = None,
    ) -> AlertPage:
        filters = {
            "budget_id": budget_id,
            "tenant_id": tenant_id,
            "kind": kind,
            "state": alert_state,
            "start": start,
            "end": end,
        }
        return await budgets.alerts(principal_of(request), filters, limit, cursor)

    @get(
        "/{alert_id:str}",
        operation_id="getAlert",
        summary="One alert",
        description="404 when it does not exist or is outside your tenant. " + READ,
    )
    async def get_alert(
        self, request: Request[Any, Any, Any], budgets: NamedDependency[BudgetService], alert_id: FromPath[str]
    ) -> Alert:
        return await budgets.alert(principal_of(request), alert_id)


@post(
    "/budgets/evaluate",
    operation_id="evaluateBudgets",
    guards=[require_roles(Role.ADMIN)],
    status_code=200,
    tags=["budgets"],
    summary="Evaluate every budget now",
    description=(
        "Runs the evaluation pass (it also runs every BUDGET_CHECK_INTERVAL seconds and after ingest touches a "
        "budget's scope). Auth: bearer JWT with role `admin`."
    ),
)
async def evaluate_now(
    request: Request[Any, Any, Any], jobs: NamedDependency[Jobs], db: NamedDependency[ClickHouse]
) -> EvaluationRun:
    run = msgspec.convert(await jobs.run("evaluate_budgets"), EvaluationRun)
    await audit_action(db, principal_of(request), "budgets.evaluate", "budgets", "*", after=run)
    return run
