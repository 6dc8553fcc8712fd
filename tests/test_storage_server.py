"""The storage layer against a ClickHouse server (skipped when none answers)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from service.settings import IngestSettings
from service.storage.clickhouse import ClickHouse
from service.storage.migrations import migrate, pending
from service.usage.ingest import GroupCommitBuffer
from service.usage.schemas import UsageEvent
from tests.conftest import fresh_database_name

pytestmark = pytest.mark.server


@pytest.fixture
def server_db(clickhouse_server_url: str) -> Iterator[ClickHouse]:
    db = ClickHouse(clickhouse_server_url, fresh_database_name())
    migrate(db)
    yield db
    db.command("DROP DATABASE IF EXISTS {db:Identifier}", {"db": db.database}, label="test.drop")
    db.close()


def stored(event_id: str, cost: str | None, hour: int) -> UsageEvent:
    when = datetime(2026, 3, 1, hour, 30, tzinfo=UTC)
    return UsageEvent(
        event_id=event_id,
        timestamp=when,
        received_at=when,
        tenant_id="school-a",
        service="tutor-chat",
        learner_id="learner-1",
        provider="openai",
        model="gpt-4o-mini",
        region=None,
        input_tokens=100,
        output_tokens=10,
        cached_input_tokens=0,
        cache_write_tokens=0,
        input_characters=0,
        output_characters=0,
        images=0,
        batch=False,
        cost_usd=cost,
        pricing_status="priced" if cost else "unpriced",
        price_version=None,
        metadata={},
    )


def test_migrations_and_group_commit_on_a_server(server_db: ClickHouse) -> None:
    assert pending(server_db) == []
    assert migrate(server_db) == []

    async def write() -> list[list[tuple[UsageEvent, bool]]]:
        buffer = GroupCommitBuffer(server_db, IngestSettings())
        buffer.start()
        try:
            first = await buffer.submit([stored("a", "0.000123456789", 1), stored("b", None, 2)])
            again = await buffer.submit([stored("a", "9", 1), stored("c", "0.5", 2)])
        finally:
            await buffer.stop()
        return [first, again]

    first, again = asyncio.run(write())
    assert [duplicate for _, duplicate in first] == [False, False]
    assert [duplicate for _, duplicate in again] == [True, False]
    assert again[0][0].cost_usd == "0.000123456789"
    rows = server_db.query(
        "SELECT bucket, sum(events), sum(unpriced_events), sum(cost_usd) FROM usage_hourly "
        "GROUP BY bucket ORDER BY bucket",
        label="test.rollup",
    )
    assert [(r[1], r[2], r[3]) for r in rows] == [
        (1, 0, Decimal("0.000123456789")),
        (2, 1, Decimal("0.5")),
    ]
