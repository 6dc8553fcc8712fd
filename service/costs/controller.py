"""HTTP routes for cost questions."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Annotated, Any

import anyio.to_thread
from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from litestar.params import FromQuery, QueryParameter
from litestar.response import Stream

from service.auth.guards import principal_of, require_roles
from service.auth.principal import READERS, Role
from service.costs.periods import Period
from service.costs.plan import Granularity
from service.costs.query import COUNTS, CostQueries
from service.costs.schemas import CostQueryResult, CostSummary, LearnerBreakdown, ServiceBreakdown
from service.costs.service import CostService, check_group_by, problem, row_out, split_values
from service.costs.summaries import RefreshRun
from service.jobs import JobRunner
from service.money import money_str

AUTH = "Auth: bearer JWT with role `admin` (every tenant), `tenant-admin` or `user` (their own tenant only)."
RANGE = (
    "`start` and `end` are RFC 3339 instants; the range is half-open [start, end) and defaults to the "
    "last 30 days. Money is a decimal string."
)

Values = FromQuery[list[str] | None]


def dimension_values(**values: list[str] | None) -> dict[str, list[str]]:
    return {name: split_values(given) for name, given in values.items() if given}


def wants_csv(request: Request[Any, Any, Any], fmt: str | None) -> bool:
    if fmt is not None:
        return fmt.lower() == "csv"
    return "text/csv" in request.headers.get("accept", "")


class CostController(Controller):
    path = "/costs"
    tags = ["costs"]
    guards = [require_roles(*READERS)]

    @get(
        "/query",
        operation_id="queryCosts",
        summary="Costs grouped by any dimension and time bucket",
        description=(
            "Rows per group (`group_by`: tenant_id, service, learner_id, provider, model, region) and "
            "bucket (`granularity`: none, hour, day, week, month in the IANA zone `tz`), with every count "
            "and the unpriced event count; `total` covers the whole filtered range, not just the page. "
            "Filters repeat for several values. `format=csv` or `Accept: text/csv` streams every row as CSV. "
            + RANGE
            + " "
            + AUTH
        ),
    )
    async def query(
        self,
        request: Request[Any, Any, Any],
        costs: NamedDependency[CostService],
        queries: NamedDependency[CostQueries],
        start: FromQuery[datetime | None] = None,
        end: FromQuery[datetime | None] = None,
        group_by: Values = None,
        granularity: FromQuery[Granularity] = "none",
        tz: FromQuery[str] = "UTC",
        tenant_id: Values = None,
        service: Values = None,
        learner_id: Values = None,
        provider: Values = None,
        model: Values = None,
        region: Values = None,
        order_by: FromQuery[str] = "cost",
        limit: Annotated[int, QueryParameter(ge=1, le=10000)] = 100,
        cursor: FromQuery[str | None] = None,
        format: FromQuery[str | None] = None,
    ) -> CostQueryResult | Stream:
        values = dimension_values(
            tenant_id=tenant_id,
            service=service,
            learner_id=learner_id,
            provider=provider,
            model=model,
            region=region,
        )
        groups = check_group_by(group_by)
        principal = principal_of(request)
        if wants_csv(request, format):
            filters, zone = costs.export_filter(principal, start, end, tz, values, order_by)
            rows = await anyio.to_thread.run_sync(
                lambda: queries.grouped(filters, groups, granularity, tz, order_by=order_by, label="costs.csv")
            )
            header = [*(["bucket"] if granularity != "none" else []), *groups, "cost_usd", *COUNTS]

            def lines() -> Iterator[str]:
                buffer = io.StringIO()
                writer = csv.writer(buffer)
                writer.writerow(header)
                for row in rows:
                    shaped = row_out(row, zone)
                    writer.writerow(
                        [
                            *([shaped.bucket] if granularity != "none" else []),
                            *(row.keys[g] or "" for g in groups),
                            money_str(row.cost_usd),
                            *(row.counts[c] for c in COUNTS),
                        ]
                    )
                    if buffer.tell() > 65536:
                        yield buffer.getvalue()
                        buffer.seek(0)
                        buffer.truncate()
                yield buffer.getvalue()

            async def chunks() -> AsyncIterator[bytes]:
                for text in lines():
                    yield text.encode()

            return Stream(
                chunks(),
                media_type="text/csv; charset=utf-8",
                # Litestar prefers the handler's JSON media type over the response's own
                headers={
                    "Content-Type": "text/csv; charset=utf-8",
                    "Content-Disposition": 'attachment; filename="costs.csv"',
                },
            )
        return await costs.query(
            principal,
            start=start,
            end=end,
            group_by=groups,
            granularity=granularity,
            tz=tz,
            values=values,
            order_by=order_by,
            limit=limit,
            cursor=cursor,
        )

    @get(
        "/summary",
        operation_id="costSummary",
        summary="Cost per day, week or month with change against the previous period",
        description=(
            "Each period (calendar-aligned in `tz`; the first starts at the period containing `start`, "
            "the last is cut at `end`) with cost, events, tokens, the change against the period before in "
            "dollars and percent (null when the previous period cost nothing), and its top five services "
            "and models. " + RANGE + " " + AUTH
        ),
    )
    async def summary(
        self,
        request: Request[Any, Any, Any],
        costs: NamedDependency[CostService],
        period: FromQuery[Period] = "day",
        start: FromQuery[datetime | None] = None,
        end: FromQuery[datetime | None] = None,
        tz: FromQuery[str] = "UTC",
        tenant_id: Values = None,
        service: Values = None,
        learner_id: Values = None,
        provider: Values = None,
        model: Values = None,
        region: Values = None,
    ) -> CostSummary:
        if period not in ("day", "week", "month"):
            raise problem("period", "use day, week or month")
        values = dimension_values(
            tenant_id=tenant_id,
            service=service,
            learner_id=learner_id,
            provider=provider,
            model=model,
            region=region,
        )
        return await costs.summary(principal_of(request), start=start, end=end, period=period, tz=tz, values=values)

    @get(
        "/by-service",
        operation_id="costsByService",
        summary="Services ranked by cost, with their share of the total",
        description=RANGE + " " + AUTH,
    )
    async def by_service(
        self,
        request: Request[Any, Any, Any],
        costs: NamedDependency[CostService],
        start: FromQuery[datetime | None] = None,
        end: FromQuery[datetime | None] = None,
        tenant_id: Values = None,
        service: Values = None,
        learner_id: Values = None,
        provider: Values = None,
        model: Values = None,
        region: Values = None,
    ) -> ServiceBreakdown:
        values = dimension_values(
            tenant_id=tenant_id,
            service=service,
            learner_id=learner_id,
            provider=provider,
            model=model,
            region=region,
        )
        return await costs.by_service(principal_of(request), start, end, values)

    @get(
        "/by-learner",
        operation_id="costsByLearner",
        summary="A tenant's top learners by cost, plus all others",
        description=(
            "The `limit` learners with the highest cost (ties by learner id), each with its share of the "
            "tenant's total, and one `all_others` row for everything else (other learners and events without "
            "a learner). `q` narrows the ranking to learner ids containing it. Admins name the tenant with "
            "`tenant_id`. " + RANGE + " " + AUTH
        ),
    )
    async def by_learner(
        self,
        request: Request[Any, Any, Any],
        costs: NamedDependency[CostService],
        start: FromQuery[datetime | None] = None,
        end: FromQuery[datetime | None] = None,
        tenant_id: Values = None,
        service: Values = None,
        provider: Values = None,
        model: Values = None,
        region: Values = None,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 10,
        q: FromQuery[str | None] = None,
    ) -> LearnerBreakdown:
        values = dimension_values(tenant_id=tenant_id, service=service, provider=provider, model=model, region=region)
        return await costs.by_learner(principal_of(request), start, end, values, limit, q)


@post(
    "/costs/summaries/refresh",
    operation_id="refreshCostSummaries",
    guards=[require_roles(Role.ADMIN)],
    status_code=200,
    tags=["costs"],
    summary="Refresh cost_summaries now",
    description=(
        "Recomputes the pre-computed UTC periods touched by events received since the last refresh (the job also "
        "runs every COST_AGGREGATION_INTERVAL seconds). Answers what the run did. Auth: bearer JWT with role `admin`."
    ),
)
async def refresh_summaries(jobs: NamedDependency[JobRunner]) -> RefreshRun:
    result: RefreshRun = await jobs.run("cost_summaries")
    return result
