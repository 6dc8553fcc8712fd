"""Alert delivery against local receivers standing in for SendGrid, Twilio, Slack and webhooks.

Each test asserts what the provider would receive (method, path, auth, body
fields of its documented API) and what a user sees through the API.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs

import pytest
from litestar.testing import TestClient

from service.alerts.channels import SlackChannel
from service.alerts.notice import AlertFacts, Notice, gsm, sms_text
from service.alerts.senders import Senders, sign, verify
from service.app import create_app
from service.settings import AlertSettings, Settings
from service.storage.clickhouse import ClickHouse
from tests.conftest import arq_worker
from tests.receivers import Answer, Receiver

Client = TestClient  # type: ignore[type-arg]
Auth = Callable[..., dict[str, str]]

SENDGRID_KEY = "SG.test-key-0123456789"
TWILIO_SID = "AC0123456789abcdef0123456789abcdef"
TWILIO_TOKEN = "twilio-token-0123456789"
SECRET = "whsec-0123456789abcdef"
DASHBOARD = "https://grafana.example.org/d/finops"


def alert_settings(url: str, **changes: Any) -> AlertSettings:
    base = AlertSettings(
        sendgrid_api_key=SENDGRID_KEY,
        sendgrid_api_host=url,
        email_from="alerts@finops.example.org",
        slack_webhook_url=f"{url}/slack/default",
        twilio_account_sid=TWILIO_SID,
        twilio_auth_token=TWILIO_TOKEN,
        twilio_from_number="+15550001111",
        twilio_api_base_url=url,
        dashboard_url=DASHBOARD,
        allow_private_urls=True,
        cooldown_s=600,
        max_attempts=3,
        retry_base_ms=50,
        send_timeout_s=1,
        dispatch_interval_s=3600,
    )
    return dataclasses.replace(base, **changes)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


def client_for(settings: Settings, alerts: AlertSettings) -> Client:
    return TestClient(app=create_app(dataclasses.replace(settings, alerts=alerts)))


@pytest.fixture
def alerting(settings: Settings, receiver: Receiver) -> Iterator[Client]:
    with client_for(settings, alert_settings(receiver.url)) as client:
        yield client


def slack(receiver: Receiver, path: str = "/slack/hook") -> dict[str, Any]:
    return {"type": "slack", "webhook_url": receiver.url + path}


def webhook(receiver: Receiver, path: str = "/hook", secret: str = SECRET) -> dict[str, Any]:
    return {"type": "webhook", "url": receiver.url + path, "secret": secret}


def create_budget(client: Client, auth: Auth, channels: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "School A monthly",
        "scope": {"tenant_id": "school-a"},
        "limit_usd": "10",
        "thresholds": [{"percent": 80}],
        "channels": channels,
    }
    body.update(fields)
    response = client.post("/budgets", json=body, headers=auth("admin"))
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def spend(client: Client, auth: Auth, cost: str, learner: str = "learner-1") -> None:
    event = {
        "tenant_id": "school-a",
        "service": "tutor-chat",
        "learner_id": learner,
        "provider": "openai",
        "model": "gpt-4o-mini",
        "cost_usd": cost,
        "timestamp": datetime.now(UTC).isoformat(),
    }
    response = client.post("/usage-events", json=event, headers=auth("service"))
    assert response.status_code == 201, response.text


def first_alert(client: Client, auth: Auth, budget_id: str, timeout_s: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        items = client.get("/alerts", params={"budget_id": budget_id}, headers=auth("admin")).json()["items"]
        if items:
            found: dict[str, Any] = items[0]
            return found
        time.sleep(0.05)
    raise AssertionError("no alert fired")


def settled(client: Client, auth: Auth, alert_id: str, timeout_s: float = 30) -> dict[str, Any]:
    """The alert once no channel is pending or retrying any more."""
    deadline = time.monotonic() + timeout_s
    alert: dict[str, Any] = {}
    while time.monotonic() < deadline:
        alert = client.get(f"/alerts/{alert_id}", headers=auth("admin")).json()
        if alert["deliveries"] and all(d["state"] in ("delivered", "failed") for d in alert["deliveries"]):
            return alert
        time.sleep(0.05)
    raise AssertionError(f"deliveries did not settle: {alert}")


def independent_verify(secret: str, headers: dict[str, str], body: bytes, now: float) -> bool:
    """The README's verification recipe, written from the documented scheme."""
    timestamp = next(v for k, v in headers.items() if k.lower() == "x-finops-timestamp")
    signature = next(v for k, v in headers.items() if k.lower() == "x-finops-signature")
    if abs(now - int(timestamp)) > 300:
        return False
    expected = "v1=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature)


