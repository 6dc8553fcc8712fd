"""Cost questions on crafted events whose every figure can be checked by hand."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest
from litestar.testing import TestClient

from service.costs.plan import Segment, plan
from service.storage.clickhouse import ClickHouse

Client = TestClient  # type: ignore[type-arg]
Auth = Callable[..., dict[str, str]]


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def ev(when: str, cost: str, **fields: Any) -> dict[str, Any]:
    body = {
        "timestamp": when,
        "tenant_id": "school-a",
        "service": "tutor-chat",
        "learner_id": "learner-1",
        "provider": "openai",
        "model": "gpt-4o-mini",
        "input_tokens": 100,
        "output_tokens": 10,
        "cost_usd": cost,
    }
    body.update(fields)
    return body


def record(client: Client, auth: Auth, events: list[dict[str, Any]]) -> None:
    response = client.post("/usage-events/batch", json={"events": events}, headers=auth("admin"))
    assert response.status_code == 201, response.text


def raw_total(db: ClickHouse, start: str, end: str, **where: str) -> Decimal:
    clauses = "".join(f" AND {column} = {{{column}:String}}" for column in where)
    rows = db.query(
        "SELECT sum(ifNull(cost_usd, 0)) FROM usage_events WHERE event_time >= {s:DateTime64(3, 'UTC')} "
        "AND event_time < {e:DateTime64(3, 'UTC')}" + clauses,
        {"s": at(start), "e": at(end), **where},
        label="test.raw",
    )
    return Decimal(rows[0][0])


# -- the planner ---------------------------------------------------------------


def test_plan_uses_daily_rollups_for_whole_days_hourly_for_hours_and_raw_for_the_rest() -> None:
    segments = plan(at("2026-03-01T10:15:00Z"), at("2026-03-05T06:00:00Z"), "none", "UTC")
    assert segments == [
        Segment("usage_events", at("2026-03-01T10:15:00Z"), at("2026-03-01T11:00:00Z")),
        Segment("usage_hourly", at("2026-03-01T11:00:00Z"), at("2026-03-02T00:00:00Z")),
        Segment("usage_daily", at("2026-03-02T00:00:00Z"), at("2026-03-05T00:00:00Z")),
        Segment("usage_hourly", at("2026-03-05T00:00:00Z"), at("2026-03-05T06:00:00Z")),
    ]


def test_plan_buckets_local_days_from_hourly_rollups() -> None:
    segments = plan(at("2026-03-01T00:00:00Z"), at("2026-03-10T00:00:00Z"), "day", "America/New_York")
    assert [s.source for s in segments] == ["usage_hourly"]


def test_plan_reads_raw_events_for_half_hour_zones_and_short_ranges() -> None:
    assert [s.source for s in plan(at("2026-03-01T00:00:00Z"), at("2026-03-10T00:00:00Z"), "day", "Asia/Kolkata")] == [
        "usage_events"
    ]
    # without local buckets the zone does not matter
    assert "usage_daily" in {
        s.source for s in plan(at("2026-03-01T00:00:00Z"), at("2026-03-10T00:00:00Z"), "none", "Asia/Kolkata")
    }
    assert [s.source for s in plan(at("2026-03-01T10:10:00Z"), at("2026-03-01T10:50:00Z"), "none", "UTC")] == [
        "usage_events"
    ]


# -- totals equal the raw events -------------------------------------------------

BOUNDARY_EVENTS = [
    ev("2026-03-01T10:14:59.999Z", "1000"),  # just before start: excluded
    ev("2026-03-01T10:15:00Z", "0.000000000001"),  # exactly at start: included (raw edge)
    ev("2026-03-01T10:59:59.999Z", "0.1"),  # raw edge
    ev("2026-03-01T11:00:00Z", "0.2"),  # hourly rollup
    ev("2026-03-02T00:00:00Z", "0.3", service="quiz"),  # daily rollup
    ev("2026-03-04T23:59:59Z", "0.4", learner_id="learner-2"),  # daily rollup
    ev("2026-03-05T05:59:59.999Z", "0.5"),  # hourly rollup
    ev("2026-03-05T06:00:00Z", "0.6"),  # raw edge
    ev("2026-03-05T06:30:00Z", "2000"),  # exactly at end: excluded
]
START, END = "2026-03-01T10:15:00Z", "2026-03-05T06:30:00Z"


def test_totals_equal_raw_sums_to_the_last_decimal(client: Client, auth: Auth, db: ClickHouse) -> None:
    record(client, auth, BOUNDARY_EVENTS)
    expected = Decimal("2.100000000001")
    assert raw_total(db, START, END) == expected
    params = {"start": START, "end": END}
    query = client.get("/costs/query", params=params, headers=auth("admin")).json()
    assert query["total"]["cost_usd"] == "2.100000000001"
    assert query["total"]["events"] == 7
    assert query["rows"][0]["cost_usd"] == "2.100000000001"
    by_service = client.get("/costs/by-service", params=params, headers=auth("admin")).json()
    assert by_service["total"]["cost_usd"] == "2.100000000001"
    assert {s["service"]: s["cost_usd"] for s in by_service["services"]} == {
        "tutor-chat": "1.800000000001",
        "quiz": "0.3",
    }
    learners = client.get(
        "/costs/by-learner", params={**params, "tenant_id": "school-a", "limit": "1"}, headers=auth("admin")
    ).json()
    assert learners["learners"] == [
        {
            "learner_id": "learner-1",
            "cost_usd": "1.700000000001",
            "share_pct": "80.95",
            "events": 6,
            "input_tokens": 600,
            "output_tokens": 60,
        }
    ]
    assert learners["all_others"]["cost_usd"] == "0.4"
    assert learners["total"]["cost_usd"] == "2.100000000001"
    for service in ("tutor-chat", "quiz"):
        filtered = client.get("/costs/query", params={**params, "service": service}, headers=auth("admin")).json()
        assert Decimal(filtered["total"]["cost_usd"]) == raw_total(db, START, END, service=service)


def test_daily_buckets_in_new_york_across_the_dst_change(client: Client, auth: Auth, db: ClickHouse) -> None:
    record(
        client,
        auth,
        [
            ev("2026-03-08T04:30:00Z", "1"),  # 23:30 EST on 7 March
            ev("2026-03-08T05:00:00Z", "2"),  # 00:00 EST on 8 March
            ev("2026-03-09T03:59:59Z", "4"),  # 23:59:59 EDT on 8 March (a 23-hour day)
            ev("2026-03-09T04:00:00Z", "8"),  # 00:00 EDT on 9 March
        ],
    )
    params = {
        "start": "2026-03-07T05:00:00Z",
        "end": "2026-03-10T04:00:00Z",
        "granularity": "day",
        "tz": "America/New_York",
    }
    body = client.get("/costs/query", params=params, headers=auth("admin")).json()
    buckets = {row["bucket"]: row["cost_usd"] for row in body["rows"]}
    assert buckets == {
        "2026-03-07T00:00:00-05:00": "1",
        "2026-03-08T00:00:00-05:00": "6",
        "2026-03-09T00:00:00-04:00": "8",
    }
    assert body["total"]["cost_usd"] == "15"
    summary = client.get("/costs/summary", params={**params, "period": "day"}, headers=auth("admin")).json()
    assert [(p["period_start"], p["cost_usd"], p["change_usd"], p["change_pct"]) for p in summary["periods"]] == [
        ("2026-03-07T00:00:00-05:00", "1", "1", None),
        ("2026-03-08T00:00:00-05:00", "6", "5", "500"),
        ("2026-03-09T00:00:00-04:00", "8", "2", "33.33"),
    ]
    assert summary["periods"][1]["period_end"] == "2026-03-09T00:00:00-04:00"
    assert summary["total"]["cost_usd"] == "15"


def test_half_hour_zone_buckets_from_raw_events(client: Client, auth: Auth) -> None:
    record(client, auth, [ev("2026-03-01T18:29:59Z", "1"), ev("2026-03-01T18:30:00Z", "2")])  # 23:59:59 / 00:00 IST
    body = client.get(
        "/costs/query",
        params={
            "start": "2026-03-01T00:00:00Z",
            "end": "2026-03-03T00:00:00Z",
            "granularity": "day",
            "tz": "Asia/Kolkata",
        },
        headers=auth("admin"),
    ).json()
    assert {row["bucket"]: row["cost_usd"] for row in body["rows"]} == {
        "2026-03-01T00:00:00+05:30": "1",
        "2026-03-02T00:00:00+05:30": "2",
    }


# -- grouping, ordering, paging, CSV -----------------------------------------------

MIX = [
    ev("2026-04-01T01:00:00Z", "5", service="tutor-chat", model="gpt-4o", input_tokens=10),
    ev("2026-04-01T02:00:00Z", "3", service="quiz", model="gpt-4o-mini", input_tokens=5000),
    ev("2026-04-02T01:00:00Z", "1", service="quiz", model="gpt-4o-mini", input_tokens=100),
    ev("2026-04-02T03:00:00Z", "2", service="essay", model="gpt-4o", provider="openai", input_tokens=1),
    ev("2026-04-03T01:00:00Z", "4", tenant_id="school-b", service="quiz", model="gpt-4o"),
]
APRIL = {"start": "2026-04-01T00:00:00Z", "end": "2026-04-04T00:00:00Z"}


def test_group_by_order_by_and_repeated_filters(client: Client, auth: Auth) -> None:
    record(client, auth, MIX)
    by_cost = client.get("/costs/query", params={**APRIL, "group_by": "service"}, headers=auth("admin")).json()
    assert [(r["service"], r["cost_usd"]) for r in by_cost["rows"]] == [
        ("quiz", "8"),
        ("tutor-chat", "5"),
        ("essay", "2"),
    ]
    by_tokens = client.get(
        "/costs/query", params={**APRIL, "group_by": "service", "order_by": "tokens"}, headers=auth("admin")
    ).json()
    assert [r["service"] for r in by_tokens["rows"]] == ["quiz", "tutor-chat", "essay"]
    assert by_tokens["rows"][0]["input_tokens"] == 5200
    two = client.get(
        "/costs/query",
        params=[
            *APRIL.items(),
            ("group_by", "tenant_id"),
            ("group_by", "model"),
            ("service", "quiz"),
            ("service", "essay"),
        ],
        headers=auth("admin"),
    ).json()
    assert {(r["tenant_id"], r["model"], r["cost_usd"]) for r in two["rows"]} == {
        ("school-a", "gpt-4o-mini", "4"),
        ("school-a", "gpt-4o", "2"),
        ("school-b", "gpt-4o", "4"),
    }
    assert two["total"]["cost_usd"] == "10"


def test_cursor_pages_keep_the_whole_range_total(client: Client, auth: Auth) -> None:
    record(client, auth, MIX)
    params = {**APRIL, "group_by": "service,tenant_id", "granularity": "day", "limit": "2"}
    seen: list[tuple[str, str, str]] = []
    cursor = None
    for _ in range(5):
        page = client.get(
            "/costs/query", params={**params, **({"cursor": cursor} if cursor else {})}, headers=auth("admin")
        ).json()
        assert page["total"]["cost_usd"] == "15"
        seen += [(r["bucket"], r["service"], r["cost_usd"]) for r in page["rows"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 5
    assert sum(Decimal(c) for _, _, c in seen) == 15
    reused = client.get("/costs/query", params={**APRIL, "cursor": cursor or "bm9wZQ"}, headers=auth("admin"))
    assert reused.status_code == 422
    assert reused.json()["errors"][0]["field"] == "cursor"


def test_csv_export_has_every_row(client: Client, auth: Auth) -> None:
    record(client, auth, MIX)
    response = client.get(
        "/costs/query",
        params={**APRIL, "group_by": "service", "granularity": "day", "limit": "1"},
        headers={**auth("admin"), "Accept": "text/csv"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert len(rows) == 5  # every row, not one page
    assert {(r["bucket"][:10], r["service"], r["cost_usd"]) for r in rows} == {
        ("2026-04-01", "tutor-chat", "5"),
        ("2026-04-01", "quiz", "3"),
        ("2026-04-02", "quiz", "1"),
        ("2026-04-02", "essay", "2"),
        ("2026-04-03", "quiz", "4"),
    }
    same = client.get("/costs/query", params={**APRIL, "format": "csv"}, headers=auth("admin"))
    assert same.text.splitlines()[1].split(",")[0] == "15"


def test_weekly_summary_with_top_services_and_models(client: Client, auth: Auth) -> None:
    record(
        client,
        auth,
        [
            ev("2026-04-06T10:00:00Z", "10", service="tutor-chat"),  # Monday, week 15
            ev("2026-04-08T10:00:00Z", "30", service="quiz", model="gpt-4o"),
            ev("2026-04-13T10:00:00Z", "20", service="quiz"),  # Monday, week 16
        ],
    )
    body = client.get(
        "/costs/summary",
        params={"period": "week", "start": "2026-04-08T00:00:00Z", "end": "2026-04-20T00:00:00Z"},
        headers=auth("user", "school-a"),
    ).json()
    assert body["start"] == "2026-04-06T00:00:00Z"  # the week containing `start`
    first, second = body["periods"]
    assert (first["cost_usd"], first["change_usd"], first["change_pct"]) == ("40", "40", None)
    assert first["top_services"] == [
        {"name": "quiz", "cost_usd": "30"},
        {"name": "tutor-chat", "cost_usd": "10"},
    ]
    assert first["top_models"][0] == {"name": "gpt-4o", "cost_usd": "30"}
    assert (second["cost_usd"], second["change_usd"], second["change_pct"]) == ("20", "-20", "-50")
    assert body["total"]["cost_usd"] == "60"


# -- scoping and bad parameters -------------------------------------------------------


def test_tenants_see_only_their_own_costs(client: Client, auth: Auth) -> None:
    record(client, auth, MIX)
    own = client.get("/costs/query", params=APRIL, headers=auth("tenant-admin", "school-b")).json()
    assert own["total"]["cost_usd"] == "4"
    services = client.get("/costs/by-service", params=APRIL, headers=auth("user", "school-a")).json()
    assert services["total"]["cost_usd"] == "11"
    learners = client.get("/costs/by-learner", params=APRIL, headers=auth("user", "school-b")).json()
    assert learners["tenant_id"] == "school-b"
    for path in ("/costs/query", "/costs/summary", "/costs/by-service", "/costs/by-learner"):
        other = client.get(path, params={**APRIL, "tenant_id": "school-a"}, headers=auth("user", "school-b"))
        assert other.status_code == 403, path
        assert client.get(path, params=APRIL, headers=auth("service")).status_code == 403, path
    assert client.get("/costs/query", params=APRIL).status_code == 401


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"group_by": "colour"}, "group_by"),
        ({"start": "2026-04-02T00:00:00Z", "end": "2026-04-01T00:00:00Z"}, "end"),
        ({"start": "2020-01-01T00:00:00Z", "end": "2026-04-01T00:00:00Z"}, "start"),
        ({"tz": "Moon/Tranquility"}, "tz"),
        ({"order_by": "colour"}, "order_by"),
        ({"granularity": "fortnight"}, "granularity"),
        ({"limit": "0"}, "limit"),
        ({"start": "yesterday"}, "start"),
    ],
)
def test_bad_parameters_are_422_naming_the_parameter(
    client: Client, auth: Auth, params: dict[str, str], field: str
) -> None:
    response = client.get("/costs/query", params=params, headers=auth("admin"))
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == field


def test_by_learner_needs_one_tenant_for_admins_and_searches(client: Client, auth: Auth) -> None:
    record(client, auth, [ev("2026-04-01T01:00:00Z", "1", learner_id=f"learner-{i}") for i in range(3)])
    missing = client.get("/costs/by-learner", params=APRIL, headers=auth("admin"))
    assert missing.status_code == 422
    assert missing.json()["errors"][0]["field"] == "tenant_id"
    found = client.get(
        "/costs/by-learner", params={**APRIL, "tenant_id": "school-a", "q": "NER-2"}, headers=auth("admin")
    ).json()
    assert [row["learner_id"] for row in found["learners"]] == ["learner-2"]
    assert found["all_others"]["cost_usd"] == "2"


# -- cost_summaries ------------------------------------------------------------------


def test_summaries_read_precomputed_periods_and_stay_exact_when_late_events_arrive(
    client: Client, auth: Auth, db: ClickHouse
) -> None:
    record(client, auth, [ev("2026-05-04T10:00:00Z", "1"), ev("2026-05-11T10:00:00Z", "2", service="quiz")])
    params = {"period": "week", "start": "2026-05-04T00:00:00Z", "end": "2026-05-25T00:00:00Z"}

    def summary() -> dict[str, Any]:
        response = client.get("/costs/summary", params=params, headers=auth("admin"))
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    assert client.post("/costs/summaries/refresh", headers=auth("tenant-admin", "school-a")).status_code == 403
    run = client.post("/costs/summaries/refresh", headers=auth("admin"))
    assert run.status_code == 200
    assert run.json()["days"] == 2
    assert run.json()["rows"] == 2 + 2 + 2  # a row per day, per week, and per service in May

    first = summary()
    assert first["precomputed_until"] == "2026-05-25T00:00:00Z"
    assert [p["cost_usd"] for p in first["periods"]] == ["1", "2", "0"]
    assert first["periods"][1]["top_services"] == [{"name": "quiz", "cost_usd": "2"}]
    assert first["total"]["cost_usd"] == "3"

    # a late event for an already summarised week: that week is read from the rollups
    record(client, auth, [ev("2026-05-12T10:00:00Z", "0.000000000004", service="essay")])
    late = summary()
    assert late["precomputed_until"] == "2026-05-11T00:00:00Z"
    assert [p["cost_usd"] for p in late["periods"]] == ["1", "2.000000000004", "0"]
    assert late["total"]["cost_usd"] == str(raw_total(db, "2026-05-04T00:00:00Z", "2026-05-25T00:00:00Z"))

    again = client.post("/costs/summaries/refresh", headers=auth("admin")).json()
    assert again["days"] == 1
    refreshed = summary()
    assert [p["cost_usd"] for p in refreshed["periods"]] == ["1", "2.000000000004", "0"]
    assert refreshed["total"]["cost_usd"] == "3.000000000004"
    assert client.post("/costs/summaries/refresh", headers=auth("admin")).json()["days"] == 0


def test_summaries_are_not_used_for_other_zones_or_learner_filters(client: Client, auth: Auth) -> None:
    record(client, auth, [ev("2026-05-04T10:00:00Z", "1", learner_id="learner-9")])
    client.post("/costs/summaries/refresh", headers=auth("admin"))
    params = {"period": "day", "start": "2026-05-04T00:00:00Z", "end": "2026-05-06T00:00:00Z"}
    utc = client.get("/costs/summary", params=params, headers=auth("admin")).json()
    assert utc["precomputed_until"] is not None
    paris = client.get("/costs/summary", params={**params, "tz": "Europe/Paris"}, headers=auth("admin")).json()
    assert paris["precomputed_until"] is None
    assert paris["total"]["cost_usd"] == "1"
    learner = client.get("/costs/summary", params={**params, "learner_id": "learner-9"}, headers=auth("admin")).json()
    assert learner["precomputed_until"] is None
    assert learner["total"]["cost_usd"] == "1"


def test_csv_export_streams_many_rows_and_matches_the_total(client: Client, auth: Auth, db: ClickHouse) -> None:
    events = [
        ev("2026-06-01T10:00:00Z", str(Decimal(i) / 100000), learner_id=f"learner-{i:05d}") for i in range(1, 12001)
    ]
    record(client, auth, events[:6000])
    record(client, auth, events[6000:])
    params = {"start": "2026-06-01T00:00:00Z", "end": "2026-06-02T00:00:00Z", "group_by": "learner_id", "format": "csv"}
    with client.stream("GET", "/costs/query", params=params, headers=auth("admin")) as response:
        assert response.status_code == 200
        body = "".join(response.iter_text())
    rows = list(csv.DictReader(io.StringIO(body)))
    assert len(rows) == 12000
    assert rows[0]["learner_id"] == "learner-12000"  # most expensive first
    assert sum(Decimal(r["cost_usd"]) for r in rows) == raw_total(db, "2026-06-01T00:00:00Z", "2026-06-02T00:00:00Z")


def test_an_admin_token_naming_a_tenant_still_names_the_tenant_for_by_learner(client: Client, auth: Auth) -> None:
    response = client.get("/costs/by-learner", params=APRIL, headers=auth("admin", "school-a"))
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "tenant_id"
