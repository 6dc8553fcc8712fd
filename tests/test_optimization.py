"""Optimization suggestions on crafted usage whose every saving can be computed by hand from the catalog.

Prices used (bundled catalog, USD per million tokens): gpt-4o 2.50 in / 10 out;
gpt-4o-mini 0.15 / 0.60 (cached 0.075); gpt-4-turbo 10 / 30, batch 50 %;
gpt-4.1 2.00 / 8.00, cached 0.50; gemini-1.5-pro 1.25 / 5.00, above 128,000
input tokens 2.50 / 10.00; Bedrock meta.llama3-2-1b 0.13 / 0.13 in
eu-central-1, 0.10 / 0.10 in us-east-1 and us-west-2. With the default
30-day window a month is the window, so savings are the window's figures.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from litestar.testing import TestClient

from service.app import create_app
from service.settings import Settings
from service.storage.clickhouse import ClickHouse
from tests.conftest import arq_worker

Client = TestClient  # type: ignore[type-arg]
Auth = Callable[..., dict[str, str]]
ROUTE = "/costs/optimization-suggestions"


def wait_for_first_run(db: ClickHouse) -> None:
    """The job runs once at start-up: let it finish, so it cannot race the test's events."""
    deadline = time.monotonic() + 30
    while db.query("SELECT count() FROM optimization_runs", label="test")[0][0] == 0:
        assert time.monotonic() < deadline, "the start-up refresh did not run"
        time.sleep(0.05)


@pytest.fixture
def client(settings: Settings, db: ClickHouse) -> Iterator[Client]:
    """The whole app; a cached run is stale as soon as any event arrives after it (no grace)."""
    settings = dataclasses.replace(
        settings, optimization=dataclasses.replace(settings.optimization, new_events_grace_s=0)
    )
    with TestClient(app=create_app(settings)) as test_client:
        wait_for_first_run(db)
        yield test_client


def hour_ago(hours: int = 1, *, minutes: int = 0) -> datetime:
    """`minutes` past the start of the hour `hours` before the current one (always in the past)."""
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    return now - timedelta(hours=hours) + timedelta(minutes=minutes)


def ev(when: datetime, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "timestamp": when.isoformat(),
        "tenant_id": "school-a",
        "service": "tutor-chat",
        "provider": "openai",
        "model": "gpt-4o-mini",
        "input_tokens": 100,
        "output_tokens": 10,
    }
    body.update(fields)
    return body


def many(count: int, **fields: Any) -> list[dict[str, Any]]:
    """`count` events within one hour (so they form no around-the-clock pattern)."""
    base = hour_ago(1)
    return [ev(base + timedelta(milliseconds=i * 50), **fields) for i in range(count)]


def record(client: Client, auth: Auth, events: list[dict[str, Any]]) -> None:
    for first in range(0, len(events), 5000):
        response = client.post(
            "/usage-events/batch", json={"events": events[first : first + 5000]}, headers=auth("admin")
        )
        assert response.status_code == 201, response.text


def suggestions(client: Client, auth: Auth, role: str = "admin", tenant: str | None = None, **params: Any) -> Any:
    response = client.get(ROUTE, params=params, headers=auth(role, tenant))
    assert response.status_code == 200, response.text
    return response.json()


def reproduce(client: Client, auth: Auth, found: dict[str, Any]) -> dict[str, Any]:
    """The `/costs/query` answer for a suggestion's evidence parameters."""
    assert found["query"]["path"] == "/costs/query"
    response = client.get("/costs/query", params=found["query"]["params"], headers=auth("admin"))
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def without_window(found: dict[str, Any]) -> dict[str, Any]:
    """A suggestion without its evidence query (whose window moves with the clock's hour)."""
    return {key: value for key, value in found.items() if key != "query"}


# -- model selection -------------------------------------------------------------


