"""Grafana dashboards: every ClickHouse query runs on the migrated schema and shows the
ingested figures; every Prometheus metric they name is one the service exports (or is
listed below as not exported yet)."""

from __future__ import annotations

import importlib
import json
import re
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import TestClient
from prometheus_client import REGISTRY

from service.budgets.evaluate import evaluate_budgets
from service.storage.clickhouse import ClickHouse

Client = TestClient[Litestar]
Auth = Callable[..., dict[str, str]]

ROOT = Path(__file__).resolve().parents[1]
DASHBOARDS = ROOT / "dashboards"
CLICKHOUSE_PLUGIN = "grafana-clickhouse-datasource"

# Metrics the health dashboard charts that the service does not export yet (with their
# Prometheus type). A name the dashboard uses must be registered or listed here, so a
# typo fails; a listed name the dashboard no longer uses fails too.
PENDING_METRICS = {
    "finops_http_requests_total": "counter",
    "finops_http_request_duration_seconds": "histogram",
}

# The time grain of each rollup: a time series over one is never bucketed finer.
ROLLUP_GRAIN_S = {
    "usage_hourly": 3600,
    "usage_hourly_totals": 3600,
    "usage_daily": 86400,
    "usage_daily_totals": 86400,
}

ALL = None  # a variable with "All" selected
Selection = dict[str, list[str] | None]


# -- the dashboards on disk -------------------------------------------------------