# -- end to end ----------------------------------------------------------------------


def test_crossing_80_percent_sends_one_slack_message_and_one_signed_webhook(
    alerting: Client, auth: Auth, receiver: Receiver
) -> None:
    budget = create_budget(alerting, auth, [slack(receiver), webhook(receiver)])
    spend(alerting, auth, "8.5")
    alert = first_alert(alerting, auth, budget["budget_id"])
    messages = receiver.wait_for("/slack/hook", 1)
    calls = receiver.wait_for("/hook", 1)
    # repeated evaluations send nothing more
    for _ in range(2):
        assert alerting.post("/budgets/evaluate", headers=auth("admin")).json()["fired"] == 0
    time.sleep(0.3)
    assert len(receiver.at("/slack/hook")) == 1
    assert len(receiver.at("/hook")) == 1

    message = messages[0].json()
    assert messages[0].header("Content-Type") == "application/json"
    assert "School A monthly" in message["text"]
    assert "80%" in message["text"]
    attachment = message["attachments"][0]
    assert attachment["color"] == "#F79009"  # warning
    fields = {f["text"].split("\n")[0]: f["text"].split("\n")[1] for f in attachment["blocks"][1]["fields"]}
    assert (fields["*Spend*"], fields["*Limit*"], fields["*Used*"]) == ("$8.50", "$10.00", "85.0%")
    assert fields["*Scope*"] == "tenant school-a"
    assert DASHBOARD in attachment["blocks"][-1]["elements"][0]["text"]

    call = calls[0]
    assert independent_verify(SECRET, call.headers, call.body, time.time())
    assert not independent_verify("another-secret-0123", call.headers, call.body, time.time())
    body = call.json()
    assert (body["schema_version"], body["event"], body["severity"]) == ("1", "budget.alert", "warning")
    assert body["budget"]["budget_id"] == budget["budget_id"]
    assert body["budget"]["limit_usd"] == "10"
    assert [
        (a["alert_id"], a["threshold_percent"], a["kind"], a["spend_usd"], a["percent_used"]) for a in body["alerts"]
    ] == [(alert["alert_id"], 80, "actual", "8.5", "85")]

    shown = settled(alerting, auth, alert["alert_id"])
    assert shown["delivery_state"] == "delivered"
    assert sorted((d["type"], d["state"], d["attempts"], d["last_response_code"]) for d in shown["deliveries"]) == [
        ("slack", "delivered", 1, 200),
        ("webhook", "delivered", 1, 200),
    ]
    assert {d["target"] for d in shown["deliveries"]} == {"http://127.0.0.1/***"}
    listed = alerting.get("/alerts", params={"budget_id": budget["budget_id"]}, headers=auth("admin")).json()
    assert listed["items"][0]["delivery_state"] == "delivered"


def test_the_same_with_an_arq_worker_and_redis(
    settings: Settings, db: ClickHouse, redis_url: str, receiver: Receiver, auth: Auth
) -> None:
    distributed = dataclasses.replace(settings, redis_url=redis_url, alerts=alert_settings(receiver.url))
    with arq_worker(distributed, db), TestClient(app=create_app(distributed)) as client:
        budget = create_budget(client, auth, [slack(receiver), webhook(receiver)])
        spend(client, auth, "9")
        alert = first_alert(client, auth, budget["budget_id"])
        receiver.wait_for("/slack/hook", 1)
        receiver.wait_for("/hook", 1)
        for _ in range(2):
            assert client.post("/budgets/evaluate", headers=auth("admin")).status_code == 200
        shown = settled(client, auth, alert["alert_id"])
        time.sleep(0.3)
    assert len(receiver.at("/slack/hook")) == 1
    assert len(receiver.at("/hook")) == 1
    assert independent_verify(SECRET, receiver.at("/hook")[0].headers, receiver.at("/hook")[0].body, time.time())
    assert shown["delivery_state"] == "delivered"


