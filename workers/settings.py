"""The arq worker: `finops worker` (or `arq workers.settings.WorkerSettings`).

Cron jobs evaluate every budget every BUDGET_CHECK_INTERVAL seconds and refresh
cost summaries every COST_AGGREGATION_INTERVAL seconds; the API enqueues the
same functions on demand and after ingest touches a budget's scope. Every job
has a timeout, a try limit and exponential backoff; cron runs and triggered
runs carry job ids, so duplicates are dropped by arq.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from datetime import UTC, datetime
from typing import Any

import anyio.to_thread
from arq import cron, func
from arq.connections import RedisSettings
from arq.cron import CronJob
from arq.worker import Function, Worker

from service.alerts.senders import Senders
from service.app import open_database
from service.health.controller import HEARTBEAT_EVERY_S, HEARTBEAT_PREFIX, HEARTBEAT_TTL_MS
from service.settings import Settings, get_settings
from service.storage.clickhouse import ClickHouse
from workers.jobs import (
    deliver_alert_job,
    dispatch_alerts_job,
    evaluate_budgets_job,
    pricing_update_job,
    refresh_cost_summaries_job,
    refresh_optimization_job,
)

log = logging.getLogger("finops.worker")
JOB_TIMEOUT_S = 300
MAX_TRIES = 4


def start_heartbeat(ctx: dict[str, Any]) -> None:
    """Every 10 s, `finops:worker:<host>:<pid>` in Redis (kept 30 s): what GET /health counts."""
    redis = ctx["redis"]
    name = f"{HEARTBEAT_PREFIX}{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"

    async def beat() -> None:
        while True:
            try:
                await redis.set(name, datetime.now(UTC).isoformat(), px=HEARTBEAT_TTL_MS)
            except Exception:
                log.warning("could not write the worker heartbeat", exc_info=True)
            await asyncio.sleep(HEARTBEAT_EVERY_S)

    ctx["heartbeat"] = (asyncio.get_running_loop().create_task(beat(), name="worker-heartbeat"), name)


async def stop_heartbeat(ctx: dict[str, Any]) -> None:
    task, name = ctx.pop("heartbeat", (None, None))
    if task is None:
        return
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    try:
        await ctx["redis"].delete(name)
    except Exception:
        log.warning("could not remove the worker heartbeat", exc_info=True)


def cron_times(interval_s: int) -> dict[str, set[int]]:
    """arq cron fields for 'every `interval_s` seconds', rounded to what a clock can express."""
    if interval_s < 60:
        step = max(1, interval_s)
        return {"second": set(range(0, 60, step))}
    if interval_s < 3600:
        return {"minute": set(range(0, 60, max(1, interval_s // 60))), "second": {0}}
    hours = max(1, interval_s // 3600)
    return {"hour": set(range(0, 24, min(hours, 24))), "minute": {0}, "second": {0}}


def functions(settings: Settings) -> list[Function]:
    return [
        func(evaluate_budgets_job, name="evaluate_budgets", timeout=JOB_TIMEOUT_S, max_tries=MAX_TRIES),
        func(refresh_cost_summaries_job, name="cost_summaries", timeout=JOB_TIMEOUT_S, max_tries=MAX_TRIES),
        func(dispatch_alerts_job, name="dispatch_alerts", timeout=JOB_TIMEOUT_S, max_tries=MAX_TRIES),
        func(pricing_update_job, name="pricing_update", timeout=JOB_TIMEOUT_S * 4, max_tries=2),
        func(refresh_optimization_job, name="optimization_suggestions", timeout=JOB_TIMEOUT_S, max_tries=MAX_TRIES),
        # one more try than attempts: the last attempt records a final failure itself
        func(
            deliver_alert_job,
            name="deliver_alert",
            timeout=settings.alerts.send_timeout_s * 3 + 30,
            max_tries=settings.alerts.max_attempts + 1,
        ),
    ]


def cron_jobs(settings: Settings) -> list[CronJob]:
    return [
        cron(
            evaluate_budgets_job,
            name="cron:evaluate_budgets",
            timeout=JOB_TIMEOUT_S,
            max_tries=MAX_TRIES,
            **cron_times(settings.budgets.check_interval_s),  # type: ignore[arg-type]
        ),
        cron(
            refresh_cost_summaries_job,
            name="cron:cost_summaries",
            timeout=JOB_TIMEOUT_S,
            max_tries=MAX_TRIES,
            **cron_times(settings.costs.aggregation_interval_s),  # type: ignore[arg-type]
        ),
        cron(
            pricing_update_job,
            name="cron:pricing_update",
            timeout=JOB_TIMEOUT_S * 4,
            max_tries=2,
            **cron_times(settings.pricing.update_interval_s),  # type: ignore[arg-type]
        ),
        cron(
            refresh_optimization_job,
            name="cron:optimization_suggestions",
            timeout=JOB_TIMEOUT_S,
            max_tries=MAX_TRIES,
            **cron_times(settings.optimization.refresh_interval_s),  # type: ignore[arg-type]
        ),
        cron(
            dispatch_alerts_job,
            name="cron:dispatch_alerts",
            timeout=JOB_TIMEOUT_S,
            max_tries=MAX_TRIES,
            **cron_times(settings.alerts.dispatch_interval_s),  # type: ignore[arg-type]
        ),
    ]


def build_worker(settings: Settings, db: ClickHouse | None = None, **options: Any) -> Worker:
    """A worker for `settings`; `db` lets a caller share an already open ClickHouse."""

    async def startup(ctx: dict[str, Any]) -> None:
        ctx["settings"] = settings
        ctx["senders"] = Senders(settings.alerts)
        ctx["db"] = db if db is not None else await anyio.to_thread.run_sync(open_database, settings)
        start_heartbeat(ctx)

    async def shutdown(ctx: dict[str, Any]) -> None:
        await stop_heartbeat(ctx)
        if db is None and "db" in ctx:
            await anyio.to_thread.run_sync(ctx["db"].close)

    return Worker(
        functions=functions(settings),
        cron_jobs=cron_jobs(settings),
        redis_settings=RedisSettings.from_dsn(settings.redis_url),
        on_startup=startup,
        on_shutdown=shutdown,
        job_timeout=JOB_TIMEOUT_S,
        max_tries=MAX_TRIES,
        **options,
    )


class WorkerSettings:
    """For the `arq` command line: settings from the environment."""

    _settings = get_settings()
    functions = functions(_settings)
    cron_jobs = cron_jobs(_settings)
    redis_settings = RedisSettings.from_dsn(_settings.redis_url or "redis://127.0.0.1:6379")
    job_timeout = JOB_TIMEOUT_S
    max_tries = MAX_TRIES

    @staticmethod
    async def on_startup(ctx: dict[str, Any]) -> None:
        ctx["settings"] = WorkerSettings._settings
        ctx["senders"] = Senders(WorkerSettings._settings.alerts)
        ctx["db"] = await anyio.to_thread.run_sync(open_database, WorkerSettings._settings)
        start_heartbeat(ctx)

    @staticmethod
    async def on_shutdown(ctx: dict[str, Any]) -> None:
        await stop_heartbeat(ctx)
        await anyio.to_thread.run_sync(ctx["db"].close)
