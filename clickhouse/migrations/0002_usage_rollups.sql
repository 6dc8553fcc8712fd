-- Hourly and daily rollups by tenant, service, learner, provider, model and
-- region. SummingMergeTree folds rows in background merges, so readers always
-- aggregate with sum() ... GROUP BY: unmerged rows are normal.
CREATE TABLE IF NOT EXISTS {db:Identifier}.usage_hourly
(
    bucket              DateTime('UTC'),
    tenant_id           LowCardinality(String),
    service             LowCardinality(String),
    provider            LowCardinality(String),
    model               LowCardinality(String),
    region              LowCardinality(String),
    learner_id          String,
    events              UInt64,
    unpriced_events     UInt64,
    input_tokens        UInt64,
    output_tokens       UInt64,
    cached_input_tokens UInt64,
    cache_write_tokens  UInt64,
    input_characters    UInt64,
    output_characters   UInt64,
    images              UInt64,
    cost_usd            Decimal(38, 12)
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(bucket)
ORDER BY (tenant_id, service, bucket, provider, model, region, learner_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db:Identifier}.usage_hourly_mv
TO {db:Identifier}.usage_hourly
AS SELECT
    toStartOfHour(event_time) AS bucket,
    tenant_id, service, provider, model, region, learner_id,
    countIf(record_type = 'usage') AS events,
    sumIf(toUInt64(1), record_type = 'usage' AND pricing_status = 'unpriced') AS unpriced_events,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(cached_input_tokens) AS cached_input_tokens,
    sum(cache_write_tokens) AS cache_write_tokens,
    sum(input_characters) AS input_characters,
    sum(output_characters) AS output_characters,
    sum(images) AS images,
    toDecimal128(sum(ifNull(cost_usd, toDecimal64(0, 12))), 12) AS cost_usd
FROM {db:Identifier}.usage_events
GROUP BY bucket, tenant_id, service, provider, model, region, learner_id;

CREATE TABLE IF NOT EXISTS {db:Identifier}.usage_daily
(
    bucket              Date,
    tenant_id           LowCardinality(String),
    service             LowCardinality(String),
    provider            LowCardinality(String),
    model               LowCardinality(String),
    region              LowCardinality(String),
    learner_id          String,
    events              UInt64,
    unpriced_events     UInt64,
    input_tokens        UInt64,
    output_tokens       UInt64,
    cached_input_tokens UInt64,
    cache_write_tokens  UInt64,
    input_characters    UInt64,
    output_characters   UInt64,
    images              UInt64,
    cost_usd            Decimal(38, 12)
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(bucket)
ORDER BY (tenant_id, service, bucket, provider, model, region, learner_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db:Identifier}.usage_daily_mv
TO {db:Identifier}.usage_daily
AS SELECT
    toDate(event_time) AS bucket,
    tenant_id, service, provider, model, region, learner_id,
    countIf(record_type = 'usage') AS events,
    sumIf(toUInt64(1), record_type = 'usage' AND pricing_status = 'unpriced') AS unpriced_events,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(cached_input_tokens) AS cached_input_tokens,
    sum(cache_write_tokens) AS cache_write_tokens,
    sum(input_characters) AS input_characters,
    sum(output_characters) AS output_characters,
    sum(images) AS images,
    toDecimal128(sum(ifNull(cost_usd, toDecimal64(0, 12))), 12) AS cost_usd
FROM {db:Identifier}.usage_events
GROUP BY bucket, tenant_id, service, provider, model, region, learner_id;