def test_expensive_model_on_short_requests_names_the_cheaper_sibling(client: Client, auth: Auth) -> None:
    # 1,000 requests of 1,000 input and 100 output tokens.
    # gpt-4o: 1,000 x (1,000 x 2.50 + 100 x 10) / 1e6 = 3.50; gpt-4o-mini: 1,000 x (150 + 60) / 1e6 = 0.21
    record(client, auth, many(1000, model="gpt-4o", input_tokens=1000, output_tokens=100))
    # the same work already on the cheapest fit, in another tenant
    record(client, auth, many(1000, tenant_id="school-b", input_tokens=1000, output_tokens=100))

    answer = suggestions(client, auth, tenant_id="school-a")
    assert answer["tenant_id"] == "school-a"
    assert answer["window_days"] == 30
    [found] = answer["suggestions"]
    assert found["kind"] == "model_selection"
    assert found["rule"] == "smaller_model"
    assert found["scope"] == {"tenant_id": "school-a", "service": "tutor-chat", "provider": "openai", "model": "gpt-4o"}
    assert found["estimated_monthly_savings_usd"] == "3.29"
    assert found["confidence"] == "medium"
    assert found["evidence"] == {
        "events": 1000,
        "input_tokens": 1000000,
        "output_tokens": 100000,
        "cached_input_tokens": 0,
        "avg_input_tokens": "1000",
        "avg_output_tokens": "100",
        "cost_usd": "3.5",
        "list_cost_usd": "3.5",
        "target_model": "gpt-4o-mini",
        "target_list_cost_usd": "0.21",
        "input_per_mtok_usd": "2.5",
        "output_per_mtok_usd": "10",
        "target_input_per_mtok_usd": "0.15",
        "target_output_per_mtok_usd": "0.6",
        "price_version": "openai/gpt-4o/*/2024-10-02T00:00:00Z/v1",
        "target_price_version": "openai/gpt-4o-mini/*/2024-07-18T00:00:00Z/v1",
    }
    assert "gpt-4o-mini" in found["title"]
    assert "$3.50" in found["explanation"]
    assert "$0.21" in found["explanation"]
    assert found["id"].startswith("opt_")

    # the evidence parameters reproduce the volumes and the cost through /costs/query
    params = found["query"]["params"]
    assert (params["start"], params["end"]) == (answer["window_start"], answer["window_end"])
    total = reproduce(client, auth, found)["total"]
    assert (total["events"], total["input_tokens"], total["output_tokens"], total["cost_usd"]) == (
        1000,
        1000000,
        100000,
        "3.5",
    )

    # a tenant already on the cheapest fit gets nothing
    assert suggestions(client, auth, tenant_id="school-b")["suggestions"] == []


def test_long_outputs_or_large_prompts_are_not_a_smaller_models_job(client: Client, auth: Auth) -> None:
    record(client, auth, many(100, model="gpt-4o", input_tokens=1000, output_tokens=301))
    record(
        client,
        auth,
        # 15 % of the prompts cached, so no caching suggestion either
        many(100, service="summaries", model="gpt-4o", input_tokens=2001, cached_input_tokens=300, output_tokens=100),
    )
    assert suggestions(client, auth)["suggestions"] == []


# -- batch processing ------------------------------------------------------------


def test_steady_around_the_clock_traffic_is_sent_to_the_batch_api(client: Client, auth: Auth) -> None:
    # gpt-4-turbo, 3,000 input and 400 output tokens: 3,000 x 10 / 1e6 + 400 x 30 / 1e6 = 0.042 a request.
    shape = {"service": "nightly-grading", "model": "gpt-4-turbo", "input_tokens": 3000, "output_tokens": 400}
    steady = [ev(hour_ago(k, minutes=m), **shape) for k in range(1, 26) for m in (5, 35)]  # 50, every hour of day
    batched = [ev(hour_ago(k, minutes=20), batch=True, **shape) for k in range(2, 12)]  # 10 already batched
    # the same work, but only while people are awake: not latency-tolerant
    awake = {**shape, "service": "live-feedback"}
    daytime = [ev(hour_ago(k, minutes=m), **awake) for k in range(1, 9) for m in (5, 35)]
    record(client, auth, steady + batched + daytime)

    [found] = suggestions(client, auth)["suggestions"]
    assert (found["kind"], found["rule"], found["scope"]["service"]) == (
        "batch_processing",
        "steady_traffic",
        "nightly-grading",
    )
    # the 50 requests not yet batched: 50 x 0.042 = 2.10 at list price, half of it saved
    assert found["estimated_monthly_savings_usd"] == "1.05"
    evidence = found["evidence"]
    assert (evidence["events"], evidence["batch_events"], evidence["non_batch_events"]) == (60, 10, 50)
    assert evidence["non_batch_list_cost_usd"] == "2.1"
    assert evidence["batch_discount_pct"] == "50"
    assert evidence["active_hours_of_day"] == 24
    assert evidence["busiest_hour_events"] == 4  # hours 1 and 25 ago share their hour of the day
    assert evidence["cost_usd"] == "2.31"  # 2.10 + 10 x 0.021 already batched
    assert found["query"]["params"]["granularity"] == "hour"
    assert reproduce(client, auth, found)["total"]["cost_usd"] == "2.31"


