"""Prometheus metrics with fixed, low-cardinality label names."""

from __future__ import annotations

from litestar import Response, get
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

CLICKHOUSE_QUERY_SECONDS = Histogram(
    "finops_clickhouse_query_seconds",
    "ClickHouse call latency by query label.",
    ["label"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
CLICKHOUSE_ERRORS = Counter(
    "finops_clickhouse_errors_total", "ClickHouse calls that raised, by query label.", ["label"]
)
HTTP_REQUESTS = Counter(
    "finops_http_requests_total", "HTTP requests by route template, method and status.", ["route", "method", "status"]
)
HTTP_REQUEST_SECONDS = Histogram(
    "finops_http_request_duration_seconds",
    "HTTP request latency by route template and method.",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RATE_LIMITED = Counter("finops_rate_limited_total", "Requests refused by a rate limit, by route group.", ["group"])
INGEST_BUFFER_ROWS = Gauge("finops_ingest_buffer_rows", "Events waiting in the group-commit buffer.")
INGEST_FLUSH_ROWS = Histogram(
    "finops_ingest_flush_rows",
    "Events written per group-commit INSERT.",
    buckets=(1, 5, 10, 50, 100, 500, 1000, 5000, 10000, 50000),
)
INGEST_FLUSH_SECONDS = Histogram(
    "finops_ingest_flush_seconds",
    "Time to deduplicate and write one group-commit batch.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
INGEST_JOURNAL_ROWS = Gauge(
    "finops_ingest_journal_rows", "Acknowledged events in the ingest journal, not yet in ClickHouse."
)
INGEST_MOVE_ROWS = Histogram(
    "finops_ingest_move_rows",
    "Events moved from the ingest journal into ClickHouse per move.",
    buckets=(1, 10, 100, 1000, 5000, 10000, 50000, 100000),
)
INGEST_MOVE_SECONDS = Histogram(
    "finops_ingest_move_seconds",
    "Time to INSERT one move of journaled events into ClickHouse.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
INGEST_MOVE_FAILURES = Counter(
    "finops_ingest_move_failures_total", "Moves of journaled events into ClickHouse that failed (and are retried)."
)
INGEST_EVENTS = Counter("finops_ingest_events_total", "Events stored, by pricing status.", ["pricing_status"])
INGEST_DUPLICATES = Counter("finops_ingest_duplicates_total", "Events dropped as repeats of a stored event_id.")
INGEST_REJECTED = Counter("finops_ingest_rejected_total", "Requests refused because the buffer was full.")
UNPRICED_EVENTS = Counter("finops_unpriced_events_total", "Events stored without a price, by provider.", ["provider"])


ALERT_DELIVERIES = Counter(
    "finops_alert_deliveries_total",
    "Alert delivery attempts by channel type and outcome (delivered, retrying, failed).",
    ["channel", "outcome"],
)
PRICING_RUNS = Counter(
    "finops_pricing_runs_total", "Price source runs by source and outcome (ok, failed).", ["source", "outcome"]
)
JOB_RUNS = Counter("finops_job_runs_total", "Background job runs by job and outcome.", ["job", "outcome"])
JOB_SECONDS = Histogram(
    "finops_job_seconds",
    "Background job run time.",
    ["job"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)


@get(
    "/metrics",
    operation_id="metrics",
    exclude_from_auth=True,
    media_type=CONTENT_TYPE_LATEST,
    summary="Prometheus metrics",
    description="Per-process operational metrics in the Prometheus text format. Auth: none.",
    tags=["operations"],
    sync_to_thread=False,
)
def metrics() -> Response[bytes]:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
