"""HTTP routes for optimization suggestions."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Request, get, post
from litestar.di import NamedDependency
from litestar.params import FromQuery, QueryParameter

from service.audit import audit_action
from service.auth.guards import principal_of, require_roles
from service.auth.principal import READERS, Role
from service.optimization.schemas import RefreshResult, SuggestionList
from service.optimization.service import OptimizationService
from service.queue import Jobs
from service.storage.clickhouse import ClickHouse

JOB = "optimization_suggestions"


@get(
    "/costs/optimization-suggestions",
    operation_id="optimizationSuggestions",
    guards=[require_roles(*READERS)],
    tags=["costs"],
    summary="Ranked ways to spend less, each with its evidence and estimated monthly savings",
    description=(
        "Suggestions of five kinds (model_selection, batch_processing, token_optimization, provider_switching, "
        "usage_patterns) over the last `window_days` (default 30), ranked by `estimated_monthly_savings_usd` "
        "(a decimal string: list prices in force now, scaled to 30 days). Each names its scope, the evidence "
        "figures and the `/costs/query` parameters that reproduce them. `service` narrows the answer to "
        "suggestions about that service. Answered from the cache while it is fresh (`source`, `computed_at`, "
        "`fresh_until`), else computed now. Auth: bearer JWT with role `admin` (every tenant, or one with "
        "`tenant_id`), `tenant-admin` or `user` (their own tenant only)."
    ),
)
async def optimization_suggestions(
    request: Request[Any, Any, Any],
    optimization: NamedDependency[OptimizationService],
    tenant_id: FromQuery[str | None] = None,
    service: FromQuery[str | None] = None,
    window_days: Annotated[int | None, QueryParameter(ge=1, le=366)] = None,
) -> SuggestionList:
    return await optimization.suggestions(principal_of(request), tenant_id or None, service, window_days)


@post(
    "/costs/optimization-suggestions/refresh",
    operation_id="refreshOptimizationSuggestions",
    guards=[require_roles(Role.ADMIN)],
    status_code=200,
    tags=["costs"],
    summary="Recompute every tenant's optimization suggestions now",
    description=(
        "Runs the refresh job (which also runs every OPTIMIZATION_REFRESH_INTERVAL seconds) for the default window "
        "and answers what it did. Auth: bearer JWT with role `admin`."
    ),
)
async def refresh_optimization_suggestions(
    request: Request[Any, Any, Any], jobs: NamedDependency[Jobs], db: NamedDependency[ClickHouse]
) -> RefreshResult:
    result = msgspec.convert(await jobs.run(JOB), RefreshResult)
    await audit_action(db, principal_of(request), "optimization.refresh", "optimization_suggestions", "*", after=result)
    return result