# -- token optimization ------------------------------------------------------------


def test_prompts_far_above_peers_long_context_and_uncached_prompts(client: Client, auth: Auth) -> None:
    tenant = {"tenant_id": "school-t"}
    events = [
        # gpt-4o-mini: essays send 9,000 input tokens (1,000 cached), quizzes 1,000
        *many(250, **tenant, service="essay", input_tokens=9000, cached_input_tokens=1000),
        *many(250, **tenant, service="quiz", input_tokens=1000),
        # gemini-1.5-pro: 20 prompts above the 128,000-token tier, 5 below
        *many(20, **tenant, service="docs", provider="gemini", model="gemini-1.5-pro", input_tokens=150000,
              output_tokens=1000),
        *many(5, **tenant, service="docs", provider="gemini", model="gemini-1.5-pro", input_tokens=1000,
              output_tokens=100),
        # gpt-4.1, 4,000-token prompts, none cached
        *many(1000, **tenant, service="coach", model="gpt-4.1", input_tokens=4000, output_tokens=500),
    ]  # fmt: skip
    record(client, auth, events)

    found = suggestions(client, auth, tenant_id="school-t")["suggestions"]
    assert [(s["kind"], s["rule"], s["scope"]["service"], s["estimated_monthly_savings_usd"]) for s in found] == [
        # 20 x (150,000 x 2.50 + 1,000 x 10) / 1e6 = 7.70 at the long-context rates, 3.85 at the base rates
        ("token_optimization", "long_context", "docs", "3.85"),
        # (50 % x 4,000,000 - 0) cached tokens x (2.00 - 0.50) / 1e6
        ("token_optimization", "prompt_caching", "coach", "3"),
        # 250 x (9,000 - 1,000) = 2,000,000 input tokens above the peers' average, x 0.15 / 1e6
        ("token_optimization", "prompt_size", "essay", "0.3"),
    ]
    long_context, caching, size = found
    assert {k: long_context["evidence"][k] for k in ("long_context_events", "long_context_input_tokens")} == {
        "long_context_events": 20,
        "long_context_input_tokens": 3000000,
    }
    assert long_context["evidence"]["threshold_tokens"] == 128000
    assert long_context["evidence"]["cost_usd"] == "7.7"  # what those requests were billed
    assert long_context["evidence"]["base_rate_cost_usd"] == "3.85"
    assert long_context["evidence"]["long_context_input_per_mtok_usd"] == "2.5"
    assert caching["evidence"]["cached_share_pct"] == "0"
    assert caching["evidence"]["cached_input_per_mtok_usd"] == "0.5"
    assert size["evidence"]["avg_input_tokens"] == "9000"
    assert size["evidence"]["peer_avg_input_tokens"] == "1000"
    assert size["evidence"]["excess_input_tokens"] == "2000000"
    rows = {row["service"]: row for row in reproduce(client, auth, size)["rows"]}
    assert (rows["essay"]["input_tokens"], rows["quiz"]["input_tokens"]) == (2250000, 250000)


def test_peers_and_distributions_never_cross_tenants(client: Client, auth: Auth) -> None:
    # the essay prompts of one tenant would be nine times the quiz prompts of another
    record(client, auth, many(250, tenant_id="school-a", service="essay", input_tokens=9000, cached_input_tokens=1000))
    record(client, auth, many(250, tenant_id="school-b", service="quiz", input_tokens=1000))
    # and one tenant's costly learner would stand out against another's five cheap ones
    record(client, auth, many(1, tenant_id="school-a", learner_id="big", cost_usd="20"))
    record(client, auth, [ev(hour_ago(1), tenant_id="school-b", learner_id=f"l{i}", cost_usd="1") for i in range(5)])
    assert suggestions(client, auth)["suggestions"] == []


