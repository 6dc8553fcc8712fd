"""Numbered ClickHouse migrations and the rollups they define, on the session's embedded engine."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from service.app import create_app
from service.settings import Settings
from service.storage.clickhouse import ClickHouse
from service.storage.migrations import (
    Migration,
    applied_versions,
    discover,
    migrate,
    migrations_dir,
    pending,
)
from service.usage.ingest import EVENT_COLUMNS, _columns
from service.usage.schemas import UsageEvent
from tests.conftest import fresh_database_name

RECEIVED_AT = datetime.now(UTC).replace(microsecond=0)
CORE_TABLES = {
    "schema_migrations",
    "usage_events",
    "usage_event_keys",
    "usage_event_keys_mv",
    "usage_hourly",
    "usage_hourly_mv",
    "usage_daily",
    "usage_daily_mv",
    "provider_pricing",
}


@pytest.fixture
def settings(unmigrated_settings: Settings) -> Settings:
    """Every test here starts from an empty database: migrations run from scratch."""
    return unmigrated_settings


@pytest.fixture
def fresh(settings: Settings) -> Iterator[ClickHouse]:
    """An empty, unmigrated database on the session's embedded engine."""
    database = ClickHouse(settings.database.url, settings.database.database, pool_size=2)
    yield database
    database.close()


def snapshot(db: ClickHouse) -> dict[str, Any]:
    """Every table of the database with its engine and row count, and the migration records."""
    tables = db.query(
        "SELECT name, engine FROM system.tables WHERE database = {db:String} ORDER BY name",
        {"db": db.database},
        label="test",
    )
    counts = {
        name: db.query(f"SELECT count() FROM {name}", label="test")[0][0]
        for name, engine in tables
        if engine != "MaterializedView"
    }
    records = db.query(
        "SELECT version, name, checksum, applied_at FROM schema_migrations ORDER BY version", label="test"
    )
    return {"tables": tables, "counts": counts, "records": records}


def copy_migrations(target: Path, *, drop_last: bool = False) -> Path:
    target.mkdir()
    files = sorted(migrations_dir().glob("*.sql"))
    for path in files[:-1] if drop_last else files:
        shutil.copy(path, target / path.name)
    return target


def stored_event(event_id: str, when: datetime, **overrides: Any) -> UsageEvent:
    """A priced event that happened at `when` and was received now (usage_event_keys keeps
    keys 35 days after receipt: older ones are dropped as they are written)."""
    values: dict[str, Any] = {
        "event_id": event_id,
        "timestamp": when,
        "received_at": RECEIVED_AT,
        "tenant_id": "school-a",
        "service": "tutor-chat",
        "learner_id": "learner-1",
        "provider": "openai",
        "model": "gpt-4o-mini",
        "region": None,
        "input_tokens": 1000,
        "output_tokens": 200,
        "cached_input_tokens": 0,
        "cache_write_tokens": 0,
        "input_characters": 0,
        "output_characters": 0,
        "images": 0,
        "batch": False,
        "cost_usd": "0.00027",
        "pricing_status": "priced",
        "price_version": "openai/gpt-4o-mini/test",
        "metadata": {},
    }
    values.update(overrides)
    return UsageEvent(**values)


def insert_events(db: ClickHouse, events: list[UsageEvent]) -> None:
    """One INSERT into usage_events, as the ingest path writes it."""
    db.insert("usage_events", _columns(events), EVENT_COLUMNS, column_oriented=True, label="test")


def names(migrations: list[Migration]) -> list[str]:
    return [m.path.name for m in migrations]


def count(db: ClickHouse, table: str) -> int:
    return int(db.query(f"SELECT count() FROM {table}", label="test")[0][0])


# -- applying migrations -----------------------------------------------------


def test_migrate_applies_every_file_in_order_and_records_it(fresh: ClickHouse) -> None:
    expected = discover()
    assert [m.version for m in expected] == sorted(m.version for m in expected)
    assert expected, "no migration files found"
    lines: list[str] = []

    applied = migrate(fresh, progress=lines.append)

    assert applied == expected
    assert lines == [f"applying {m.path.name}" for m in expected]
    records = fresh.query("SELECT version, name, checksum FROM schema_migrations ORDER BY version", label="test")
    assert records == [(m.version, m.name, m.checksum) for m in expected]
    assert applied_versions(fresh) == {m.version: m.checksum for m in expected}
    assert pending(fresh) == []
    tables = {
        name
        for (name,) in fresh.query(
            "SELECT name FROM system.tables WHERE database = {db:String}",
            {"db": fresh.database},
            label="test",
        )
    }
    assert tables >= CORE_TABLES


def test_migrating_again_applies_nothing_and_changes_nothing(fresh: ClickHouse) -> None:
    migrate(fresh)
    insert_events(fresh, [stored_event("e-1", datetime(2025, 3, 1, 10, tzinfo=UTC))])
    before = snapshot(fresh)
    lines: list[str] = []

    assert migrate(fresh, progress=lines.append) == []

    assert lines == []
    assert snapshot(fresh) == before
    assert before["counts"]["usage_events"] == 1
    assert before["counts"]["schema_migrations"] == len(discover())