def test_many_learners_crossing_at_once_send_one_digest(alerting: Client, auth: Auth, receiver: Receiver) -> None:
    budget = create_budget(
        alerting, auth, [slack(receiver), webhook(receiver)], per_learner=True, limit_usd="1", name="Per learner"
    )
    events = [
        {
            "tenant_id": "school-a",
            "service": "tutor-chat",
            "learner_id": f"learner-{i:02d}",
            "provider": "openai",
            "model": "gpt-4o-mini",
            "cost_usd": str(Decimal("0.80") + Decimal(i) / 100),
            "timestamp": datetime.now(UTC).isoformat(),
        }
        for i in range(12)
    ]
    assert alerting.post("/usage-events/batch", json={"events": events}, headers=auth("service")).status_code == 201
    first_alert(alerting, auth, budget["budget_id"])
    message = receiver.wait_for("/slack/hook", 1)[0].json()
    call = receiver.wait_for("/hook", 1)[0].json()
    alerting.post("/budgets/evaluate", headers=auth("admin"))
    time.sleep(0.3)
    assert len(receiver.at("/slack/hook")) == 1
    assert len(receiver.at("/hook")) == 1
    assert "12 learners crossed" in message["text"]
    digest = message["attachments"][0]["blocks"][2]["text"]["text"]
    assert digest.splitlines()[0].startswith("learner-11: $0.91 (91.0%)")  # the highest first
    assert digest.splitlines()[-1] == "... and 2 more"
    assert sorted(a["learner_id"] for a in call["alerts"]) == [f"learner-{i:02d}" for i in range(12)]
    alerts = alerting.get("/alerts", params={"budget_id": budget["budget_id"]}, headers=auth("admin")).json()
    for alert in alerts["items"]:
        shown = settled(alerting, auth, alert["alert_id"])
        assert {d["digest_size"] for d in shown["deliveries"]} == {12}


def test_cooldown_holds_repeats_sends_escalations_and_then_a_digest(
    settings: Settings, receiver: Receiver, auth: Auth
) -> None:
    with client_for(settings, alert_settings(receiver.url, cooldown_s=3)) as client:
        budget = create_budget(
            client,
            auth,
            [slack(receiver)],
            per_learner=True,
            limit_usd="1",
            thresholds=[{"percent": 80}, {"percent": 100}],
        )
        spend(client, auth, "0.85", "learner-1")
        first_alert(client, auth, budget["budget_id"])
        receiver.wait_for("/slack/hook", 1)
        spend(client, auth, "0.85", "learner-2")  # the same threshold within the cooldown: held
        deadline = time.monotonic() + 10
        while len(client.get("/alerts", headers=auth("admin")).json()["items"]) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.post("/budgets/evaluate", headers=auth("admin")).json()["deliveries_started"] == 0
        time.sleep(0.3)
        assert len(receiver.at("/slack/hook")) == 1
        spend(client, auth, "0.30", "learner-1")  # learner-1 passes 100 %: more severe, sent at once
        escalation = receiver.wait_for("/slack/hook", 2)[1].json()
        assert escalation["attachments"][0]["color"] == "#D92D20"
        assert "2 learners crossed" in escalation["text"]  # with learner-2's held alert
        spend(client, auth, "0.85", "learner-3")  # held again, then sent when the cooldown ends
        while len(client.get("/alerts", headers=auth("admin")).json()["items"]) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(3.2)
        assert client.post("/budgets/evaluate", headers=auth("admin")).json()["deliveries_started"] == 1
        late = receiver.wait_for("/slack/hook", 3)[2].json()
        assert "learner-3" in str(late)
    assert len(receiver.at("/slack/hook")) == 3


# -- retries -------------------------------------------------------------------------


