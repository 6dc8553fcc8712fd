"""Two API replicas on one database and one Redis store a repeated event once."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from redis.asyncio import Redis

from service.errors import Overloaded
from service.settings import IngestSettings
from service.storage.clickhouse import ClickHouse
from service.usage.claims import SharedClaims, claim_key
from service.usage.ingest import GroupCommitBuffer
from service.usage.schemas import UsageEvent


def event(event_id: str, replica: str) -> UsageEvent:
    now = datetime.now(UTC).replace(microsecond=0)
    return UsageEvent(
        event_id=event_id,
        timestamp=now,
        received_at=now,
        tenant_id="school-a",
        service="tutor-chat",
        learner_id=None,
        provider="openai",
        model="gpt-4o-mini",
        region=None,
        input_tokens=1,
        output_tokens=1,
        cached_input_tokens=0,
        cache_write_tokens=0,
        input_characters=0,
        output_characters=0,
        images=0,
        batch=False,
        cost_usd="0.000001",
        pricing_status="provided",
        price_version=None,
        metadata={"replica": replica},
    )


def test_concurrent_repeats_across_replicas_are_stored_once(db: ClickHouse, redis_url: str) -> None:
    ids = [f"e-{i}" for i in range(200)]

    async def scenario() -> list[list[tuple[UsageEvent, bool]]]:
        redis = Redis.from_url(redis_url)
        replicas = [
            GroupCommitBuffer(db, IngestSettings(flush_interval_ms=1), shared=SharedClaims(redis)) for _ in range(2)
        ]
        for replica in replicas:
            replica.start()
        try:
            submissions = [
                replica.submit([event(event_id, str(n))]) for event_id in ids for n, replica in enumerate(replicas)
            ]
            results = await asyncio.gather(*submissions)
            leftover = await redis.keys("finops:claim:*")
        finally:
            for replica in replicas:
                await replica.stop()
            await redis.aclose()
        assert leftover == []  # no claim outlives its write
        return results

    results = asyncio.run(scenario())
    stored = db.query(
        "SELECT event_id, count() FROM usage_events GROUP BY event_id HAVING count() > 1", label="test.repeats"
    )
    assert stored == []
    assert db.query("SELECT count() FROM usage_events", label="test.count")[0][0] == 200
    firsts = [outcome for [outcome] in results if not outcome[1]]
    assert sorted(e.event_id for e, _ in firsts) == sorted(ids)
    # every repeat answers with the stored original, whichever replica wrote it
    by_id = {e.event_id: e.metadata["replica"] for e, _ in firsts}
    assert all(e.metadata["replica"] == by_id[e.event_id] for [(e, _)] in results)


def test_a_claim_held_elsewhere_is_waited_for_then_refused(redis_url: str) -> None:
    async def scenario() -> None:
        redis = Redis.from_url(redis_url)
        try:
            await redis.set(claim_key("school-a", "stuck"), "someone-else", px=60_000)
            claims = SharedClaims(redis, wait_s=0.2)
            with pytest.raises(Overloaded, match="another replica"):
                await claims.claim([("school-a", "stuck"), ("school-a", "free")])
            # the free key it did take was released again
            assert await redis.get(claim_key("school-a", "free")) is None
            assert await redis.get(claim_key("school-a", "stuck")) == b"someone-else"
        finally:
            await redis.delete(claim_key("school-a", "stuck"))
            await redis.aclose()

    asyncio.run(scenario())
