"""The learner rollup (usage_learner_rollup, migration 0011) and the folded summary queries:
every figure equals the raw events, corrections and bucket edges included."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from service.auth.principal import TenantScope
from service.costs.plan import Segment, plan, plan_to_day_end
from service.costs.query import (
    COUNTS,
    LEARNER_ROLLUP,
    CostFilter,
    CostQueries,
    CostRow,
    GrainSpan,
    _grain_cover,
    _net,
    learner_rollup_fits,
)
from service.costs.summaries import DEFAULT_SLACK as SLACK
from service.costs.summaries import refresh_cost_summaries
from service.storage.clickhouse import ClickHouse
from service.usage.ingest import EVENT_COLUMNS
from service.usage.schemas import UsageEvent
from tests.test_migrations import _columns, insert_events, stored_event

EVERYONE = TenantScope(None)


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


# -- covering days with months, weeks and days -----------------------------------


def _days(spans: list[GrainSpan]) -> list[date]:
    out: list[date] = []
    for span in spans:
        day = span.start
        while day < span.end:
            out.append(day)
            day += timedelta(days=1)
    return out


@pytest.mark.parametrize(
    "grains", [("month", "week", "day"), ("month", "day"), ("week", "day"), ("day",)], ids="-".join
)
def test_grain_cover_covers_each_day_once_with_whole_buckets(grains: tuple[str, ...]) -> None:
    rng = random.Random(7)
    for _ in range(500):
        start = date(2025, 12, 1) + timedelta(days=rng.randrange(120))
        end = start + timedelta(days=rng.randrange(0, 100))
        spans = _grain_cover(start, end, grains)
        days = _days(spans)
        assert days == sorted(days)
        assert days == [start + timedelta(days=i) for i in range((end - start).days)]
        for span in spans:
            assert span.grain in grains
            if span.grain == "month":
                assert (span.start.day, span.end.day) == (1, 1)
            if span.grain == "week":
                assert (span.start.weekday(), span.end.weekday()) == (0, 0)


def test_grain_cover_prefers_months_then_weeks() -> None:
    spans = _grain_cover(date(2026, 1, 28), date(2026, 3, 19), ("month", "week", "day"))
    assert spans == [
        GrainSpan("day", date(2026, 1, 28), date(2026, 2, 1)),
        GrainSpan("month", date(2026, 2, 1), date(2026, 3, 1)),
        GrainSpan("day", date(2026, 3, 1), date(2026, 3, 2)),
        GrainSpan("week", date(2026, 3, 2), date(2026, 3, 16)),
        GrainSpan("day", date(2026, 3, 16), date(2026, 3, 19)),
    ]


@pytest.mark.parametrize("grains", [("month", "week", "day"), ("month", "day"), ("week", "day")], ids="-".join)
def test_signed_grain_covers_count_each_day_of_the_range_once_and_nothing_else(grains: tuple[str, ...]) -> None:
    rng = random.Random(9)
    for _ in range(300):
        start = date(2025, 12, 1) + timedelta(days=rng.randrange(120))
        end = start + timedelta(days=rng.randrange(0, 100))
        today = start + timedelta(days=rng.randrange(-5, 110))
        net: dict[date, int] = {}
        for span in _grain_cover(start, end, grains, today):
            bucket = span.start
            while bucket < span.end:
                step = {"day": 1, "week": 7}.get(span.grain)
                following = bucket + timedelta(days=step) if step else (bucket + timedelta(days=32)).replace(day=1)
                if span.grain == "week":
                    assert bucket.weekday() == 0
                if span.grain == "month":
                    assert bucket.day == 1
                for day in _days([GrainSpan("day", bucket, following)]):
                    net[day] = net.get(day, 0) + span.sign
                bucket = following
        assert {day: n for day, n in net.items() if n} == dict.fromkeys(_days([GrainSpan("day", start, end)]), 1)
        for sign, spans in _net(_grain_cover(start, end, grains, today)).items():
            assert sign != 0
            assert all(span.sign == sign for span in spans)


def test_a_range_ending_this_month_reads_the_month_less_the_days_to_come() -> None:
    spans = _grain_cover(date(2026, 10, 29), date(2026, 11, 27), ("month", "week", "day"), date(2026, 11, 27))
    assert spans == [
        GrainSpan("day", date(2026, 10, 29), date(2026, 11, 1)),
        GrainSpan("month", date(2026, 11, 1), date(2026, 12, 1)),
        GrainSpan("day", date(2026, 11, 27), date(2026, 12, 1), -1),
    ]


def test_learner_rollup_answers_only_learner_questions_filtered_by_tenant_and_learner() -> None:
    def fits(dims: list[str], values: dict[str, list[str]], granularity: str = "none", tz: str = "UTC") -> bool:
        filters = CostFilter(EVERYONE, utc(2026, 1, 1), utc(2026, 2, 1), values)
        return learner_rollup_fits(dims, filters, granularity, tz)  # type: ignore[arg-type]

    assert fits(["learner_id"], {"tenant_id": ["a"]})
    assert fits(["tenant_id", "learner_id"], {})
    assert fits([], {"learner_id": ["x"]})
    assert fits(["learner_id"], {}, "week")
    assert not fits(["service"], {})  # no learner: the totals rollups are smaller
    assert not fits(["learner_id"], {"service": ["quiz"]})  # a dimension the rollup does not keep
    assert not fits(["learner_id", "model"], {})
    assert not fits(["learner_id"], {}, "hour")
    assert not fits(["learner_id"], {}, "day", "America/New_York")
    assert fits(["learner_id"], {"service": []})  # an empty filter filters nothing


# -- exact against the raw events -------------------------------------------------

LEARNERS = ["learner-1", "learner-2", "learner-3", ""]
MOMENTS = [
    # UTC day, ISO week and month edges, to the millisecond
    utc(2026, 1, 31, 23, 59, 59),
    utc(2026, 2, 1, 0, 0, 0),
    utc(2026, 2, 1, 23, 59, 59),  # a Sunday
    utc(2026, 2, 2, 0, 0, 0),  # the Monday after
    utc(2026, 2, 28, 23, 59, 59),
    utc(2026, 3, 1, 0, 0, 0),
    # New York midnights around the DST change of 2026-03-08
    utc(2026, 3, 8, 4, 59, 59),
    utc(2026, 3, 8, 5, 0, 0),
    utc(2026, 3, 9, 3, 59, 59),
    utc(2026, 3, 9, 4, 0, 0),
]


def crafted(rng: random.Random) -> list[UsageEvent]:
    events = []
    for index in range(400):
        if index < len(MOMENTS) * 3:
            when = MOMENTS[index % len(MOMENTS)] + timedelta(milliseconds=999 * (index // len(MOMENTS) == 1))
        else:
            when = utc(2026, 1, 20) + timedelta(seconds=rng.randrange(75 * 86400))
        cost = Decimal(rng.randrange(1, 10**9)) / Decimal(10**12) * rng.choice([1, 1000])
        events.append(
            stored_event(
                f"e{index}",
                when,
                tenant_id=rng.choice(["school-a", "school-b"]),
                service=rng.choice(["tutor-chat", "quiz"]),
                learner_id=rng.choice(LEARNERS),
                model=rng.choice(["gpt-4o-mini", "gpt-4o"]),
                input_tokens=rng.randrange(1000),
                output_tokens=rng.randrange(100),
                cost_usd=None if index % 17 == 0 else str(cost),
                pricing_status="unpriced" if index % 17 == 0 else "priced",
                price_version="" if index % 17 == 0 else "openai/test",
            )
        )
    return events


def corrections(events: list[UsageEvent], rng: random.Random) -> list[UsageEvent]:
    """Cost deltas for some events (negative too), one resolving an unpriced event."""
    fixes = []
    for event in rng.sample(events, 40):
        delta = Decimal(rng.randrange(-(10**6), 10**6)) / Decimal(10**12)
        metadata = {"resolves_unpriced": "1"} if event.pricing_status == "unpriced" else {}
        fixes.append(
            stored_event(
                f"{event.event_id}-fix",
                event.timestamp,
                tenant_id=event.tenant_id,
                service=event.service,
                learner_id=event.learner_id,
                model=event.model,
                input_tokens=0,
                output_tokens=0,
                cost_usd=str(delta),
                metadata=metadata,
            )
        )
    return fixes


def insert_corrections(db: ClickHouse, fixes: list[UsageEvent]) -> None:
    db.insert(
        "usage_events",
        [*_columns(fixes), ["correction"] * len(fixes), [f.event_id[:-4] for f in fixes]],
        [*EVENT_COLUMNS, "record_type", "corrects_event_id"],
        column_oriented=True,
        label="test",
    )


_RAW = (
    "toUInt64(countIf(record_type = 'usage')) AS events, "
    "toInt64(countIf(record_type = 'usage' AND pricing_status = 'unpriced')) "
    "- toInt64(countIf(record_type = 'correction' AND metadata['resolves_unpriced'] = '1')) AS unpriced_events, "
    + ", ".join(f"sum({c}) AS {c}" for c in COUNTS[2:])
    + ", sum(ifNull(cost_usd, 0)) AS cost_usd"
)


def raw_by(db: ClickHouse, start: datetime, end: datetime, key: str, tenant: str | None = None) -> dict[Any, Any]:
    params: dict[str, Any] = {"s": start, "e": end, "tenant": tenant or ""}
    rows = db.query(
        f"SELECT {key} AS k, {_RAW} FROM usage_events WHERE event_time >= {{s:DateTime64(3, 'UTC')}} "
        "AND event_time < {e:DateTime64(3, 'UTC')} AND ({tenant:String} = '' OR tenant_id = {tenant:String}) "
        "GROUP BY k",
        params,
        label="test.raw",
    )
    return {row[0]: (Decimal(row[-1]), *(int(v) for v in row[1:-1])) for row in rows}


@pytest.fixture
def loaded(db: ClickHouse) -> ClickHouse:
    rng = random.Random(3)
    events = crafted(rng)
    for start in range(0, len(events), 50):  # several INSERTs: unmerged rollup rows
        insert_events(db, events[start : start + 50])
    insert_corrections(db, corrections(events, rng))
    return db


def ranges(rng: random.Random) -> list[tuple[datetime, datetime]]:
    out = [
        (utc(2026, 1, 20), utc(2026, 4, 5)),  # everything
        (utc(2026, 2, 1), utc(2026, 3, 1)),  # one whole month
        (utc(2026, 2, 2), utc(2026, 2, 16)),  # two whole weeks
        (utc(2026, 1, 31, 23, 59, 59, 999000), utc(2026, 3, 9, 4)),  # edges to the millisecond
    ]
    for _ in range(12):
        start = utc(2026, 1, 20) + timedelta(minutes=rng.randrange(60 * 24 * 70), milliseconds=rng.randrange(1000))
        out.append((start, start + timedelta(minutes=rng.randrange(60, 60 * 24 * 60))))
    return out


@pytest.mark.parametrize("today", [date(2026, 11, 27), date(2026, 2, 10), date(2026, 3, 9)], ids=str)
def test_learner_questions_from_the_learner_rollup_equal_raw_sums(
    loaded: ClickHouse, today: date, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `today` steers the choice between covers (a month less the days to come, ...): all exact
    monkeypatch.setattr("service.costs.query._today", lambda: today)
    queries = CostQueries(loaded)
    for start, end in ranges(random.Random(5)):
        assert any(s.source == "usage_daily" for s in plan(start, end, "none", "UTC")) or end - start < timedelta(
            days=2
        )
        for tenant in ("school-a", None):
            filters = CostFilter(EVERYONE, start, end, {"tenant_id": [tenant]} if tenant else {})
            query = queries.grouped_sql(filters, ["learner_id"], "none", "UTC")
            assert query is not None
            assert (LEARNER_ROLLUP in query[0]) == any(
                s.source == "usage_daily" for s in plan(start, end, "none", "UTC")
            )
            assert "usage_daily" not in query[0]
            rows = queries.grouped(filters, ["learner_id"], "none", "UTC")
            got = {r.keys["learner_id"] or "": (r.cost_usd, *(r.counts[c] for c in COUNTS)) for r in rows}
            assert got == raw_by(loaded, start, end, "learner_id", tenant), (start, end, tenant)


@pytest.mark.parametrize("granularity", ["day", "week", "month"])
def test_learner_buckets_in_utc_equal_raw_sums(
    loaded: ClickHouse, granularity: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("service.costs.query._today", lambda: date(2026, 3, 3))
    queries = CostQueries(loaded)
    bucket = {
        "day": "toStartOfDay(event_time)",
        "week": "toDateTime(toMonday(event_time), 'UTC')",
        "month": "toDateTime(toStartOfMonth(event_time), 'UTC')",
    }[granularity]
    for start, end in ranges(random.Random(11))[:8]:
        filters = CostFilter(EVERYONE, start, end, {"learner_id": ["learner-1", "learner-2"]})
        rows = queries.grouped(filters, ["learner_id"], granularity, "UTC")  # type: ignore[arg-type]
        got: dict[Any, Any] = {
            (r.keys["learner_id"], r.bucket): (r.cost_usd, *(r.counts[c] for c in COUNTS)) for r in rows
        }
        expected = raw_by(loaded, start, end, f"(learner_id, toUnixTimestamp({bucket}))")
        expected = {k: v for k, v in expected.items() if k[0] in ("learner-1", "learner-2")}
        assert got == expected, (granularity, start, end)


def test_learner_days_in_new_york_across_the_dst_change_equal_raw_sums(loaded: ClickHouse) -> None:
    queries = CostQueries(loaded)
    start, end = utc(2026, 3, 6, 5), utc(2026, 3, 11, 4)  # local midnights, 2026-03-06 .. 2026-03-11
    rows = queries.grouped(CostFilter(EVERYONE, start, end), ["learner_id"], "day", "America/New_York")
    got = {(r.keys["learner_id"] or "", r.bucket): r.cost_usd for r in rows}
    expected = raw_by(
        loaded, start, end, "(learner_id, toUnixTimestamp(toStartOfDay(toTimeZone(event_time, 'America/New_York'))))"
    )
    assert got == {k: v[0] for k, v in expected.items()}


def test_learner_rollup_backfill_equals_what_the_view_wrote(loaded: ClickHouse) -> None:
    def snapshot() -> list[tuple[Any, ...]]:
        return loaded.query(
            f"SELECT grain, bucket, tenant_id, learner_id, {', '.join(f'sum({c})' for c in COUNTS)}, sum(cost_usd) "
            f"FROM {LEARNER_ROLLUP} GROUP BY grain, bucket, tenant_id, learner_id "
            "ORDER BY grain, bucket, tenant_id, learner_id",
            label="test",
        )

    written = snapshot()
    assert {row[0] for row in written} == {"day", "week", "month"}
    loaded.command(f"TRUNCATE TABLE {LEARNER_ROLLUP}", label="test")
    migration = next(
        m for m in __import__("service.storage.migrations").storage.migrations.discover() if m.version == 11
    )
    backfill = next(s for s in migration.statements() if s.startswith("INSERT"))
    loaded.command(backfill, {"db": loaded.database}, label="test")
    assert snapshot() == written
    loaded.command(backfill, {"db": loaded.database}, label="test")  # guarded: a second run adds nothing
    assert snapshot() == written


def test_summary_breakdown_folds_periods_services_and_models_exactly(loaded: ClickHouse) -> None:
    queries = CostQueries(loaded)
    start, end = utc(2026, 1, 26, 10, 30), utc(2026, 3, 9, 13, 15)
    for granularity, tz in (("day", "UTC"), ("week", "UTC"), ("day", "America/New_York"), ("month", "Asia/Kolkata")):
        found = queries.breakdown(CostFilter(EVERYONE, start, end), granularity, tz)  # type: ignore[arg-type]
        for rows, dimension in ((found.periods, None), (found.services, "service"), (found.models, "model")):
            expected = queries.grouped(
                CostFilter(EVERYONE, start, end),
                [dimension] if dimension else [],
                granularity,
                tz,  # type: ignore[arg-type]
            )
            assert sorted(
                (r.bucket, r.keys.get(dimension or ""), r.cost_usd, r.counts["events"]) for r in rows
            ) == sorted((r.bucket, r.keys.get(dimension or ""), r.cost_usd, r.counts["events"]) for r in expected), (
                granularity,
                tz,
                dimension,
            )
        assert sum((r.cost_usd for r in found.periods), Decimal(0)) == raw_by(loaded, start, end, "1")[1][0]


# -- the last day read whole, less what follows the end ---------------------------


def test_plan_to_day_end_reads_the_last_day_whole_less_the_rest_of_it() -> None:
    now = utc(2026, 3, 4, 15, 20)
    segments = plan_to_day_end(utc(2026, 3, 1, 10, 15), now, "none", "UTC", now)
    assert segments == [
        Segment("usage_events", utc(2026, 3, 1, 10, 15), utc(2026, 3, 1, 11)),
        Segment("usage_hourly", utc(2026, 3, 1, 11), utc(2026, 3, 2)),
        Segment("usage_daily", utc(2026, 3, 2), utc(2026, 3, 5)),
        Segment("usage_events", now, utc(2026, 3, 5), -1),
    ]
    # a range ending early in a day, in the past: its hours, as `plan` cuts them
    early = utc(2026, 3, 4, 3, 20)
    assert plan_to_day_end(utc(2026, 3, 1), early, "none", "UTC", now) == plan(utc(2026, 3, 1), early, "none", "UTC")
    # ... but ending now, the rest of the day holds (next to) nothing yet
    assert plan_to_day_end(utc(2026, 3, 1), early, "none", "UTC", early)[-1] == Segment(
        "usage_events", early, utc(2026, 3, 5), -1
    )
    # local days need their hours
    assert plan_to_day_end(utc(2026, 3, 1), now, "day", "America/New_York", now) == plan(
        utc(2026, 3, 1), now, "day", "America/New_York"
    )


def test_ranges_ending_now_stay_exact_with_events_stamped_after_the_end(db: ClickHouse) -> None:
    rng = random.Random(21)
    now = utc(2026, 3, 4, 15, 20, 0)
    events = [
        stored_event(
            f"n{i}",
            utc(2026, 2, 20) + timedelta(seconds=rng.randrange(14 * 86400)),  # some after `now`, on its day and later
            learner_id=rng.choice(LEARNERS),
            service=rng.choice(["tutor-chat", "quiz"]),
            cost_usd=str(Decimal(rng.randrange(1, 10**9)) / Decimal(10**12)),
        )
        for i in range(300)
    ]
    events += [
        stored_event("at-end", now, cost_usd="1000"),
        stored_event("before-end", now - timedelta(milliseconds=1)),
    ]
    insert_events(db, events)
    insert_corrections(db, corrections(events, rng))
    queries = CostQueries(db)
    for start in (utc(2026, 2, 21, 9, 45, 30), utc(2026, 2, 1), now - timedelta(hours=30)):
        filters = CostFilter(EVERYONE, start, now)
        assert plan_to_day_end(start, now, "none", "UTC", datetime.now(UTC))[-1].sign == -1
        expected = raw_by(db, start, now, "service")
        rows = queries.grouped(filters, ["service"], "none", "UTC")
        assert {r.keys["service"]: (r.cost_usd, *(r.counts[c] for c in COUNTS)) for r in rows} == expected
        learners, total = queries.ranked_with_total(
            CostFilter(EVERYONE, start, now, {"tenant_id": ["school-a"]}), "learner_id", 10
        )
        by_learner = raw_by(db, start, now, "learner_id", "school-a")
        assert {r.keys["learner_id"] or "": r.cost_usd for r in learners} == {k: v[0] for k, v in by_learner.items()}
        assert total.cost_usd == sum((v[0] for v in by_learner.values()), Decimal(0))
        assert total.counts["events"] == sum(v[1] for v in by_learner.values())


def test_plan_to_day_end_reads_today_whole_from_midnight(db: ClickHouse) -> None:
    midnight, now = utc(2026, 3, 4), utc(2026, 3, 4, 9, 30)
    assert plan_to_day_end(midnight, now, "day", "UTC", now) == [
        Segment("usage_daily", midnight, utc(2026, 3, 5)),
        Segment("usage_events", now, utc(2026, 3, 5), -1),
    ]
    insert_events(
        db,
        [
            stored_event("a", midnight, cost_usd="0.25"),
            stored_event("b", now - timedelta(milliseconds=1), cost_usd="0.5"),
            stored_event("c", now, cost_usd="100"),  # at the end: left out
            stored_event("d", utc(2026, 3, 3, 23, 59, 59), cost_usd="1000"),  # the day before: left out
        ],
    )
    rows = CostQueries(db).grouped(CostFilter(EVERYONE, midnight, now), [], "day", "UTC")
    assert [(r.bucket, r.cost_usd, r.counts["events"]) for r in rows] == [
        (int(midnight.timestamp()), Decimal("0.75"), 2)
    ]


# -- the summary in one query ---------------------------------------------------------


NO_SLACK = timedelta(0)


def _tops(rows: list[CostRow], name: str, bucket: int, top: int) -> list[tuple[str, Decimal]]:
    found = sorted((r for r in rows if r.bucket == bucket), key=lambda r: (-r.cost_usd, r.keys[name] or ""))
    return [(r.keys[name] or "", r.cost_usd) for r in found[:top]]


def _summary_matches_breakdown(
    queries: CostQueries, filters: CostFilter, granularity: str, tz: str, slack: timedelta | None
) -> datetime:
    rows, split = queries.summary_periods(filters, granularity, tz, granularity, 2, slack)  # type: ignore[arg-type]
    expected = queries.breakdown(filters, granularity, tz)  # type: ignore[arg-type]
    assert {r.bucket: (r.cost_usd, r.counts) for r in rows} == {
        r.bucket: (r.cost_usd, r.counts) for r in expected.periods
    }
    for row in rows:
        assert row.top_services == _tops(expected.services, "service", row.bucket, 2)
        assert row.top_models == _tops(expected.models, "model", row.bucket, 2)
    return split


def test_summary_periods_read_current_precomputed_periods_and_the_rollups_for_the_rest(loaded: ClickHouse) -> None:
    queries = CostQueries(loaded)
    end = utc(2026, 3, 9, 13, 15)
    cases = [(utc(2026, 1, 26), "day"), (utc(2026, 1, 26), "week"), (utc(2026, 1, 1), "month")]
    for start, period in cases:  # before the first refresh: nothing precomputed
        assert _summary_matches_breakdown(queries, CostFilter(EVERYONE, start, end), period, "UTC", SLACK) == start
        _summary_matches_breakdown(queries, CostFilter(EVERYONE, start, end), period, "America/New_York", None)
    refresh_cost_summaries(loaded, SLACK)
    # (the crafted events were received moments ago: without slack their rows are current)
    for start, period in cases:  # whole periods ending by `end` from cost_summaries, the rest from the rollups
        split = _summary_matches_breakdown(queries, CostFilter(EVERYONE, start, end), period, "UTC", NO_SLACK)
        assert split == {"day": utc(2026, 3, 9), "week": utc(2026, 3, 9), "month": utc(2026, 3, 1)}[period]
        filtered = CostFilter(EVERYONE, start, end, {"tenant_id": ["school-a"], "service": ["quiz"]})
        assert _summary_matches_breakdown(queries, filtered, period, "UTC", NO_SLACK) == split
    # a late event on 2026-02-11 (a Wednesday): its day, week and month are stale from there on
    insert_events(
        loaded, [stored_event("late", utc(2026, 2, 11, 8), cost_usd="0.000000000007", received_at=datetime.now(UTC))]
    )
    for start, period in cases:
        split = _summary_matches_breakdown(queries, CostFilter(EVERYONE, start, end), period, "UTC", NO_SLACK)
        assert split == {"day": utc(2026, 2, 11), "week": utc(2026, 2, 9), "month": utc(2026, 2, 1)}[period]
        rows, _ = queries.summary_periods(CostFilter(EVERYONE, start, end), period, "UTC", period, 5, NO_SLACK)  # type: ignore[arg-type]
        assert sum((r.cost_usd for r in rows), Decimal(0)) == raw_by(loaded, start, end, "1")[1][0]


@pytest.mark.parametrize("today", [date(2026, 11, 27), date(2026, 3, 3)], ids=str)
def test_narrow_learner_ranking_has_exact_learner_figures_and_totals(
    loaded: ClickHouse, today: date, monkeypatch: pytest.MonkeyPatch
) -> None:
    # learner rows from the learner-keyed rollups (cost, events, tokens), every other count
    # of the total from the rollups without the learner
    monkeypatch.setattr("service.costs.query._today", lambda: today)
    queries = CostQueries(loaded)
    ranked = ("events", "input_tokens", "output_tokens")
    for start, end in ranges(random.Random(9))[:10]:
        filters = CostFilter(EVERYONE, start, end, {"tenant_id": ["school-a"]})
        rows, total = queries.ranked_with_total(filters, "learner_id", 10, narrow=True)
        expected = raw_by(loaded, start, end, "learner_id", "school-a")
        got = {r.keys["learner_id"]: (r.cost_usd, *(r.counts[c] for c in ranked)) for r in rows if r.keys["learner_id"]}
        indexes = [1 + COUNTS.index(c) for c in ranked]
        assert got == {k: (v[0], *(v[i] for i in indexes)) for k, v in expected.items() if k}, (start, end)
        assert (total.cost_usd, *(total.counts[c] for c in COUNTS)) == tuple(
            sum((v[i] for v in expected.values()), Decimal(0) if i == 0 else 0) for i in range(1 + len(COUNTS))
        ), (start, end)