def test_5xx_and_429_are_retried_honouring_retry_after(alerting: Client, auth: Auth, receiver: Receiver) -> None:
    receiver.script("/hook", Answer(503, body=b"busy"), Answer(429, {"Retry-After": "1"}, b"slow down"))
    budget = create_budget(alerting, auth, [webhook(receiver)])
    spend(alerting, auth, "9")
    alert = first_alert(alerting, auth, budget["budget_id"])
    calls = receiver.wait_for("/hook", 3)
    shown = settled(alerting, auth, alert["alert_id"])
    assert len(calls) == 3
    assert calls[2].at - calls[1].at >= 0.95  # waited as Retry-After asked
    assert [c.json()["alerts"][0]["alert_id"] for c in calls] == [alert["alert_id"]] * 3
    assert shown["delivery_state"] == "delivered"
    assert [(d["state"], d["attempts"], d["last_response_code"]) for d in shown["deliveries"]] == [
        ("delivered", 3, 200)
    ]


def test_a_4xx_fails_at_once_and_is_visible(alerting: Client, auth: Auth, receiver: Receiver) -> None:
    receiver.script("/slack/hook", Answer(400, body=b"invalid_payload"))
    budget = create_budget(alerting, auth, [slack(receiver)])
    spend(alerting, auth, "9")
    alert = first_alert(alerting, auth, budget["budget_id"])
    shown = settled(alerting, auth, alert["alert_id"])
    time.sleep(0.3)
    assert len(receiver.at("/slack/hook")) == 1
    assert shown["delivery_state"] == "failed"
    [delivery] = shown["deliveries"]
    assert (delivery["state"], delivery["attempts"], delivery["last_response_code"]) == ("failed", 1, 400)
    assert delivery["last_error"] == "HTTP 400: invalid_payload"
    metrics = alerting.get("/metrics").text
    assert 'finops_alert_deliveries_total{channel="slack",outcome="failed"}' in metrics


def test_attempts_run_out_and_timeouts_are_retried(alerting: Client, auth: Auth, receiver: Receiver) -> None:
    receiver.script("/hook", *[Answer(500)] * 3)
    receiver.script("/slow", Answer(200, delay_s=2.5))  # longer than the 1 s send timeout
    budget = create_budget(alerting, auth, [webhook(receiver), webhook(receiver, "/slow")])
    spend(alerting, auth, "9")
    alert = first_alert(alerting, auth, budget["budget_id"])
    shown = settled(alerting, auth, alert["alert_id"])
    states = sorted((d["state"], d["attempts"], d["last_response_code"]) for d in shown["deliveries"])
    assert states == [("delivered", 2, 200), ("failed", 3, 500)]
    assert shown["delivery_state"] == "failed"
    assert len(receiver.at("/hook")) == 3


# -- email and SMS through the test endpoint -----------------------------------------


