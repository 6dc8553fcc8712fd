"""Acknowledged means stored: restarts, failed writes, a full buffer, concurrent repeats."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient, TestClient

from service.app import create_app
from service.errors import StorageUnavailable
from service.settings import IngestSettings, Settings
from service.storage.clickhouse import ClickHouse
from service.storage.migrations import migrate
from service.usage.ingest import EVENT_COLUMNS, _columns
from tests.conftest import fresh_database_name, make_settings
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


@pytest.fixture
def journaled(settings: Settings) -> Settings:
    """The test's settings with the ingest journal on, as the service runs by default."""
    return dataclasses.replace(settings, ingest=IngestSettings(journal=True))


@pytest.mark.parametrize("journal", [True, False], ids=["journal", "direct"])
def test_every_acknowledged_event_survives_a_restart(settings: Settings, auth: Auth, journal: bool) -> None:
    settings = dataclasses.replace(settings, ingest=IngestSettings(journal=journal))
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


def test_without_the_journal_a_failed_write_answers_503_and_claims_no_key(settings: Settings, auth: Auth) -> None:
    with TestClient(app=create_app(settings)) as client:
        side = ClickHouse(settings.database.url, settings.database.database)
        try:
            side.command("DETACH TABLE usage_events", label="test")
            failed = client.post("/usage-events", json=event(event_id="retry-me"), headers=auth("service"))
            assert failed.status_code == 503
            attach_usage_events(side)
        finally:
            side.close()
        retried = client.post("/usage-events", json=event(event_id="retry-me"), headers=auth("service"))
        assert retried.status_code == 201, retried.text
        assert all_ids(client, auth) == ["retry-me"]


def test_a_refused_insert_keeps_journaled_events_and_moves_them_once_clickhouse_takes_them(
    journaled: Settings, auth: Auth
) -> None:
    settings = journaled
    with TestClient(app=create_app(settings)) as client:
        side = ClickHouse(settings.database.url, settings.database.database)
        try:
            side.command("DETACH TABLE usage_events", label="test")
            accepted = client.post("/usage-events", json=event(event_id="kept"), headers=auth("service"))
            assert accepted.status_code == 201  # on disk in the journal
            repeat = client.post("/usage-events", json=event(event_id="kept"), headers=auth("service"))
            assert repeat.status_code == 200
            assert repeat.json() == accepted.json()
            time.sleep(0.3)  # the mover has failed at least once by now
            failures = metric_value(client.get("/metrics").text, "finops_ingest_move_failures_total")
            assert failures >= 1
            health = client.get("/health").json()
            assert (health["status"], health["components"]["ingest"]["status"]) == ("degraded", "failed")
            assert "1 acknowledged events wait in the journal" in health["components"]["ingest"]["detail"]
            attach_usage_events(side)
        finally:
            side.close()
        assert all_ids(client, auth) == ["kept"]  # the read waits for the retried move
        assert client.get("/health").json()["components"]["ingest"]["status"] == "ok"
        stored = client.get("/usage-events/kept", headers=auth("admin"))
        assert stored.json()["cost_usd"] == accepted.json()["cost_usd"]


def test_events_left_in_the_journal_by_a_crash_are_stored_once_at_the_next_start(
    journaled: Settings, auth: Auth
) -> None:
    settings = journaled
    from service.app import ingest_journal
    from tests.test_replicas import event as stored_event

    # an earlier run acknowledged four events and died before moving them; one of them
    # had already reached ClickHouse, and its last record was cut short mid-write
    db = ClickHouse(settings.database.url, settings.database.database)
    try:
        migrate(db)
        journal = ingest_journal(settings)
        assert journal is not None
        left = [msgspec.structs.replace(stored_event(f"left-{i}", "crash"), cost_usd="0.25") for i in range(4)]
        journal.append(left[:2])
        journal.append(left[2:])
        db.insert("usage_events", _columns([left[0]]), EVENT_COLUMNS, column_oriented=True, label="test")
        segment = next(journal.directory.glob("*.jnl"))
        with segment.open("ab") as handle:
            handle.write(b"\x40\x00\x00\x00garbage")  # a record the crash cut short: never acknowledged
        journal.close()
    finally:
        db.close()

    now = datetime.now(UTC)
    with TestClient(app=create_app(settings)) as client:
        assert all_ids(client, auth) == [f"left-{i}" for i in range(4)]
        totals = client.get(
            "/costs/query",
            params={"start": (now - timedelta(days=1)).isoformat(), "end": (now + timedelta(days=1)).isoformat()},
            headers=auth("admin"),
        ).json()["total"]
        assert (totals["events"], Decimal(totals["cost_usd"])) == (4, Decimal("1.00"))
        replay = client.post("/usage-events", json=event(event_id="left-2"), headers=auth("service"))
        assert replay.status_code == 200
        assert replay.json()["metadata"] == {"replica": "crash"}
    assert list(journal.directory.glob("*.jnl")) == []


