"""The composition root: builds the Litestar app and wires every component."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio.to_thread
import msgspec
from litestar import Litestar, Request, Response
from litestar._openapi.plugin import OpenAPIPlugin
from litestar.di import Provide
from litestar.exceptions import HTTPException, ValidationException
from litestar.middleware import DefineMiddleware
from litestar.openapi.config import OpenAPIConfig
from litestar.openapi.plugins import RedocRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from redis.asyncio import Redis

from service.alerts.controller import AlertTestIn, send_test_alert
from service.alerts.delivery import LocalDelivery
from service.alerts.senders import Senders
from service.audit import list_audit_events
from service.auth.guards import BearerTokenMiddleware
from service.auth.tokens import TokenVerifier
from service.budgets.controller import AlertController, BudgetController, evaluate_now
from service.budgets.evaluate import evaluate_budgets
from service.budgets.schemas import BudgetIn
from service.budgets.service import BudgetService
from service.budgets.store import BudgetStore
from service.budgets.watch import BudgetWatch
from service.business_metrics import refresh as refresh_business_metrics
from service.costs.controller import CostController, refresh_summaries
from service.costs.query import CostQueries
from service.costs.service import CostService
from service.costs.summaries import refresh_cost_summaries
from service.errors import DomainError, error_body, error_headers
from service.health.controller import HealthProbe, health, health_live, health_ready
from service.jobs import JobRunner
from service.metrics import metrics
from service.openapi import component_schemas
from service.operations import Operations, RateLimits
from service.optimization.controller import optimization_suggestions, refresh_optimization_suggestions
from service.optimization.jobs import refresh_optimization
from service.optimization.service import OptimizationService
from service.pricing.calculator import PriceBook
from service.pricing.catalog import read_prices, sync_bundled_catalog
from service.pricing.controller import PricingController
from service.pricing.overrides import OverrideIn, PricingState
from service.pricing.reprice import RepriceIn
from service.pricing.service import PricingService
from service.queue import ArqJobs, Jobs
from service.settings import Settings, SettingsError, get_settings
from service.storage.clickhouse import ClickHouse, embedded_path, is_embedded
from service.storage.migrations import migrate, pending
from service.usage.claims import SharedClaims
from service.usage.controller import WRITE_AUTH, UsageEventController
from service.usage.fastpath import UsageEventFastPath
from service.usage.fastpath import operation as record_operation
from service.usage.ingest import GroupCommitBuffer, Ingestor
from service.usage.journal import Journal, journal_directory
from service.usage.repository import UsageRepository
from service.usage.schemas import UsageBatchDoc, UsageEventIn

log = logging.getLogger("finops")
MAX_BODY_BYTES = 32 * 1024 * 1024
BUDGET_INDEX_REFRESH_S = 30  # distributed mode: how often the API relearns which scopes have budgets
PRICING_RELOAD_S = 30  # distributed mode: how soon a replica picks up prices a worker wrote
PRICING_FIRST_RUN_S = 60  # embedded mode: the first price source run, a minute after start
TRIGGERED_ONLY_S = 365 * 86400  # a job that runs only when triggered
BUSINESS_METRICS_FIRST_S = 5  # after the start-up jobs: the gauges need no head start
PUBLIC_PATHS = ["^/health", "^/docs", "^/redoc", "^/openapi.json", "^/metrics"]


def open_database(settings: Settings) -> ClickHouse:
    db = ClickHouse(
        settings.database.url,
        settings.database.database,
        pool_size=settings.database.pool_size,
        max_overflow=settings.database.max_overflow,
        query_timeout_s=settings.database.query_timeout_s,
    )
    db.open()
    return db


def load_price_book(db: ClickHouse, settings: Settings) -> PriceBook:
    stored = read_prices(db)
    return PriceBook.from_catalog(
        [(s.price, s.version) for s in stored],
        bedrock_default_region=settings.ingest.bedrock_default_region,
    )


def prepare_database(db: ClickHouse, settings: Settings, *, apply_migrations: bool) -> PriceBook:
    """Migrate (if asked), load the bundled catalog, and return the price book."""
    if apply_migrations:
        for migration in migrate(db):
            log.info("applied migration %s", migration.path.name)
    if pending(db):
        raise RuntimeError("migrations are pending: run `finops migrate`")
    added, changed = sync_bundled_catalog(db)
    if added or changed:
        log.info("bundled price catalog: %d prices added, %d changed", added, changed)
    return load_price_book(db, settings)


class AppComponents:
    """Everything the app wires at start-up."""

    def __init__(
        self,
        db: ClickHouse,
        pricing: PricingState,
        buffer: GroupCommitBuffer,
        jobs: Jobs,
        watch: BudgetWatch,
        settings: Settings,
        senders: Senders,
    ) -> None:
        self.db = db
        self.jobs = jobs
        self.watch = watch
        self.senders = senders
        self.probe: HealthProbe | None = None
        self.pricing_service: PricingService | None = None
        self.budgets = BudgetService(BudgetStore(db), settings.alerts)
        self.pricing = pricing
        self.buffer = buffer
        self.ingestor = Ingestor(pricing, buffer, settings.ingest)
        self.repository = UsageRepository(db)
        self.cost_queries = CostQueries(db)
        self.costs = CostService(
            self.cost_queries, settings.costs.max_range_days, timedelta(seconds=settings.costs.summary_slack_s)
        )


def handle_domain_error(_: Request[Any, Any, Any], exc: DomainError) -> Response[dict[str, Any]]:
    return Response(
        error_body(exc.status_code, exc.detail, exc.errors), status_code=exc.status_code, headers=error_headers(exc)
    )


def handle_http_exception(_: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    status = exc.status_code
    errors: list[dict[str, Any]] = []
    if isinstance(exc, ValidationException):
        status = 422
        for item in exc.extra if isinstance(exc.extra, list) else []:
            if isinstance(item, dict):
                errors.append({"field": item.get("key"), "reason": item.get("message"), "source": item.get("source")})
        if not errors and exc.detail.startswith("Malformed"):
            status = 400
    return Response(error_body(status, exc.detail, errors), status_code=status, headers=exc.headers)


def create_app(
    settings: Settings | None = None, *, db: ClickHouse | None = None, apply_migrations: bool = True
) -> Litestar:
    """The API, ready to serve. Opens ClickHouse (unless given an open `db`, which it then
    owns) and starts the ingest flusher on start-up."""
    settings = settings or get_settings()
    if settings.ingest.buffer_max_rows < settings.ingest.max_batch_events:
        raise SettingsError(
            "INGEST_BUFFER_MAX_ROWS must be at least INGEST_MAX_BATCH_EVENTS, or large batches never fit"
        )
    verifier = TokenVerifier(settings.auth.jwt_secret, settings.auth.jwt_algorithm)
    optimization = settings.optimization

    # Filled at start-up; the providers close over it (cheaper per request than
    # injecting `state`, which Litestar copies for every request).
    wired: list[AppComponents] = []

    def provide_ingestor() -> Ingestor:
        return wired[0].ingestor

    async def settle_first(request: Request[Any, Any, Any]) -> None:
        """Every request but ingest and probes first waits for what was acknowledged
        before it to be in ClickHouse (the ingest journal moves it at once)."""
        path = request.url.path
        if not wired or path.startswith(_UNSETTLED_PATHS):
            return
        if request.method == "POST" and path.startswith("/usage-events"):
            return
        await wired[0].buffer.settled()

    def provide_repository() -> UsageRepository:
        return wired[0].repository

    def provide_db() -> ClickHouse:
        return wired[0].db

    def provide_budgets() -> BudgetService:
        return wired[0].budgets

    def provide_watch() -> BudgetWatch:
        return wired[0].watch

    def provide_jobs() -> Jobs:
        return wired[0].jobs

    def provide_costs() -> CostService:
        return wired[0].costs

    def provide_cost_queries() -> CostQueries:
        return wired[0].cost_queries

    def provide_senders() -> Senders:
        return wired[0].senders

    def provide_optimization() -> OptimizationService:
        return OptimizationService(wired[0].db, settings, optimization)

    def provide_pricing() -> PricingService:
        service = wired[0].pricing_service
        assert service is not None
        return service

    def provide_probe() -> HealthProbe:
        probe = wired[0].probe
        assert probe is not None
        return probe

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        database = db if db is not None else await anyio.to_thread.run_sync(open_database, settings)
        try:
            book = await anyio.to_thread.run_sync(
                lambda: prepare_database(database, settings, apply_migrations=apply_migrations)
            )
            jobs: Jobs
            delay = settings.budgets.trigger_delay_ms / 1000
            local = JobRunner()  # what runs in this process in either mode
            senders = Senders(settings.alerts)
            delivery: LocalDelivery | None = None
            if settings.redis_url:  # distributed: arq workers run the jobs
                queue = ArqJobs(settings.redis_url)
                await queue.connect()
                watch = BudgetWatch(lambda: queue.trigger("evaluate_budgets", delay))
                store = BudgetStore(database)
                local.every(
                    "budget_index",
                    BUDGET_INDEX_REFRESH_S,
                    lambda: watch.load(store.find(tenant_visible=None, filters={})),
                )
                jobs = queue
            else:  # embedded: the same job functions, in this process
                watch = BudgetWatch(lambda: local.trigger("evaluate_touched", delay))
                delivery = LocalDelivery(database, senders)
                delivery.start()
                deliver = delivery

                def evaluate_and_dispatch() -> dict[str, Any]:
                    """The full pass: every budget (scheduled, and POST /budgets/evaluate)."""
                    run = msgspec.to_builtins(evaluate_budgets(database, on_loaded=watch.load)[0])
                    return {**run, "deliveries_started": deliver.dispatch()}

                def evaluate_touched() -> dict[str, Any]:
                    """After ingest (or a budget change) triggered the watch: what it says was touched."""
                    run = msgspec.to_builtins(
                        evaluate_budgets(database, on_loaded=watch.load, touched=watch.drain())[0]
                    )
                    return {**run, "deliveries_started": deliver.dispatch()}

                local.every("evaluate_budgets", settings.budgets.check_interval_s, evaluate_and_dispatch)
                # only when triggered: the scheduled full pass covers start-up
                local.every("evaluate_touched", TRIGGERED_ONLY_S, evaluate_touched, first_after_s=TRIGGERED_ONLY_S)
                local.every("dispatch_alerts", settings.alerts.dispatch_interval_s, delivery.dispatch)
                local.every(
                    "cost_summaries",
                    settings.costs.aggregation_interval_s,
                    lambda: msgspec.to_builtins(
                        refresh_cost_summaries(database, timedelta(seconds=settings.costs.summary_slack_s))
                    ),
                )
                local.every(
                    "optimization_suggestions",
                    optimization.refresh_interval_s,
                    lambda: refresh_optimization(database, settings, optimization),
                )
                jobs = local
            if settings.prometheus_metrics_enabled:  # every replica reads the same figures
                local.every(
                    "business_metrics",
                    settings.operations.metrics_refresh_interval_s,
                    lambda: refresh_business_metrics(database, settings.operations),
                    first_after_s=min(settings.operations.metrics_refresh_interval_s, BUSINESS_METRICS_FIRST_S),
                )
            redis = Redis.from_url(settings.redis_url) if settings.redis_url else None
            shared = SharedClaims(redis) if redis is not None else None
            buffer = GroupCommitBuffer(
                database, settings.ingest, on_written=watch.notify, shared=shared, journal=ingest_journal(settings)
            )
            await buffer.open()
            local.start()
            state = PricingState(book)
            pricing = PricingService(database, state, settings.pricing, senders, settings.ingest.bedrock_default_region)
            await anyio.to_thread.run_sync(pricing.reload)  # with tenants' overrides
            if settings.redis_url:  # workers run the sources; this replica follows what they write
                local.every("pricing_reload", PRICING_RELOAD_S, pricing.reload_if_changed)
            else:
                local.every(
                    "pricing_update",
                    settings.pricing.update_interval_s,
                    lambda: msgspec.to_builtins(pricing.update()),
                    first_after_s=PRICING_FIRST_RUN_S,
                )
            components = AppComponents(database, state, buffer, jobs, watch, settings, senders)
            components.pricing_service = pricing
            components.probe = HealthProbe(database, redis, local, embedded=not settings.redis_url)
            components.probe.ingest = buffer
            wired.append(components)
            log.info("finops-svc ready: %d prices loaded, ClickHouse at %s", len(book), _safe_url(database.url))
            try:
                yield
            finally:
                wired.clear()
                await local.stop()
                if delivery is not None:
                    await delivery.stop()
                await buffer.stop()
                if jobs is not local:
                    await jobs.stop()
                if redis is not None:
                    await redis.aclose()
        finally:
            await anyio.to_thread.run_sync(database.close)

    handlers: list[Any] = [
        UsageEventController,
        CostController,
        refresh_summaries,
        optimization_suggestions,
        refresh_optimization_suggestions,
        BudgetController,
        AlertController,
        evaluate_now,
        send_test_alert,
        PricingController,
        list_audit_events,
        health,
        health_ready,
        health_live,
    ]
    if settings.prometheus_metrics_enabled:
        handlers.append(metrics)
    app = Litestar(
        route_handlers=handlers,
        lifespan=[lifespan],
        before_request=settle_first,
        dependencies={
            "ingestor": Provide(provide_ingestor, sync_to_thread=False),
            "repository": Provide(provide_repository, sync_to_thread=False),
            "db": Provide(provide_db, sync_to_thread=False),
            "costs": Provide(provide_costs, sync_to_thread=False),
            "jobs": Provide(provide_jobs, sync_to_thread=False),
            "budgets": Provide(provide_budgets, sync_to_thread=False),
            "watch": Provide(provide_watch, sync_to_thread=False),
            "queries": Provide(provide_cost_queries, sync_to_thread=False),
            "senders": Provide(provide_senders, sync_to_thread=False),
            "optimization": Provide(provide_optimization, sync_to_thread=False),
            "probe": Provide(provide_probe, sync_to_thread=False),
            "pricing": Provide(provide_pricing, sync_to_thread=False),
        },
        middleware=[DefineMiddleware(BearerTokenMiddleware, verifier=verifier, exclude=PUBLIC_PATHS)],
        exception_handlers={DomainError: handle_domain_error, HTTPException: handle_http_exception},
        openapi_config=OpenAPIConfig(
            title="finops-svc",
            version="0.1.0",
            description="Cost metering and budget guard for AI inference calls.",
            path="/",
            render_plugins=[SwaggerRenderPlugin(path="/docs"), RedocRenderPlugin(path="/redoc")],
            components=Components(
                security_schemes={
                    "BearerToken": SecurityScheme(
                        type="http",
                        scheme="bearer",
                        bearer_format="JWT",
                        description="Token from `finops token`.",
                    )
                },
            ),
            security=[{"BearerToken": []}],
        ),
        request_max_body_size=MAX_BODY_BYTES,
        logging_config=None,  # `finops` configures logging (JSON lines, service/logs.py)
    )
    # Bodies decoded by the handlers themselves are documented from their msgspec Structs.
    openapi = app.plugins.get(OpenAPIPlugin).provide_openapi()
    if openapi.components.schemas is None:
        openapi.components.schemas = {}
    documented = component_schemas(UsageEventIn, UsageBatchDoc, BudgetIn, AlertTestIn, OverrideIn, RepriceIn)
    openapi.components.schemas.update(documented)  # type: ignore[arg-type]
    openapi.paths["/usage-events"].post = record_operation(WRITE_AUTH)  # type: ignore[index]
    fast = UsageEventFastPath(app, verifier, lambda: wired[0].ingestor, max_body_bytes=MAX_BODY_BYTES)
    operations = settings.operations
    limits = RateLimits(operations, settings.redis_url) if operations.rate_limits_enabled else None
    return Operations(fast, verifier, operations, limits)  # type: ignore[return-value]


def ingest_journal(settings: Settings) -> Journal | None:
    """The ingest journal, with the embedded engine unless INGEST_JOURNAL is off."""
    if not (settings.ingest.journal and is_embedded(settings.database.url)):
        return None
    directory = settings.ingest.journal_dir or journal_directory(
        embedded_path(settings.database.url), settings.database.database
    )
    return Journal(Path(directory))


_UNSETTLED_PATHS = ("/health", "/metrics", "/docs", "/redoc", "/openapi.json")


def _safe_url(url: str) -> str:
    """A URL without its password, for logs."""
    from urllib.parse import urlparse

    parsed = urlparse(url)
    if parsed.password:
        return url.replace(f":{parsed.password}@", ":***@")
    return url