# -- provider switching ------------------------------------------------------------


def test_same_model_cheaper_in_another_bedrock_region(client: Client, auth: Auth) -> None:
    shape = {
        "tenant_id": "school-p",
        "provider": "bedrock",
        "model": "meta.llama3-2-1b-instruct-v1:0",
        "input_tokens": 10000,
        "output_tokens": 1000,
    }
    record(client, auth, many(1000, service="translate-eu", region="eu-central-1", **shape))
    record(client, auth, many(1000, service="translate-us", region="us-east-1", **shape))  # already cheapest

    [found] = suggestions(client, auth, tenant_id="school-p")["suggestions"]
    assert (found["kind"], found["rule"]) == ("provider_switching", "other_region")
    assert (found["scope"]["service"], found["scope"]["region"]) == ("translate-eu", "eu-central-1")
    # 11,000,000 tokens x 0.13 / 1e6 = 1.43 in eu-central-1; x 0.10 / 1e6 = 1.10 in us-east-1
    assert found["estimated_monthly_savings_usd"] == "0.33"
    evidence = found["evidence"]
    assert (evidence["list_cost_usd"], evidence["target_list_cost_usd"]) == ("1.43", "1.1")
    assert (evidence["target_region"], evidence["target_model"]) == ("us-east-1", "meta.llama3-2-1b-instruct-v1:0")
    assert "data-residency" in found["explanation"]
    assert reproduce(client, auth, found)["total"]["cost_usd"] == "1.43"


# -- usage patterns ------------------------------------------------------------------


def test_spend_spikes_outlier_learners_and_unpriced_traffic(client: Client, auth: Auth) -> None:
    # reports: $1 a day for nine days, $10 on the tenth day back
    spikes = [
        ev(hour_ago(1, minutes=30) - timedelta(days=k), tenant_id="school-s", service="reports", cost_usd=cost)
        for k, cost in [(k, "1") for k in range(1, 10)] + [(10, "10")]
    ]
    # five learners at $1 and one at $20
    learners = [
        ev(hour_ago(1), tenant_id="school-l", learner_id=learner, cost_usd=cost)
        for learner, cost in [*((f"learner-{i}", "1") for i in range(1, 6)), ("learner-6", "20")]
    ]
    unpriced = many(3, tenant_id="school-u", model="mystery-model")
    record(client, auth, spikes + learners + unpriced)

    found = suggestions(client, auth)["suggestions"]
    assert [(s["rule"], s["scope"]["tenant_id"], s["estimated_monthly_savings_usd"]) for s in found] == [
        ("learner_outlier", "school-l", "15"),  # 20 - 5 x the $1 median
        ("spend_spike", "school-s", "9"),  # 10 - the $1 median day
        ("unpriced", "school-u", "0"),
    ]
    assert {s["kind"] for s in found} == {"usage_patterns"}
    learner, spike, missing = found
    assert learner["scope"] == {"tenant_id": "school-l", "learner_id": "learner-6"}
    assert learner["evidence"]["median_learner_cost_usd"] == "1"
    assert learner["evidence"]["tenant_learners"] == 6
    assert reproduce(client, auth, learner)["total"]["cost_usd"] == "20"
    assert spike["evidence"]["median_daily_cost_usd"] == "1"
    assert spike["evidence"]["spike_days"] == 1
    assert spike["evidence"]["highest_spike_cost_usd"] == "10"
    assert reproduce(client, auth, spike)["total"]["cost_usd"] == "19"
    assert missing["confidence"] == "high"
    assert missing["evidence"]["unpriced_events"] == 3
    assert reproduce(client, auth, missing)["total"]["unpriced_events"] == 3

    # a shorter window scales the same excess to a 30-day month: x 30 / 15
    scaled = suggestions(client, auth, window_days=15)
    assert scaled["window_days"] == 15
    assert [(s["rule"], s["estimated_monthly_savings_usd"]) for s in scaled["suggestions"]] == [
        ("learner_outlier", "30"),
        ("spend_spike", "18"),
        ("unpriced", "0"),
    ]


# -- roles, scope, the cache -----------------------------------------------------------


