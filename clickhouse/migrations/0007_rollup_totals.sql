-- Hourly and daily rollups without the learner: by tenant, service, provider,
-- model and region only. Most cost questions (by service, summaries, budgets
-- that name no learner) never group or filter by learner, and with many
-- learners the learner-keyed rollups hold nearly as many rows as the raw
-- events. Readers pick these whenever no learner is involved.
CREATE TABLE IF NOT EXISTS {db:Identifier}.usage_hourly_totals
(
    bucket              DateTime('UTC'),
    tenant_id           LowCardinality(String),
    service             LowCardinality(String),
    provider            LowCardinality(String),
    model               LowCardinality(String),
    region              LowCardinality(String),
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
ORDER BY (tenant_id, service, bucket, provider, model, region);

CREATE TABLE IF NOT EXISTS {db:Identifier}.usage_daily_totals
(
    bucket              Date,
    tenant_id           LowCardinality(String),
    service             LowCardinality(String),
    provider            LowCardinality(String),
    model               LowCardinality(String),
    region              LowCardinality(String),
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
    last_received_at    SimpleAggregateFunction(max, DateTime64(3, 'UTC'))
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(bucket)
ORDER BY (tenant_id, service, bucket, provider, model, region);

-- Backfill from the learner-keyed rollups once, while the new tables are empty.
INSERT INTO {db:Identifier}.usage_hourly_totals
SELECT bucket, tenant_id, service, provider, model, region,
       sum(events), sum(unpriced_events), sum(input_tokens), sum(output_tokens), sum(cached_input_tokens),
       sum(cache_write_tokens), sum(input_characters), sum(output_characters), sum(images), sum(cost_usd)
FROM {db:Identifier}.usage_hourly
WHERE (SELECT count() FROM {db:Identifier}.usage_hourly_totals) = 0
GROUP BY bucket, tenant_id, service, provider, model, region;

INSERT INTO {db:Identifier}.usage_daily_totals
SELECT bucket, tenant_id, service, provider, model, region,
       sum(events), sum(unpriced_events), sum(input_tokens), sum(output_tokens), sum(cached_input_tokens),
       sum(cache_write_tokens), sum(input_characters), sum(output_characters), sum(images), sum(cost_usd),
       max(last_received_at)
FROM {db:Identifier}.usage_daily
WHERE (SELECT count() FROM {db:Identifier}.usage_daily_totals) = 0
GROUP BY bucket, tenant_id, service, provider, model, region;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db:Identifier}.usage_hourly_totals_mv
TO {db:Identifier}.usage_hourly_totals
AS SELECT
    toStartOfHour(event_time) AS bucket,
    tenant_id, service, provider, model, region,
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
GROUP BY bucket, tenant_id, service, provider, model, region;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db:Identifier}.usage_daily_totals_mv
TO {db:Identifier}.usage_daily_totals
AS SELECT
    toDate(event_time) AS bucket,
    tenant_id, service, provider, model, region,
    countIf(record_type = 'usage') AS events,
    sumIf(toUInt64(1), record_type = 'usage' AND pricing_status = 'unpriced') AS unpriced_events,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(cached_input_tokens) AS cached_input_tokens,
    sum(cache_write_tokens) AS cache_write_tokens,
    sum(input_characters) AS input_characters,
    sum(output_characters) AS output_characters,
    sum(images) AS images,
    toDecimal128(sum(ifNull(cost_usd, toDecimal64(0, 12))), 12) AS cost_usd,
    max(received_at) AS last_received_at
FROM {db:Identifier}.usage_events
GROUP BY bucket, tenant_id, service, provider, model, region;
