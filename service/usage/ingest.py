"""From request bytes to stored rows: validate, price, deduplicate, group-commit.

`Ingestor` is the one ingest path: the API handlers and `finops demo` use it.
`GroupCommitBuffer` gathers events from concurrent requests and writes them
with one INSERT per batch window; a request is answered only after its rows
are written (a 2xx means stored). Repeated `event_id`s are dropped before the
INSERT, because the materialized views count whatever reaches `usage_events`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import anyio.to_thread
import msgspec

from service.auth.principal import Principal
from service.bodies import decode_body, problem_from_msgspec
from service.errors import InvalidInput, Overloaded
from service.metrics import (
    INGEST_BUFFER_ROWS,
    INGEST_DUPLICATES,
    INGEST_EVENTS,
    INGEST_FLUSH_ROWS,
    INGEST_FLUSH_SECONDS,
    INGEST_REJECTED,
    UNPRICED_EVENTS,
)
from service.money import MAX_EVENT_COST, money_str, parse_money
from service.pricing.overrides import PricingState
from service.settings import IngestSettings
from service.storage.clickhouse import ClickHouse
from service.usage.claims import SharedClaims
from service.usage.schemas import (
    BatchItemResult,
    BatchResult,
    UsageBatchIn,
    UsageEvent,
    UsageEventIn,
)

MAX_FUTURE_SKEW = timedelta(minutes=5)
EARLIEST_EVENT = datetime(2000, 1, 1, tzinfo=UTC)  # the rollups' DateTime columns start in 1970

EVENT_COLUMNS: tuple[str, ...] = (
    "event_id",
    "event_time",
    "received_at",
    "tenant_id",
    "service",
    "learner_id",
    "provider",
    "model",
    "region",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "input_characters",
    "output_characters",
    "images",
    "batch",
    "cost_usd",
    "pricing_status",
    "price_version",
    "metadata",
)

_event_decoder = msgspec.json.Decoder(UsageEventIn)
_batch_decoder = msgspec.json.Decoder(UsageBatchIn)


def decode_event(body: bytes) -> UsageEventIn:
    return decode_body(_event_decoder, body, "usage event")


def decode_batch(body: bytes, max_events: int) -> list[UsageEventIn | dict[str, Any]]:
    """Each item decoded, or the problem that stopped it (reported together later)."""
    batch = decode_body(_batch_decoder, body, "batch")
    if not batch.events:
        raise InvalidInput("events is empty", errors=[{"field": "events", "reason": "at least one event"}])
    if len(batch.events) > max_events:
        raise InvalidInput(
            f"batch has {len(batch.events)} events; the limit is {max_events}",
            errors=[{"field": "events", "reason": f"at most {max_events} events per batch"}],
        )
    items: list[UsageEventIn | dict[str, Any]] = []
    for index, raw in enumerate(batch.events):
        try:
            items.append(_event_decoder.decode(raw))
        except msgspec.ValidationError as exc:
            items.append(problem_from_msgspec(exc, index))
    return items


class Ingestor:
    """Validates, prices and stores usage events for one caller at a time."""

    def __init__(self, pricing: PricingState, buffer: GroupCommitBuffer, settings: IngestSettings) -> None:
        self.pricing = pricing
        self.buffer = buffer
        self.settings = settings

    def prepare(self, item: UsageEventIn, principal: Principal, now: datetime, index: int | None = None) -> UsageEvent:
        """Check the rules a schema cannot express, and price the event."""
        tenant = principal.write_tenant(item.tenant_id)
        problems: list[dict[str, Any]] = []
        timestamp = _to_millis(item.timestamp.astimezone(UTC) if item.timestamp else now)
        if timestamp - now > MAX_FUTURE_SKEW:
            problems.append({"field": "timestamp", "reason": "more than 5 minutes in the future"})
        elif timestamp < EARLIEST_EVENT:
            problems.append({"field": "timestamp", "reason": f"before {EARLIEST_EVENT:%Y-%m-%d}"})
        if item.cached_input_tokens + item.cache_write_tokens > item.input_tokens:
            problems.append(
                {
                    "field": "cached_input_tokens",
                    "reason": "cached_input_tokens + cache_write_tokens exceed input_tokens "
                    "(input_tokens is the whole prompt, cache reads and writes included)",
                }
            )
        provided = None
        if item.cost_usd is not None:
            try:
                provided = parse_money(item.cost_usd)
            except ValueError as exc:
                problems.append({"field": "cost_usd", "reason": str(exc)})
        if problems:
            raise InvalidInput(
                "invalid usage event: " + problems[0]["reason"], errors=[_at(p, index) for p in problems]
            )

        cost: Decimal | None = provided
        price_version = None
        status = "provided"
        if provided is None:
            cost, price_version = self.pricing.cost(tenant, item.provider, item.model, item.region, timestamp, item)
            if cost is not None:
                if cost >= MAX_EVENT_COST:
                    problem = {"field": "input_tokens", "reason": f"the event would cost {cost} USD; at most 999999.99"}
                    raise InvalidInput("invalid usage event: cost out of range", errors=[_at(problem, index)])
                status = "priced"
            else:
                status = "unpriced"
        return UsageEvent(
            event_id=item.event_id or str(uuid.uuid4()),
            timestamp=timestamp,
            received_at=now,
            tenant_id=tenant,
            service=item.service,
            learner_id=item.learner_id,
            provider=item.provider,
            model=item.model,
            region=item.region,
            input_tokens=item.input_tokens,
            output_tokens=item.output_tokens,
            cached_input_tokens=item.cached_input_tokens,
            cache_write_tokens=item.cache_write_tokens,
            input_characters=item.input_characters,
            output_characters=item.output_characters,
            images=item.images,
            batch=item.batch,
            cost_usd=None if cost is None else money_str(cost),
            pricing_status=status,  # type: ignore[arg-type]
            price_version=price_version,
            metadata=item.metadata or {},
        )

    async def record(self, item: UsageEventIn, principal: Principal) -> tuple[UsageEvent, bool]:
        """Store one event; returns (stored event, whether it was a repeat)."""
        event = self.prepare(item, principal, _to_millis(datetime.now(UTC)))
        [outcome] = await self.buffer.submit([event])
        return outcome

    def _prepare_all(
        self, items: Sequence[UsageEventIn | dict[str, Any]], principal: Principal, now: datetime
    ) -> list[UsageEvent]:
        events: list[UsageEvent] = []
        problems: list[dict[str, Any]] = []
        for index, item in enumerate(items):
            if isinstance(item, dict):
                problems.append(item)
                continue
            try:
                events.append(self.prepare(item, principal, now, index))
            except InvalidInput as exc:
                problems.extend(exc.errors)
        if problems:
            bad = len({p.get("index") for p in problems})
            raise InvalidInput(f"{bad} of {len(items)} events are invalid; none stored", errors=problems)
        return events

    async def record_many(self, items: Sequence[UsageEventIn | dict[str, Any]], principal: Principal) -> BatchResult:
        """Store a batch all-or-nothing. `items` are decoded events or, for items that
        failed to decode, their problem; every problem of every item is reported."""
        now = _to_millis(datetime.now(UTC))
        if len(items) > 100:  # pricing thousands of events would stall the event loop
            events = await anyio.to_thread.run_sync(self._prepare_all, items, principal, now)
        else:
            events = self._prepare_all(items, principal, now)
        outcomes = await self.buffer.submit(events)
        results = [
            BatchItemResult(stored.event_id, stored.cost_usd, stored.pricing_status, duplicate)
            for stored, duplicate in outcomes
        ]
        duplicates = sum(1 for r in results if r.duplicate)
        return BatchResult(accepted=len(results) - duplicates, duplicates=duplicates, events=results)


Key = tuple[str, str]  # (tenant_id, event_id)


@dataclass
class _Pending:
    events: list[UsageEvent]
    future: asyncio.Future[list[tuple[UsageEvent, bool]]]


class GroupCommitBuffer:
    """Gathers events from concurrent requests into few INSERTs; answers after the write.

    One flusher task takes whole requests from the queue and hands each batch
    to a writer; up to `max_concurrent_writes` batches are written at once,
    while the next batch gathers. A key is claimed in memory (on the event
    loop, so without races) for the time its batch is in flight: a repeat that
    arrives meanwhile waits for that write and answers as its duplicate. With
    `shared` claims (Redis), replicas do the same across processes. The
    durable record of keys is `usage_event_keys`, checked before each INSERT.
    A failed write fails every request in its batch and releases its claims.
    """

    def __init__(
        self,
        db: ClickHouse,
        settings: IngestSettings,
        on_written: Callable[[list[UsageEvent]], None] | None = None,
        shared: SharedClaims | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.on_written = on_written
        self.shared = shared
        self._queue: deque[_Pending] = deque()
        self._rows = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._claims: dict[Key, asyncio.Future[UsageEvent]] = {}
        self._writes: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(max(1, settings.max_concurrent_writes))

    @property
    def depth(self) -> int:
        return self._rows

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="ingest-flusher")

    async def stop(self) -> None:
        """Write what is buffered, then stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)

    async def submit(self, events: list[UsageEvent]) -> list[tuple[UsageEvent, bool]]:
        if self._closing or self._task is None:
            raise Overloaded("the service is shutting down", retry_after=5)
        if self._rows + len(events) > self.settings.buffer_max_rows:
            INGEST_REJECTED.inc()
            raise Overloaded("ingest buffer is full; retry shortly", retry_after=1)
        pending = _Pending(events, asyncio.get_running_loop().create_future())
        self._queue.append(pending)
        self._rows += len(events)
        INGEST_BUFFER_ROWS.set(self._rows)
        self._wake.set()
        return await pending.future

    async def _run(self) -> None:
        linger = min(self.settings.flush_interval_ms, 50) / 1000
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                # an idle flusher waits briefly for company; a busy one never does
                if linger and not self._writes and not self._closing:
                    await asyncio.sleep(linger)
                continue
            await self._slots.acquire()
            batch = self._take()
            task = asyncio.get_running_loop().create_task(self._flush(batch))
            self._writes.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._writes.discard(task)
        self._slots.release()

    def _take(self) -> list[_Pending]:
        """Whole requests up to the row cap (always at least one request)."""
        taken: list[_Pending] = []
        rows = 0
        while self._queue:
            size = len(self._queue[0].events)
            if taken and rows + size > self.settings.flush_max_rows:
                break
            taken.append(self._queue.popleft())
            rows += size
        return taken

    async def _flush(self, batch: list[_Pending]) -> None:
        events = [event for pending in batch for event in pending.events]
        loop = asyncio.get_running_loop()
        mine: dict[Key, UsageEvent] = {}
        elsewhere: dict[Key, asyncio.Future[UsageEvent]] = {}
        for event in events:
            key = (event.tenant_id, event.event_id)
            if key in mine or key in elsewhere:
                continue
            claim = self._claims.get(key)
            if claim is not None:
                elsewhere[key] = claim
            else:
                mine[key] = event
                self._claims[key] = loop.create_future()
        try:
            try:
                written = await self._write_claimed(mine)
            except BaseException as exc:
                for key in mine:
                    claim = self._claims.pop(key)
                    claim.set_exception(exc)
                    claim.add_done_callback(_retrieved)  # waiters may be none
                raise
            for key, stored in written.items():
                self._claims.pop(key).set_result(stored)
            if self.on_written is not None:
                self.on_written([event for key, event in mine.items() if written[key] is event])
            originals: dict[Key, UsageEvent | BaseException] = dict(written)
            for key, claim in elsewhere.items():
                try:
                    originals[key] = await asyncio.shield(claim)
                except Exception as exc:  # that key's own write failed elsewhere
                    originals[key] = exc
        except Exception as exc:  # this batch's write failed: every request in it learns so
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            return
        finally:
            self._rows -= len(events)
            INGEST_BUFFER_ROWS.set(self._rows)
        for pending in batch:
            outcomes: list[tuple[UsageEvent, bool]] = []
            failure: BaseException | None = None
            for event in pending.events:
                original = originals[(event.tenant_id, event.event_id)]
                if isinstance(original, BaseException):
                    failure = original
                    break
                outcomes.append((original, original is not event))
            if pending.future.done():
                continue
            if failure is not None:
                pending.future.set_exception(failure)
                continue
            duplicates = sum(1 for _, duplicate in outcomes if duplicate)
            if duplicates:
                INGEST_DUPLICATES.inc(duplicates)
            pending.future.set_result(outcomes)

    async def _write_claimed(self, candidates: dict[Key, UsageEvent]) -> dict[Key, UsageEvent]:
        """`_write`, holding the keys' claims shared with other replicas (when configured)."""
        if self.shared is None or not candidates:
            return await anyio.to_thread.run_sync(self._write, candidates)
        token, held = await self.shared.claim(list(candidates))
        try:
            return await anyio.to_thread.run_sync(self._write, candidates)
        finally:
            await self.shared.release(token, held)

    def _write(self, candidates: dict[Key, UsageEvent]) -> dict[Key, UsageEvent]:
        """INSERT the candidates not stored yet; returns each key's stored event.
        Runs on a worker thread."""
        started = time.perf_counter()
        stored = find_stored(self.db, list(candidates))
        fresh = [event for key, event in candidates.items() if key not in stored]
        written_at = _to_millis(datetime.now(UTC))
        for event in fresh:  # stamped at the write, so freshness checks can trust it
            event.received_at = written_at
        if fresh:
            self.db.insert(
                "usage_events",
                _columns(fresh),
                EVENT_COLUMNS,
                column_oriented=True,
                label="usage.insert",
                settings=INSERT_SETTINGS,
            )
        for event in fresh:
            INGEST_EVENTS.labels(event.pricing_status).inc()
            if event.pricing_status == "unpriced":
                UNPRICED_EVENTS.labels(event.provider).inc()
        INGEST_FLUSH_ROWS.observe(len(fresh))
        INGEST_FLUSH_SECONDS.observe(time.perf_counter() - started)
        return {**candidates, **stored}


