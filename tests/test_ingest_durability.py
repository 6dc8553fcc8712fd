"""Acknowledged means stored: restarts, failed writes, a full buffer, concurrent repeats."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from litestar.testing import AsyncTestClient, TestClient

from service.app import create_app
from service.settings import Settings
from service.storage.clickhouse import ClickHouse
from tests.conftest import make_settings
from tests.test_usage_api import event

Auth = Callable[..., dict[str, str]]


def all_ids(client: TestClient, auth: Auth) -> list[str]:  # type: ignore[type-arg]
    ids: list[str] = []
    cursor = None
    while True:
        params = {"limit": "1000", **({"cursor": cursor} if cursor else {})}
        page = client.get("/usage-events", params=params, headers=auth("admin")).json()
        ids += [item["event_id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            return sorted(ids)


def test_every_acknowledged_event_survives_a_restart(settings: Settings, auth: Auth) -> None:
    acknowledged: list[str] = []
    with TestClient(app=create_app(settings)) as client:
        for i in range(20):
            response = client.post("/usage-events", json=event(event_id=f"one-{i}"), headers=auth("service"))
            assert response.status_code == 201
            acknowledged.append(response.json()["event_id"])
        batch = [event(event_id=f"many-{i}") for i in range(1500)]
        response = client.post("/usage-events/batch", json={"events": batch}, headers=auth("service"))
        assert response.status_code == 201
        acknowledged += [item["event_id"] for item in response.json()["events"]]

    with TestClient(app=create_app(settings)) as client:
        assert all_ids(client, auth) == sorted(acknowledged)
        # and the idempotency keys survived too
        replay = client.post("/usage-events", json=event(event_id="one-3"), headers=auth("service"))
        assert replay.status_code == 200


def test_a_failed_write_answers_503_and_claims_no_key(settings: Settings, auth: Auth) -> None:
    with TestClient(app=create_app(settings)) as client:
        side = ClickHouse(settings.database.url, settings.database.database)
        try:
            side.command("DETACH TABLE usage_events", label="test")
            failed = client.post("/usage-events", json=event(event_id="retry-me"), headers=auth("service"))
            assert failed.status_code == 503
            side.command("ATTACH TABLE usage_events", label="test")
        finally:
            side.close()
        retried = client.post("/usage-events", json=event(event_id="retry-me"), headers=auth("service"))
        assert retried.status_code == 201, retried.text
        assert all_ids(client, auth) == ["retry-me"]


def test_a_full_buffer_refuses_with_retry_after_and_stores_nothing_of_it(db: ClickHouse) -> None:
    from service.errors import Overloaded, error_body, error_headers
    from service.settings import IngestSettings
    from service.usage.ingest import GroupCommitBuffer
    from tests.test_replicas import event as stored_event

    async def run() -> Overloaded:
        # the idle flusher lingers 50 ms, so the first batch is still buffered when the second comes
        buffer = GroupCommitBuffer(db, IngestSettings(buffer_max_rows=5, max_batch_events=5, flush_interval_ms=50))
        buffer.start()
        try:
            first = asyncio.ensure_future(buffer.submit([stored_event(f"a{i}", "1") for i in range(3)]))
            await asyncio.sleep(0)
            with pytest.raises(Overloaded) as refused:
                await buffer.submit([stored_event(f"b{i}", "1") for i in range(3)])
            await first
        finally:
            await buffer.stop()
        return refused.value

    refused = asyncio.run(run())
    assert error_headers(refused) == {"Retry-After": "1"}
    assert error_body(refused.status_code, refused.detail)["status_code"] == 503
    stored = db.query("SELECT event_id FROM usage_events ORDER BY event_id", label="test.stored")
    assert [row[0] for row in stored] == ["a0", "a1", "a2"]


def test_a_buffer_smaller_than_a_batch_is_refused_at_start(chdb_url: str) -> None:
    from service.settings import SettingsError
    from tests.conftest import fresh_database_name

    with pytest.raises(SettingsError, match="INGEST_BUFFER_MAX_ROWS"):
        create_app(make_settings(chdb_url, fresh_database_name(), buffer_max_rows=5))


def test_concurrent_repeats_of_one_event_store_it_once(settings: Settings, auth: Auth) -> None:
    async def run() -> list[Any]:
        async with AsyncTestClient(app=create_app(settings)) as client:
            responses = await asyncio.gather(
                *(
                    client.post(
                        "/usage-events",
                        json=event(event_id="same", input_tokens=i + 1),
                        headers=auth("service"),
                    )
                    for i in range(40)
                )
            )
            listed = await client.get("/usage-events", headers=auth("admin"))
            return [[r.status_code for r in responses], [r.json() for r in responses], listed.json()["items"]]

    statuses, bodies, stored = asyncio.run(run())
    assert sorted(statuses) == [200] * 39 + [201]
    assert len(stored) == 1
    assert all(body == bodies[statuses.index(201)] for body in bodies)
