"""Keeping prices current: source runs, quarantine, imports, overrides and repricing, end to end."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from litestar.testing import TestClient

from service.app import create_app
from service.settings import PricingSettings, Settings
from service.storage.clickhouse import ClickHouse
from tests.receivers import Answer, Receiver

Client = TestClient  # type: ignore[type-arg]
Auth = Callable[..., dict[str, str]]

# LiteLLM's shape: per-token costs as JSON numbers.
LITELLM_MAP = {
    "sample_spec": {"litellm_provider": "one of the providers", "mode": "chat"},
    "gpt-4o-mini": {  # output 0.60 -> 0.66 per Mtok: a plausible change
        "litellm_provider": "openai",
        "mode": "chat",
        "input_cost_per_token": 1.5e-07,
        "output_cost_per_token": 6.6e-07,
        "cache_read_input_token_cost": 7.5e-08,
    },
    "gpt-4o": {  # input 2.50 -> 25 per Mtok: ten times, quarantined
        "litellm_provider": "openai",
        "mode": "chat",
        "input_cost_per_token": 2.5e-05,
        "output_cost_per_token": 1e-05,
        "cache_read_input_token_cost": 1.25e-06,
    },
    "o9-mini": {
        "litellm_provider": "openai",
        "mode": "chat",
        "input_cost_per_token": 1.1e-06,
        "output_cost_per_token": 4.4e-06,
    },
    "claude-x": {"litellm_provider": "anthropic", "mode": "chat", "input_cost_per_token": 3e-06},
}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


def pricing_client(settings: Settings, receiver: Receiver, **changes: Any) -> Client:
    pricing = dataclasses.replace(
        PricingSettings(catalog_url=""),
        catalog_url=receiver.url + "/prices.json",
        alert_channels=json.dumps([{"type": "slack", "webhook_url": receiver.url + "/admins"}]),
        **changes,
    )
    alerts = dataclasses.replace(settings.alerts, allow_private_urls=True)
    return TestClient(app=create_app(dataclasses.replace(settings, pricing=pricing, alerts=alerts)))


def event(model: str, when: datetime, **fields: Any) -> dict[str, Any]:
    body = {
        "tenant_id": "school-a",
        "service": "tutor-chat",
        "learner_id": "learner-1",
        "provider": "openai",
        "model": model,
        "input_tokens": 1_000_000,
        "output_tokens": 100_000,
        "timestamp": when.isoformat(),
    }
    body.update(fields)
    return body


def record(client: Client, auth: Auth, *events: dict[str, Any]) -> list[dict[str, Any]]:
    response = client.post("/usage-events/batch", json={"events": list(events)}, headers=auth("service"))
    assert response.status_code == 201, response.text
    items: list[dict[str, Any]] = response.json()["events"]
    return items


def prices(client: Client, auth: Auth, **params: str) -> dict[str, dict[str, Any]]:
    items = client.get("/pricing", params=params, headers=auth("user", "school-a")).json()["items"]
    return {f"{p['provider']}/{p['model']}/{p['region']}": p for p in items}


# -- source runs -----------------------------------------------------------------------


def test_a_source_run_adds_changes_and_quarantines_and_tells_admins(
    settings: Settings, receiver: Receiver, auth: Auth
) -> None:
    receiver.script("/prices.json", Answer(200, {"Content-Type": "application/json"}, json.dumps(LITELLM_MAP).encode()))
    with pricing_client(settings, receiver) as client:
        record(client, auth, event("gpt-9-preview", datetime.now(UTC) - timedelta(hours=1)))
        before = prices(client, auth, provider="openai")
        run = client.post("/pricing/update", headers=auth("admin"))
        assert run.status_code == 200, run.text
        [report] = run.json()["runs"]
        assert (report["source"], report["status"]) == ("litellm", "ok")
        assert (report["added"], report["changed"], report["quarantined"]) == (1, 1, 1)
        after = prices(client, auth, provider="openai")
        # the change is a new effective-dated row; the old one is kept for earlier events
        assert after["openai/gpt-4o-mini/"]["output_per_mtok"] == "0.66"
        assert after["openai/gpt-4o-mini/"]["batch_discount_pct"] == "50"  # not stated by the map: kept
        assert after["openai/gpt-4o-mini/"]["origin"] == "litellm"
        at_old = prices(client, auth, provider="openai", at="2025-01-01T00:00:00Z")
        assert at_old["openai/gpt-4o-mini/"]["output_per_mtok"] == "0.6"
        assert after["openai/gpt-4o/"] == before["openai/gpt-4o/"]  # quarantined, not applied
        assert after["openai/o9-mini/"]["input_per_mtok"] == "1.1"
        changes = client.get("/pricing/changes", headers=auth("user", "school-a")).json()
        by_model = {c["model"]: c for c in changes}
        assert by_model["gpt-4o"]["change"] == "quarantined"
        assert by_model["gpt-4o"]["reason"] == "input_per_mtok goes from 2.5 to 25: more than 3x"
        assert (
            by_model["gpt-4o-mini"]["before"]["output_per_mtok"],
            by_model["gpt-4o-mini"]["after"]["output_per_mtok"],
        ) == ("0.6", "0.66")
        assert by_model["o9-mini"]["change"] == "added"
        assert run.json()["unpriced_in_traffic"] == ["openai/gpt-9-preview (1 events)"]
        [message] = receiver.at("/admins")
        text = message.json()["text"]
        assert "litellm: 1 added, 1 changed, 1 quarantined" in text
        assert "quarantined openai/gpt-4o" in text
        assert "openai/gpt-9-preview (1 events)" in text
        # a second run of the same map changes nothing and tells nobody
        receiver.script("/prices.json", Answer(200, {}, json.dumps(LITELLM_MAP).encode()))
        again = client.post("/pricing/update", headers=auth("admin")).json()["runs"][0]
        assert (again["added"], again["changed"], again["quarantined"], again["unchanged"]) == (0, 0, 1, 2)


def test_a_failing_source_changes_nothing_and_is_visible(settings: Settings, receiver: Receiver, auth: Auth) -> None:
    receiver.script("/prices.json", Answer(500, {}, b"upstream broke"))
    with pricing_client(settings, receiver) as client:
        before = prices(client, auth)
        report = client.post("/pricing/update", headers=auth("admin")).json()["runs"][0]
        assert report["status"] == "failed"
        assert "500" in report["error"]
        assert prices(client, auth) == before
        runs = client.get("/pricing/runs", headers=auth("admin")).json()
        assert (runs[0]["source"], runs[0]["status"]) == ("litellm", "failed")
        assert 'finops_pricing_runs_total{outcome="failed",source="litellm"}' in client.get("/metrics").text
        health = client.get("/health").json()["components"]
        assert health["pricing"]["status"] == "failed"
        assert client.get("/pricing/runs", headers=auth("user", "school-a")).status_code == 403
        assert client.post("/pricing/update", headers=auth("tenant-admin", "school-a")).status_code == 403


# -- imports and overrides ---------------------------------------------------------------


def test_import_prices_a_new_model_from_its_effective_date(client: Client, auth: Auth) -> None:
    catalog = {
        "format": "finops-catalog/1",
        "prices": [
            {
                "provider": "openai",
                "model": "acme-tutor",
                "effective_from": "2026-01-01T00:00:00Z",
                "input_per_mtok": "2",
                "output_per_mtok": "8",
                "source": "negotiated",
            },
        ],
    }
    imported = client.post("/pricing/import", json=catalog, headers=auth("admin"))
    assert imported.status_code == 200, imported.text
    assert imported.json()["added"] == 1
    [stored] = record(client, auth, event("acme-tutor", datetime.now(UTC) - timedelta(minutes=5)))
    assert (stored["pricing_status"], stored["cost_usd"]) == ("priced", "2.8")
    bad = client.post("/pricing/import", content=b"[1, 2]", headers=auth("admin"))
    assert bad.status_code == 422
    negative = {**catalog, "prices": [{**catalog["prices"][0], "input_per_mtok": "-1"}]}
    assert client.post("/pricing/import", json=negative, headers=auth("admin")).status_code == 422
    assert client.post("/pricing/import", json=catalog, headers=auth("tenant-admin", "school-a")).status_code == 403


def test_tenant_overrides_apply_at_ingest_for_that_tenant_only(client: Client, auth: Auth) -> None:
    now = datetime.now(UTC)
    discount = {
        "tenant_id": "school-a",
        "provider": "openai",
        "model": "gpt-4o-mini",
        "effective_from": (now - timedelta(days=1)).isoformat(),
        "discount_pct": "20",
    }
    assert client.put("/pricing/overrides", json=discount, headers=auth("admin")).status_code == 200
    own = {
        "tenant_id": "school-c",
        "provider": "openai",
        "model": "gpt-4o",
        "effective_from": "2026-01-01T00:00:00Z",
        "rates": {"input_per_mtok": "1", "output_per_mtok": "4"},
    }
    assert client.put("/pricing/overrides", json=own, headers=auth("admin")).status_code == 200
    when = now - timedelta(minutes=1)
    [a] = record(client, auth, event("gpt-4o-mini", when))
    [b] = record(client, auth, event("gpt-4o-mini", when, tenant_id="school-b"))
    [c] = record(client, auth, event("gpt-4o", when, tenant_id="school-c"))
    # list: 1M x 0.15 + 100k x 0.60 per Mtok = 0.21; school-a pays 80 % of it
    assert (a["cost_usd"], b["cost_usd"], c["cost_usd"]) == ("0.168", "0.21", "1.4")
    bad = client.put("/pricing/overrides", json={**discount, "discount_pct": "120"}, headers=auth("admin"))
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["field"] == "discount_pct"
    assert client.put("/pricing/overrides", json=discount, headers=auth("tenant-admin", "school-a")).status_code == 403
    seen = client.get("/pricing/overrides", headers=auth("user", "school-a")).json()
    assert [(o["tenant_id"], o["discount_pct"]) for o in seen] == [("school-a", "20")]


# -- repricing ---------------------------------------------------------------------------


def totals(client: Client, auth: Auth, start: datetime, end: datetime, granularity: str) -> tuple[str, int]:
    answer = client.get(
        "/costs/query",
        params={"start": start.isoformat(), "end": end.isoformat(), "granularity": granularity},
        headers=auth("admin"),
    ).json()
    return answer["total"]["cost_usd"], answer["total"]["unpriced_events"]


def raw_total(db: ClickHouse, start: datetime, end: datetime) -> Decimal:
    [(total,)] = db.query(
        "SELECT sum(ifNull(cost_usd, toDecimal64(0, 12))) FROM usage_events"
        " WHERE event_time >= {s:DateTime64(3, 'UTC')} AND event_time < {e:DateTime64(3, 'UTC')}",
        {"s": start, "e": end},
        label="test.raw_total",
    )
    return Decimal(total)


def test_repricing_corrects_every_rollup_and_is_idempotent(client: Client, auth: Auth, db: ClickHouse) -> None:
    day = (datetime.now(UTC) - timedelta(days=3)).replace(hour=0, minute=0, second=0, microsecond=0)
    start, end = day, day + timedelta(days=2)
    budget = client.post(
        "/budgets",
        json={
            "name": "all of it",
            "scope": {"tenant_id": "school-a"},
            "period": "custom",
            "period_start": start.isoformat(),
            "period_end": (datetime.now(UTC) + timedelta(days=1)).isoformat(),
            "limit_usd": "1000",
        },
        headers=auth("admin"),
    ).json()
    record(
        client,
        auth,
        event("acme-tutor", day + timedelta(hours=3)),  # unpriced: no price yet
        event("acme-tutor", day + timedelta(hours=27, minutes=30), input_tokens=500_000, output_tokens=0),
        event("gpt-4o-mini", day + timedelta(hours=5)),  # 0.21 at list price
        event("gpt-4o-mini", day + timedelta(hours=6), cost_usd="9.99"),  # the caller's own cost: never repriced
    )
    assert totals(client, auth, start, end, "day") == ("10.2", 2)
    # acme-tutor gets a price from before the events; gpt-4o-mini a negotiated 50 % for school-a
    catalog = {
        "format": "finops-catalog/1",
        "prices": [
            {
                "provider": "openai",
                "model": "acme-tutor",
                "effective_from": "2026-01-01T00:00:00Z",
                "input_per_mtok": "2",
                "output_per_mtok": "8",
            }
        ],
    }
    assert client.post("/pricing/import", json=catalog, headers=auth("admin")).status_code == 200
    discount = {
        "tenant_id": "school-a",
        "provider": "openai",
        "model": "gpt-4o-mini",
        "effective_from": "2026-01-01T00:00:00Z",
        "discount_pct": "50",
    }
    assert client.put("/pricing/overrides", json=discount, headers=auth("admin")).status_code == 200

    summary = client.post(
        "/pricing/reprice", json={"start": start.isoformat(), "end": end.isoformat()}, headers=auth("admin")
    )
    assert summary.status_code == 200, summary.text
    body = summary.json()
    # acme-tutor: 2 + 0.8 = 2.8 and 1.0; gpt-4o-mini: 0.105 instead of 0.21
    assert (body["events_examined"], body["events_corrected"], body["unpriced_resolved"]) == (3, 3, 2)
    assert body["cost_delta_usd"] == "3.695"
    assert body["by_tenant"] == [{"tenant_id": "school-a", "events": 3, "cost_delta_usd": "3.695"}]
    expected = "13.895"  # 2.8 + 1.0 + 0.105 + 9.99
    assert raw_total(db, start, end) == Decimal(expected)
    assert totals(client, auth, start, end, "day") == (expected, 0)  # daily rollups
    assert totals(client, auth, start, end, "hour") == (expected, 0)  # hourly rollups
    assert totals(client, auth, start + timedelta(minutes=30), end, "none") == (expected, 0)  # raw edges too
    status = client.get(f"/budgets/{budget['budget_id']}/status", headers=auth("admin")).json()
    assert status["spend_usd"] == expected
    # the same repricing again changes nothing
    again = client.post(
        "/pricing/reprice", json={"start": start.isoformat(), "end": end.isoformat()}, headers=auth("admin")
    ).json()
    assert (again["events_corrected"], again["cost_delta_usd"]) == (0, "0")
    assert totals(client, auth, start, end, "day") == (expected, 0)
    listed = client.get(
        "/usage-events", params={"start": start.isoformat(), "end": end.isoformat()}, headers=auth("admin")
    ).json()["items"]
    assert len(listed) == 4  # corrections are not events
    assert (
        client.post(
            "/pricing/reprice", json={"start": end.isoformat(), "end": start.isoformat()}, headers=auth("admin")
        ).status_code
        == 422
    )


def test_repricing_narrows_to_a_provider_model_and_tenant(client: Client, auth: Auth) -> None:
    when = datetime.now(UTC) - timedelta(hours=2)
    record(client, auth, event("acme-tutor", when), event("acme-tutor", when, tenant_id="school-b"))
    catalog = {
        "format": "finops-catalog/1",
        "prices": [
            {
                "provider": "openai",
                "model": "acme-tutor",
                "effective_from": "2026-01-01T00:00:00Z",
                "input_per_mtok": "1",
            }
        ],
    }
    client.post("/pricing/import", json=catalog, headers=auth("admin"))
    body = {
        "start": (when - timedelta(hours=1)).isoformat(),
        "end": (when + timedelta(hours=1)).isoformat(),
        "model": "acme-tutor",
        "tenant_id": "school-b",
    }
    summary = client.post("/pricing/reprice", json=body, headers=auth("admin")).json()
    assert summary["by_tenant"] == [{"tenant_id": "school-b", "events": 1, "cost_delta_usd": "1"}]
