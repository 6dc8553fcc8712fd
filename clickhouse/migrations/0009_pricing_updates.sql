-- Price updates and repricing.
--
-- Repricing appends correction rows to usage_events (record_type 'correction',
-- corrects_event_id = the original, zero counts, cost_usd = the cost delta).
-- A correction that prices an event stored unpriced carries
-- metadata['resolves_unpriced'] = '1' and takes that event out of the unpriced
-- count, so the rollups' unpriced_events become signed.

ALTER TABLE {db:Identifier}.usage_hourly MODIFY COLUMN unpriced_events Int64;

ALTER TABLE {db:Identifier}.usage_daily MODIFY COLUMN unpriced_events Int64;

ALTER TABLE {db:Identifier}.usage_hourly_totals MODIFY COLUMN unpriced_events Int64;

ALTER TABLE {db:Identifier}.usage_daily_totals MODIFY COLUMN unpriced_events Int64;

ALTER TABLE {db:Identifier}.usage_hourly_mv MODIFY QUERY
SELECT
    toStartOfHour(event_time) AS bucket,
    tenant_id, service, provider, model, region, learner_id,
    countIf(record_type = 'usage') AS events,
    toInt64(countIf(record_type = 'usage' AND pricing_status = 'unpriced'))
        - toInt64(countIf(record_type = 'correction' AND metadata['resolves_unpriced'] = '1')) AS unpriced_events,
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

ALTER TABLE {db:Identifier}.usage_daily_mv MODIFY QUERY
SELECT
    toDate(event_time) AS bucket,
    tenant_id, service, provider, model, region, learner_id,
    countIf(record_type = 'usage') AS events,
    toInt64(countIf(record_type = 'usage' AND pricing_status = 'unpriced'))
        - toInt64(countIf(record_type = 'correction' AND metadata['resolves_unpriced'] = '1')) AS unpriced_events,
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
GROUP BY bucket, tenant_id, service, provider, model, region, learner_id;

ALTER TABLE {db:Identifier}.usage_hourly_totals_mv MODIFY QUERY
SELECT
    toStartOfHour(event_time) AS bucket,
    tenant_id, service, provider, model, region,
    countIf(record_type = 'usage') AS events,
    toInt64(countIf(record_type = 'usage' AND pricing_status = 'unpriced'))
        - toInt64(countIf(record_type = 'correction' AND metadata['resolves_unpriced'] = '1')) AS unpriced_events,
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

ALTER TABLE {db:Identifier}.usage_daily_totals_mv MODIFY QUERY
SELECT
    toDate(event_time) AS bucket,
    tenant_id, service, provider, model, region,
    countIf(record_type = 'usage') AS events,
    toInt64(countIf(record_type = 'usage' AND pricing_status = 'unpriced'))
        - toInt64(countIf(record_type = 'correction' AND metadata['resolves_unpriced'] = '1')) AS unpriced_events,
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

-- Every run of a price source: what it saw and did, or why it failed.
CREATE TABLE IF NOT EXISTS {db:Identifier}.pricing_runs
(
    run_id       String,
    source       LowCardinality(String),
    started_at   DateTime64(3, 'UTC'),
    finished_at  DateTime64(3, 'UTC'),
    status       Enum8('ok' = 1, 'failed' = 2),
    prices_seen  UInt32,
    added        UInt32,
    changed      UInt32,
    quarantined  UInt32,
    unchanged    UInt32,
    discovered   UInt32,
    error        String
)
ENGINE = MergeTree
ORDER BY (source, started_at);

-- Each price a run added, changed or quarantined (with the figures before and after).
CREATE TABLE IF NOT EXISTS {db:Identifier}.pricing_changes
(
    run_id         String,
    source         LowCardinality(String),
    change         Enum8('added' = 1, 'changed' = 2, 'quarantined' = 3, 'imported' = 4, 'override' = 5),
    provider       LowCardinality(String),
    model          String,
    region         LowCardinality(String),
    tenant_id      String,
    effective_from DateTime64(3, 'UTC'),
    before         String,
    after          String,
    reason         String,
    created_at     DateTime64(3, 'UTC')
)
ENGINE = MergeTree
ORDER BY (created_at, provider, model);

-- Tenant-specific negotiated prices: a catalog entry for one tenant, or a
-- discount off the list price. Applied at ingest for that tenant.
CREATE TABLE IF NOT EXISTS {db:Identifier}.pricing_overrides
(
    tenant_id      String,
    provider       LowCardinality(String),
    model          String,
    region         LowCardinality(String),
    effective_from DateTime64(3, 'UTC'),
    discount_pct   Nullable(Decimal(9, 4)),
    price          String,
    created_by     String,
    created_at     DateTime64(3, 'UTC'),
    version        UInt64,
    is_deleted     UInt8
)
ENGINE = ReplacingMergeTree(version, is_deleted)
ORDER BY (tenant_id, provider, model, region, effective_from);
