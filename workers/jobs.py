"""arq job entry points. Each calls into `service` and returns plain data."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import anyio.to_thread
import msgspec
from arq import Retry

from service.budgets.evaluate import evaluate_budgets
from service.costs.summaries import refresh_cost_summaries
from service.errors import StorageUnavailable
from service.settings import Settings
from service.storage.clickhouse import ClickHouse

RETRY_BASE_S = 5


def _retry(ctx: dict[str, Any]) -> Retry:
    """Exponential backoff: 5 s, 10 s, 20 s, ... by attempt."""
    return Retry(defer=RETRY_BASE_S * 2 ** (int(ctx.get("job_try", 1)) - 1))


async def evaluate_budgets_job(ctx: dict[str, Any]) -> dict[str, Any]:
    db: ClickHouse = ctx["db"]
    try:
        run, fired = await anyio.to_thread.run_sync(evaluate_budgets, db)
    except StorageUnavailable as exc:
        raise _retry(ctx) from exc
    return {**msgspec.to_builtins(run), "fired_alert_ids": fired}


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
