"""From request bytes to stored rows: validate, price, deduplicate, group-commit.

`Ingestor` is the one ingest path: the API handlers and `finops demo` use it.
`GroupCommitBuffer` gathers events from concurrent requests and writes them
with one INSERT per batch window; a request is answered only after its rows
are written (a 2xx means stored). Repeated `event_id`s are dropped before the
INSERT, because the materialized views count whatever reaches `usage_events`.
With the embedded engine, "written" means appended to the ingest journal on
local disk; a mover INSERTs the journal into ClickHouse (service/usage/journal.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
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
    INGEST_JOURNAL_ROWS,
    INGEST_MOVE_FAILURES,
    INGEST_MOVE_ROWS,
    INGEST_MOVE_SECONDS,
    INGEST_REJECTED,
    UNPRICED_EVENTS,
)
from service.money import MAX_EVENT_COST, money_str, parse_money
from service.pricing.overrides import PricingState
from service.settings import IngestSettings
from service.storage.clickhouse import ClickHouse
from service.usage.claims import SharedClaims
from service.usage.journal import Journal, KeyFilter
from service.usage.schemas import (
    BatchItemResult,
    BatchResult,
    UsageBatchIn,
    UsageEvent,
    UsageEventIn,
)

log = logging.getLogger("finops.ingest")

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
    """Gathers events from concurrent requests into few writes; answers after the write.

    One flusher task takes whole requests from the queue and hands each batch
    to a writer; up to `max_concurrent_writes` batches are written at once,
    while the next batch gathers. A key is claimed in memory (on the event
    loop, so without races) for the time its batch is in flight: a repeat that
    arrives meanwhile waits for that write and answers as its duplicate. With
    `shared` claims (Redis), replicas do the same across processes. The
    durable record of keys is `usage_event_keys`, checked before each write.
    A failed write fails every request in its batch and releases its claims.

    With a `journal` (the embedded engine), a batch is written to the journal
    and the mover INSERTs what the journal holds into ClickHouse: at once when
    it is idle, else at most once per `move_interval_ms`, and at once when a
    reader calls `settled()`. Until then the events answer repeats from memory;
    a failed INSERT is retried, never lost. `open()` first moves what an
    earlier run left in the journal.
    """

    def __init__(
        self,
        db: ClickHouse,
        settings: IngestSettings,
        on_written: Callable[[list[UsageEvent]], None] | None = None,
        shared: SharedClaims | None = None,
        journal: Journal | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.on_written = on_written
        self.shared = shared
        self.journal = journal
        self.keys: KeyFilter | None = None
        self._queue: deque[_Pending] = deque()
        self._rows = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._claims: dict[Key, asyncio.Future[UsageEvent]] = {}
        self._writes: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(max(1, settings.max_concurrent_writes))
        # journal mode: acknowledged events not yet in ClickHouse, in journal order
        self._unmoved: dict[Key, UsageEvent] = {}
        self._segment_of: dict[Key, int] = {}  # the journal segment each unmoved event is in
        self._mover: asyncio.Task[None] | None = None
        self._move_wake = asyncio.Event()
        self._urgent = False
        self._appended = 0  # journal batches acknowledged so far
        self._moved = 0  # of which all are in ClickHouse
        self._settle_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._move_failures = 0

    @property
    def depth(self) -> int:
        return self._rows

    @property
    def move_failures(self) -> int:
        """Failed moves of the journal into ClickHouse since the last one that succeeded."""
        return self._move_failures

    @property
    def unmoved(self) -> int:
        """Acknowledged events still only in the journal."""
        return len(self._unmoved)

    async def open(self) -> None:
        """Move what the journal kept from an earlier run, learn the stored keys, start."""
        if self.journal is not None:
            journal = self.journal

            def recover() -> KeyFilter:
                events, segments = journal.replay()
                if events:
                    log.info("ingest journal: moving %d events left by an earlier run", len(events))
                    self._insert_new(events)
                journal.forget(segments)
                return KeyFilter.from_database(self.db)

            self.keys = await anyio.to_thread.run_sync(recover)
        self.start()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(), name="ingest-flusher")
        if self.journal is not None:
            self._mover = loop.create_task(self._move_loop(), name="ingest-mover")

    async def stop(self) -> None:
        """Write what is buffered (and move what the journal holds), then stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
        if self._mover is not None:
            self._move_wake.set()
            await self._mover
            self._mover = None
        if self.journal is not None:
            self.journal.close()

    async def settled(self, timeout_s: float = 5.0) -> None:
        """Wait until every event acknowledged so far is in ClickHouse (or the timeout
        passes, when ClickHouse refuses writes): readers call this first."""
        if self._mover is None or self._moved >= self._appended:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._settle_waiters.append((self._appended, waiter))
        self._urgent = True
        self._move_wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout_s)
        except TimeoutError:
            log.warning("reading before %d acknowledged events reached ClickHouse", len(self._unmoved))

    async def submit(self, events: list[UsageEvent]) -> list[tuple[UsageEvent, bool]]:
        if self._closing or self._task is None:
            raise Overloaded("the service is shutting down", retry_after=5)
        if self._rows + len(self._unmoved) + len(events) > self.settings.buffer_max_rows:
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
        originals: dict[Key, UsageEvent | BaseException] = {}
        for event in events:
            key = (event.tenant_id, event.event_id)
            if key in mine or key in elsewhere or key in originals:
                continue
            journaled = self._unmoved.get(key)
            if journaled is not None:
                originals[key] = journaled
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
            fresh = [event for key, event in mine.items() if written[key] is event]
            if self.journal is not None:
                for event in fresh:
                    self._unmoved[(event.tenant_id, event.event_id)] = event
            for key, stored in written.items():
                self._claims.pop(key).set_result(stored)
            if self.journal is not None:
                if fresh:
                    self._appended += 1
                    self._move_wake.set()
            elif self.on_written is not None:
                self.on_written(fresh)
            originals.update(written)
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
        """Write the candidates not stored yet (INSERT, or append to the journal); returns
        each key's stored event. With the key filter, only keys it may know are looked up.
        Runs on a worker thread."""
        started = time.perf_counter()
        lookup = list(candidates) if self.keys is None else self.keys.maybe_stored(list(candidates))
        stored = find_stored(self.db, lookup)
        fresh = [event for key, event in candidates.items() if key not in stored]
        written_at = _to_millis(datetime.now(UTC))
        for event in fresh:  # stamped at the write, so freshness checks can trust it
            event.received_at = written_at
        if self.journal is None:
            self._insert(fresh)
        elif fresh:
            segment = self.journal.append(fresh)
            keys = [(event.tenant_id, event.event_id) for event in fresh]
            if self.keys is not None:
                self.keys.add(keys)
            for key in keys:
                self._segment_of[key] = segment
        _count_stored(fresh)
        INGEST_FLUSH_ROWS.observe(len(fresh))
        INGEST_FLUSH_SECONDS.observe(time.perf_counter() - started)
        return {**candidates, **stored}

    def _insert(self, events: list[UsageEvent]) -> None:
        if events:
            self.db.insert(
                "usage_events",
                _columns(events),
                EVENT_COLUMNS,
                column_oriented=True,
                label="usage.insert",
                settings=INSERT_SETTINGS,
            )

    def _insert_new(self, events: list[UsageEvent]) -> None:
        """INSERT those of `events` not in ClickHouse yet (a replay, a retry after an
        INSERT that may have landed in part)."""
        for start in range(0, len(events), MOVE_CHUNK):
            chunk = events[start : start + MOVE_CHUNK]
            stored = find_stored(self.db, [(e.tenant_id, e.event_id) for e in chunk])
            self._insert([e for e in chunk if (e.tenant_id, e.event_id) not in stored])

    # -- journal mode: the mover ------------------------------------------------

    async def _move_loop(self) -> None:
        assert self.journal is not None
        interval = self.settings.move_interval_ms / 1000
        last = -interval
        while True:
            if self._moved >= self._appended:
                if self._closing and self._task is None and not self._writes:
                    return
                self._move_wake.clear()
                await self._move_wake.wait()
                continue
            wait = last + interval - time.monotonic()
            if wait > 0 and not self._urgent and not self._closing:
                self._move_wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._move_wake.wait(), wait)
                continue
            self._urgent = False
            last = time.monotonic()
            covered = self._appended
            events = list(self._unmoved.values())
            self.journal.seal()
            try:
                await anyio.to_thread.run_sync(self._move, events)
            except Exception as exc:
                self._move_failures += 1
                INGEST_MOVE_FAILURES.inc()
                delay = min(30.0, 0.5 * 2 ** min(self._move_failures, 6))
                log.error(
                    "moving %d journaled events into ClickHouse failed (attempt %d; retrying in %.1f s): %s",
                    len(events),
                    self._move_failures,
                    delay,
                    exc,
                )
                if self._closing:
                    log.error("stopping with %d events in the ingest journal; they move at the next start", len(events))
                    return
                self._move_wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._move_wake.wait(), delay)
                continue
            for event in events:
                self._unmoved.pop((event.tenant_id, event.event_id), None)
            self._moved = max(self._moved, covered)
            INGEST_JOURNAL_ROWS.set(len(self._unmoved))
            self._release_settled()
            if self.on_written is not None and events:
                self.on_written(events)

    def _move(self, events: list[UsageEvent]) -> None:
        """INSERT journaled events; after a failed attempt, only those not stored yet."""
        assert self.journal is not None
        started = time.perf_counter()
        if self._move_failures:
            self._insert_new(events)
        else:
            for start in range(0, len(events), MOVE_CHUNK):
                self._insert(events[start : start + MOVE_CHUNK])
        self._move_failures = 0
        self.journal.moved(self._segment_counts(events))
        INGEST_MOVE_ROWS.observe(len(events))
        INGEST_MOVE_SECONDS.observe(time.perf_counter() - started)

    def _segment_counts(self, events: list[UsageEvent]) -> dict[int, int]:
        counts: dict[int, int] = {}
        for event in events:
            segment = self._segment_of.pop((event.tenant_id, event.event_id), None)
            if segment is not None:
                counts[segment] = counts.get(segment, 0) + 1
        return counts

    def _release_settled(self) -> None:
        waiting = []
        for covered, waiter in self._settle_waiters:
            if covered <= self._moved:
                if not waiter.done():
                    waiter.set_result(None)
            else:
                waiting.append((covered, waiter))
        self._settle_waiters = waiting


def _count_stored(events: list[UsageEvent]) -> None:
    for event in events:
        INGEST_EVENTS.labels(event.pricing_status).inc()
        if event.pricing_status == "unpriced":
            UNPRICED_EVENTS.labels(event.provider).inc()


# INSERTs of the mover hold at most this many rows each.
MOVE_CHUNK = 50_000


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
