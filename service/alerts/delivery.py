"""Delivering budget alerts: what is due, exactly once per channel, with retries and a log.

An alert fires with the keys of the channels it is to reach (`channel_keys`,
fixed when it fires). After every evaluation pass, and every
ALERT_DISPATCH_INTERVAL seconds, `plan` finds the (alert, channel) pairs that
are active, recent and have no final delivery yet, and groups them per budget
and channel: one notice each, a digest when it covers several alerts.

Exactly once: before a delivery is started, each (alert, channel) pair is
claimed — in memory in embedded mode (one process owns the data), with
`SET NX` in Redis when workers share the work — and a claimed pair is never
planned again. The delivery job's id is derived from the pairs it covers, so
a repeated enqueue is dropped by arq. The attempt itself re-reads the log and
skips pairs already delivered.

Cooldown: after a budget's notice reaches a channel, further alerts of that
budget wait ALERT_COOLDOWN_SECONDS and then go out as one digest — unless one
is more severe (an actual threshold above every one sent in the cooldown),
which goes at once.

Retries: network errors, 429 and 5xx are retried with exponential backoff
and full jitter (`retry_delay`), honouring `Retry-After`; other 4xx fail at
once. Every attempt writes a row per alert to `alert_deliveries` (target
masked, no secrets); the last attempt's failure is final, counted in
`finops_alert_deliveries_total` and shown by GET /alerts/{alert_id}.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import random
import threading
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

import anyio.to_thread

from service.alerts.channels import channel_key, channel_type, mask_target, targets
from service.alerts.notice import AlertFacts, Notice
from service.alerts.senders import Outcome, Senders
from service.budgets.schemas import Budget, ChannelDelivery
from service.budgets.store import BudgetStore
from service.metrics import ALERT_DELIVERIES
from service.settings import AlertSettings
from service.storage.clickhouse import ClickHouse, as_utc

log = logging.getLogger("finops.alerts")

DELIVERY_WINDOW = timedelta(days=1)  # alerts older than this are not sent any more
MAX_DELAY_S = 600.0
DELIVERY_COLUMNS = (
    "delivery_id",
    "alert_id",
    "budget_id",
    "tenant_id",
    "channel_key",
    "channel_type",
    "target",
    "threshold_percent",
    "kind",
    "attempt",
    "status",
    "response_code",
    "error",
    "digest_size",
    "is_test",
    "attempted_at",
)


@dataclass(frozen=True)
class DeliveryTask:
    """One notice to one channel target: the alerts of one budget it covers."""

    budget_id: str
    channel_key: str
    alert_ids: tuple[str, ...]

    @property
    def delivery_id(self) -> str:
        digest = hashlib.sha256("|".join([self.channel_key, *sorted(self.alert_ids)]).encode()).hexdigest()
        return "dlv_" + digest[:24]

    def claim_keys(self) -> list[str]:
        return [f"{alert}|{self.channel_key}" for alert in self.alert_ids]


def retry_delay(attempt: int, settings: AlertSettings, retry_after_s: float | None = None) -> float:
    """Delay before attempt `attempt + 1`: Retry-After when the provider gave one, else
    base * 2^(attempt-1) with full jitter (between half and all of it), at most 10 minutes."""
    if retry_after_s is not None:
        return min(retry_after_s, MAX_DELAY_S)
    ceiling = min(settings.retry_base_ms / 1000 * 2 ** (attempt - 1), MAX_DELAY_S)
    return random.uniform(ceiling / 2, ceiling)


def notice_for(
    budget: Budget, rows: Sequence[dict[str, Any]], settings: AlertSettings, *, test: bool = False
) -> Notice:
    return Notice(
        budget_id=budget.budget_id,
        budget_name=budget.name,
        tenant_id=budget.scope.tenant_id or "",
        service=budget.scope.service or "",
        learner_id=budget.scope.learner_id or "",
        per_learner=budget.per_learner,
        period=budget.period,
        timezone=budget.timezone,
        limit_usd=Decimal(budget.limit_usd),
        alerts=[AlertFacts.from_row(row) for row in rows],
        dashboard_url=settings.dashboard_url,
        test=test,
    )


class DeliveryLog:
    """`alert_deliveries`: one row per attempt and alert."""

    def __init__(self, db: ClickHouse) -> None:
        self.db = db

    def write(
        self,
        delivery_id: str,
        key: str,
        target: str,
        alerts: Sequence[AlertFacts],
        budget_id: str,
        tenant_id: str,
        attempt: int,
        status: str,
        outcome: Outcome,
        *,
        test: bool = False,
    ) -> None:
        """Rows for one attempt; `target` is already masked."""
        now = datetime.now(UTC)
        rows = [
            [
                delivery_id,
                alert.alert_id,
                budget_id,
                alert.tenant_id or tenant_id,
                key,
                key.split(":", 1)[0],
                target,
                alert.threshold_percent,
                alert.kind,
                attempt,
                status,
                outcome.code,
                outcome.error[:500],
                len(alerts),
                test,
                now,
            ]
            for alert in alerts
        ]
        self.db.insert("alert_deliveries", rows, DELIVERY_COLUMNS, label="alerts.delivery_log")

    def final_pairs(self, alert_ids: Iterable[str]) -> set[tuple[str, str]]:
        ids = sorted(set(alert_ids))
        if not ids:
            return set()
        rows = self.db.query(
            "SELECT DISTINCT alert_id, channel_key FROM alert_deliveries"
            " WHERE alert_id IN {ids:Array(String)} AND status IN ('delivered', 'failed')",
            {"ids": ids},
            label="alerts.final_pairs",
        )
        return {(row[0], row[1]) for row in rows}

    def recent_sends(self, since: datetime) -> dict[tuple[str, str], int]:
        """(budget, channel) → highest actual threshold delivered since `since` (0: only forecasts)."""
        rows = self.db.query(
            "SELECT budget_id, channel_key, maxIf(threshold_percent, kind = 'actual') FROM alert_deliveries"
            " WHERE status = 'delivered' AND NOT is_test AND attempted_at >= {since:DateTime64(3, 'UTC')}"
            " GROUP BY budget_id, channel_key",
            {"since": since},
            label="alerts.recent_sends",
        )
        return {(row[0], row[1]): int(row[2]) for row in rows}

    def channel_states(self, alert_ids: Sequence[str]) -> dict[str, dict[str, ChannelDelivery]]:
        """alert → channel key → where its delivery stands (from the latest attempt)."""
        if not alert_ids:
            return {}
        rows = self.db.query(
            "SELECT alert_id, channel_key, argMax(channel_type, attempted_at), argMax(target, attempted_at),"
            " argMax(status, attempted_at), count(), argMax(response_code, attempted_at),"
            " argMax(error, attempted_at), max(attempted_at), argMax(delivery_id, attempted_at),"
            " argMax(digest_size, attempted_at), countIf(status = 'delivered'), countIf(status = 'failed')"
            " FROM alert_deliveries WHERE alert_id IN {ids:Array(String)} GROUP BY alert_id, channel_key",
            {"ids": list(alert_ids)},
            label="alerts.channel_states",
        )
        out: dict[str, dict[str, ChannelDelivery]] = defaultdict(dict)
        for row in rows:
            alert, key, kind, target, _, attempts, code, error, at, delivery, size, ok, failed = row
            state: Literal["delivered", "failed", "retrying"] = (
                "delivered" if ok else "failed" if failed else "retrying"
            )
            out[alert][key] = ChannelDelivery(
                channel_key=key,
                type=kind,
                target=target,
                state=state,
                attempts=int(attempts),
                last_response_code=int(code) or None,
                last_error=error or None,
                last_attempt_at=as_utc(at),
                delivery_id=delivery,
                digest_size=int(size),
            )
        return out


def overall_state(stored: str, keys: Sequence[str], states: dict[str, ChannelDelivery]) -> str:
    """An alert's delivery state across its channels: failed if any failed for good,
    delivered once every channel has it, else pending."""
    if not keys:
        return stored
    found = [states[k].state for k in keys if k in states]
    if "failed" in found:
        return "failed"
    if len(found) == len(keys) and all(s == "delivered" for s in found):
        return "delivered"
    return "pending"


def plan(db: ClickHouse, settings: AlertSettings, now: datetime | None = None) -> list[DeliveryTask]:
    """The deliveries due now (before claims): see the module docstring."""
    now = now or datetime.now(UTC)
    store = BudgetStore(db)
    rows = store.alert_rows(
        "state = 'active' AND notEmpty(channel_keys) AND created_at >= {since:DateTime64(3, 'UTC')}",
        {"since": now - DELIVERY_WINDOW},
        label="alerts.due",
    )
    if not rows:
        return []
    deliveries = DeliveryLog(db)
    done = deliveries.final_pairs(row["alert_id"] for row in rows)
    due: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        for key in row["channel_keys"]:
            if (row["alert_id"], key) not in done:
                due[(row["budget_id"], key)].append(row)
    if not due:
        return []
    sent = deliveries.recent_sends(now - timedelta(seconds=settings.cooldown_s)) if settings.cooldown_s else {}
    tasks: list[DeliveryTask] = []
    for (budget_id, key), alerts in sorted(due.items()):
        if (budget_id, key) in sent:
            highest = sent[(budget_id, key)]
            if not any(a["kind"] == "actual" and int(a["threshold_percent"]) > highest for a in alerts):
                continue  # held by the cooldown; a later sweep sends them as one digest
        tasks.append(DeliveryTask(budget_id, key, tuple(sorted(a["alert_id"] for a in alerts))))
    return tasks


def attempt(
    db: ClickHouse, senders: Senders, task: DeliveryTask, number: int, *, last: bool
) -> tuple[str, Outcome | None]:
    """One attempt of a delivery. Returns (status, outcome): status `delivered`, `failed`,
    `retrying` (try again), or `skipped` (nothing left to send: already delivered, alerts
    gone or resolved)."""
    settings = senders.settings
    store = BudgetStore(db)
    budget = store.get(task.budget_id)
    rows = store.alert_rows(
        "alert_id IN {ids:Array(String)} AND state = 'active'", {"ids": list(task.alert_ids)}, label="alerts.deliver"
    )
    done = DeliveryLog(db).final_pairs(task.alert_ids)
    rows = [row for row in rows if (row["alert_id"], task.channel_key) not in done]
    if not rows:
        return "skipped", None
    channel = (
        next((c for c in targets(budget.channels) if channel_key(c) == task.channel_key), None) if budget else None
    )
    facts = [AlertFacts.from_row(row) for row in rows]
    if budget is None or channel is None:
        gone = Outcome("failed", error="the budget or this channel was removed before delivery")
        DeliveryLog(db).write(task.delivery_id, task.channel_key, "", facts, task.budget_id, "", number, "failed", gone)
        ALERT_DELIVERIES.labels(task.channel_key.split(":", 1)[0], "failed").inc()
        return "failed", gone
    notice = notice_for(budget, rows, settings)
    outcome = senders.send(channel, notice)
    if outcome.status == "delivered":
        status = "delivered"
    elif outcome.status == "retry" and not last:
        status = "retrying"
    else:
        status = "failed"
    DeliveryLog(db).write(
        task.delivery_id,
        task.channel_key,
        mask_target(channel, settings),
        facts,
        budget.budget_id,
        budget.scope.tenant_id or "",
        number,
        status,
        outcome,
    )
    ALERT_DELIVERIES.labels(channel_type(channel), status).inc()
    if status == "failed":
        log.error(
            "alert delivery %s to %s failed for good after %d attempts: %s",
            task.delivery_id,
            channel_type(channel),
            number,
            outcome.error,
        )
    elif status == "retrying":
        log.warning("alert delivery %s attempt %d: %s; retrying", task.delivery_id, number, outcome.error)
    return status, outcome


class LocalDelivery:
    """Embedded mode: deliveries run as tasks in the API process, claims kept in memory."""

    def __init__(self, db: ClickHouse, senders: Senders) -> None:
        self.db = db
        self.senders = senders
        self.claimed: set[str] = set()
        self._claiming = threading.Lock()  # dispatch runs on worker threads, possibly two at once
        self._tasks: set[asyncio.Task[None]] = set()
        self._running: set[asyncio.Future[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()

    def dispatch(self) -> int:
        """Plan and start what is due (blocking; call from a worker thread). Returns deliveries started."""
        tasks = self.claim(plan(self.db, self.senders.settings))
        loop = self._loop
        if loop is not None and tasks:
            loop.call_soon_threadsafe(self._spawn, tasks)
        return len(tasks)

    def claim(self, tasks: Sequence[DeliveryTask]) -> list[DeliveryTask]:
        with self._claiming:
            return self._claim(tasks)

    def _claim(self, tasks: Sequence[DeliveryTask]) -> list[DeliveryTask]:
        claimed: list[DeliveryTask] = []
        for task in tasks:
            mine = tuple(a for a, key in zip(task.alert_ids, task.claim_keys(), strict=True) if key not in self.claimed)
            if mine:
                narrowed = DeliveryTask(task.budget_id, task.channel_key, mine)
                self.claimed.update(narrowed.claim_keys())
                claimed.append(narrowed)
        return claimed

    def _spawn(self, tasks: Sequence[DeliveryTask]) -> None:
        for task in tasks:
            job = asyncio.get_running_loop().create_task(self._deliver(task), name=f"deliver-{task.delivery_id}")
            self._tasks.add(job)
            job.add_done_callback(self._tasks.discard)

    async def _deliver(self, task: DeliveryTask) -> None:
        settings = self.senders.settings
        for number in range(1, settings.max_attempts + 1):
            inner = asyncio.ensure_future(
                anyio.to_thread.run_sync(
                    functools.partial(
                        attempt, self.db, self.senders, task, number, last=number >= settings.max_attempts
                    )
                )
            )
            self._running.add(inner)
            inner.add_done_callback(self._running.discard)
            try:
                status, outcome = await asyncio.shield(inner)
            except Exception:
                log.exception("alert delivery %s attempt %d could not run", task.delivery_id, number)
                status, outcome = "retrying", None
            if status != "retrying":
                return
            await asyncio.sleep(retry_delay(number, settings, outcome.retry_after_s if outcome else None))
        # the attempts ran out on errors of our own (storage down): let a later sweep try again
        with self._claiming:
            self.claimed.difference_update(task.claim_keys())

    async def idle(self) -> None:
        """Wait until every started delivery has finished (for shutdown and tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def stop(self) -> None:
        for job in list(self._tasks):
            job.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*self._running, return_exceptions=True)
