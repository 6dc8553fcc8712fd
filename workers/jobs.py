"""arq job entry points. Each calls into `service` and returns plain data."""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any

import anyio.to_thread
import msgspec
from arq import Retry
from arq.connections import ArqRedis

from service.alerts.delivery import DELIVERY_WINDOW, DeliveryTask, attempt, plan, retry_delay
from service.alerts.senders import Senders
from service.budgets.evaluate import evaluate_budgets
from service.costs.summaries import refresh_cost_summaries
from service.errors import StorageUnavailable
from service.logs import request_id_var
from service.optimization.jobs import refresh_optimization
from service.pricing.service import PricingService
from service.pricing.updates import load_state
from service.settings import Settings
from service.storage.clickhouse import ClickHouse

RETRY_BASE_S = 5
JobFunction = Callable[..., Coroutine[Any, Any, dict[str, Any]]]


def carries_request_id(function: JobFunction) -> JobFunction:
    """Jobs enqueued by a request get its id (`request_id=`), so their log lines carry it."""

    @functools.wraps(function)
    async def run(ctx: dict[str, Any], *args: Any, request_id: str | None = None, **kwargs: Any) -> dict[str, Any]:
        token = request_id_var.set(request_id)
        try:
            return await function(ctx, *args, **kwargs)
        finally:
            request_id_var.reset(token)

    return run


def _retry(ctx: dict[str, Any]) -> Retry:
    """Exponential backoff: 5 s, 10 s, 20 s, ... by attempt."""
    return Retry(defer=RETRY_BASE_S * 2 ** (int(ctx.get("job_try", 1)) - 1))


@carries_request_id
async def evaluate_budgets_job(ctx: dict[str, Any]) -> dict[str, Any]:
    db: ClickHouse = ctx["db"]
    try:
        run, fired = await anyio.to_thread.run_sync(evaluate_budgets, db)
    except StorageUnavailable as exc:
        raise _retry(ctx) from exc
    return {**msgspec.to_builtins(run), "fired_alert_ids": fired, "deliveries_started": await dispatch_alerts(ctx)}


CLAIM_TTL_MS = int((DELIVERY_WINDOW.total_seconds() + 3600) * 1000)


def claim_name(key: str) -> str:
    return f"finops:alert-claim:{key}"


async def dispatch_alerts(ctx: dict[str, Any]) -> int:
    """Enqueue one `deliver_alert` job per due delivery, for the (alert, channel) pairs this
    worker claims in Redis (SET NX): across workers each pair is delivered by one job."""
    db: ClickHouse = ctx["db"]
    settings: Settings = ctx["settings"]
    redis: ArqRedis = ctx["redis"]
    try:
        tasks = await anyio.to_thread.run_sync(plan, db, settings.alerts)
    except StorageUnavailable:
        return 0  # the next sweep plans again
    started = 0
    for task in tasks:
        keys = task.claim_keys()
        pipe = redis.pipeline(transaction=False)
        for key in keys:
            pipe.set(claim_name(key), task.delivery_id, nx=True, px=CLAIM_TTL_MS)
        won = await pipe.execute()
        mine = tuple(alert for alert, ok in zip(task.alert_ids, won, strict=True) if ok)
        if not mine:
            continue
        narrowed = DeliveryTask(task.budget_id, task.channel_key, mine)
        try:
            await redis.enqueue_job(
                "deliver_alert",
                narrowed.budget_id,
                narrowed.channel_key,
                list(mine),
                request_id=request_id_var.get(),
                _job_id=narrowed.delivery_id,
            )
        except Exception:
            await redis.delete(*[claim_name(k) for k in narrowed.claim_keys()])
            raise
        started += 1
    return started


@carries_request_id
async def pricing_update_job(ctx: dict[str, Any]) -> dict[str, Any]:
    """Run every configured price source; API replicas pick the new prices up on their own."""
    db: ClickHouse = ctx["db"]
    settings: Settings = ctx["settings"]

    def run() -> dict[str, Any]:
        service = PricingService(
            db, load_state(db, settings.ingest.bedrock_default_region), settings.pricing, ctx["senders"]
        )
        result: dict[str, Any] = msgspec.to_builtins(service.update())
        return result

    try:
        return await anyio.to_thread.run_sync(run)
    except StorageUnavailable as exc:
        raise _retry(ctx) from exc


@carries_request_id
async def dispatch_alerts_job(ctx: dict[str, Any]) -> dict[str, Any]:
    return {"deliveries_started": await dispatch_alerts(ctx)}


@carries_request_id
async def deliver_alert_job(
    ctx: dict[str, Any], budget_id: str, channel_key: str, alert_ids: list[str]
) -> dict[str, Any]:
    """One attempt per job try; a retryable failure is retried with backoff (arq `Retry`)
    until ALERT_MAX_ATTEMPTS, when it is recorded as failed."""
    db: ClickHouse = ctx["db"]
    settings: Settings = ctx["settings"]
    senders: Senders = ctx["senders"]
    number = int(ctx.get("job_try", 1))
    last = number >= settings.alerts.max_attempts
    task = DeliveryTask(budget_id, channel_key, tuple(alert_ids))
    try:
        status, outcome = await anyio.to_thread.run_sync(lambda: attempt(db, senders, task, number, last=last))
    except StorageUnavailable as exc:
        raise Retry(defer=retry_delay(number, settings.alerts)) from exc
    if status == "retrying":
        raise Retry(defer=retry_delay(number, settings.alerts, outcome.retry_after_s if outcome else None))
    return {"status": status, "response_code": outcome.code if outcome else None, "attempts": number}


@carries_request_id
async def refresh_cost_summaries_job(ctx: dict[str, Any]) -> dict[str, Any]:
    db: ClickHouse = ctx["db"]
    settings: Settings = ctx["settings"]
    slack = timedelta(seconds=settings.costs.summary_slack_s)
    try:
        run = await anyio.to_thread.run_sync(lambda: refresh_cost_summaries(db, slack))
    except StorageUnavailable as exc:
        raise _retry(ctx) from exc
    result: dict[str, Any] = msgspec.to_builtins(run)
    return result


@carries_request_id
async def refresh_optimization_job(ctx: dict[str, Any]) -> dict[str, Any]:
    db: ClickHouse = ctx["db"]
    settings: Settings = ctx["settings"]
    try:
        return await anyio.to_thread.run_sync(lambda: refresh_optimization(db, settings, settings.optimization))
    except StorageUnavailable as exc:
        raise _retry(ctx) from exc
