"""Triggered passes: only the budgets (and learners) ingest touched, with a full pass's answers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from service.budgets.evaluate import evaluate_budgets
from service.budgets.schemas import Budget, Scope
from service.budgets.store import ALERT_COLUMNS, BudgetStore
from service.budgets.watch import BudgetWatch, Touched
from service.storage.clickhouse import ClickHouse
from service.usage.schemas import UsageEvent
from tests.test_budgets import APRIL_11, Auth, Client, alerts, create, record, usage

A = ("school-a", "tutor-chat", "learner-1")


def stale_alert(db: ClickHouse, budget_id: str, learner: str = "", tenant: str = "school-a") -> str:
    """An active alert of this April's period that no threshold holds any more."""
    identifier = f"alt_stale_{budget_id[-6:]}_{learner}"
    row: dict[str, Any] = {
        "alert_id": identifier,
        "budget_id": budget_id,
        "budget_name": "stale",
        "tenant_id": tenant,
        "service": "",
        "learner_id": learner,
        "period_start": datetime(2026, 4, 1, tzinfo=UTC),
        "period_end": datetime(2026, 5, 1, tzinfo=UTC),
        "threshold_percent": 999,
        "kind": "actual",
        "spend_usd": 0,
        "forecast_usd": 0,
        "limit_usd": 1,
        "percent_used": 0,
        "state": "active",
        "delivery_state": "no_channels",
        "channel_keys": [],
        "created_at": APRIL_11,
        "updated_at": APRIL_11,
        "version": 1,
    }
    db.insert("budget_alerts", [[row[c] for c in ALERT_COLUMNS]], ALERT_COLUMNS, label="test.stale")
    return identifier


def state_of(db: ClickHouse, alert_id: str) -> tuple[str, int]:
    [(state, version)] = db.query(
        "SELECT toString(state), version FROM budget_alerts FINAL WHERE alert_id = {id:String}",
        {"id": alert_id},
        label="test.state",
    )
    return state, int(version)


def test_a_narrowed_pass_fires_what_a_full_pass_fires_for_the_touched_scopes(
    client: Client, auth: Auth, db: ClickHouse
) -> None:
    school_a = create(client, auth, limit_usd="10", thresholds=[{"percent": 50}, {"percent": 100}])
    school_b = create(client, auth, scope={"tenant_id": "school-b"}, limit_usd="10", thresholds=[{"percent": 50}])
    platform = create(client, auth, scope={}, limit_usd="10", thresholds=[{"percent": 100}], name="platform")
    service = create(client, auth, scope={"service": "tutor-chat"}, limit_usd="10", thresholds=[{"percent": 100}])
    evaluate_budgets(db, now=APRIL_11)  # the full pass the triggered ones follow
    record(
        client,
        auth,
        usage("2026-04-02T10:00:00Z", "12"),
        usage("2026-04-02T10:00:00Z", "6", tenant_id="school-b", service="essay-grader"),
    )
    run, fired = evaluate_budgets(db, now=APRIL_11, touched=Touched([A]))
    # school-a's budget, the global one and tutor-chat's: what a full pass fires for them; not school-b's
    assert {r[0] for r in alerts(db)} == {school_a["budget_id"], platform["budget_id"], service["budget_id"]}
    assert [(r[2], r[4]) for r in alerts(db, budget_id=school_a["budget_id"])] == [(50, "active"), (100, "active")]
    assert (run.fired, len(fired)) == (4, 4)
    narrowed = {tuple(r) for r in alerts(db)}
    run, _ = evaluate_budgets(db, now=APRIL_11)
    assert run.fired == 1
    assert {tuple(r) for r in alerts(db)} - narrowed == {(school_b["budget_id"], "", 50, "actual", "active", 6)}
    # nothing touched school-b's service: a pass touching only it evaluates the global budget and school-b's
    run, fired = evaluate_budgets(db, now=APRIL_11, touched=Touched([("school-b", "essay-grader", "")]))
    assert (run.fired, run.resolved, run.queries) == (0, 0, 1)  # the global and tenant budgets: one query


