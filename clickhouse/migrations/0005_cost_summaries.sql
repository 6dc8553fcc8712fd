-- Pre-computed UTC calendar periods (day, week from Monday, month) per tenant,
-- service, provider and model, refreshed from usage_daily by the cost summary
-- job. A row is exact for every event received before the watermark of the
-- run that wrote it (cost_summary_runs); events received later for the same
-- period show after the next run. Newest computed_at wins; read with FINAL.
CREATE TABLE IF NOT EXISTS {db:Identifier}.cost_summaries
(
    period          Enum8('day' = 1, 'week' = 2, 'month' = 3),
    period_start    Date,
    tenant_id       LowCardinality(String),
    service         LowCardinality(String),
    provider        LowCardinality(String),
    model           LowCardinality(String),
    events              UInt64,
    unpriced_events     UInt64,
    input_tokens        UInt64,
    output_tokens       UInt64,
    cached_input_tokens UInt64,
    cache_write_tokens  UInt64,
    input_characters    UInt64,
    output_characters   UInt64,
    images              UInt64,
    cost_usd            Decimal(38, 12),
    computed_at         DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(computed_at)
ORDER BY (period, tenant_id, period_start, service, provider, model);

CREATE TABLE IF NOT EXISTS {db:Identifier}.cost_summary_runs
(
    started_at  DateTime64(3, 'UTC'),
    watermark   DateTime64(3, 'UTC'),
    days        UInt32,
    rows        UInt64,
    finished_at DateTime64(3, 'UTC')
)
ENGINE = MergeTree
ORDER BY started_at;
