"""HTTP routes for cost questions."""

from __future__ import annotations

import csv
import io
import queue
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import anyio.to_thread
import msgspec
from litestar import Controller, Request, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromQuery, QueryParameter
from litestar.response import Stream

from service.audit import audit_action
from service.auth.guards import principal_of, require_roles
from service.auth.principal import READERS, Role
from service.costs.periods import Period
from service.costs.plan import Granularity
from service.costs.query import COUNTS, CostQueries, CostRow
from service.costs.schemas import CostQueryResult, CostSummary, LearnerBreakdown, ServiceBreakdown
from service.costs.service import CostService, check_group_by, problem, split_values
from service.costs.summaries import RefreshRun
from service.money import money_str
from service.queue import Jobs
from service.storage.clickhouse import ClickHouse

AUTH = "Auth: bearer JWT with role `admin` (every tenant), `tenant-admin` or `user` (their own tenant only)."
RANGE = (
    "`start` and `end` are RFC 3339 instants; the range is half-open [start, end) and defaults to the "
    "last 30 days. Money is a decimal string."
)

Values = FromQuery[list[str] | None]


def dimension_values(
    tenant_id: Values = None,
    service: Values = None,
    learner_id: Values = None,
    provider: Values = None,
    model: Values = None,
    region: Values = None,
) -> dict[str, list[str]]:
    """Filters on every dimension, each repeatable or comma-separated (a dependency of every cost route)."""
    given = {
        "tenant_id": tenant_id,
        "service": service,
        "learner_id": learner_id,
        "provider": provider,
        "model": model,
        "region": region,
    }
    return {name: split_values(values) for name, values in given.items() if values}


def wants_csv(request: Request[Any, Any, Any], fmt: str | None) -> bool:
    if fmt is not None:
        return fmt.lower() == "csv"
    return "text/csv" in request.headers.get("accept", "")


async def csv_chunks(
    blocks: Iterator[list[CostRow]], groups: list[str], granularity: Granularity, zone: ZoneInfo
) -> AsyncIterator[bytes]:
    """CSV text as ClickHouse sends row blocks. One thread reads the blocks (a
    ClickHouse stream belongs to the thread that opened it) and hands CSV chunks
    over a small bounded queue, so a slow client slows the read, not memory."""
    chunks: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=4)
    stop = threading.Event()

    def produce() -> None:
        try:
            buffer = io.StringIO()
            writer = csv.writer(buffer)
            writer.writerow([*(["bucket"] if granularity != "none" else []), *groups, "cost_usd", *COUNTS])
            for block in blocks:
                for row in block:
                    bucket = [datetime.fromtimestamp(row.bucket, zone).isoformat()] if row.bucket is not None else []
                    keys = [row.keys[g] or "" for g in groups]
                    writer.writerow([*bucket, *keys, money_str(row.cost_usd), *(row.counts[c] for c in COUNTS)])
                chunks.put(buffer.getvalue().encode())
                buffer.seek(0)
                buffer.truncate()
                if stop.is_set():
                    return
            chunks.put(buffer.getvalue().encode())
        except BaseException as exc:  # handed to the response, which ends the body early
            chunks.put(exc)
        finally:
            close = getattr(blocks, "close", None)
            if close is not None:
                close()
            chunks.put(None)

    reader = threading.Thread(target=produce, name="costs-csv", daemon=True)
    reader.start()
    try:
        while (chunk := await anyio.to_thread.run_sync(chunks.get)) is not None:
            if isinstance(chunk, BaseException):
                raise chunk
            if chunk:
                yield chunk
    finally:
        stop.set()
        while reader.is_alive():  # let the reader see `stop` and release its ClickHouse client
            try:
                chunks.get_nowait()
            except queue.Empty:
                await anyio.sleep(0.01)


class CostController(Controller):
    path = "/costs"
    tags = ["costs"]
    guards = [require_roles(*READERS)]
    dependencies = {"values": Provide(dimension_values, sync_to_thread=False)}

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
        values: NamedDependency[dict[str, list[str]]],
        queries: NamedDependency[CostQueries],
        start: FromQuery[datetime | None] = None,
        end: FromQuery[datetime | None] = None,
        group_by: Values = None,
        granularity: FromQuery[Granularity] = "none",
        tz: FromQuery[str] = "UTC",
        order_by: FromQuery[str] = "cost",
        limit: Annotated[int, QueryParameter(ge=1, le=10000)] = 100,
        cursor: FromQuery[str | None] = None,
        format: FromQuery[str | None] = None,
    ) -> CostQueryResult | Stream:
        groups = check_group_by(group_by)
        principal = principal_of(request)
        if wants_csv(request, format):
            filters, zone = costs.export_filter(principal, start, end, tz, values, order_by)
            blocks = queries.stream_grouped(filters, groups, granularity, tz, order_by=order_by)
            return Stream(
                csv_chunks(blocks, groups, granularity, zone),
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
        values: NamedDependency[dict[str, list[str]]],
        period: FromQuery[Period] = "day",
        start: FromQuery[datetime | None] = None,
        end: FromQuery[datetime | None] = None,
        tz: FromQuery[str] = "UTC",
    ) -> CostSummary:
        if period not in ("day", "week", "month"):
            raise problem("period", "use day, week or month")
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
        values: NamedDependency[dict[str, list[str]]],
        start: FromQuery[datetime | None] = None,
        end: FromQuery[datetime | None] = None,
    ) -> ServiceBreakdown:
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
        values: NamedDependency[dict[str, list[str]]],
        start: FromQuery[datetime | None] = None,
        end: FromQuery[datetime | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 10,
        q: FromQuery[str | None] = None,
    ) -> LearnerBreakdown:
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
async def refresh_summaries(
    request: Request[Any, Any, Any], jobs: NamedDependency[Jobs], db: NamedDependency[ClickHouse]
) -> RefreshRun:
    run = msgspec.convert(await jobs.run("cost_summaries"), RefreshRun)
    await audit_action(db, principal_of(request), "costs.summaries.refresh", "cost_summaries", "*", after=run)
    return run