def test_a_narrowed_pass_leaves_the_alerts_of_budgets_it_did_not_evaluate(
    client: Client, auth: Auth, db: ClickHouse
) -> None:
    school_a = create(client, auth, limit_usd="10", thresholds=[{"percent": 100}])
    school_b = create(client, auth, scope={"tenant_id": "school-b"}, limit_usd="10", thresholds=[{"percent": 100}])
    template = create(client, auth, per_learner=True, limit_usd="5", thresholds=[{"percent": 100}], name="each")
    record(
        client,
        auth,
        usage("2026-04-02T10:00:00Z", "6", learner_id="learner-1"),
        usage("2026-04-02T10:00:00Z", "7", learner_id="learner-3"),
    )
    evaluate_budgets(db, now=APRIL_11)
    stale_b = stale_alert(db, school_b["budget_id"], tenant="school-b")
    stale_learner = stale_alert(db, template["budget_id"], "learner-2")
    stale_a = stale_alert(db, school_a["budget_id"])
    record(client, auth, usage("2026-04-03T10:00:00Z", "1", learner_id="learner-1"))
    run, _ = evaluate_budgets(db, now=APRIL_11, touched=Touched([A]))
    # evaluated: school-a's budget (its stale alert resolves) and learner-1 of the template
    assert state_of(db, stale_a) == ("resolved", 2)
    assert run.resolved == 1
    # not evaluated: school-b's budget and the template's other learners
    assert state_of(db, stale_b) == ("active", 1)
    assert state_of(db, stale_learner) == ("active", 1)
    assert [(r[1], r[4]) for r in alerts(db, budget_id=template["budget_id"])] == [
        ("learner-1", "active"),
        ("learner-2", "active"),
        ("learner-3", "active"),
    ]
    # the full pass resolves both
    run, _ = evaluate_budgets(db, now=APRIL_11)
    assert (state_of(db, stale_b)[0], state_of(db, stale_learner)[0], run.resolved) == ("resolved", "resolved", 2)


def test_a_narrowed_pass_fires_per_learner_alerts_only_for_learners_written_to(
    client: Client, auth: Auth, db: ClickHouse
) -> None:
    template = create(client, auth, per_learner=True, limit_usd="5", thresholds=[{"percent": 100}], name="each")
    evaluate_budgets(db, now=APRIL_11)
    record(
        client,
        auth,
        usage("2026-04-02T10:00:00Z", "6", learner_id="learner-1"),
        usage("2026-04-02T10:00:00Z", "7", learner_id="learner-3"),
        usage("2026-04-02T10:00:00Z", "9", tenant_id="school-b", learner_id="learner-1"),
    )
    evaluate_budgets(db, now=APRIL_11, touched=Touched([A, ("school-a", "tutor-chat", "")]))
    assert [(r[1], r[5]) for r in alerts(db, budget_id=template["budget_id"])] == [("learner-1", 6)]
    evaluate_budgets(db, now=APRIL_11)
    assert [r[1] for r in alerts(db, budget_id=template["budget_id"])] == ["learner-1", "learner-3"]


def test_a_narrowed_scan_of_several_windows_keeps_each_to_its_own_learners(
    client: Client, auth: Auth, db: ClickHouse
) -> None:
    """A template and single-learner budgets of other windows share one scan (same rollup
    columns): each window still sees only the learners it was narrowed to."""
    template = create(client, auth, per_learner=True, limit_usd="5", thresholds=[{"percent": 100}], name="each")
    one = {"limit_usd": "5", "thresholds": [{"percent": 100}], "period": "weekly", "timezone": "Europe/Paris"}
    first = create(client, auth, scope={"tenant_id": "school-a", "learner_id": "learner-1"}, name="one", **one)
    third = create(client, auth, scope={"tenant_id": "school-a", "learner_id": "learner-3"}, name="three", **one)
    evaluate_budgets(db, now=APRIL_11)
    record(
        client,
        auth,
        usage("2026-04-10T10:00:00Z", "6", learner_id="learner-1"),
        usage("2026-04-10T10:00:00Z", "7", learner_id="learner-3"),
    )
    run, _ = evaluate_budgets(db, now=APRIL_11, touched=Touched([A]))
    assert run.queries == 1
    fired = {(r[0], r[1]) for r in alerts(db)}
    assert fired == {(template["budget_id"], "learner-1"), (first["budget_id"], "learner-1")}
    evaluate_budgets(db, now=APRIL_11)
    assert {(r[0], r[1]) for r in alerts(db)} == fired | {
        (template["budget_id"], "learner-3"),
        (third["budget_id"], "learner-3"),
    }


