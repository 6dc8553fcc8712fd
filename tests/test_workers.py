"""Distributed mode: the API enqueues on a real Redis, a real arq worker runs the jobs.

The embedded engine belongs to one process, so here the worker runs in the
test's process (its own thread and event loop) on the same chDB database; with
a ClickHouse server the same worker runs as `finops worker` in its own process.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from litestar.testing import TestClient

from service.app import create_app
from service.settings import Settings
from service.storage.clickhouse import ClickHouse
from tests.conftest import arq_worker
from workers.settings import cron_times

Auth = Callable[..., dict[str, str]]


@pytest.fixture
def distributed(settings: Settings, redis_url: str, db: ClickHouse) -> Iterator[TestClient]:  # type: ignore[type-arg]
    settings = dataclasses.replace(settings, redis_url=redis_url)
    with arq_worker(settings, db), TestClient(app=create_app(settings)) as client:
        yield client


def test_ingest_crossing_a_budget_is_evaluated_by_the_worker(distributed: TestClient, auth: Auth) -> None:  # type: ignore[type-arg]
    client = distributed
    created = client.post(
        "/budgets",
        json={"name": "tight", "scope": {"tenant_id": "school-a"}, "limit_usd": "10", "thresholds": [{"percent": 80}]},
        headers=auth("admin"),
    )
    assert created.status_code == 201
    event = {
        "tenant_id": "school-a",
        "service": "tutor-chat",
        "provider": "openai",
        "model": "gpt-4o-mini",
        "cost_usd": "9",
        "timestamp": datetime.now(UTC).replace(microsecond=0).isoformat(),
    }
    assert client.post("/usage-events", json=event, headers=auth("service")).status_code == 201
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    while not found and time.monotonic() < deadline:
        found = client.get("/alerts", headers=auth("admin")).json()["items"]
        time.sleep(0.05)
    assert [(a["budget_id"], a["threshold_percent"], a["spend_usd"]) for a in found] == [
        (created.json()["budget_id"], 80, "9")
    ]
    # on-demand runs go through the worker and answer with its result
    run = client.post("/budgets/evaluate", headers=auth("admin"))
    assert run.status_code == 200, run.text
    assert (run.json()["budgets"], run.json()["fired"]) == (1, 0)
    refresh = client.post("/costs/summaries/refresh", headers=auth("admin"))
    assert refresh.status_code == 200
    assert refresh.json()["days"] >= 1


def test_cron_times_cover_the_interval() -> None:
    assert cron_times(300) == {"minute": set(range(0, 60, 5)), "second": {0}}
    assert cron_times(15) == {"second": {0, 15, 30, 45}}
    assert cron_times(3600) == {"hour": set(range(24)), "minute": {0}, "second": {0}}