def test_test_alert_reaches_sendgrid_and_twilio_as_their_apis_expect(
    alerting: Client, auth: Auth, receiver: Receiver
) -> None:
    response = alerting.post(
        "/alerts/test",
        json={
            "channels": [
                {"type": "email", "to": ["finance@school-a.org", "head@school-a.org"]},
                {"type": "sms", "to": ["+15551234567", "+447700900123"]},
                {"type": "slack"},
            ]
        },
        headers=auth("admin"),
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [(r["type"], r["target"], r["outcome"], r["response_code"]) for r in results] == [
        ("email", "f***@school-a.org, h***@school-a.org", "delivered", 202),
        ("sms", "+15***67", "delivered", 201),
        ("sms", "+44***23", "delivered", 201),
        ("slack", "http://127.0.0.1/***", "delivered", 200),
    ]
    [mail] = receiver.at("/v3/mail/send")
    assert mail.header("Authorization") == f"Bearer {SENDGRID_KEY}"
    sent = mail.json()
    assert sent["from"]["email"] == "alerts@finops.example.org"
    assert sent["personalizations"][0]["to"] == [{"email": "finance@school-a.org"}, {"email": "head@school-a.org"}]
    assert sent["subject"].startswith("[FinOps] [TEST] Budget 'Test budget' reached 80%")
    content = {c["type"]: c["value"] for c in sent["content"]}
    assert "Spend: $80.00" in content["text/plain"]
    assert "Limit: $100.00" in content["text/plain"]
    assert "This is a test alert" in content["text/plain"]
    assert DASHBOARD in content["text/html"]
    texts = receiver.at(f"/2010-04-01/Accounts/{TWILIO_SID}/Messages.json")
    assert len(texts) == 2
    basic = base64.b64encode(f"{TWILIO_SID}:{TWILIO_TOKEN}".encode()).decode()
    for text, number in zip(texts, ["+15551234567", "+447700900123"], strict=True):
        assert text.header("Authorization") == f"Basic {basic}"
        form = parse_qs(text.body.decode())
        assert (form["To"], form["From"]) == ([number], ["+15550001111"])
        assert form["Body"][0].startswith("TEST FinOps: 'Test budget' 80.0% of $100.00")
        assert len(form["Body"][0]) <= 160
    assert receiver.at("/slack/default")[0].json()["text"].startswith("[TEST]")


def test_test_alert_roles_and_budget_channels(alerting: Client, auth: Auth, receiver: Receiver) -> None:
    own = create_budget(alerting, auth, [webhook(receiver)])
    other = create_budget(alerting, auth, [slack(receiver)], scope={"tenant_id": "school-b"})
    tried = alerting.post(
        "/alerts/test", json={"budget_id": own["budget_id"]}, headers=auth("tenant-admin", "school-a")
    )
    assert tried.status_code == 200, tried.text
    assert [r["outcome"] for r in tried.json()["results"]] == ["delivered"]
    call = receiver.at("/hook")[0]
    assert call.json()["event"] == "budget.alert.test"
    assert independent_verify(SECRET, call.headers, call.body, time.time())
    assert (
        alerting.post(
            "/alerts/test", json={"budget_id": other["budget_id"]}, headers=auth("tenant-admin", "school-a")
        ).status_code
        == 404
    )
    assert (
        alerting.post(
            "/alerts/test", json={"channels": [slack(receiver)]}, headers=auth("user", "school-a")
        ).status_code
        == 403
    )
    neither = alerting.post("/alerts/test", json={}, headers=auth("admin"))
    assert neither.status_code == 422
    assert neither.json()["errors"][0]["field"] == "budget_id"
    receiver.script("/gone", Answer(404, body=b"no_service"))
    failing = alerting.post("/alerts/test", json={"channels": [slack(receiver, "/gone")]}, headers=auth("admin"))
    assert failing.status_code == 200
    assert [(r["outcome"], r["response_code"], r["error"]) for r in failing.json()["results"]] == [
        ("failed", 404, "HTTP 404: no_service")
    ]


# -- secrets -------------------------------------------------------------------------


def test_webhook_secrets_are_kept_but_never_shown(
    alerting: Client, auth: Auth, receiver: Receiver, db: ClickHouse
) -> None:
    created = create_budget(alerting, auth, [webhook(receiver)])
    assert created["channels"] == [{"type": "webhook", "url": receiver.url + "/hook", "secret": "********"}]
    budget_id = created["budget_id"]
    shown = alerting.get(f"/budgets/{budget_id}", headers=auth("admin")).json()
    assert shown["channels"][0]["secret"] == "********"
    # sending back what was shown keeps the stored secret
    body = {k: shown[k] for k in ("name", "scope", "limit_usd", "thresholds", "channels")}
    assert alerting.put(f"/budgets/{budget_id}", json=body, headers=auth("admin")).status_code == 200
    alerting.post("/alerts/test", json={"budget_id": budget_id}, headers=auth("admin"))
    call = receiver.wait_for("/hook", 1)[0]
    assert independent_verify(SECRET, call.headers, call.body, time.time())
    # a new URL needs its own secret
    body["channels"] = [{"type": "webhook", "url": receiver.url + "/other", "secret": "********"}]
    moved = alerting.put(f"/budgets/{budget_id}", json=body, headers=auth("admin"))
    assert moved.status_code == 422
    assert moved.json()["errors"][0]["field"] == "channels[0].secret"
    for table in ("audit_log", "alert_deliveries"):
        dump = db.query(f"SELECT * FROM {table}", label="test.dump")
        assert dump
        assert SECRET not in str(dump)


# -- validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("channel", "field"),
    [
        ({"type": "email", "to": ["not-an-email"]}, "channels[0].to[0]"),
        ({"type": "email", "to": []}, "channels[0].to"),
        ({"type": "sms", "to": ["5551234567"]}, "channels[0].to[0]"),
        ({"type": "sms", "to": ["+1555"]}, "channels[0].to[0]"),
        ({"type": "webhook", "url": "http://example.org/hook", "secret": SECRET}, "channels[0].url"),
        ({"type": "webhook", "url": "https://127.0.0.1/hook", "secret": SECRET}, "channels[0].url"),
        ({"type": "webhook", "url": "https://10.1.2.3/hook", "secret": SECRET}, "channels[0].url"),
        ({"type": "webhook", "url": "https://localhost/hook", "secret": SECRET}, "channels[0].url"),
        ({"type": "webhook", "url": "https://[::1]/hook", "secret": SECRET}, "channels[0].url"),
        ({"type": "webhook", "url": "not a url", "secret": SECRET}, "channels[0].url"),
        ({"type": "webhook", "url": "https://8.8.8.8/hook"}, "channels[0].secret"),
        ({"type": "webhook", "url": "https://8.8.8.8/hook", "secret": "short"}, "channels[0].secret"),
        ({"type": "slack", "webhook_url": "https://169.254.169.254/latest"}, "channels[0].webhook_url"),
        ({"type": "slack"}, "channels[0].webhook_url"),
        ({"type": "pager", "to": ["x"]}, "channels[0].type"),
    ],
)
def test_bad_channels_are_422_naming_the_field(
    settings: Settings, auth: Auth, channel: dict[str, Any], field: str
) -> None:
    strict = alert_settings("https://api.sendgrid.com", allow_private_urls=False, slack_webhook_url="")
    with client_for(settings, strict) as client:
        response = client.post(
            "/budgets",
            json={"name": "b", "scope": {"tenant_id": "school-a"}, "limit_usd": "10", "channels": [channel]},
            headers=auth("admin"),
        )
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == field