def test_a_budget_change_means_a_full_pass(client: Client, auth: Auth, db: ClickHouse) -> None:
    school_b = create(client, auth, scope={"tenant_id": "school-b"}, limit_usd="100", thresholds=[{"percent": 100}])
    record(client, auth, usage("2026-04-02T10:00:00Z", "6", tenant_id="school-b"))
    evaluate_budgets(db, now=APRIL_11)
    assert alerts(db) == []
    # a new version, written where no watch sees it (the app would run a full pass of its own)
    store = BudgetStore(db)
    current = store.get(school_b["budget_id"])
    assert current is not None
    store.write(msgspec.structs.replace(current, version=current.version + 1, limit_usd="5"))
    # only school-a was written to, but the budgets changed since the last full pass: all are evaluated
    run, _ = evaluate_budgets(db, now=APRIL_11, touched=Touched([A]))
    assert run.fired == 1
    assert [(r[0], r[4]) for r in alerts(db)] == [(school_b["budget_id"], "active")]


# -- the watch ---------------------------------------------------------------------------


def event(tenant: str, service: str = "tutor-chat", learner: str | None = None) -> UsageEvent:
    return UsageEvent(
        event_id="e",
        timestamp=APRIL_11,
        received_at=APRIL_11,
        tenant_id=tenant,
        service=service,
        learner_id=learner,
        provider="openai",
        model="gpt-4o-mini",
        region=None,
        input_tokens=1,
        output_tokens=1,
        cached_input_tokens=0,
        cache_write_tokens=0,
        input_characters=0,
        output_characters=0,
        images=0,
        batch=False,
        cost_usd="1",
        pricing_status="priced",
        price_version=None,
        metadata={},
    )


def scoped(scope: Scope, *, per_learner: bool = False) -> Budget:
    return Budget(
        budget_id="bud_x",
        version=1,
        name="x",
        scope=scope,
        per_learner=per_learner,
        period="monthly",
        timezone="UTC",
        period_start=None,
        period_end=None,
        limit_usd="1",
        thresholds=[],
        channels=[],
        enabled=True,
        created_at=APRIL_11,
        created_by="t",
        updated_at=APRIL_11,
        updated_by="t",
    )


def test_the_watch_hands_the_touched_scopes_to_one_pass() -> None:
    triggers: list[int] = []
    watch = BudgetWatch(lambda: triggers.append(1))
    assert watch.drain() is None  # nothing loaded yet: every budget
    watch.load([scoped(Scope(tenant_id="school-a"))])
    watch.notify([event("school-b")])
    assert triggers == []  # no budget of school-b
    watch.notify([event("school-a", learner="learner-1"), event("school-b"), event("school-a")])
    assert triggers == [1]
    touched = watch.drain()
    assert touched is not None
    assert touched.triples == {("school-a", "tutor-chat", "learner-1"), ("school-a", "tutor-chat", "")}
    drained = watch.drain()
    assert drained is not None
    assert not drained  # drained: the next pass starts afresh
    watch.notify([event("school-a")])
    watch.changed()  # a budget changed: the next pass evaluates everything
    assert watch.drain() is None
    watch.load([scoped(Scope(tenant_id="school-a"))])
    assert watch.drain() is not None


def test_touched_matches_the_budgets_an_event_may_count_towards() -> None:
    touched = Touched([("school-a", "tutor-chat", "learner-1"), ("school-b", "essay-grader", "")])
    assert touched.matches(scoped(Scope()))
    assert touched.matches(scoped(Scope(tenant_id="school-a")))
    assert touched.matches(scoped(Scope(service="essay-grader")))
    assert touched.matches(scoped(Scope(tenant_id="school-b", service="essay-grader")))
    assert not touched.matches(scoped(Scope(tenant_id="school-a", service="essay-grader")))
    assert touched.matches(scoped(Scope(learner_id="learner-1")))
    assert not touched.matches(scoped(Scope(tenant_id="school-b", learner_id="learner-1")))
    # per-learner budgets: only events naming a learner, and only those learners
    assert touched.learners(scoped(Scope(), per_learner=True)) == {("school-a", "learner-1")}
    assert touched.matches(scoped(Scope(tenant_id="school-a"), per_learner=True))
    assert not touched.matches(scoped(Scope(tenant_id="school-b"), per_learner=True))
    assert touched.learners(scoped(Scope(service="tutor-chat"), per_learner=True)) == {("school-a", "learner-1")}
