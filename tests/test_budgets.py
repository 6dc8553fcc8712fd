"""Budgets: roles, validation, versions, evaluation, alerts — on a real embedded ClickHouse."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import anyio.to_thread
import msgspec
import pytest
from litestar.testing import TestClient

from service.budgets.cover import Piece, cover, grain_pieces, learner_pieces
from service.budgets.evaluate import Spend, Window, evaluate, evaluate_budgets, forecast, recent_start
from service.budgets.store import BudgetStore
from service.storage.clickhouse import ClickHouse

Client = TestClient  # type: ignore[type-arg]
Auth = Callable[..., dict[str, str]]


def budget(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"name": "school-a monthly", "scope": {"tenant_id": "school-a"}, "limit_usd": "100"}
    body.update(fields)
    return body


def usage(when: str, cost: str, **fields: Any) -> dict[str, Any]:
    body = {
        "timestamp": when,
        "tenant_id": "school-a",
        "service": "tutor-chat",
        "learner_id": "learner-1",
        "provider": "openai",
        "model": "gpt-4o-mini",
        "cost_usd": cost,
    }
    body.update(fields)
    return body


def create(client: Client, auth: Auth, role: str = "admin", tenant: str | None = None, **fields: Any) -> dict[str, Any]:
    response = client.post("/budgets", json=budget(**fields), headers=auth(role, tenant))
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def record(client: Client, auth: Auth, *events: dict[str, Any]) -> None:
    response = client.post("/usage-events/batch", json={"events": list(events)}, headers=auth("admin"))
    assert response.status_code == 201, response.text


def alerts(db: ClickHouse, **where: str) -> list[tuple[Any, ...]]:
    clause = " AND ".join(f"{k} = {{{k}:String}}" for k in where) or "1"
    return db.query(
        "SELECT budget_id, learner_id, threshold_percent, toString(kind), toString(state), spend_usd "
        f"FROM budget_alerts FINAL WHERE {clause} ORDER BY budget_id, learner_id, kind, threshold_percent",
        where,
        label="test.alerts",
    )


APRIL_11 = datetime(2026, 4, 11, tzinfo=UTC)


# -- the API -------------------------------------------------------------------------


def test_budget_lifecycle_with_versions_and_audit(client: Client, auth: Auth, db: ClickHouse) -> None:
    created = create(client, auth, "tenant-admin", "school-a", scope={"service": "tutor-chat"})
    assert created["scope"] == {"tenant_id": "school-a", "service": "tutor-chat"}  # the tenant is implied
    assert created["version"] == 1
    assert [t["percent"] for t in created["thresholds"]] == [50, 80, 100, 100]
    budget_id = created["budget_id"]
    updated = client.put(
        f"/budgets/{budget_id}",
        json=budget(limit_usd="250.50", name="renamed"),
        headers=auth("tenant-admin", "school-a"),
    )
    assert updated.status_code == 200
    assert (updated.json()["version"], updated.json()["limit_usd"], updated.json()["name"]) == (2, "250.5", "renamed")
    assert client.get(f"/budgets/{budget_id}", headers=auth("user", "school-a")).json()["version"] == 2
    assert client.delete(f"/budgets/{budget_id}", headers=auth("tenant-admin", "school-a")).status_code == 204
    assert client.get(f"/budgets/{budget_id}", headers=auth("admin")).status_code == 404
    trail = db.query(
        "SELECT action, actor, role, tenant_id, target_id, before != '', after != '' FROM audit_log "
        "ORDER BY event_time",
        label="test.audit",
    )
    assert [row[0] for row in trail] == ["budget.create", "budget.update", "budget.delete"]
    assert {row[1] for row in trail} == {"tenant-admin@school-a"}
    assert [(row[5], row[6]) for row in trail] == [(False, True), (True, True), (True, False)]


def test_roles_and_tenants(client: Client, auth: Auth) -> None:
    global_budget = create(client, auth, scope={})
    school_a = create(client, auth, "tenant-admin", "school-a")
    school_b = create(client, auth, scope={"tenant_id": "school-b"})
    # tenant-admins cannot create global budgets or another tenant's
    assert (
        client.post(
            "/budgets", json=budget(scope={"tenant_id": "school-b"}), headers=auth("tenant-admin", "school-a")
        ).status_code
        == 403
    )
    for role in ("user", "service"):
        assert (
            client.post(
                "/budgets", json=budget(), headers=auth(role, "school-a" if role == "user" else None)
            ).status_code
            == 403
        )
    # reading: users see their tenant's budgets only; another tenant's by id is 404
    listed = client.get("/budgets", headers=auth("user", "school-a")).json()
    assert [b["budget_id"] for b in listed["items"]] == [school_a["budget_id"]]
    assert client.get(f"/budgets/{school_b['budget_id']}", headers=auth("user", "school-a")).status_code == 404
    assert (
        client.get(f"/budgets/{global_budget['budget_id']}", headers=auth("tenant-admin", "school-a")).status_code
        == 404
    )
    assert client.get("/budgets", params={"tenant_id": "school-b"}, headers=auth("user", "school-a")).status_code == 403
    assert client.get("/budgets", headers=auth("service")).status_code == 403
    # changing another tenant's budget is 404, a user may not change its own tenant's
    assert (
        client.put(
            f"/budgets/{school_b['budget_id']}", json=budget(), headers=auth("tenant-admin", "school-a")
        ).status_code
        == 404
    )
    assert client.delete(f"/budgets/{school_a['budget_id']}", headers=auth("user", "school-a")).status_code == 403
    everything = client.get("/budgets", headers=auth("admin")).json()["items"]
    assert len(everything) == 3
    assert [
        b["budget_id"]
        for b in client.get("/budgets", params={"scope": "global"}, headers=auth("admin")).json()["items"]
    ] == [global_budget["budget_id"]]


def test_budget_list_pages(client: Client, auth: Auth) -> None:
    ids = sorted(create(client, auth, name=f"b{i}")["budget_id"] for i in range(5))
    seen: list[str] = []
    cursor = None
    while True:
        page = client.get(
            "/budgets", params={"limit": "2", **({"cursor": cursor} if cursor else {})}, headers=auth("admin")
        ).json()
        seen += [b["budget_id"] for b in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"limit_usd": "0"}, "limit_usd"),
        ({"limit_usd": "-5"}, "limit_usd"),
        ({"limit_usd": "ten"}, "limit_usd"),
        ({"limit_usd": "0.001"}, "limit_usd"),
        (
            {"period": "custom", "period_start": "0001-01-01T00:00:00Z", "period_end": "2026-04-01T00:00:00Z"},
            "period_start",
        ),
        ({"timezone": "Atlantis/Capital"}, "timezone"),
        ({"period": "custom"}, "period_start"),
        (
            {"period": "custom", "period_start": "2026-05-01T00:00:00Z", "period_end": "2026-04-01T00:00:00Z"},
            "period_end",
        ),
        ({"period_start": "2026-05-01T00:00:00Z"}, "period_start"),
        ({"per_learner": True, "scope": {"tenant_id": "school-a", "learner_id": "x"}}, "per_learner"),
        ({"thresholds": [{"percent": 80}, {"percent": 80, "kind": "actual"}]}, "thresholds"),
        ({"thresholds": [{"percent": 0}]}, "thresholds[0].percent"),
        ({"period": "fortnightly"}, "period"),
        ({"scope": {"school": "x"}}, "scope"),
    ],
)
def test_bad_budgets_are_422_naming_the_field(client: Client, auth: Auth, fields: dict[str, Any], field: str) -> None:
    response = client.post("/budgets", json=budget(**fields), headers=auth("admin"))
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == field


# -- evaluation ------------------------------------------------------------------------


def test_thresholds_fire_once_and_limit_changes_resolve_or_refire(client: Client, auth: Auth, db: ClickHouse) -> None:
    created = create(client, auth, thresholds=[{"percent": 50}, {"percent": 80}, {"percent": 100}])
    record(client, auth, usage("2026-04-02T10:00:00Z", "60"), usage("2026-04-03T10:00:00Z", "25", tenant_id="school-b"))
    for _ in range(3):
        evaluate_budgets(db, now=APRIL_11)
    assert [(r[2], r[4]) for r in alerts(db)] == [(50, "active")]
    record(client, auth, usage("2026-04-04T10:00:00Z", "30"))
    run, fired = evaluate_budgets(db, now=APRIL_11)
    assert (run.fired, len(fired)) == (1, 1)
    assert [(r[2], r[4], r[5]) for r in alerts(db)] == [(50, "active", Decimal("60")), (80, "active", Decimal("90"))]
    # raising the limit above spend resolves them
    client.put(
        f"/budgets/{created['budget_id']}",
        json=budget(limit_usd="1000", thresholds=[{"percent": 50}]),
        headers=auth("admin"),
    )
    run, _ = evaluate_budgets(db, now=APRIL_11)
    assert run.resolved == 2
    assert {r[4] for r in alerts(db)} == {"resolved"}
    # lowering it is a new limit: its thresholds fire anew
    client.put(
        f"/budgets/{created['budget_id']}",
        json=budget(limit_usd="150", thresholds=[{"percent": 50}]),
        headers=auth("admin"),
    )
    evaluate_budgets(db, now=APRIL_11)
    assert sorted((r[2], r[4]) for r in alerts(db)) == [(50, "active"), (50, "resolved"), (80, "resolved")]


def test_concurrent_evaluators_write_one_alert(client: Client, auth: Auth, db: ClickHouse) -> None:
    create(client, auth, thresholds=[{"percent": 10}, {"percent": 20}])
    record(client, auth, usage("2026-04-02T10:00:00Z", "50"))

    async def together() -> None:
        await asyncio.gather(*(anyio.to_thread.run_sync(lambda: evaluate_budgets(db, now=APRIL_11)) for _ in range(4)))

    asyncio.run(together())
    assert [(r[2], r[4]) for r in alerts(db)] == [(10, "active"), (20, "active")]
    listed = client.get("/alerts", headers=auth("admin")).json()["items"]
    assert len(listed) == 2


def test_daily_budget_in_new_york_counts_its_local_day(client: Client, auth: Auth, db: ClickHouse) -> None:
    create(client, auth, period="daily", timezone="America/New_York", limit_usd="10", thresholds=[{"percent": 90}])
    record(
        client,
        auth,
        usage("2026-04-10T03:59:59Z", "9"),  # 23:59:59 EDT on 9 April: the day before
        usage("2026-04-10T04:00:00Z", "6"),  # 00:00 EDT on 10 April
        usage("2026-04-11T03:00:00Z", "3"),  # 23:00 EDT on 10 April
    )
    noon = datetime(2026, 4, 10, 16, tzinfo=UTC)
    evaluate_budgets(db, now=noon)
    assert alerts(db) == []  # 6 of 10 so far on 10 April; the 9 spent late on 9 April does not count
    late = datetime(2026, 4, 11, 3, 30, tzinfo=UTC)  # 23:30 EDT, still 10 April
    evaluate_budgets(db, now=late)
    [alert] = alerts(db)
    assert alert[5] == Decimal("9")
    window = client.get(
        f"/alerts/{client.get('/alerts', headers=auth('admin')).json()['items'][0]['alert_id']}", headers=auth("admin")
    ).json()
    assert (window["period_start"], window["period_end"]) == ("2026-04-10T04:00:00Z", "2026-04-11T04:00:00Z")
    # the next local day starts fresh
    evaluate_budgets(db, now=datetime(2026, 4, 11, 5, tzinfo=UTC))
    assert len(alerts(db)) == 1


def test_forecast_alert_before_the_money_is_spent(client: Client, auth: Auth, db: ClickHouse) -> None:
    create(client, auth, thresholds=[{"percent": 50, "kind": "actual"}, {"percent": 100, "kind": "forecast"}])
    record(client, auth, usage("2026-04-09T12:00:00Z", "15"), usage("2026-04-10T12:00:00Z", "15"))
    # 30 spent in 10 days of 30: 3/day over the period, 10/day over the last 3 days;
    # blended 6.5/day for 20 more days: 30 + 130 = 160
    assert forecast(
        Spend(Decimal(30), Decimal(30)),
        Window(datetime(2026, 4, 1, tzinfo=UTC), datetime(2026, 5, 1, tzinfo=UTC)),
        APRIL_11,
    ) == Decimal("160")
    evaluate_budgets(db, now=APRIL_11)
    assert [(r[2], r[3]) for r in alerts(db)] == [(100, "forecast")]


def test_per_learner_budget_alerts_each_learner_separately(client: Client, auth: Auth, db: ClickHouse) -> None:
    created = create(client, auth, per_learner=True, limit_usd="5", thresholds=[{"percent": 100}])
    record(
        client,
        auth,
        usage("2026-04-02T10:00:00Z", "6", learner_id="learner-1"),
        usage("2026-04-02T10:00:00Z", "4.99", learner_id="learner-2"),
        usage("2026-04-02T10:00:00Z", "7", learner_id="learner-3"),
        usage("2026-04-02T10:00:00Z", "50", tenant_id="school-b", learner_id="learner-9"),
    )
    evaluate_budgets(db, now=APRIL_11)
    assert [(r[1], r[5]) for r in alerts(db)] == [("learner-1", Decimal("6")), ("learner-3", Decimal("7"))]
    user_alerts = client.get("/alerts", headers=auth("user", "school-a")).json()["items"]
    assert {a["scope"]["learner_id"] for a in user_alerts} == {"learner-1", "learner-3"}
    assert client.get("/alerts", headers=auth("user", "school-b")).json()["items"] == []
    assert client.get(f"/alerts/{user_alerts[0]['alert_id']}", headers=auth("user", "school-b")).status_code == 404
    assert client.get("/alerts", params={"tenant_id": "school-a"}, headers=auth("user", "school-b")).status_code == 403
    # the status of the current period ranks the learners by use
    now = datetime.now(UTC).replace(microsecond=0).isoformat()
    record(
        client,
        auth,
        usage(now, "7", learner_id="learner-3", event_id="now-3"),
        usage(now, "6", learner_id="learner-1", event_id="now-1"),
        usage(now, "4.99", learner_id="learner-2", event_id="now-2"),
    )
    status = client.get(f"/budgets/{created['budget_id']}/status", headers=auth("user", "school-a")).json()
    assert [(u["learner_id"], u["spend_usd"], u["percent_used"]) for u in status["top_learners"]] == [
        ("learner-3", "7", "140"),
        ("learner-1", "6", "120"),
        ("learner-2", "4.99", "99.8"),
    ]


def test_deleting_a_budget_resolves_its_alerts(client: Client, auth: Auth, db: ClickHouse) -> None:
    created = create(client, auth, limit_usd="1", thresholds=[{"percent": 100}])
    record(client, auth, usage("2026-04-02T10:00:00Z", "2"))
    evaluate_budgets(db, now=APRIL_11)
    client.delete(f"/budgets/{created['budget_id']}", headers=auth("admin"))
    run, _ = evaluate_budgets(db, now=APRIL_11)
    assert run.resolved == 1
    assert [r[4] for r in alerts(db)] == ["resolved"]
    listed = client.get("/alerts", params={"state": "resolved"}, headers=auth("admin")).json()["items"]
    assert len(listed) == 1


def test_status_reports_spend_remaining_and_thresholds(client: Client, auth: Auth) -> None:
    created = create(client, auth, limit_usd="200", thresholds=[{"percent": 1}, {"percent": 99}])
    now = datetime.now(UTC)
    record(client, auth, usage(now.replace(microsecond=0).isoformat(), "50"))
    status = client.get(f"/budgets/{created['budget_id']}/status", headers=auth("tenant-admin", "school-a")).json()
    assert (status["spend_usd"], status["percent_used"], status["remaining_usd"]) == ("50", "25", "150")
    assert [(t["percent"], t["kind"]) for t in status["thresholds_crossed"]] == [(1, "actual")]
    assert Decimal(status["forecast_usd"]) >= Decimal(50)


def test_ingest_triggers_evaluation_without_waiting_for_the_schedule(client: Client, auth: Auth) -> None:
    """The scheduled pass runs every BUDGET_CHECK_INTERVAL (300 s here); the crossing is recorded long before."""
    create(client, auth, limit_usd="10", thresholds=[{"percent": 80}])
    record(client, auth, usage(datetime.now(UTC).replace(microsecond=0).isoformat(), "9"))
    deadline = time.monotonic() + 30
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not found:
        found = client.get("/alerts", headers=auth("admin")).json()["items"]
        time.sleep(0.05)
    assert [(a["threshold_percent"], a["spend_usd"]) for a in found] == [(80, "9")]


def test_evaluate_now_is_for_admins(client: Client, auth: Auth) -> None:
    create(client, auth)
    assert client.post("/budgets/evaluate", headers=auth("tenant-admin", "school-a")).status_code == 403
    run = client.post("/budgets/evaluate", headers=auth("admin"))
    assert run.status_code == 200
    assert (run.json()["budgets"], run.json()["queries"], run.json()["fired"]) == (1, 1, 0)


def test_per_learner_and_single_learner_budgets_do_not_share_a_measurement(
    client: Client, auth: Auth, db: ClickHouse
) -> None:
    create(client, auth, per_learner=True, limit_usd="10", thresholds=[{"percent": 100}], name="each learner")
    create(client, auth, scope={"tenant_id": "school-a", "learner_id": "learner-1"}, limit_usd="1000", name="one")
    record(
        client,
        auth,
        usage("2026-04-02T10:00:00Z", "50", learner_id="learner-2"),
        usage("2026-04-02T10:00:00Z", "60", learner_id="learner-3"),
    )
    evaluate_budgets(db, now=APRIL_11)
    assert [(r[1], r[4]) for r in alerts(db)] == [("learner-2", "active"), ("learner-3", "active")]


def test_a_global_per_learner_budget_keeps_tenants_apart(client: Client, auth: Auth, db: ClickHouse) -> None:
    create(client, auth, scope={}, per_learner=True, limit_usd="10", thresholds=[{"percent": 100}])
    record(
        client,
        auth,
        usage("2026-04-02T10:00:00Z", "6", learner_id="learner-1"),
        usage("2026-04-02T10:00:00Z", "6", tenant_id="school-b", learner_id="learner-1"),
        usage("2026-04-02T10:00:00Z", "11", tenant_id="school-b", learner_id="learner-2"),
    )
    evaluate_budgets(db, now=APRIL_11)
    rows = db.query("SELECT tenant_id, learner_id, spend_usd FROM budget_alerts FINAL", label="test.global_learners")
    assert rows == [("school-b", "learner-2", Decimal("11"))]
    assert [a["tenant_id"] for a in client.get("/alerts", headers=auth("user", "school-b")).json()["items"]] == [
        "school-b"
    ]


def test_forecasts_wait_until_a_period_has_some_history(client: Client, auth: Auth, db: ClickHouse) -> None:
    create(client, auth, period="daily", limit_usd="10", thresholds=[{"percent": 100, "kind": "forecast"}])
    record(client, auth, usage("2026-04-10T00:05:00Z", "1"))
    evaluate_budgets(db, now=datetime(2026, 4, 10, 0, 10, tzinfo=UTC))  # 10 minutes in: a burst, not a trend
    assert alerts(db) == []
    evaluate_budgets(db, now=datetime(2026, 4, 10, 3, tzinfo=UTC))  # 3 hours in: 1 USD / 3 h runs to 8 USD
    assert alerts(db) == []
    record(client, auth, usage("2026-04-10T05:00:00Z", "3"))
    evaluate_budgets(db, now=datetime(2026, 4, 10, 6, tzinfo=UTC))  # 4 USD in 6 h runs to 16 USD
    assert [(r[2], r[3]) for r in alerts(db)] == [(100, "forecast")]


def test_a_malformed_alert_cursor_is_422(client: Client, auth: Auth) -> None:
    for cursor in ("aGVsbG8", "bm90YWRhdGV8eA"):
        response = client.get("/alerts", params={"cursor": cursor}, headers=auth("admin"))
        assert response.status_code == 422
        assert response.json()["errors"][0]["field"] == "cursor"


def test_per_learner_forecasts_survive_the_crossing_filter(client: Client, auth: Auth, db: ClickHouse) -> None:
    create(client, auth, per_learner=True, limit_usd="100", thresholds=[{"percent": 100, "kind": "forecast"}])
    record(
        client,
        auth,
        # 30 in the last three days of 10: forecast 160, though only 30 is spent
        usage("2026-04-09T12:00:00Z", "15", learner_id="trending"),
        usage("2026-04-10T12:00:00Z", "15", learner_id="trending"),
        # 40 early in the month, nothing since: forecast 40 + 2/day x 20 days = 80
        usage("2026-04-02T12:00:00Z", "40", learner_id="steady"),
    )
    evaluate_budgets(db, now=APRIL_11)
    assert [(r[1], r[3]) for r in alerts(db)] == [("trending", "forecast")]


# -- where a pass reads spend from ------------------------------------------------------


def _covered(pieces: list[Piece], moment: datetime) -> int:
    """How many times the signed pieces count a moment (a grain piece holds whole buckets)."""
    return sum(p.sign for p in pieces if p.start <= moment < p.end)


@pytest.mark.parametrize(
    ("start", "end", "now"),
    [
        (datetime(2026, 4, 1, tzinfo=UTC), datetime(2026, 4, 11, 11, 20, 0, 5000, tzinfo=UTC), APRIL_11),
        (datetime(2026, 4, 1, 4, tzinfo=UTC), datetime(2026, 5, 1, 4, tzinfo=UTC), datetime(2026, 5, 9, tzinfo=UTC)),
        (datetime(2026, 3, 31, 15, tzinfo=UTC), datetime(2026, 4, 11, 1, tzinfo=UTC), APRIL_11),
        (datetime(2026, 4, 6, tzinfo=UTC), datetime(2026, 4, 13, tzinfo=UTC), datetime(2026, 4, 8, tzinfo=UTC)),
        (datetime(2026, 4, 10, 15, tzinfo=UTC), datetime(2026, 4, 10, 19, 30, tzinfo=UTC), APRIL_11),
        (datetime(2026, 4, 1, 0, 17, tzinfo=UTC), datetime(2026, 4, 30, 23, 17, tzinfo=UTC), APRIL_11),
        (datetime(2026, 2, 27, tzinfo=UTC), datetime(2026, 4, 2, 7, tzinfo=UTC), datetime(2026, 4, 2, 6, tzinfo=UTC)),
        (datetime(2026, 4, 3, 23, tzinfo=UTC), datetime(2026, 4, 4, 1, tzinfo=UTC), APRIL_11),
    ],
)
def test_covers_count_each_moment_of_the_window_once(start: datetime, end: datetime, now: datetime) -> None:
    plain = cover(start, end, now)
    grained = learner_pieces(plain, now.date())
    raw_hours = learner_pieces(cover(start, end, now, hours=False), now.date())  # parts of days from raw events
    assert not any(piece.source == "hourly" for piece in raw_hours)
    for pieces in (plain, grained, raw_hours):
        moment = start - timedelta(days=40)
        while moment < end + timedelta(days=40):
            for probe in (moment, moment + timedelta(minutes=17, milliseconds=1)):
                assert _covered(pieces, probe) == (1 if start <= probe < end else 0), (probe, pieces)
            moment += timedelta(minutes=30)
        for edge in (start, end, start - timedelta(milliseconds=1), end - timedelta(milliseconds=1)):
            assert _covered(pieces, edge) == (1 if start <= edge < end else 0), (edge, pieces)


def test_whole_months_and_weeks_of_learners_are_read_from_the_learner_rollup() -> None:
    now = datetime(2026, 4, 21, 9, 30, tzinfo=UTC)
    april = Piece("daily", datetime(2026, 4, 1, tzinfo=UTC), datetime(2026, 4, 22, tzinfo=UTC))
    month = learner_pieces([april], now.date())
    # April whole, less the days after today (empty); not 21 day rows per learner
    assert [(p.source, p.start.day, p.sign) for p in month] == [("day", 22, -1), ("month", 1, 1)]
    week = grain_pieces(Piece("daily", datetime(2026, 4, 6, tzinfo=UTC), datetime(2026, 4, 20, tzinfo=UTC)), now.date())
    assert [(p.source, p.start.day, p.end.day) for p in week] == [("week", 6, 20)]
    # a recent window from Tuesday: the week, less Monday and the days after today (empty)
    recent = learner_pieces(
        [Piece("daily", datetime(2026, 4, 14, tzinfo=UTC), datetime(2026, 4, 22, tzinfo=UTC))], now.date()
    )
    assert [(p.source, p.start.day, p.end.day, p.sign) for p in recent] == [
        ("day", 13, 14, -1),
        ("day", 22, 27, -1),
        ("week", 13, 27, 1),
    ]


PROBES = [  # (time, cost) for learner-1 of school-a; now is 10:20 UTC on 11 April
    ("2026-03-31T23:00:00Z", "1"),  # March in UTC, 31 March in New York
    ("2026-04-01T03:30:00Z", "2"),  # April in UTC, still March in New York
    ("2026-04-01T04:00:00Z", "4"),  # April everywhere
    ("2026-04-06T12:00:00Z", "8"),  # the week from Monday 6 April
    ("2026-04-10T12:00:00Z", "16"),  # recent
    ("2026-04-10T15:30:00Z", "32"),  # 11 April in Tokyo
    ("2026-04-11T10:00:00.250Z", "64"),  # today, before now
    ("2026-04-11T10:50:00Z", "128"),  # after now, inside the hour a pass reads past it
    ("2026-04-11T12:00:00Z", "256"),  # later today: not yet
    ("2026-04-12T01:00:00Z", "512"),  # tomorrow
]


def test_merged_measurements_equal_the_raw_events_in_each_window(client: Client, auth: Auth, db: ClickHouse) -> None:
    now = datetime(2026, 4, 11, 10, 20, tzinfo=UTC)
    each = {"per_learner": True, "limit_usd": "1000"}
    create(client, auth, name="each UTC", **each)
    create(client, auth, name="each NY", timezone="America/New_York", **each)
    create(client, auth, name="each tutor-chat", scope={"tenant_id": "school-a", "service": "tutor-chat"}, **each)
    one = {"scope": {"tenant_id": "school-a", "learner_id": "learner-1"}, "limit_usd": "1000"}
    create(client, auth, name="one weekly", period="weekly", **one)
    create(client, auth, name="one daily Tokyo", period="daily", timezone="Asia/Tokyo", **one)
    create(client, auth, name="one monthly Paris", timezone="Europe/Paris", **one)
    create(client, auth, name="tenant weekly NY", period="weekly", timezone="America/New_York")
    record(client, auth, *(usage(when, cost, event_id=f"probe-{i}") for i, (when, cost) in enumerate(PROBES)))
    record(client, auth, usage("2026-04-02T10:00:00Z", "3", learner_id="learner-2", service="essay-grader"))
    budgets = BudgetStore(db).find(tenant_visible=None, filters={})
    evaluations, queries, failed = evaluate(db, budgets, now)
    assert not failed
    assert queries == 3  # (tenant, learner), (tenant, service, learner), (tenant): windows share a query
    moments = [(datetime.fromisoformat(when.replace("Z", "+00:00")), Decimal(cost)) for when, cost in PROBES]
    seen = set()
    for e in evaluations:
        if e.learner == "learner-2":
            assert (e.budget.name, e.spend) in {("each UTC", Decimal(3)), ("each NY", Decimal(3))}
            continue
        end = min(e.window.end, now + timedelta(hours=1))
        spend = sum((c for t, c in moments if e.window.start <= t < end), Decimal(0))
        recent = sum((c for t, c in moments if recent_start(e.window, now) <= t < end), Decimal(0))
        assert e.spend == spend, e.budget.name
        assert e.forecast == forecast(Spend(spend, recent), e.window, now), e.budget.name
        seen.add(e.budget.name)
    assert seen == {b.name for b in budgets}
    # the pass's crossing filter keeps what crosses: at 10 % of 1000, learner-1 crosses in every
    # window (the Tokyo day holds 224), learner-2 in none
    for budget in budgets:
        client.put(
            f"/budgets/{budget.budget_id}",
            json={
                "name": budget.name,
                "scope": msgspec.to_builtins(budget.scope),
                "per_learner": budget.per_learner,
                "period": budget.period,
                "timezone": budget.timezone,
                "limit_usd": "1000",
                "thresholds": [{"percent": 10, "kind": "actual"}],
            },
            headers=auth("admin"),
        ).raise_for_status()
    evaluate_budgets(db, now=now)
    fired = {(b.name, r[1]) for r in alerts(db) for b in budgets if b.budget_id == r[0]}
    assert fired == {(b.name, "learner-1") for b in budgets if b.name != "tenant weekly NY"} | {
        ("tenant weekly NY", "")
    }
