-- When each daily rollup row last received an event, so readers of
-- pre-computed summaries can tell whether a day changed after the summary
-- was computed. A SimpleAggregateFunction(max) column keeps its maximum when
-- SummingMergeTree merges rows.
ALTER TABLE {db:Identifier}.usage_daily
    ADD COLUMN IF NOT EXISTS last_received_at SimpleAggregateFunction(max, DateTime64(3, 'UTC'))
    DEFAULT toDateTime64(0, 3, 'UTC');

ALTER TABLE {db:Identifier}.usage_daily_mv MODIFY QUERY
SELECT
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
    toDecimal128(sum(ifNull(cost_usd, toDecimal64(0, 12))), 12) AS cost_usd,
    max(received_at) AS last_received_at
FROM {db:Identifier}.usage_events
GROUP BY bucket, tenant_id, service, provider, model, region, learner_id;
