"""HTTP routes for usage events. Thin: decode, call the domain, shape the answer."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from litestar import Controller, Request, Response, get, post
from litestar.openapi.spec import (
    OpenAPIMediaType,
    OpenAPIType,
    Operation,
    Reference,
    RequestBody,
    Schema,
)
from litestar.params import Parameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from service.auth.guards import principal_of, require_roles
from service.auth.principal import READERS, WRITERS
from service.errors import NotFound
from service.usage.ingest import Ingestor, decode_batch
from service.usage.repository import EventFilters, UsageRepository
from service.usage.schemas import BatchResult, PricingStatus, ProviderName, UsageEvent, UsageEventIn, UsageEventPage

WRITE_AUTH = "Auth: bearer JWT with role `service` (for its own tenant when the token names one) or `admin`."
READ_AUTH = (
    "Auth: bearer JWT with role `admin` (every tenant), `tenant-admin` or `user` (their own tenant only)."
)


class _BatchOperation(Operation):
    """Documents the batch body, which the handler decodes itself to report every bad item."""

    def __post_init__(self) -> None:
        self.request_body = RequestBody(
            required=True,
            content={
                "application/json": OpenAPIMediaType(
                    schema=Schema(
                        type=OpenAPIType.OBJECT,
                        required=["events"],
                        properties={
                            "events": Schema(
                                type=OpenAPIType.ARRAY,
                                items=Reference("#/components/schemas/UsageEventIn"),
                                min_items=1,
                                max_items=10000,
                            )
                        },
                    )
                )
            },
        )


class UsageEventController(Controller):
    path = "/usage-events"
    tags = ["usage events"]

    @post(
        "/",
        operation_id="recordUsageEvent",
        guards=[require_roles(*WRITERS)],
        status_code=HTTP_201_CREATED,
        summary="Record one usage event",
        description=(
            "Prices and stores one inference call. 201 with the stored event; the same "
            "`event_id` again answers 200 with the originally stored event and stores nothing. "
            + WRITE_AUTH
        ),
    )
    async def record(self, request: Request[Any, Any, Any], data: UsageEventIn, ingestor: Ingestor) -> Response[UsageEvent]:
        stored, duplicate = await ingestor.record(data, principal_of(request))
        return Response(stored, status_code=HTTP_200_OK if duplicate else HTTP_201_CREATED)

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
        operation_class=_BatchOperation,
    )
    async def record_batch(self, request: Request[Any, Any, Any], ingestor: Ingestor) -> BatchResult:
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
        repository: UsageRepository,
        tenant_id: str | None = None,
        service: str | None = None,
        learner_id: str | None = None,
        provider: ProviderName | None = None,
        model: str | None = None,
        pricing_status: PricingStatus | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        limit: Annotated[int, Parameter(ge=1, le=1000)] = 100,
        cursor: str | None = None,
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
        self, request: Request[Any, Any, Any], repository: UsageRepository, event_id: str
    ) -> UsageEvent:
        event = await repository.get_event(principal_of(request).read_scope(), event_id)
        if event is None:
            raise NotFound(f"usage event {event_id!r} not found")
        return event