def test_private_urls_are_refused_again_at_send_time(receiver: Receiver) -> None:
    senders = Senders(alert_settings(receiver.url, allow_private_urls=False))
    outcome = senders.send(SlackChannel(webhook_url=receiver.url + "/slack/hook"), notice("Budget"))
    assert outcome.status == "failed"
    assert "https" in outcome.error
    assert receiver.at("/slack/hook") == []


# -- messages ------------------------------------------------------------------------


def notice(name: str, **changes: Any) -> Notice:
    now = datetime.now(UTC)
    facts = AlertFacts(
        alert_id="alt_1",
        threshold_percent=100,
        kind="actual",
        spend_usd=Decimal("1234.5678"),
        forecast_usd=Decimal("2000"),
        limit_usd=Decimal("1000"),
        percent_used=Decimal("123.4568"),
        tenant_id="school-a",
        service="",
        learner_id="",
        period_start=now,
        period_end=now,
        created_at=now,
    )
    base = Notice("bud_1", name, "school-a", "", "", False, "monthly", "UTC", Decimal(1000), [facts])
    return dataclasses.replace(base, **changes)


def test_an_sms_is_one_segment_whatever_the_name() -> None:
    text = sms_text(notice("Écoles du réseau — budget mensuel " * 10))
    assert len(text) <= 160
    assert gsm(text) == text
    assert text.startswith("FinOps: '?coles du r?seau")
    assert text.endswith("123.5% of $1,000.00 (spend 100%, forecast $2,000.00)")


def test_signatures_reject_tampering_and_replays() -> None:
    body = b'{"schema_version":"1"}'
    now = int(time.time())
    signature = sign(SECRET, now, body)
    assert verify(SECRET, str(now), body, signature)
    assert not verify(SECRET, str(now), body + b" ", signature)
    assert not verify(SECRET, str(now - 301), body, sign(SECRET, now - 301, body))
    assert not verify("another-secret-0123", str(now), body, signature)