def load_dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def panels_of(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def variables_of(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {variable["name"]: variable for variable in dashboard["templating"]["list"]}


def datasource_type(dashboard: dict[str, Any]) -> str:
    query: str = variables_of(dashboard)["datasource"]["query"]
    return query


def clickhouse_dashboard() -> dict[str, Any]:
    found = [d for d in load_dashboards().values() if datasource_type(d) == CLICKHOUSE_PLUGIN]
    assert len(found) == 1
    return found[0]


def prometheus_dashboard() -> dict[str, Any]:
    found = [d for d in load_dashboards().values() if datasource_type(d) == "prometheus"]
    assert len(found) == 1
    return found[0]


def panel_titled(dashboard: dict[str, Any], title: str) -> dict[str, Any]:
    [panel] = [p for p in panels_of(dashboard) if p.get("title") == title]
    return panel


def panel_sql(dashboard: dict[str, Any], title: str) -> str:
    [target] = panel_titled(dashboard, title)["targets"]
    sql: str = target["rawSql"]
    return sql


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def min_interval_s(panel: dict[str, Any]) -> int:
    """The panel's minimum interval ("Min interval" in its query options), in seconds."""
    interval = panel.get("interval")
    if not interval:
        return 0
    match = re.fullmatch(r"(\d+)([smhdw])", interval)
    assert match, f"panel {panel['title']!r}: unsupported interval {interval!r}"
    return int(match[1]) * DURATION_UNITS[match[2]]


class Query:
    """One SQL text of a dashboard with what Grafana does with its result."""

    def __init__(self, sql: str, panel_type: str, result_format: int, min_interval_s: int = 0) -> None:
        self.sql, self.panel_type, self.min_interval_s = sql, panel_type, min_interval_s
        self.result_format = result_format  # the plugin's format: 0 time series, 1 table


def clickhouse_queries(dashboard: dict[str, Any]) -> dict[str, Query]:
    """Every SQL text of the dashboard: panel targets and variable queries."""
    queries: dict[str, Query] = {}
    for panel in panels_of(dashboard):
        for target in panel.get("targets", []):
            queries[f"panel {panel['title']!r} {target['refId']}"] = Query(
                target["rawSql"], panel["type"], target["format"], min_interval_s(panel)
            )
    for name, variable in variables_of(dashboard).items():
        if variable["type"] == "query":
            queries[f"variable {name}"] = Query(variable["query"]["rawSql"], "variable", 1)
    return queries


# -- Grafana's variable interpolation and the plugin's macros ---------------------------


class Expander:
    """Turns a dashboard query into the SQL Grafana and the ClickHouse plugin send.

    Variables first (as Grafana's frontend does, `$__conditionalAll` included), then the
    plugin's backend macros, with the plugin's own expansions: `$__timeFilter(c)` is
    `c >= toDateTime(from) AND c <= toDateTime(to)`, `$__dateFilter(c)` the same with
    `toDate('YYYY-MM-DD')`, `$__timeInterval(c)` is `toStartOfInterval(toDateTime(c),
    INTERVAL n second)`. Anything it does not know is left in place and fails the test.
    """

    def __init__(self, start: datetime, end: datetime, interval_s: int, variables: Selection) -> None:
        self.start, self.end, self.interval_s = start, end, interval_s
        self.variables = variables

    def __call__(self, sql: str) -> str:
        sql = self._conditional_all(sql)
        sql = self._variables(sql)
        sql = self._macros(sql)
        assert "$" not in sql, f"unexpanded variable or macro in:\n{sql}"
        return sql

    def _values(self, name: str) -> list[str] | None:
        assert name in self.variables, f"the query uses ${name}, which the dashboard does not define"
        return self.variables[name]

    def _conditional_all(self, sql: str) -> str:
        marker = "$__conditionalAll("
        while (start := sql.find(marker)) >= 0:
            depth, position, comma = 1, start + len(marker), -1
            while depth:
                char = sql[position]
                if char == "(":
                    depth += 1
                elif char == ")":
                    depth -= 1
                elif char == "," and depth == 1:
                    comma = position
                position += 1
            assert comma > 0, f"$__conditionalAll without a variable argument in:\n{sql}"
            condition, variable = sql[start + len(marker) : comma].strip(), sql[comma + 1 : position - 1].strip()
            match = re.fullmatch(r"\$\{?(\w+)\}?", variable)
            assert match, f"$__conditionalAll's second argument must be a plain variable, not {variable!r}"
            replacement = "1=1" if self._values(match[1]) is ALL else condition
            sql = sql[:start] + replacement + sql[position:]
        return sql

    def _variables(self, sql: str) -> str:
        def replace(match: re.Match[str]) -> str:
            name, form = match["name"] or match["bare"], match["form"]
            values = self._values(name)
            assert values is not ALL, f"${name} with All selected must sit inside $__conditionalAll"
            if form == "singlequote":
                return ",".join("'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'" for value in values)
            assert form is None, f"unsupported variable format {form!r}"
            assert len(values) == 1, f"${name} has several values; quote them with ${{{name}:singlequote}}"
            return values[0]

        return re.sub(r"\$\{(?P<name>\w+)(?::(?P<form>\w+))?\}|\$(?!__)(?P<bare>\w+)", replace, sql)

    def _macros(self, sql: str) -> str:
        start, end = int(self.start.timestamp()), int(self.end.timestamp())
        day_from, day_to = self.start.strftime("%Y-%m-%d"), self.end.strftime("%Y-%m-%d")
        sql = re.sub(
            r"\$__timeFilter\(([^()]+)\)",
            lambda m: f"{m[1]} >= toDateTime({start}) AND {m[1]} <= toDateTime({end})",
            sql,
        )
        sql = re.sub(
            r"\$__dateFilter\(([^()]+)\)",
            lambda m: f"{m[1]} >= toDate('{day_from}') AND {m[1]} <= toDate('{day_to}')",
            sql,
        )
        sql = re.sub(
            r"\$__timeInterval\(([^()]+)\)",
            lambda m: f"toStartOfInterval(toDateTime({m[1]}), INTERVAL {max(self.interval_s, 1)} second)",
            sql,
        )
        sql = re.sub(r"\$__fromTime\b", f"toDateTime({start})", sql)
        sql = re.sub(r"\$__toTime\b", f"toDateTime({end})", sql)
        return re.sub(r"\$__interval_s\b", str(max(self.interval_s, 1)), sql)


def test_the_expander_follows_the_plugin() -> None:
    expand = Expander(
        datetime(2026, 3, 10, tzinfo=UTC),
        datetime(2026, 3, 12, tzinfo=UTC),
        60,
        {"database": ["db"], "tenant": ["a", "o'k"], "service": ALL},
    )
    assert expand(
        "SELECT 1 FROM ${database}.t WHERE $__conditionalAll(tenant_id IN (${tenant:singlequote}), $tenant) "
        "AND $__conditionalAll(f(service) IN (${service:singlequote}), $service) AND $__timeFilter(ts) "
        "AND $__dateFilter(day) AND $__timeInterval(ts) = $__fromTime + $__interval_s"
    ) == (
        "SELECT 1 FROM db.t WHERE tenant_id IN ('a','o\\'k') AND 1=1 "
        "AND ts >= toDateTime(1773100800) AND ts <= toDateTime(1773273600) "
        "AND day >= toDate('2026-03-10') AND day <= toDate('2026-03-12') "
        "AND toStartOfInterval(toDateTime(ts), INTERVAL 60 second) = toDateTime(1773100800) + 60"
    )
    with pytest.raises(AssertionError, match="unexpanded"):
        expand("SELECT $__timeFilter_ms(ts)")
    with pytest.raises(AssertionError, match="does not define"):
        expand("SELECT ${tenat:singlequote}")


# -- what each panel type needs from its result ---------------------------------------

Columns = list[tuple[str, str]]  # (name, ClickHouse type) of a result, in order


def base_type(clickhouse_type: str) -> str:
    while match := re.fullmatch(r"(?:Nullable|LowCardinality)\((.*)\)", clickhouse_type):
        clickhouse_type = match[1]
    return clickhouse_type


def is_time(clickhouse_type: str) -> bool:
    return re.match(r"(?:DateTime64|DateTime|Date32|Date)\b", base_type(clickhouse_type)) is not None


def is_number(clickhouse_type: str) -> bool:
    """Types the plugin hands Grafana as numbers (Decimal becomes float64 there)."""
    return re.match(r"(?:U?Int\d+|Float\d+|Decimal)", base_type(clickhouse_type)) is not None


def is_label(clickhouse_type: str) -> bool:
    return re.match(r"(?:String|FixedString|Enum8|Enum16|UUID|Bool)\b", base_type(clickhouse_type)) is not None


def column_problems(panel_type: str, result_format: int, columns: Columns) -> list[str]:
    """Why Grafana could not draw `columns` in a panel of this type (nothing when it can).

    Time series (the plugin's format 0): a time column first, then label columns (long
    format, one series per label set) and at least one numeric column. Stat, gauge, bar
    gauge and pie chart: at least one numeric column. Bar chart: a label or time column
    and a numeric one. Table: any columns. A variable: its first column are the values.
    """
    if not columns:
        return ["no columns"]
    types = [kind for _, kind in columns]
    numbers = [name for name, kind in columns if is_number(kind)]
    if panel_type == "timeseries":
        problems = []
        if result_format != 0:
            problems.append(f"format {result_format}, not 0 (time series)")
        if not is_time(types[0]):
            problems.append(f"first column {columns[0]} is not a time")
        if not numbers:
            problems.append("no numeric column")
        problems += [
            f"{name} ({kind}) is neither a label nor a number"
            for name, kind in columns[1:]
            if not (is_number(kind) or is_label(kind))
        ]
        return problems
    if panel_type in {"stat", "gauge", "bargauge", "piechart"}:
        return [] if numbers else ["no numeric column"]
    if panel_type == "barchart":
        has_axis = any(is_label(kind) or is_time(kind) for kind in types)
        return [] if numbers and has_axis else ["a bar chart needs a label or time column and a numeric one"]
    if panel_type in {"table", "variable"}:
        return []
    return [f"no rule for panel type {panel_type!r}: add one"]


def test_the_column_rules_refuse_what_grafana_cannot_draw() -> None:
    time, money, name = (
        ("time", "DateTime('UTC')"),
        ("spend_usd", "Decimal(38, 12)"),
        ("provider", "LowCardinality(String)"),
    )
    assert column_problems("timeseries", 0, [time, name, money]) == []
    assert column_problems("timeseries", 0, [("time", "Nullable(DateTime64(3, 'UTC'))"), ("events", "UInt64")]) == []
    assert column_problems("timeseries", 0, [name, money]) == [f"first column {name} is not a time"]
    assert column_problems("timeseries", 0, [time, name]) == ["no numeric column"]
    assert column_problems("timeseries", 1, [time, money]) == ["format 1, not 0 (time series)"]
    assert column_problems("timeseries", 0, [time, money, ("ids", "Array(String)")]) == [
        "ids (Array(String)) is neither a label nor a number"
    ]
    assert column_problems("stat", 1, [("events", "UInt64")]) == []
    assert column_problems("stat", 1, [("spend", "Nullable(Decimal(38, 12))")]) == []
    assert column_problems("stat", 1, [name]) == ["no numeric column"]
    assert column_problems("piechart", 1, [name, ("events", "Float64")]) == []
    assert column_problems("gauge", 1, [time]) == ["no numeric column"]
    assert column_problems("table", 1, [name]) == []
    assert column_problems("table", 1, []) == ["no columns"]
    assert column_problems("heatmap", 1, [time, money]) == ["no rule for panel type 'heatmap': add one"]


# -- the dashboards' shape ----------------------------------------------------------


def test_dashboards_take_their_datasource_from_a_variable() -> None:
    dashboards = load_dashboards()
    assert set(dashboards) == {"finops-costs.json", "finops-service-health.json"}
    for name, dashboard in dashboards.items():
        assert 36 <= dashboard["schemaVersion"] <= 41, name
        assert dashboard["uid"], name
        assert dashboard["title"], name
        variable = variables_of(dashboard)["datasource"]
        assert variable["type"] == "datasource", name
        plugin = variable["query"]
        assert plugin in {CLICKHOUSE_PLUGIN, "prometheus"}, name
        references = [p["datasource"] for p in panels_of(dashboard) if p["type"] != "row"]
        references += [t["datasource"] for p in panels_of(dashboard) for t in p.get("targets", [])]
        references += [v["datasource"] for v in variables_of(dashboard).values() if v["type"] == "query"]
        assert references, name
        for reference in references:
            assert reference == {"type": plugin, "uid": "${datasource}"}, (name, reference)
        ids = [p["id"] for p in panels_of(dashboard)]
        assert len(ids) == len(set(ids)), name


def test_clickhouse_targets_use_the_plugin_sql_query_format() -> None:
    dashboard = clickhouse_dashboard()
    titles: set[str] = set()
    for panel in panels_of(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["title"] not in titles, f"two panels titled {panel['title']!r}"
        titles.add(panel["title"])
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["editorType"] == "sql"
            assert target["rawSql"].lstrip().upper().startswith("SELECT"), panel["title"]
            if panel["type"] == "timeseries":
                # time series: format 0, a `time` column first, ordered by it
                assert target["format"] == 0, panel["title"]
                assert re.search(r"\bAS time,", target["rawSql"]), panel["title"]
                assert "ORDER BY time" in target["rawSql"], panel["title"]
                # bucketed by the dashboard's interval through the plugin's macro, never finer
                # than the table they read (the panel's minimum interval says so to Grafana)
                assert re.search(r"\$__timeInterval\((\w+)\) AS time,", target["rawSql"]), panel["title"]
                assert "$__interval_s" not in target["rawSql"], panel["title"]
                grain = ROLLUP_GRAIN_S.get(re.findall(r"\$\{database\}\.(\w+)", target["rawSql"])[-1], 0)
                assert min_interval_s(panel) >= grain, panel["title"]
            else:
                assert target["format"] == 1, panel["title"]
    assert {
        "Spend by provider",
        "Spend by service",
        "Spend by tenant",
        "Spend by model",
        "Top learners",
        "Budget utilisation",
        "Recent alerts",
        "Unpriced events",
        "Unpriced events by model",
        "Ingestion volume",
    } <= titles
    variables = variables_of(dashboard)
    for name in ("tenant", "service", "provider"):
        assert variables[name]["type"] == "query"
        assert variables[name]["multi"] is True
        assert variables[name]["includeAll"] is True
    # every filter variable is applied to the spend panels
    for title in ("Spend by provider", "Spend by service", "Spend by tenant", "Spend by model", "Ingestion volume"):
        sql = panel_sql(dashboard, title)
        for name in ("tenant", "service", "provider"):
            assert f"${{{name}:singlequote}}" in sql, (title, name)
    # rollups are SummingMergeTree: read with sum() ... GROUP BY, never a bare column
    for title in ("Spend by provider", "Spend by service", "Spend by tenant", "Spend by model", "Top learners"):
        sql = panel_sql(dashboard, title)
        assert "sum(cost_usd)" in sql, title
        assert "GROUP BY" in sql, title
        assert "toFloat" not in sql, title  # money stays Decimal
    assert "budgets FINAL" in panel_sql(dashboard, "Budget utilisation")
    assert "budget_alerts FINAL" in panel_sql(dashboard, "Recent alerts")


# -- the ClickHouse queries on real data ---------------------------------------------

START = datetime(2026, 3, 10, tzinfo=UTC)
END = datetime(2026, 3, 12, tzinfo=UTC)
HOUR = 3600


def usage(
    when: str, tenant: str, service: str, learner: str, provider: str, model: str, **fields: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "timestamp": when,
        "tenant_id": tenant,
        "service": service,
        "learner_id": learner,
        "provider": provider,
        "model": model,
        "input_tokens": 1000,
        "output_tokens": 100,
    }
    body.update(fields)
    return body


EVENTS = [
    usage(
        "2026-03-10T10:10:00Z",
        "school-a",
        "tutor-chat",
        "learner-1",
        "openai",
        "gpt-4o-mini",
        cost_usd="1.250000000001",
    ),
    usage("2026-03-10T10:20:00Z", "school-a", "quiz", "learner-2", "gemini", "gemini-2.0-flash", cost_usd="0.5"),
    usage(
        "2026-03-10T11:05:00Z",
        "school-b",
        "tutor-chat",
        "learner-3",
        "bedrock",
        "anthropic.claude-3-haiku-20240307-v1:0",
        region="us-east-1",
        cost_usd="2.25",
    ),
    # no price for this model: stored unpriced, cost NULL
    usage("2026-03-10T11:30:00Z", "school-b", "tutor-chat", "learner-3", "openai", "gpt-dashboard-test-unknown"),
    usage("2026-03-11T09:00:00Z", "school-a", "tutor-chat", "learner-1", "openai", "gpt-4o-mini", cost_usd="9"),
    # outside the range: never counted
    usage("2026-03-09T23:00:00Z", "school-a", "tutor-chat", "learner-1", "openai", "gpt-4o-mini", cost_usd="1000"),
    usage("2026-03-12T00:30:00Z", "school-a", "tutor-chat", "learner-1", "openai", "gpt-4o-mini", cost_usd="2000"),
]

EVERYTHING: Selection = {"tenant": ALL, "service": ALL, "provider": ALL}


@pytest.fixture
def loaded(client: Client, auth: Auth, db: ClickHouse) -> ClickHouse:
    """The events above, stored through the API, and a budget of school-a that crossed 50 %."""
    response = client.post("/usage-events/batch", json={"events": EVENTS}, headers=auth("admin"))
    assert response.status_code == 201, response.text
    unpriced = db.query("SELECT count() FROM usage_events WHERE pricing_status = 'unpriced'", label="test.unpriced")
    assert unpriced == [(1,)]
    budget = {
        "name": "school-a two days",
        "scope": {"tenant_id": "school-a"},
        "period": "custom",
        "period_start": "2026-03-10T00:00:00Z",
        "period_end": "2026-03-12T00:00:00Z",
        "limit_usd": "20",
        "thresholds": [{"percent": 50, "kind": "actual"}, {"percent": 80, "kind": "actual"}],
    }
    response = client.post("/budgets", json=budget, headers=auth("admin"))
    assert response.status_code == 201, response.text
    evaluate_budgets(db, now=datetime(2026, 3, 11, 12, tzinfo=UTC))
    return db


def at(value: datetime) -> str:
    """A bucket's start as UTC text (the driver returns UTC columns without a zone)."""
    assert value.tzinfo in {None, UTC}, value
    return value.replace(tzinfo=None).isoformat(sep=" ")


def expanded(db: ClickHouse, query: Query | str, selection: Selection, interval_s: int) -> str:
    """The SQL Grafana sends: a panel's interval is never below its minimum interval."""
    if isinstance(query, str):
        query = Query(query, "table", 1)
    expand = Expander(START, END, max(interval_s, query.min_interval_s), {"database": [db.database], **selection})
    return expand(query.sql)


def run(db: ClickHouse, query: Query | str, selection: Selection, interval_s: int = HOUR) -> list[tuple[Any, ...]]:
    return db.query(expanded(db, query, selection, interval_s), label="test.dashboard")


def run_panel(db: ClickHouse, title: str, selection: Selection, interval_s: int = HOUR) -> list[tuple[Any, ...]]:
    [query] = [
        q for where, q in clickhouse_queries(clickhouse_dashboard()).items() if where.startswith(f"panel {title!r}")
    ]
    return run(db, query, selection, interval_s)


def test_every_clickhouse_query_runs_and_finds_the_ingested_data(loaded: ClickHouse) -> None:
    dashboard = clickhouse_dashboard()
    queries = clickhouse_queries(dashboard)
    assert len(queries) >= 14
    selections: list[Selection] = [
        EVERYTHING,
        {"tenant": ["school-a"], "service": ALL, "provider": ALL},
        {"tenant": ["school-a", "school-b"], "service": ["tutor-chat"], "provider": ["openai", "bedrock"]},
        {"tenant": ["nobody's"], "service": ["none"], "provider": ["none"]},
    ]
    for selection in selections:
        for interval_s in (60, HOUR, 86400):
            for where, query in queries.items():
                rows = run(loaded, query, selection, interval_s)
                if selection is EVERYTHING:
                    assert rows, f"{where} found nothing"

    assert run(loaded, queries["variable tenant"], EVERYTHING) == [("school-a",), ("school-b",)]
    assert run(loaded, queries["variable service"], {"tenant": ["school-b"]}) == [("tutor-chat",)]
    assert run(loaded, queries["variable provider"], EVERYTHING) == [("bedrock",), ("gemini",), ("openai",)]


def result_columns(db: ClickHouse, sql: str) -> tuple[Columns, list[tuple[Any, ...]]]:
    """The names and ClickHouse types of a result's columns, and its rows."""
    with db.client() as client:
        result = client.query(sql)
        columns = list(zip(result.column_names, [kind.name for kind in result.column_types], strict=True))
        return columns, [tuple(row) for row in result.result_rows]


def test_every_panel_returns_the_columns_its_type_needs(loaded: ClickHouse) -> None:
    dashboard = clickhouse_dashboard()
    queries = clickhouse_queries(dashboard)
    kinds = {query.panel_type for query in queries.values()}
    assert {"timeseries", "stat", "table", "variable"} <= kinds
    for interval_s in (60, HOUR, 86400):
        for where, query in queries.items():
            columns, rows = result_columns(loaded, expanded(loaded, query, EVERYTHING, interval_s))
            assert rows, f"{where} found nothing"
            problems = column_problems(query.panel_type, query.result_format, columns)
            assert not problems, f"{where} ({query.panel_type}) at {interval_s}s: {problems}; columns {columns}"
            if query.panel_type == "timeseries":
                # the time column holds the buckets, ascending, at the panel's interval
                times = [row[0] for row in rows]
                assert times == sorted(times), where
                step = max(interval_s, query.min_interval_s)
                assert all(int(value.replace(tzinfo=UTC).timestamp()) % step == 0 for value in times), where


def spend_by(db: ClickHouse, title: str, selection: Selection, interval_s: int = HOUR) -> dict[str, Decimal]:
    totals: dict[str, Decimal] = defaultdict(Decimal)
    for _, key, spend in run_panel(db, title, selection, interval_s):
        assert isinstance(spend, Decimal)  # money stays exact up to Grafana
        totals[key] += spend
    return dict(totals)


def test_spend_panels_show_the_exact_cost_of_the_ingested_events(loaded: ClickHouse) -> None:
    by_provider = {"openai": Decimal("10.250000000001"), "gemini": Decimal("0.5"), "bedrock": Decimal("2.25")}
    assert spend_by(loaded, "Spend by provider", EVERYTHING) == by_provider
    assert spend_by(loaded, "Spend by provider", EVERYTHING, interval_s=86400) == by_provider
    total = Decimal("13.000000000001")
    assert sum(by_provider.values()) == total
    assert spend_by(loaded, "Spend by service", EVERYTHING) == {
        "tutor-chat": Decimal("12.500000000001"),
        "quiz": Decimal("0.5"),
    }
    assert spend_by(loaded, "Spend by tenant", EVERYTHING) == {
        "school-a": Decimal("10.750000000001"),
        "school-b": Decimal("2.25"),
    }
    assert spend_by(loaded, "Spend by model", EVERYTHING) == {
        "gpt-4o-mini": Decimal("10.250000000001"),
        "gemini-2.0-flash": Decimal("0.5"),
        "anthropic.claude-3-haiku-20240307-v1:0": Decimal("2.25"),
        "gpt-dashboard-test-unknown": Decimal("0"),
    }
    # the filters apply
    school_a = {"tenant": ["school-a"], "service": ALL, "provider": ALL}
    assert spend_by(loaded, "Spend by provider", school_a) == {
        "openai": Decimal("10.250000000001"),
        "gemini": Decimal("0.5"),
    }
    assert spend_by(loaded, "Spend by provider", {"tenant": ALL, "service": ["quiz"], "provider": ALL}) == {
        "gemini": Decimal("0.5")
    }
    assert spend_by(loaded, "Spend by provider", {"tenant": ALL, "service": ALL, "provider": ["bedrock"]}) == {
        "bedrock": Decimal("2.25")
    }
    # buckets are hours (the panel's minimum interval; never finer) at the bucket's start
    rows = run_panel(loaded, "Spend by provider", EVERYTHING, interval_s=60)
    assert [(at(time), provider, spend) for time, provider, spend in rows] == [
        ("2026-03-10 10:00:00", "gemini", Decimal("0.5")),
        ("2026-03-10 10:00:00", "openai", Decimal("1.250000000001")),
        ("2026-03-10 11:00:00", "bedrock", Decimal("2.25")),
        ("2026-03-10 11:00:00", "openai", Decimal("0")),
        ("2026-03-11 09:00:00", "openai", Decimal("9")),
    ]
    [(spend,)] = run(loaded, panel_sql(clickhouse_dashboard(), "Spend"), EVERYTHING)
    assert spend == total
    assert run(loaded, panel_sql(clickhouse_dashboard(), "Events"), EVERYTHING) == [(5,)]
    assert run(loaded, panel_sql(clickhouse_dashboard(), "Unpriced events"), EVERYTHING) == [(1,)]


def test_ingestion_volume_counts_events_per_interval(loaded: ClickHouse) -> None:
    sql = panel_sql(clickhouse_dashboard(), "Ingestion volume")
    rows = run(loaded, sql, EVERYTHING, interval_s=HOUR)
    assert [(at(time), events, unpriced) for time, events, unpriced in rows] == [
        ("2026-03-10 10:00:00", 2, 0),
        ("2026-03-10 11:00:00", 2, 1),
        ("2026-03-11 09:00:00", 1, 0),
    ]
    daily = run(loaded, sql, EVERYTHING, interval_s=86400)
    assert [(at(time), events) for time, events, _ in daily] == [
        ("2026-03-10 00:00:00", 4),
        ("2026-03-11 00:00:00", 1),
    ]
    school_b = run(loaded, sql, {"tenant": ["school-b"], "service": ALL, "provider": ALL})
    assert [(at(time), events, unpriced) for time, events, unpriced in school_b] == [("2026-03-10 11:00:00", 2, 1)]


def test_learner_budget_and_pricing_tables_show_the_ingested_data(loaded: ClickHouse) -> None:
    dashboard = clickhouse_dashboard()
    learners = run(loaded, panel_sql(dashboard, "Top learners"), EVERYTHING)
    assert [(tenant, learner, spend, events) for tenant, learner, spend, events, *_ in learners] == [
        ("school-a", "learner-1", Decimal("10.250000000001"), 2),
        ("school-b", "learner-3", Decimal("2.25"), 2),
        ("school-a", "learner-2", Decimal("0.5"), 1),
    ]
    [budget] = run(loaded, panel_sql(dashboard, "Budget utilisation"), EVERYTHING)
    assert budget[0] == "school-a two days"
    assert budget[6] == Decimal("20")  # limit
    assert budget[8] == 50  # highest threshold crossed: 10.75 of 20
    assert budget[9] == Decimal("53.75")
    assert budget[10] == Decimal("10.750000000001")
    assert run(loaded, panel_sql(dashboard, "Budget utilisation"), {"tenant": ["school-b"]}) == []
    alerts = run(loaded, panel_sql(dashboard, "Recent alerts"), EVERYTHING)
    assert [(row[1], row[5], row[6], row[12]) for row in alerts] == [("school-a two days", 50, "actual", "no_channels")]
    unpriced = run(loaded, panel_sql(dashboard, "Unpriced events by model"), EVERYTHING)
    assert [row[:4] for row in unpriced] == [("openai", "gpt-dashboard-test-unknown", "", 1)]


# -- the Prometheus dashboard ----------------------------------------------------------


def exported_metric_names() -> set[str]:
    """Every series name the service's registry can expose, by metric type."""
    importlib.import_module("service.app")  # registers every metric the app defines
    names: set[str] = set()
    for family in REGISTRY.collect():
        names |= series_names(family.name, family.type)
    return names


def series_names(name: str, kind: str) -> set[str]:
    if kind == "counter":
        base = name.removesuffix("_total")
        return {base + "_total", base + "_created"}
    if kind in {"histogram", "summary"}:
        return {name, name + "_bucket", name + "_sum", name + "_count", name + "_created"}
    return {name}


def test_prometheus_dashboard_names_only_metrics_the_service_exports_or_will_export() -> None:
    dashboard = prometheus_dashboard()
    expressions = [t["expr"] for p in panels_of(dashboard) for t in p.get("targets", [])]
    expressions += [variables_of(dashboard)["instance"]["query"]["query"]]
    referenced = {name for expr in expressions for name in re.findall(r"\bfinops_[a-z0-9_]+", expr)}
    exported = exported_metric_names()
    pending = {series: base for base, kind in PENDING_METRICS.items() for series in series_names(base, kind)}
    unknown = sorted(name for name in referenced if name not in exported and name not in pending)
    assert not unknown, f"the health dashboard names metrics nobody exports: {unknown}"
    unused = sorted(set(PENDING_METRICS) - {pending[name] for name in referenced if name in pending})
    assert not unused, f"PENDING_METRICS lists names the dashboard does not use: {unused}"
    # the metrics the service already exports are on the dashboard
    for name in (
        "finops_ingest_buffer_rows",
        "finops_ingest_flush_rows_bucket",
        "finops_ingest_flush_seconds_bucket",
        "finops_ingest_duplicates_total",
        "finops_unpriced_events_total",
        "finops_clickhouse_errors_total",
        "finops_job_runs_total",
        "finops_alert_deliveries_total",
    ):
        assert name in referenced, name
        assert name in exported, name
    for expr in expressions:
        assert expr.count("(") == expr.count(")"), expr
        for rate in re.findall(r"(?:rate|increase)\((finops_\w+)", expr):
            assert rate.endswith(("_total", "_bucket", "_sum", "_count")), f"rate() of a gauge in {expr}"


# -- provisioning -----------------------------------------------------------------------


def test_provisioning_points_grafana_at_the_compose_services_and_the_dashboards() -> None:
    yaml = importlib.import_module("yaml")
    sources = [
        source
        for path in sorted((DASHBOARDS / "provisioning" / "datasources").glob("*.yaml"))
        for source in yaml.safe_load(path.read_text())["datasources"]
    ]
    by_type = {source["type"]: source for source in sources}
    assert set(by_type) == {CLICKHOUSE_PLUGIN, "prometheus"}
    clickhouse = by_type[CLICKHOUSE_PLUGIN]["jsonData"]
    assert (clickhouse["host"], clickhouse["port"], clickhouse["protocol"]) == ("clickhouse", 8123, "http")
    assert clickhouse["defaultDatabase"] == "finops"
    assert by_type["prometheus"]["url"] == "http://prometheus:9090"
    [provider] = [
        provider
        for path in sorted((DASHBOARDS / "provisioning" / "dashboards").glob("*.yaml"))
        for provider in yaml.safe_load(path.read_text())["providers"]
    ]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