def test_roles_see_only_their_tenant(client: Client, auth: Auth) -> None:
    record(client, auth, many(1000, tenant_id="school-a", model="gpt-4o", input_tokens=1000, output_tokens=100))
    record(client, auth, many(1000, tenant_id="school-b", service="quiz", model="gpt-4o", input_tokens=1000))
    everything = suggestions(client, auth)["suggestions"]
    assert sorted(s["scope"]["tenant_id"] for s in everything) == ["school-a", "school-b"]
    by_tenant = {s["scope"]["tenant_id"]: s for s in everything}
    for role in ("tenant-admin", "user"):
        mine = suggestions(client, auth, role, "school-a")
        assert mine["tenant_id"] == "school-a"
        assert [s["id"] for s in mine["suggestions"]] == [by_tenant["school-a"]["id"]]
        # naming its own tenant is allowed, another one is not
        assert suggestions(client, auth, role, "school-a", tenant_id="school-a")["suggestions"] == mine["suggestions"]
        refused = client.get(ROUTE, params={"tenant_id": "school-b"}, headers=auth(role, "school-a"))
        assert refused.status_code == 403
    assert [s["id"] for s in suggestions(client, auth, tenant_id="school-b")["suggestions"]] == [
        by_tenant["school-b"]["id"]
    ]
    assert client.get(ROUTE, headers=auth("service", "school-a")).status_code == 403
    assert client.get(ROUTE, headers=auth("service")).status_code == 403
    assert client.get(ROUTE).status_code == 401
    assert client.get(ROUTE, params={"window_days": "0"}, headers=auth("admin")).status_code in (400, 422)


def test_answers_from_the_cache_until_new_events_arrive(client: Client, auth: Auth) -> None:
    record(client, auth, many(1000, model="gpt-4o", input_tokens=1000, output_tokens=100))
    first = suggestions(client, auth, tenant_id="school-a")
    assert first["source"] == "computed"
    again = suggestions(client, auth, tenant_id="school-a")
    assert again["source"] == "cache"
    assert again["computed_at"] == first["computed_at"]
    assert again["suggestions"] == first["suggestions"]

    # one more event makes the cached run stale: the answer is computed again, with the same id
    record(client, auth, many(1, model="gpt-4o", input_tokens=1000, output_tokens=100))
    fresh = suggestions(client, auth, tenant_id="school-a")
    assert fresh["source"] == "computed"
    assert fresh["suggestions"][0]["id"] == first["suggestions"][0]["id"]
    assert fresh["suggestions"][0]["evidence"]["events"] == 1001

    # the refresh job computes every tenant; a tenant's request is then answered from its run
    assert client.post(f"{ROUTE}/refresh", headers=auth("tenant-admin", "school-a")).status_code == 403
    refreshed = client.post(f"{ROUTE}/refresh", headers=auth("admin"))
    assert refreshed.status_code == 200, refreshed.text
    assert (refreshed.json()["tenants"], refreshed.json()["suggestions"]) == (1, 1)
    cached = suggestions(client, auth, "user", "school-a")
    assert (cached["source"], cached["computed_at"]) == ("cache", refreshed.json()["computed_at"])
    assert [without_window(s) for s in cached["suggestions"]] == [without_window(s) for s in fresh["suggestions"]]

    # `service` narrows the answer to suggestions about that service
    assert suggestions(client, auth, tenant_id="school-a", service="quiz")["suggestions"] == []
    narrowed = suggestions(client, auth, tenant_id="school-a", service="tutor-chat")
    assert [s["id"] for s in narrowed["suggestions"]] == [first["suggestions"][0]["id"]]


def test_the_arq_worker_runs_the_refresh(settings: Settings, redis_url: str, db: ClickHouse, auth: Auth) -> None:
    distributed = dataclasses.replace(settings, redis_url=redis_url)
    with arq_worker(distributed, db), TestClient(app=create_app(distributed)) as client:
        record(client, auth, many(1000, model="gpt-4o", input_tokens=1000, output_tokens=100))
        refreshed = client.post(f"{ROUTE}/refresh", headers=auth("admin"))
        assert refreshed.status_code == 200, refreshed.text
        assert refreshed.json()["suggestions"] == 1
        answer = suggestions(client, auth, tenant_id="school-a")
        assert (answer["source"], answer["computed_at"]) == ("cache", refreshed.json()["computed_at"])
        assert answer["suggestions"][0]["estimated_monthly_savings_usd"] == "3.29"
