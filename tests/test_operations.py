"""Operating the service: request ids, HTTP metrics, rate limits, health views, the audit log."""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from litestar.testing import TestClient

from service.app import create_app
from service.settings import OperationsSettings, Settings
from service.storage.clickhouse import ClickHouse
from tests.conftest import arq_worker

Client = TestClient  # type: ignore[type-arg]
Auth = Callable[..., dict[str, str]]


def event(**fields: Any) -> dict[str, Any]:
    body = {
        "tenant_id": "school-a",
        "service": "tutor-chat",
        "provider": "openai",
        "model": "gpt-4o-mini",
        "input_tokens": 100,
        "output_tokens": 20,
        "timestamp": datetime.now(UTC).isoformat(),
    }
    body.update(fields)
    return body


def metric(text: str, metric_name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text, or None when absent."""
    for line in text.splitlines():
        if not line.startswith(metric_name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.rsplit("}", 1)[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


# -- request ids and metrics ---------------------------------------------------------


def test_request_ids_are_echoed_or_generated(client: Client, auth: Auth) -> None:
    given = client.get("/budgets", headers={**auth("admin"), "X-Request-ID": "trace-42"})
    assert given.headers["X-Request-ID"] == "trace-42"
    generated = client.get("/budgets", headers=auth("admin"))
    assert re.fullmatch(r"[0-9a-f]{32}", generated.headers["X-Request-ID"])
    unsafe = client.get("/budgets", headers={**auth("admin"), "X-Request-ID": "a b\tc" * 50})
    assert re.fullmatch(r"[0-9a-f]{32}", unsafe.headers["X-Request-ID"])
    # the fast ingest path and errors carry it too
    stored = client.post("/usage-events", json=event(), headers={**auth("service"), "X-Request-ID": "ingest-1"})
    assert (stored.status_code, stored.headers["X-Request-ID"]) == (201, "ingest-1")
    refused = client.get("/budgets", headers={"X-Request-ID": "no-token"})
    assert (refused.status_code, refused.headers["X-Request-ID"]) == (401, "no-token")


def test_http_metrics_are_labelled_by_route_template(client: Client, auth: Auth) -> None:
    samples = [
        ("finops_http_requests_total", {"route": "/usage-events", "method": "POST", "status": "201"}),
        ("finops_http_requests_total", {"route": "/budgets/{budget_id}", "method": "GET", "status": "404"}),
        ("finops_http_requests_total", {"route": "unmatched", "method": "GET", "status": "404"}),
        ("finops_http_request_duration_seconds_count", {"route": "/budgets/{budget_id}", "method": "GET"}),
    ]
    before = client.get("/metrics").text
    client.post("/usage-events", json=event(), headers=auth("service"))
    for _ in range(2):
        client.get("/budgets/bud_missing", headers=auth("admin"))
    client.get("/no/such/route", headers=auth("admin"))
    after = client.get("/metrics").text
    grown = [(metric(after, name, **labels) or 0) - (metric(before, name, **labels) or 0) for name, labels in samples]
    assert grown == [1, 2, 1, 2]
    assert "/budgets/bud_missing" not in after


# -- rate limits ---------------------------------------------------------------------


def limited(settings: Settings, **limits: str) -> Settings:
    return dataclasses.replace(settings, operations=dataclasses.replace(OperationsSettings(), **limits))


def test_reads_over_the_limit_get_429_with_retry_after(settings: Settings, auth: Auth) -> None:
    with TestClient(app=create_app(limited(settings, rate_limit_read="3/minute"))) as client:
        answers = [client.get("/budgets", headers=auth("admin")) for _ in range(4)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        assert [a.headers["RateLimit-Remaining"] for a in answers] == ["2", "1", "0", "0"]
        assert answers[0].headers["RateLimit-Limit"] == "3"
        assert 1 <= int(answers[3].headers["Retry-After"]) <= 60
        assert answers[3].json()["detail"].startswith("rate limit for read requests exceeded")
        # limits are per principal and per route group; health and metrics are never limited
        assert client.get("/budgets", headers=auth("tenant-admin", "school-a")).status_code == 200
        assert client.post("/usage-events", json=event(), headers=auth("admin")).status_code == 201
        assert all(client.get("/health/live").status_code == 200 for _ in range(5))
        assert (metric(client.get("/metrics").text, "finops_rate_limited_total", group="read") or 0) >= 1


def test_replicas_share_limits_through_redis(settings: Settings, redis_url: str, auth: Auth) -> None:
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    shared = dataclasses.replace(limited(settings, rate_limit_write="2/minute"), redis_url=redis_url)
    body = {"name": "b", "scope": {"tenant_id": "school-a"}, "limit_usd": "10"}
    with TestClient(app=create_app(shared)) as one:
        first = one.post("/budgets", json=body, headers=auth("admin"))
    with TestClient(app=create_app(shared)) as two:  # another replica, the same Redis
        second = two.post("/budgets", json=body, headers=auth("admin"))
        third = two.post("/budgets", json=body, headers=auth("admin"))
    assert [first.status_code, second.status_code, third.status_code] == [201, 201, 429]


# -- health --------------------------------------------------------------------------


def test_health_views_in_embedded_mode(client: Client) -> None:
    assert client.get("/health/live").json() == {"status": "ok", "components": {}}
    ready = client.get("/health/ready")
    assert ready.status_code == 200
    assert set(ready.json()["components"]) == {"clickhouse", "migrations"}
    full = client.get("/health").json()
    assert full["status"] == "ok"
    assert full["components"]["workers"] == {"status": "ok", "detail": "jobs run in the API process"}


@pytest.fixture
def distributed(settings: Settings, redis_url: str) -> Iterator[tuple[Settings, Client]]:
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    settings = dataclasses.replace(settings, redis_url=redis_url)
    with TestClient(app=create_app(settings)) as client:
        yield settings, client


def test_health_reports_redis_and_worker_heartbeats(distributed: tuple[Settings, Client], db: ClickHouse) -> None:
    settings, client = distributed
    alone = client.get("/health")
    assert alone.status_code == 200
    assert alone.json()["status"] == "degraded"
    assert alone.json()["components"]["redis"] == {"status": "ok"}
    assert alone.json()["components"]["workers"]["status"] == "down"
    assert set(client.get("/health/ready").json()["components"]) == {"clickhouse", "migrations", "redis"}
    with arq_worker(settings, db):
        deadline = time.monotonic() + 20
        workers: dict[str, Any] = {}
        while time.monotonic() < deadline:
            workers = client.get("/health").json()["components"]["workers"]
            if workers["status"] == "ok":
                break
            time.sleep(0.1)
        assert workers == {"status": "ok", "detail": "1 worker(s) seen in the last 30 s"}
    assert client.get("/health").json()["components"]["workers"]["status"] == "down"  # it said goodbye


# -- audit ---------------------------------------------------------------------------


def test_audit_events_record_every_change_with_its_request_id(client: Client, auth: Auth) -> None:
    created = client.post(
        "/budgets",
        json={"name": "a", "scope": {"tenant_id": "school-a"}, "limit_usd": "10"},
        headers={**auth("tenant-admin", "school-a"), "X-Request-ID": "change-1"},
    ).json()
    client.post(
        "/budgets", json={"name": "b", "scope": {"tenant_id": "school-b"}, "limit_usd": "5"}, headers=auth("admin")
    )
    client.post("/budgets/evaluate", headers={**auth("admin"), "X-Request-ID": "eval-1"})
    client.delete(f"/budgets/{created['budget_id']}", headers=auth("tenant-admin", "school-a"))

    every = client.get("/audit-events", headers=auth("admin")).json()["items"]
    assert [e["action"] for e in every] == ["budget.delete", "budgets.evaluate", "budget.create", "budget.create"]
    create = every[3]
    assert (create["actor"], create["role"], create["tenant_id"], create["request_id"]) == (
        "tenant-admin@school-a",
        "tenant-admin",
        "school-a",
        "change-1",
    )
    assert create["after"]["limit_usd"] == "10"
    assert every[1]["request_id"] == "eval-1"
    assert every[1]["after"]["budgets"] == 2

    own = client.get("/audit-events", headers=auth("tenant-admin", "school-a")).json()["items"]
    assert [e["action"] for e in own] == ["budget.delete", "budget.create"]
    assert (
        client.get(
            "/audit-events", params={"tenant_id": "school-b"}, headers=auth("tenant-admin", "school-a")
        ).status_code
        == 403
    )
    assert client.get("/audit-events", headers=auth("user", "school-a")).status_code == 403
    filtered = client.get("/audit-events", params={"action": "budget.create", "limit": 1}, headers=auth("admin")).json()
    assert len(filtered["items"]) == 1
    rest = client.get(
        "/audit-events",
        params={"action": "budget.create", "limit": 1, "cursor": filtered["next_cursor"]},
        headers=auth("admin"),
    ).json()
    assert len(rest["items"]) == 1
    assert rest["items"][0]["target_id"] != filtered["items"][0]["target_id"]
    assert rest["next_cursor"] is None


# -- business gauges -----------------------------------------------------------------


def test_business_gauges_come_from_clickhouse(settings: Settings, auth: Auth) -> None:
    gauges = dataclasses.replace(
        settings,
        operations=dataclasses.replace(
            settings.operations, metrics_refresh_interval_s=1, metrics_learner_top_n=2, metrics_budget_top_n=5
        ),
    )
    events = [
        event(learner_id="learner-1", cost_usd="1.25", input_tokens=1000, output_tokens=10),
        event(learner_id="learner-2", cost_usd="2.5", service="essay-grader", input_tokens=2000, output_tokens=20),
        event(learner_id="learner-3", cost_usd="0.25", provider="gemini", model="gemini-2.0-flash", input_tokens=3),
    ]
    with TestClient(app=create_app(gauges)) as client:
        budget = client.post(
            "/budgets",
            json={"name": "School A", "scope": {"tenant_id": "school-a"}, "limit_usd": "10"},
            headers=auth("admin"),
        ).json()
        assert client.post("/usage-events/batch", json={"events": events}, headers=auth("service")).status_code == 201
        deadline = time.monotonic() + 20
        text = ""
        while time.monotonic() < deadline:
            text = client.get("/metrics").text
            if metric(text, "finops_budget_percentage_used", budget_id=budget["budget_id"]) == 40.0:
                break
            time.sleep(0.2)
    assert "finops_total_cost_usd 4.0" in text
    assert metric(text, "finops_cost_by_provider_usd", provider="openai") == 3.75
    assert metric(text, "finops_cost_by_provider_usd", provider="gemini") == 0.25
    assert metric(text, "finops_cost_by_service_usd", service="essay-grader") == 2.5
    assert metric(text, "finops_tokens_total", kind="input") == 3003
    assert metric(text, "finops_cost_by_learner_usd", learner_id="learner-2") == 2.5
    assert metric(text, "finops_cost_by_learner_usd", learner_id="learner-1") == 1.25
    assert metric(text, "finops_cost_by_learner_usd", learner_id="learner-3") is None  # only the top two
    assert metric(text, "finops_budget_percentage_used", budget_id=budget["budget_id"], name="School A") == 40.0
    assert metric(text, "finops_budget_alerts_active", kind="actual") == 0