# Materialized views of one INSERT run side by side rather than one after another,
# and SummingMergeTree rollups are not folded at insert time (background merges
# fold them; readers always sum() ... GROUP BY), which roughly doubles INSERT speed.
INSERT_SETTINGS = {"parallel_view_processing": 1, "optimize_on_insert": 0, "max_partitions_per_insert_block": 400}


def _columns(events: list[UsageEvent]) -> list[list[Any]]:
    return [
        [e.event_id for e in events],
        [e.timestamp for e in events],
        [e.received_at for e in events],
        [e.tenant_id for e in events],
        [e.service for e in events],
        [e.learner_id or "" for e in events],
        [e.provider for e in events],
        [e.model for e in events],
        [e.region or "" for e in events],
        [e.input_tokens for e in events],
        [e.output_tokens for e in events],
        [e.cached_input_tokens for e in events],
        [e.cache_write_tokens for e in events],
        [e.input_characters for e in events],
        [e.output_characters for e in events],
        [e.images for e in events],
        [e.batch for e in events],
        [None if e.cost_usd is None else Decimal(e.cost_usd) for e in events],
        [e.pricing_status for e in events],
        [e.price_version or "" for e in events],
        [e.metadata for e in events],
    ]


SELECT_EVENT = (
    "SELECT event_id, event_time, received_at, tenant_id, service, learner_id, provider, model, region, "
    "input_tokens, output_tokens, cached_input_tokens, cache_write_tokens, input_characters, "
    "output_characters, images, batch, toString(cost_usd) AS cost, pricing_status, price_version, metadata "
    "FROM usage_events"
)


