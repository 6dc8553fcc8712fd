"""POST/GET /usage-events as callers see them, on a real embedded ClickHouse."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from litestar.testing import TestClient

from tests.conftest import JWT_SECRET

Client = TestClient  # type: ignore[type-arg]
Auth = Callable[..., dict[str, str]]


def event(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "tenant_id": "school-a",
        "service": "tutor-chat",
        "learner_id": "learner-1",
        "provider": "openai",
        "model": "gpt-4o-mini",
        "input_tokens": 1000,
        "output_tokens": 200,
    }
    body.update(overrides)
    return body


def stored_count(client: Client, auth: Auth, **params: str) -> int:
    response = client.get("/usage-events", params={"limit": "1000", **params}, headers=auth("admin"))
    assert response.status_code == 200, response.text
    return len(response.json()["items"])


def test_record_answers_201_with_the_stored_event(client: Client, auth: Auth) -> None:
    response = client.post(
        "/usage-events", json=event(event_id="e-1", metadata={"lesson": "fractions"}), headers=auth("service")
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["event_id"] == "e-1"
    assert body["pricing_status"] == "priced"
    assert body["price_version"].startswith("openai/gpt-4o-mini/")
    assert isinstance(body["cost_usd"], str)
    assert body["metadata"] == {"lesson": "fractions"}
    fetched = client.get("/usage-events/e-1", headers=auth("user", "school-a")).json()
    assert fetched == body


def test_event_id_is_generated_when_absent(client: Client, auth: Auth) -> None:
    first = client.post("/usage-events", json=event(), headers=auth("service")).json()
    second = client.post("/usage-events", json=event(), headers=auth("service")).json()
    assert first["event_id"]
    assert second["event_id"]
    assert first["event_id"] != second["event_id"]
    assert stored_count(client, auth) == 2


def test_replayed_event_id_answers_200_with_the_original_and_stores_nothing(client: Client, auth: Auth) -> None:
    original = client.post("/usage-events", json=event(event_id="dup-1"), headers=auth("service"))
    assert original.status_code == 201
    replay = client.post("/usage-events", json=event(event_id="dup-1", input_tokens=999_999), headers=auth("service"))
    assert replay.status_code == 200
    assert replay.json() == original.json()
    assert stored_count(client, auth) == 1


def test_same_event_id_in_two_tenants_are_two_events(client: Client, auth: Auth) -> None:
    a = client.post("/usage-events", json=event(event_id="shared", tenant_id="school-a"), headers=auth("service"))
    b = client.post("/usage-events", json=event(event_id="shared", tenant_id="school-b"), headers=auth("service"))
    assert (a.status_code, b.status_code) == (201, 201)
    assert b.json()["tenant_id"] == "school-b"
    assert stored_count(client, auth) == 2


def test_unknown_model_is_stored_unpriced_never_zero(client: Client, auth: Auth) -> None:
    response = client.post("/usage-events", json=event(model="gpt-99-ultra"), headers=auth("service"))
    assert response.status_code == 201
    body = response.json()
    assert body["pricing_status"] == "unpriced"
    assert body["cost_usd"] is None
    assert body["price_version"] is None
    listed = client.get("/usage-events", params={"pricing_status": "unpriced"}, headers=auth("admin")).json()
    assert [item["event_id"] for item in listed["items"]] == [body["event_id"]]


def test_caller_provided_cost_wins(client: Client, auth: Auth) -> None:
    response = client.post("/usage-events", json=event(cost_usd="0.012345678901"), headers=auth("service"))
    assert response.status_code == 201
    assert response.json()["cost_usd"] == "0.012345678901"
    assert response.json()["pricing_status"] == "provided"


def test_batch_stores_all_and_counts_duplicates(client: Client, auth: Auth) -> None:
    client.post("/usage-events", json=event(event_id="b-0"), headers=auth("service"))
    events = [event(event_id=f"b-{i}") for i in range(5)] + [event(event_id="b-1")]
    response = client.post("/usage-events/batch", json={"events": events}, headers=auth("service"))
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["accepted"] == 4
    assert body["duplicates"] == 2
    assert [item["event_id"] for item in body["events"]] == [f"b-{i}" for i in range(5)] + ["b-1"]
    assert [item["duplicate"] for item in body["events"]] == [True, False, False, False, False, True]
    assert all(item["pricing_status"] == "priced" and item["cost_usd"] for item in body["events"])
    assert stored_count(client, auth) == 5


def test_batch_with_bad_items_names_each_and_stores_nothing(client: Client, auth: Auth) -> None:
    future = (datetime.now(UTC) + timedelta(minutes=10)).isoformat()
    events = [
        event(),
        event(input_tokens=-5),
        event(provider="azure"),
        event(timestamp=future),
        event(cached_input_tokens=2000),
        event(),
    ]
    response = client.post("/usage-events/batch", json={"events": events}, headers=auth("service"))
    assert response.status_code == 422
    problems = {(p["index"], p["field"]) for p in response.json()["errors"]}
    assert problems == {(1, "input_tokens"), (2, "provider"), (3, "timestamp"), (4, "cached_input_tokens")}
    assert "none stored" in response.json()["detail"]
    assert stored_count(client, auth) == 0


def test_oversized_batch_is_refused(client: Client, auth: Auth) -> None:
    response = client.post("/usage-events/batch", json={"events": [event()] * 10_001}, headers=auth("service"))
    assert response.status_code == 422
    assert "10000" in response.json()["detail"]
    assert stored_count(client, auth) == 0


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (event(input_tokens=-1), 422, "input_tokens"),
        (event(output_tokens="12"), 422, "output_tokens"),
        (event(batch="yes"), 422, "batch"),
        (event(provider="anthropic"), 422, "provider"),
        (event(service=""), 422, "service"),
        (event(event_id="x" * 129), 422, "event_id"),
        (event(timestamp="yesterday"), 422, "timestamp"),
        (event(timestamp="2026-01-01T00:00:00"), 422, "timestamp"),
        (event(timestamp="1999-12-31T23:59:59Z"), 422, "timestamp"),
        (event(model="gpt-4-32k", input_tokens=10_000_000_000, output_tokens=10_000_000_000), 422, "input_tokens"),
        (event(cost_usd="-1"), 422, "cost_usd"),
        (event(cost_usd="abc"), 422, "cost_usd"),
        (event(cost_usd="0.0000000000001"), 422, "cost_usd"),
        (event(metadata={f"k{i}": "v" for i in range(33)}), 422, "metadata"),
        (event(metadata={"k": "v" * 513}), 422, "metadata[...]"),
        (event(metadata={"k": 1}), 422, "metadata[...]"),
        (event(surprise=True), 422, None),
        ({"service": "x", "provider": "openai"}, 422, "model"),
    ],
)
def test_bad_event_is_refused_with_the_field(
    client: Client, auth: Auth, body: dict[str, Any], status: int, field: str | None
) -> None:
    response = client.post("/usage-events", json=body, headers=auth("service"))
    assert response.status_code == status, response.text
    errors = response.json()["errors"]
    if field is not None:
        assert errors[0]["field"] == field
    assert errors[0]["reason"]
    assert stored_count(client, auth) == 0


def test_malformed_json_is_400(client: Client, auth: Auth) -> None:
    for path in ("/usage-events", "/usage-events/batch"):
        response = client.post(
            path, content=b'{"tenant_id": ', headers={**auth("service"), "Content-Type": "application/json"}
        )
        assert response.status_code == 400, path
        assert "JSON" in response.json()["detail"]


def test_timestamp_five_minutes_ahead_is_accepted_ten_is_not(client: Client, auth: Auth) -> None:
    soon = (datetime.now(UTC) + timedelta(minutes=4)).isoformat()
    late = (datetime.now(UTC) + timedelta(minutes=6)).isoformat()
    assert client.post("/usage-events", json=event(timestamp=soon), headers=auth("service")).status_code == 201
    refused = client.post("/usage-events", json=event(timestamp=late), headers=auth("service"))
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["field"] == "timestamp"


def test_service_token_with_tenant_records_only_for_its_tenant(client: Client, auth: Auth) -> None:
    own = client.post("/usage-events", json=event(tenant_id=None), headers=auth("service", "school-a"))
    assert own.status_code == 201
    assert own.json()["tenant_id"] == "school-a"
    other = client.post("/usage-events", json=event(tenant_id="school-b"), headers=auth("service", "school-a"))
    assert other.status_code == 403
    batch = client.post(
        "/usage-events/batch",
        json={"events": [event(tenant_id="school-a"), event(tenant_id="school-b")]},
        headers=auth("service", "school-a"),
    )
    assert batch.status_code == 403
    assert stored_count(client, auth) == 1


def test_tenant_is_required_when_the_token_names_none(client: Client, auth: Auth) -> None:
    response = client.post("/usage-events", json=event(tenant_id=None), headers=auth("service"))
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "tenant_id"


# -- reading -------------------------------------------------------------------


def seed(client: Client, auth: Auth) -> None:
    start = datetime(2026, 11, 1, tzinfo=UTC)
    events = []
    for i in range(7):
        events.append(
            event(
                event_id=f"a-{i}",
                tenant_id="school-a",
                service="tutor-chat" if i % 2 else "quiz",
                timestamp=(start + timedelta(hours=i)).isoformat(),
                model="gpt-4o-mini" if i < 6 else "mystery-model",
            )
        )
    events.append(event(event_id="b-0", tenant_id="school-b", timestamp=start.isoformat()))
    assert client.post("/usage-events/batch", json={"events": events}, headers=auth("service")).status_code == 201


def test_pagination_walks_every_event_newest_first(client: Client, auth: Auth) -> None:
    seed(client, auth)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": "3", "tenant_id": "school-a"}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/usage-events", params=params, headers=auth("admin")).json()
        seen += [item["event_id"] for item in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"a-{i}" for i in reversed(range(7))]
    assert pages == 3


def test_filters_combine(client: Client, auth: Auth) -> None:
    seed(client, auth)
    headers = auth("user", "school-a")

    def ids(**params: str) -> list[str]:
        response = client.get("/usage-events", params=params, headers=headers)
        assert response.status_code == 200, response.text
        return sorted(item["event_id"] for item in response.json()["items"])

    assert ids(service="quiz") == ["a-0", "a-2", "a-4", "a-6"]
    assert ids(pricing_status="unpriced") == ["a-6"]
    assert ids(model="gpt-4o-mini", service="tutor-chat") == ["a-1", "a-3", "a-5"]
    assert ids(start="2026-11-01T02:00:00Z", end="2026-11-01T04:00:00Z") == ["a-2", "a-3"]
    assert ids(provider="gemini") == []
    assert ids(learner_id="learner-1") == [f"a-{i}" for i in range(7)]


def test_user_sees_only_its_tenant(client: Client, auth: Auth) -> None:
    seed(client, auth)
    page = client.get("/usage-events", headers=auth("user", "school-b")).json()
    assert [item["event_id"] for item in page["items"]] == ["b-0"]
    assert client.get("/usage-events/a-0", headers=auth("user", "school-b")).status_code == 404
    assert client.get("/usage-events/a-0", headers=auth("tenant-admin", "school-a")).status_code == 200
    forbidden = client.get("/usage-events", params={"tenant_id": "school-a"}, headers=auth("user", "school-b"))
    assert forbidden.status_code == 403
    assert client.get("/usage-events/a-0", headers=auth("admin")).status_code == 200
    assert client.get("/usage-events/nope", headers=auth("admin")).status_code == 404


def test_bad_cursor_limit_and_zone_less_times_are_422(client: Client, auth: Auth) -> None:
    assert client.get("/usage-events", params={"cursor": "%%%"}, headers=auth("admin")).status_code == 422
    naive = client.get("/usage-events", params={"start": "2026-01-01T00:00:00"}, headers=auth("admin"))
    assert naive.status_code == 422
    assert naive.json()["errors"][0]["field"] == "start"
    for limit in ("0", "1001", "many"):
        response = client.get("/usage-events", params={"limit": limit}, headers=auth("admin"))
        assert response.status_code == 422
        assert response.json()["errors"][0]["field"] == "limit"


# -- authentication and roles --------------------------------------------------


def test_bad_tokens_are_401(client: Client, token: Callable[..., str]) -> None:
    now = int(time.time())
    claims = {"sub": "x", "role": "admin", "iat": now, "exp": now + 600}
    unsigned = jwt.encode(claims, key=None, algorithm="none")  # type: ignore[arg-type]
    forged = jwt.encode(claims, "another-secret-another-secret-another-secret", algorithm="HS256")
    expired = jwt.encode({**claims, "exp": now - 10}, JWT_SECRET, algorithm="HS256")
    no_role = jwt.encode({"sub": "x", "exp": now + 600}, JWT_SECRET, algorithm="HS256")
    odd_role = jwt.encode({**claims, "role": "root"}, JWT_SECRET, algorithm="HS256")
    user_without_tenant = jwt.encode({**claims, "role": "user"}, JWT_SECRET, algorithm="HS256")
    for header in (
        None,
        "Bearer",
        "Basic abc",
        "Bearer not-a-jwt",
        f"Bearer {unsigned}",
        f"Bearer {forged}",
        f"Bearer {expired}",
        f"Bearer {no_role}",
        f"Bearer {odd_role}",
        f"Bearer {user_without_tenant}",
    ):
        headers = {"Authorization": header} if header else {}
        for method, path in (("GET", "/usage-events"), ("POST", "/usage-events"), ("GET", "/usage-events/x")):
            response = client.request(method, path, headers=headers, json=event())
            assert response.status_code == 401, (header, path)
            assert response.headers["www-authenticate"] == "Bearer"


ROUTES = [
    ("POST", "/usage-events", {"service", "admin"}),
    ("POST", "/usage-events/batch", {"service", "admin"}),
    ("GET", "/usage-events", {"admin", "tenant-admin", "user"}),
    ("GET", "/usage-events/r-1", {"admin", "tenant-admin", "user"}),
]


@pytest.mark.parametrize(("method", "path", "allowed"), ROUTES)
@pytest.mark.parametrize("role", ["admin", "tenant-admin", "user", "service"])
def test_every_role_against_every_route(
    client: Client, auth: Auth, method: str, path: str, allowed: set[str], role: str
) -> None:
    client.post("/usage-events", json=event(event_id="r-1"), headers=auth("admin"))
    tenant = None if role in ("admin", "service") else "school-a"
    body: Any = {"events": [event()]} if path.endswith("batch") else event()
    response = client.request(method, path, headers=auth(role, tenant), json=body if method == "POST" else None)
    if role in allowed:
        assert response.status_code in (200, 201), response.text
    else:
        assert response.status_code == 403, response.text


def test_health_and_docs_need_no_token(client: Client) -> None:
    health = client.get("/health")
    assert health.status_code == 200
    assert health.json()["components"]["clickhouse"]["status"] == "ok"
    assert health.json()["components"]["migrations"]["status"] == "ok"
    for path in ("/docs", "/redoc"):
        assert client.get(path).status_code == 200
    spec = client.get("/openapi.json").json()
    for path in ("/usage-events", "/usage-events/batch", "/usage-events/{event_id}", "/health"):
        assert path in spec["paths"]
    assert spec["components"]["securitySchemes"]["BearerToken"]["scheme"] == "bearer"
    for path, item in spec["paths"].items():
        for operation in item.values():
            assert "Auth:" in operation["description"], path
    batch_body = spec["paths"]["/usage-events/batch"]["post"]["requestBody"]["content"]["application/json"]
    assert batch_body["schema"]["$ref"] == "#/components/schemas/UsageBatchDoc"
    assert "UsageEventIn" in spec["components"]["schemas"]


def test_metrics_count_what_was_ingested(client: Client, auth: Auth) -> None:
    def sample(text: str, name: str) -> float:
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = client.get("/metrics").text
    client.post("/usage-events", json=event(model="no-such-model", event_id="m-1"), headers=auth("service"))
    client.post("/usage-events", json=event(model="no-such-model", event_id="m-1"), headers=auth("service"))
    after = client.get("/metrics")
    assert after.status_code == 200
    assert after.headers["content-type"].startswith("text/plain")
    name = 'finops_unpriced_events_total{provider="openai"}'
    assert sample(after.text, name) - sample(before, name) == 1
    assert sample(after.text, "finops_ingest_duplicates_total") - sample(before, "finops_ingest_duplicates_total") == 1