def test_pending_lists_exactly_the_unapplied_migrations(
    fresh: ClickHouse, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    everything = names(discover())
    partial = copy_migrations(tmp_path / "partial", drop_last=True)
    assert names(pending(fresh)) == everything  # nothing recorded yet

    assert names(migrate(fresh, partial)) == everything[:-1]

    assert names(pending(fresh)) == everything[-1:]
    assert pending(fresh, partial) == []
    monkeypatch.setenv("FINOPS_MIGRATIONS_DIR", str(partial))
    assert pending(fresh) == []  # FINOPS_MIGRATIONS_DIR is the default directory
    monkeypatch.delenv("FINOPS_MIGRATIONS_DIR")
    assert names(migrate(fresh)) == everything[-1:]
    assert pending(fresh) == []
    assert sorted(applied_versions(fresh)) == [m.version for m in discover()]


@pytest.mark.parametrize("name", ["1_x.sql", "0001-usage.sql", "0004_Add_Column.sql", "00005_x.sql"])
def test_a_badly_named_migration_file_is_refused_by_name(tmp_path: Path, name: str) -> None:
    directory = copy_migrations(tmp_path / "migrations")
    (directory / name).write_text("SELECT 1;\n")

    with pytest.raises(ValueError, match=f"migration file {name} does not match NNNN_name.sql"):
        discover(directory)


def test_two_migration_files_with_one_number_are_refused(tmp_path: Path) -> None:
    directory = copy_migrations(tmp_path / "migrations")
    (directory / "0001_again.sql").write_text("SELECT 1;\n")

    with pytest.raises(ValueError, match="two migration files share a number"):
        discover(directory)


# -- databases on one engine -------------------------------------------------


def test_two_databases_on_one_engine_are_isolated(db: ClickHouse, settings: Settings) -> None:
    other = ClickHouse(settings.database.url, fresh_database_name(), pool_size=2)
    try:
        migrate(other)
        when = datetime(2025, 3, 1, 10, 30, tzinfo=UTC)
        insert_events(db, [stored_event("only-in-first", when)])
        insert_events(other, [stored_event(f"second-{i}", when, tenant_id="school-b") for i in range(2)])

        for database, ids, tenant in (
            (db, ["only-in-first"], "school-a"),
            (other, ["second-0", "second-1"], "school-b"),
        ):
            rows = database.query("SELECT event_id FROM usage_events ORDER BY event_id", label="test")
            assert [r[0] for r in rows] == ids
            keys = database.query("SELECT tenant_id, event_id FROM usage_event_keys ORDER BY event_id", label="test")
            assert keys == [(tenant, i) for i in ids]
            for rollup in ("usage_hourly", "usage_daily"):
                totals = database.query(f"SELECT tenant_id, sum(events) FROM {rollup} GROUP BY tenant_id", label="test")
                assert totals == [(tenant, len(ids))]
    finally:
        other.close()


# -- rollups -----------------------------------------------------------------


def test_materialized_views_roll_usage_up_by_hour_and_day(db: ClickHouse) -> None:
    day1_10h = datetime(2025, 3, 1, 10, 15, tzinfo=UTC)
    day1_10h_late = datetime(2025, 3, 1, 10, 59, 59, 999000, tzinfo=UTC)
    day1_11h = datetime(2025, 3, 1, 11, 0, tzinfo=UTC)
    day2_09h = datetime(2025, 3, 2, 9, 30, tzinfo=UTC)
    first = [
        stored_event("a", day1_10h, input_tokens=1000, output_tokens=200, cost_usd="0.000123456789"),
        stored_event("b", day1_10h_late, input_tokens=50, output_tokens=5, cost_usd="1.5"),
        stored_event("c", day1_11h, input_tokens=7, output_tokens=0, cost_usd=None, pricing_status="unpriced"),
    ]
    second = [
        stored_event("d", day2_09h, input_tokens=300, output_tokens=30, cost_usd="0.1", learner_id=None),
        stored_event("e", day2_09h, input_tokens=1, output_tokens=1, cost_usd="2", pricing_status="provided"),
    ]
    insert_events(db, first)
    insert_events(db, second)  # a second INSERT: a second, unmerged part in each rollup

    hourly = db.query(
        "SELECT toString(bucket), sum(events), sum(unpriced_events), sum(input_tokens), "
        "sum(output_tokens), sum(cost_usd) FROM usage_hourly GROUP BY bucket ORDER BY bucket",
        label="test",
    )
    assert hourly == [
        ("2025-03-01 10:00:00", 2, 0, 1050, 205, Decimal("1.500123456789")),
        ("2025-03-01 11:00:00", 1, 1, 7, 0, Decimal("0")),
        ("2025-03-02 09:00:00", 2, 0, 301, 31, Decimal("2.1")),
    ]
    daily = db.query(
        "SELECT toString(bucket), sum(events), sum(unpriced_events), sum(input_tokens), "
        "sum(output_tokens), sum(cost_usd) FROM usage_daily GROUP BY bucket ORDER BY bucket",
        label="test",
    )
    assert daily == [
        ("2025-03-01", 3, 1, 1057, 205, Decimal("1.500123456789")),
        ("2025-03-02", 2, 0, 301, 31, Decimal("2.1")),
    ]
    assert all(isinstance(row[5], Decimal) for row in hourly + daily)
    keys = db.query("SELECT tenant_id, event_id FROM usage_event_keys ORDER BY event_id", label="test")
    assert keys == [("school-a", e) for e in "abcde"]


def test_correction_rows_move_cost_but_not_event_counts_or_keys(db: ClickHouse) -> None:
    when = datetime(2025, 3, 1, 10, 15, tzinfo=UTC)
    insert_events(db, [stored_event("orig", when, cost_usd="0.5")])
    correction = stored_event("orig-fix", when, cost_usd="0.25")
    db.insert(
        "usage_events",
        [*_columns([correction]), ["correction"], ["orig"]],
        [*EVENT_COLUMNS, "record_type", "corrects_event_id"],
        column_oriented=True,
        label="test",
    )

    for rollup in ("usage_hourly", "usage_daily"):
        totals = db.query(f"SELECT sum(events), sum(cost_usd) FROM {rollup}", label="test")
        assert totals == [(1, Decimal("0.75"))]
    assert db.query("SELECT event_id FROM usage_event_keys", label="test") == [("orig",)]
    assert count(db, "usage_events") == 2


# -- health on an unmigrated or outdated database ----------------------------


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def test_the_app_refuses_to_start_on_an_unmigrated_database(settings: Settings) -> None:
    app = create_app(settings, apply_migrations=False)
    try:
        with TestClient(app=app) as client:
            pytest.fail(f"the app started on an unmigrated database; /health said {client.get('/health')}")
    except Exception as exc:  # Litestar wraps lifespan failures in an ExceptionGroup
        messages = [str(leaf) for leaf in _leaves(exc)]
    assert messages == ["migrations are pending: run `finops migrate`"]

    side = ClickHouse(settings.database.url, settings.database.database, pool_size=1)
    try:  # and it created nothing on its way out
        tables = side.query(
            "SELECT name FROM system.tables WHERE database = {db:String}", {"db": side.database}, label="test"
        )
    finally:
        side.close()
    assert tables == []


def test_health_answers_503_pending_until_a_new_migration_is_applied(
    client: TestClient,  # type: ignore[type-arg]
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert client.get("/health").status_code == 200
    directory = copy_migrations(tmp_path / "migrations")
    (directory / "0999_notes.sql").write_text(
        "-- a migration deployed after the service started\n"
        "CREATE TABLE IF NOT EXISTS {db:Identifier}.notes (id UInt32) ENGINE = MergeTree ORDER BY id;\n"
    )
    monkeypatch.setenv("FINOPS_MIGRATIONS_DIR", str(directory))

    response = client.get("/health")

    assert response.status_code == 503
    assert response.headers["cache-control"] == "no-store"
    assert response.json() == {
        "status": "unavailable",
        "components": {
            "clickhouse": {"status": "ok"},
            "migrations": {"status": "pending", "detail": "run `finops migrate`: 0999_notes.sql"},
            "workers": {"status": "ok", "detail": "jobs run in the API process"},
        },
    }

    side = ClickHouse(settings.database.url, settings.database.database, pool_size=1)
    try:
        assert [m.name for m in migrate(side)] == ["notes"]
    finally:
        side.close()
    healthy = client.get("/health")
    assert healthy.status_code == 200
    assert healthy.json()["components"]["migrations"] == {"status": "ok"}


def test_totals_rollups_are_backfilled_then_fed_like_the_learner_rollups(fresh: ClickHouse, tmp_path: Path) -> None:
    early = tmp_path / "early"
    early.mkdir()
    for path in sorted(migrations_dir().glob("*.sql")):
        if int(path.name[:4]) < 7:
            shutil.copy(path, early / path.name)
    migrate(fresh, early)
    first = datetime(2026, 3, 1, 10, 15, tzinfo=UTC)
    insert_events(fresh, [stored_event(f"a{i}", first, learner_id=f"l{i}") for i in range(3)])
    migrate(fresh)  # 0007 creates the totals rollups and backfills them
    insert_events(fresh, [stored_event(f"b{i}", first, learner_id=f"m{i}") for i in range(2)])
    migrate(fresh)  # applied once: no second backfill

    def sums(table: str) -> list[tuple[Any, ...]]:
        return fresh.query(
            f"SELECT toString(bucket), tenant_id, service, sum(events), sum(cost_usd) FROM {table} "
            "GROUP BY bucket, tenant_id, service ORDER BY bucket, tenant_id, service",
            label="test.sums",
        )

    assert sums("usage_hourly_totals") == sums("usage_hourly")
    assert sums("usage_daily_totals") == sums("usage_daily")
    assert sums("usage_daily_totals")[0][3] == 5