def event_from_row(row: Sequence[Any]) -> UsageEvent:
    cost = row[17]
    return UsageEvent(
        event_id=row[0],
        timestamp=_utc(row[1]),
        received_at=_utc(row[2]),
        tenant_id=row[3],
        service=row[4],
        learner_id=row[5] or None,
        provider=row[6],
        model=row[7],
        region=row[8] or None,
        input_tokens=row[9],
        output_tokens=row[10],
        cached_input_tokens=row[11],
        cache_write_tokens=row[12],
        input_characters=row[13],
        output_characters=row[14],
        images=row[15],
        batch=bool(row[16]),
        cost_usd=None if cost is None or cost == "\\N" else _trim(cost),
        pricing_status=row[18],
        price_version=row[19] or None,
        metadata=dict(row[20]),
    )


def _trim(text: str) -> str:
    return money_str(Decimal(text))


def _retrieved(future: asyncio.Future[UsageEvent]) -> None:
    future.exception()


def _at(problem: dict[str, Any], index: int | None) -> dict[str, Any]:
    return problem if index is None else {"index": index, **problem}


def _to_millis(value: datetime) -> datetime:
    """Times are stored as DateTime64(3): answer with what is stored."""
    return value.replace(microsecond=value.microsecond - value.microsecond % 1000)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def find_stored(db: ClickHouse, keys: list[tuple[str, str]]) -> dict[tuple[str, str], UsageEvent]:
    """Already-stored events among (tenant_id, event_id) keys."""
    if not keys:
        return {}
    tenants = sorted({tenant for tenant, _ in keys})
    ids = [event_id for _, event_id in keys]
    wanted = set(keys)
    hits = db.query(
        "SELECT tenant_id, event_id, min(event_time) FROM usage_event_keys "
        "WHERE tenant_id IN {tenants:Array(String)} AND event_id IN {ids:Array(String)} "
        "GROUP BY tenant_id, event_id",
        {"tenants": tenants, "ids": ids},
        label="usage.dedup_keys",
    )
    found = [(tenant, event_id, when) for tenant, event_id, when in hits if (tenant, event_id) in wanted]
    if not found:
        return {}
    rows = db.query(
        SELECT_EVENT + " WHERE record_type = 'usage' AND tenant_id IN {tenants:Array(String)} "
        "AND event_id IN {ids:Array(String)} AND event_time IN {times:Array(DateTime64(3, 'UTC'))} "
        "ORDER BY received_at LIMIT 1 BY tenant_id, event_id",
        {
            "tenants": sorted({f[0] for f in found}),
            "ids": [f[1] for f in found],
            "times": [_utc(f[2]) for f in found],
        },
        label="usage.dedup_originals",
    )
    result: dict[tuple[str, str], UsageEvent] = {}
    for row in rows:
        key = (row[3], row[0])
        if key in wanted:
            result[key] = event_from_row(row)
    return result
