-- Cost per learner without the service, provider, model or region: one row
-- per (tenant, learner, UTC calendar period) at three grains, day, week (from
-- Monday) and month, all written by one materialized view (each event counts
-- once in each grain). Questions about learners that filter on nothing but
-- the tenant and the learner (by-learner rankings, learner budgets) read whole
-- months, then whole weeks, then whole days from here: a few rows per learner
-- instead of one per learner, day, service, provider, model and region in
-- usage_daily. Corrections count as in the other rollups: their cost is a
-- delta, their counts are zero, and one that prices an unpriced event takes
-- it out of unpriced_events (signed).
CREATE TABLE IF NOT EXISTS {db:Identifier}.usage_learner_rollup
(
    grain               Enum8('day' = 1, 'week' = 2, 'month' = 3),
    bucket              Date,
    tenant_id           LowCardinality(String),
    learner_id          String,
    events              UInt64,
    unpriced_events     Int64,
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
ORDER BY (tenant_id, grain, bucket, learner_id);

-- Backfill from usage_daily once, while the new table is empty (stop ingest
-- meanwhile on a shared server, as for 0007).
INSERT INTO {db:Identifier}.usage_learner_rollup
SELECT period.1 AS grain, period.2 AS period_start, tenant_id, learner_id,
       sum(events), sum(unpriced_events), sum(input_tokens), sum(output_tokens), sum(cached_input_tokens),
       sum(cache_write_tokens), sum(input_characters), sum(output_characters), sum(images), sum(cost_usd)
FROM
(
    SELECT arrayJoin([('day', bucket), ('week', toMonday(bucket)), ('month', toStartOfMonth(bucket))]) AS period,
           tenant_id, learner_id, events, unpriced_events, input_tokens, output_tokens, cached_input_tokens,
           cache_write_tokens, input_characters, output_characters, images, cost_usd
    FROM {db:Identifier}.usage_daily
)
WHERE (SELECT count() FROM {db:Identifier}.usage_learner_rollup) = 0
GROUP BY grain, period_start, tenant_id, learner_id;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db:Identifier}.usage_learner_rollup_mv
TO {db:Identifier}.usage_learner_rollup
AS SELECT
    period.1 AS grain,
    period.2 AS bucket,
    tenant_id, learner_id,
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
FROM
(
    SELECT
        arrayJoin([
            ('day', toDate(event_time)), ('week', toMonday(event_time)), ('month', toStartOfMonth(event_time))
        ]) AS period,
        tenant_id, learner_id, record_type, pricing_status, metadata, input_tokens, output_tokens,
        cached_input_tokens, cache_write_tokens, input_characters, output_characters, images, cost_usd
    FROM {db:Identifier}.usage_events
)
GROUP BY grain, bucket, tenant_id, learner_id;

-- Whether a row is a correction that prices an event stored unpriced (it takes
-- that event out of unpriced_events), kept beside the row so that readers of
-- the raw events need not read `metadata`.
ALTER TABLE {db:Identifier}.usage_events
    ADD COLUMN IF NOT EXISTS resolves_unpriced UInt8
    MATERIALIZED record_type = 'correction' AND metadata['resolves_unpriced'] = '1';

-- The raw events again, ordered by time, for the partial hours at the edges of a
-- range: usage_events is ordered by tenant, service and hour, so even a few
-- minutes of it read at least one granule (8192 rows) per tenant and service.
-- It holds every column a cost question reads. Parts written before this
-- migration get it in the background; until then readers use the table itself.
ALTER TABLE {db:Identifier}.usage_events
    ADD PROJECTION IF NOT EXISTS events_by_time
    (
        SELECT event_time, tenant_id, service, learner_id, provider, model, region, record_type, pricing_status,
               resolves_unpriced, input_tokens, output_tokens, cached_input_tokens, cache_write_tokens,
               input_characters, output_characters, images, cost_usd
        ORDER BY event_time
    );

ALTER TABLE {db:Identifier}.usage_events MATERIALIZE PROJECTION events_by_time;
