"""HTTP routes for usage events. Thin: decode, call the domain, shape the answer."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from litestar.openapi.spec import Reference
from litestar.params import FromPath, FromQuery, QueryParameter
from litestar.status_codes import HTTP_201_CREATED

from service.auth.guards import principal_of, require_roles
from service.auth.principal import READERS, WRITERS
from service.errors import NotFound
from service.openapi import REF_TEMPLATE, json_body_operation
from service.usage.ingest import Ingestor, decode_batch
from service.usage.repository import EventFilters, UsageRepository
from service.usage.schemas import (
    BatchResult,
    PricingStatus,
    ProviderName,
    UsageEvent,
    UsageEventPage,
)

WRITE_AUTH = "Auth: bearer JWT with role `service` (for its own tenant when the token names one) or `admin`."
READ_AUTH = "Auth: bearer JWT with role `admin` (every tenant), `tenant-admin` or `user` (their own tenant only)."


BatchBodyOperation = json_body_operation("BatchBodyOperation", Reference(REF_TEMPLATE.format(name="UsageBatchDoc")))


_encode = msgspec.json.Encoder().encode


class UsageEventController(Controller):
    path = "/usage-events"
    tags = ["usage events"]

    @post(
        "/batch",
        operation_id="recordUsageEventBatch",
        guards=[require_roles(*WRITERS)],
        status_code=HTTP_201_CREATED,
        summary="Record up to 10,000 usage events",
        description=(
            "All-or-nothing: any invalid item answers 422 naming each bad item's index, field and "
            "reason, and nothing is stored. Repeated `event_id`s are counted as duplicates. " + WRITE_AUTH
        ),
        operation_class=BatchBodyOperation,
    )
    async def record_batch(self, request: Request[Any, Any, Any], ingestor: NamedDependency[Ingestor]) -> BatchResult:
        items = decode_batch(await request.body(), ingestor.settings.max_batch_events)
        return await ingestor.record_many(items, principal_of(request))

    @get(
        "/",
        operation_id="listUsageEvents",
        guards=[require_roles(*READERS)],
        summary="List usage events, newest first",
        description="Filters combine with AND; `start` is inclusive, `end` exclusive. " + READ_AUTH,
    )
    async def list_events(
        self,
        request: Request[Any, Any, Any],
        repository: NamedDependency[UsageRepository],
        tenant_id: FromQuery[str | None] = None,
        service: FromQuery[str | None] = None,
        learner_id: FromQuery[str | None] = None,
        provider: FromQuery[ProviderName | None] = None,
        model: FromQuery[str | None] = None,
        pricing_status: FromQuery[PricingStatus | None] = None,
        start: FromQuery[datetime | None] = None,
        end: FromQuery[datetime | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
        cursor: FromQuery[str | None] = None,
    ) -> UsageEventPage:
        scope = principal_of(request).read_scope(tenant_id)
        filters = EventFilters(
            service=service,
            learner_id=learner_id,
            provider=provider,
            model=model,
            pricing_status=pricing_status,
            start=start,
            end=end,
        )
        return await repository.list_events(scope, filters, limit, cursor)

    @get(
        "/{event_id:str}",
        operation_id="getUsageEvent",
        guards=[require_roles(*READERS)],
        summary="One usage event by id",
        description="404 when it does not exist or belongs to another tenant. " + READ_AUTH,
    )
    async def get_event(
        self,
        request: Request[Any, Any, Any],
        repository: NamedDependency[UsageRepository],
        event_id: FromPath[str],
    ) -> UsageEvent:
        event = await repository.get_event(principal_of(request).read_scope(), event_id)
        if event is None:
            raise NotFound(f"usage event {event_id!r} not found")
        return event
