"""Price management routes: read prices and their changes; admins import, override, update, reprice."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import anyio.to_thread
import msgspec
from litestar import Controller, Request, get, post, put
from litestar.di import NamedDependency
from litestar.openapi.spec import Reference
from litestar.params import FromQuery, QueryParameter

from service.audit import audit_action
from service.auth.guards import principal_of, require_roles
from service.auth.principal import READERS, Role
from service.bodies import decode_body
from service.errors import Forbidden, InvalidInput
from service.openapi import REF_TEMPLATE, json_body_operation
from service.pricing.overrides import Override, OverrideIn, check_override, read_overrides, write_override
from service.pricing.reprice import RepriceIn, RepriceSummary
from service.pricing.service import PricingService, UpdateRun
from service.pricing.sources.base import SourceError
from service.pricing.updates import RunReport
from service.storage.clickhouse import as_utc

ADMIN = "Auth: bearer JWT with role `admin`."
READ = "Auth: bearer JWT with role `admin`, `tenant-admin` or `user`."
_override = msgspec.json.Decoder(OverrideIn)
_reprice = msgspec.json.Decoder(RepriceIn)
OverrideBody = json_body_operation("OverrideBody", Reference(REF_TEMPLATE.format(name="OverrideIn")))
RepriceBody = json_body_operation("RepriceBody", Reference(REF_TEMPLATE.format(name="RepriceIn")))


class PriceChangeRow(msgspec.Struct):
    run_id: str
    source: str
    change: str
    provider: str
    model: str
    region: str
    tenant_id: str | None
    effective_from: datetime
    before: dict[str, str] | None
    after: dict[str, str] | None
    reason: str | None
    created_at: datetime


class PricingRun(msgspec.Struct):
    run_id: str
    source: str
    started_at: datetime
    finished_at: datetime
    status: str
    prices_seen: int
    added: int
    changed: int
    quarantined: int
    unchanged: int
    discovered: int
    error: str | None


class PricingController(Controller):
    path = "/pricing"
    tags = ["pricing"]

    @get(
        "/",
        operation_id="listPrices",
        guards=[require_roles(*READERS)],
        summary="Prices in force",
        description=(
            "The price in force at `at` (default now) for each provider, model and region; filters "
            "`provider`, `model`, `region`. Rates are USD decimal strings per unit named by the field. " + READ
        ),
    )
    async def list_prices(
        self,
        pricing: NamedDependency[PricingService],
        provider: FromQuery[str | None] = None,
        model: FromQuery[str | None] = None,
        region: FromQuery[str | None] = None,
        at: FromQuery[datetime | None] = None,
    ) -> dict[str, Any]:
        filters = {"provider": provider, "model": model, "region": region, "at": at}
        items = await anyio.to_thread.run_sync(pricing.prices, filters)
        return {"at": (at or datetime.now(UTC)).isoformat(), "items": items}

    @get(
        "/changes",
        operation_id="listPriceChanges",
        guards=[require_roles(*READERS)],
        summary="Price changes, newest first",
        description=(
            "Every price a source run or import added, changed or quarantined (with the reason), and every "
            "tenant override. Filters `source`, `provider`, `model`, `change`, `start`, `end`. " + READ
        ),
    )
    async def changes(
        self,
        pricing: NamedDependency[PricingService],
        source: FromQuery[str | None] = None,
        provider: FromQuery[str | None] = None,
        model: FromQuery[str | None] = None,
        change: FromQuery[Literal["added", "changed", "quarantined", "imported", "override"] | None] = None,
        start: FromQuery[datetime | None] = None,
        end: FromQuery[datetime | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
    ) -> list[PriceChangeRow]:
        where: list[str] = ["1"]
        params: dict[str, Any] = {"limit": limit}
        for name, value in (("source", source), ("provider", provider), ("model", model), ("change", change)):
            if value:
                where.append(f"{name} = {{{name}:String}}")
                params[name] = value
        if start:
            where.append("created_at >= {start:DateTime64(3, 'UTC')}")
            params["start"] = start
        if end:
            where.append("created_at < {end:DateTime64(3, 'UTC')}")
            params["end"] = end
        rows = await anyio.to_thread.run_sync(
            lambda: pricing.db.query_dicts(
                "SELECT run_id, source, toString(change) AS change, provider, model, region, tenant_id,"
                " effective_from, before, after, reason, created_at FROM pricing_changes"
                f" WHERE {' AND '.join(where)} ORDER BY created_at DESC, provider, model LIMIT {{limit:UInt32}}",
                params,
                label="pricing.changes",
            )
        )
        return [
            PriceChangeRow(
                run_id=r["run_id"],
                source=r["source"],
                change=r["change"],
                provider=r["provider"],
                model=r["model"],
                region=r["region"],
                tenant_id=r["tenant_id"] or None,
                effective_from=as_utc(r["effective_from"]),
                before=msgspec.json.decode(r["before"]) if r["before"] else None,
                after=msgspec.json.decode(r["after"]) if r["after"] else None,
                reason=r["reason"] or None,
                created_at=as_utc(r["created_at"]),
            )
            for r in rows
        ]

    @get(
        "/runs",
        operation_id="listPricingRuns",
        guards=[require_roles(Role.ADMIN)],
        summary="Price source runs, newest first",
        description="What each run of each source saw and did, or why it failed. " + ADMIN,
    )
    async def runs(
        self, pricing: NamedDependency[PricingService], limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 50
    ) -> list[PricingRun]:
        rows = await anyio.to_thread.run_sync(
            lambda: pricing.db.query_dicts(
                "SELECT run_id, source, started_at, finished_at, toString(status) AS status, prices_seen, added,"
                " changed, quarantined, unchanged, discovered, error FROM pricing_runs"
                " ORDER BY started_at DESC LIMIT {limit:UInt32}",
                {"limit": limit},
                label="pricing.runs",
            )
        )
        return [
            PricingRun(
                **{k: v for k, v in r.items() if k not in ("started_at", "finished_at", "error")},
                started_at=as_utc(r["started_at"]),
                finished_at=as_utc(r["finished_at"]),
                error=r["error"] or None,
            )
            for r in rows
        ]

    @post(
        "/update",
        operation_id="updatePrices",
        guards=[require_roles(Role.ADMIN)],
        status_code=200,
        summary="Run the price sources now",
        description=(
            "Runs every configured source (or `source=`), as the schedule does every PRICING_UPDATE_INTERVAL "
            "seconds, and answers each run's report. " + ADMIN
        ),
    )
    async def update(
        self,
        request: Request[Any, Any, Any],
        pricing: NamedDependency[PricingService],
        source: FromQuery[str | None] = None,
    ) -> UpdateRun:
        try:
            run = await anyio.to_thread.run_sync(pricing.update, source)
        except SourceError as exc:
            raise InvalidInput(str(exc), errors=[{"field": "source", "reason": str(exc)}]) from exc
        await audit_action(pricing.db, principal_of(request), "pricing.update", "pricing", source or "*", after=run)
        return run

    @post(
        "/import",
        operation_id="importPrices",
        guards=[require_roles(Role.ADMIN)],
        status_code=200,
        summary="Import prices",
        description=(
            'Body: our catalog format (`{"format": "finops-catalog/1", "prices": [...]}`, each price keeping '
            "its effective date) or a LiteLLM price map (in force from now). Validated like a source run: "
            "implausible prices are quarantined, not applied. " + ADMIN
        ),
    )
    async def import_prices(
        self, request: Request[Any, Any, Any], pricing: NamedDependency[PricingService]
    ) -> RunReport:
        body = await request.body()
        try:
            report = await anyio.to_thread.run_sync(pricing.import_catalog, body)
        except (ValueError, msgspec.ValidationError) as exc:
            raise InvalidInput(f"invalid price catalog: {exc}", errors=[{"field": None, "reason": str(exc)}]) from exc
        await audit_action(
            pricing.db,
            principal_of(request),
            "pricing.import",
            "pricing",
            report.run_id,
            after={k: v for k, v in msgspec.to_builtins(report).items() if k != "changes"},
        )
        return report

    @put(
        "/overrides",
        operation_id="putPriceOverride",
        guards=[require_roles(Role.ADMIN)],
        operation_class=OverrideBody,
        summary="Set a tenant's negotiated price or discount",
        description=(
            "`rates` (the catalog's rate fields) for a whole price, or `discount_pct` off the list price (`model: "
            '"*"` for every model of the provider), in force from `effective_from`; applied at ingest for that '
            "tenant from now on, and by repricing for earlier events. " + ADMIN
        ),
    )
    async def put_override(self, request: Request[Any, Any, Any], pricing: NamedDependency[PricingService]) -> Override:
        data = decode_body(_override, await request.body(), "price override")
        problem = check_override(data)
        if problem is not None:
            field, _, reason = problem.partition(": ")
            raise InvalidInput(problem, errors=[{"field": field, "reason": reason}])
        principal = principal_of(request)

        def write() -> Override:
            override = write_override(pricing.db, data, principal.subject)
            pricing.reload()
            return override

        override = await anyio.to_thread.run_sync(write)
        await audit_action(pricing.db, principal, "pricing.override", "tenant", data.tenant_id, after=override)
        return override

    @get(
        "/overrides",
        operation_id="listPriceOverrides",
        guards=[require_roles(*READERS)],
        summary="Negotiated prices and discounts",
        description="Admins see every tenant's; others their own tenant's. " + READ,
    )
    async def list_overrides(
        self,
        request: Request[Any, Any, Any],
        pricing: NamedDependency[PricingService],
        tenant_id: FromQuery[str | None] = None,
    ) -> list[Override]:
        principal = principal_of(request)
        if principal.role is not Role.ADMIN:
            if tenant_id not in (None, principal.tenant_id):
                raise Forbidden("tenant_id filter names a tenant outside your token's tenant")
            tenant_id = principal.tenant_id
        return await anyio.to_thread.run_sync(read_overrides, pricing.db, tenant_id)

    @post(
        "/reprice",
        operation_id="repriceEvents",
        guards=[require_roles(Role.ADMIN)],
        status_code=200,
        operation_class=RepriceBody,
        summary="Recompute the costs of stored events",
        description=(
            'Body `{"start", "end", "provider"?, "model"?, "tenant_id"?}`. Appends correction rows for events '
            "whose cost under today's prices differs from what is stored (and prices events stored unpriced), "
            "so every rollup, query and budget sees corrected totals. Running it twice changes nothing the "
            "second time. Long ranges: `finops pricing reprice` shows progress. " + ADMIN
        ),
    )
    async def reprice(
        self, request: Request[Any, Any, Any], pricing: NamedDependency[PricingService]
    ) -> RepriceSummary:
        data = decode_body(_reprice, await request.body(), "reprice request")
        if data.start.tzinfo is None or data.end.tzinfo is None or data.end <= data.start:
            raise InvalidInput(
                "end must be after start, both with a time zone",
                errors=[{"field": "end", "reason": "must be after start"}],
            )
        summary = await anyio.to_thread.run_sync(pricing.reprice, data)
        await audit_action(pricing.db, principal_of(request), "pricing.reprice", "usage_events", "*", after=summary)
        return summary