def attach_usage_events(side: ClickHouse) -> None:
    """ATTACH again; ClickHouse refuses while a query that began before the DETACH still runs."""
    deadline = time.monotonic() + 10
    while True:
        try:
            side.command("ATTACH TABLE usage_events", label="test")
            return
        except StorageUnavailable as exc:
            if "Retry later" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def metric_value(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


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

    with pytest.raises(SettingsError, match="INGEST_BUFFER_MAX_ROWS"):
        create_app(make_settings(chdb_url, fresh_database_name(), buffer_max_rows=5))


@pytest.mark.parametrize("journal", [True, False], ids=["journal", "direct"])
def test_concurrent_repeats_of_one_event_store_it_once(settings: Settings, auth: Auth, journal: bool) -> None:
    settings = dataclasses.replace(settings, ingest=IngestSettings(journal=journal))

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


def test_the_key_filter_never_forgets_a_key_and_rarely_suspects_a_new_one(db: ClickHouse) -> None:
    from service.usage.journal import KeyFilter
    from tests.test_replicas import event as stored_event

    keys = KeyFilter()
    keys._filters[0].capacity = 1000  # so that it grows twice below
    stored = [("school-a", f"stored-{i}") for i in range(5000)]
    keys.add(stored)
    assert keys.count == 5000
    assert len(keys._filters) == 3
    assert keys.maybe_stored(stored) == stored
    new = [("school-a", f"new-{i}") for i in range(20000)]
    assert len(keys.maybe_stored(new)) < 200  # well under 1 % of keys it never saw

    # built from usage_event_keys, it knows what ClickHouse holds (its hash is ClickHouse's halfMD5)
    db.insert(
        "usage_events",
        _columns([stored_event("in-clickhouse", "x")]),
        EVENT_COLUMNS,
        column_oriented=True,
        label="test",
    )
    known = KeyFilter.from_database(db)
    assert known.maybe_stored([("school-a", "in-clickhouse"), ("school-a", "elsewhere")]) == [
        ("school-a", "in-clickhouse")
    ]


def test_with_the_journal_every_read_sees_what_was_acknowledged_before_it(journaled: Settings, auth: Auth) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    with TestClient(app=create_app(journaled)) as client:
        budget = {
            "name": "school-a today",
            "scope": {"tenant_id": "school-a"},
            "period": "daily",
            "limit_usd": "10",
            "thresholds": [{"percent": 80}],
        }
        assert client.post("/budgets", json=budget, headers=auth("admin")).status_code == 201
        costs: list[Decimal] = []
        for i in range(30):
            one = client.post(
                "/usage-events", json=event(event_id=f"single-{i}", cost_usd="0.1"), headers=auth("service")
            )
            assert one.status_code == 201
            costs.append(Decimal(one.json()["cost_usd"]))
        batch = [event(event_id=f"batch-{i}", cost_usd="0.2") for i in range(50)]
        many = client.post("/usage-events/batch", json={"events": batch}, headers=auth("service"))
        assert many.status_code == 201
        costs += [Decimal(item["cost_usd"]) for item in many.json()["events"]]

        # no wait: each read first waits for the journal to reach ClickHouse
        assert len(all_ids(client, auth)) == 80
        window = {"start": (now - timedelta(hours=1)).isoformat(), "end": (now + timedelta(hours=1)).isoformat()}
        total = client.get("/costs/query", params=window, headers=auth("admin")).json()["total"]
        assert (total["events"], Decimal(total["cost_usd"])) == (80, sum(costs)) == (80, Decimal("13"))
        # the move triggered the budget evaluation: 13 of 10 crosses 80 %
        deadline = time.monotonic() + 30
        found: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not found:
            found = client.get("/alerts", headers=auth("admin")).json()["items"]
            time.sleep(0.05)
        assert [(a["threshold_percent"], a["spend_usd"]) for a in found] == [(80, "13")]
