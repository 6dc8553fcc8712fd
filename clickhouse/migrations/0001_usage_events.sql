-- Raw usage: one row per reported inference call (record_type 'usage'), plus
-- correction rows that carry a cost delta for an earlier row (record_type
-- 'correction'; written by repricing). Append-only.
CREATE TABLE IF NOT EXISTS {db:Identifier}.usage_events
(
    event_id            String,
    event_time          DateTime64(3, 'UTC'),
    received_at         DateTime64(3, 'UTC'),
    tenant_id           LowCardinality(String),
    service             LowCardinality(String),
    learner_id          String,
    provider            LowCardinality(String),
    model               LowCardinality(String),
    region              LowCardinality(String),
    input_tokens        UInt64,
    output_tokens       UInt64,
    cached_input_tokens UInt64,
    cache_write_tokens  UInt64,
    input_characters    UInt64,
    output_characters   UInt64,
    images              UInt64,
    batch               Bool,
    cost_usd            Nullable(Decimal(18, 12)),
    pricing_status      Enum8('priced' = 1, 'provided' = 2, 'unpriced' = 3),
    price_version       String,
    metadata            Map(String, String),
    record_type         Enum8('usage' = 1, 'correction' = 2) DEFAULT 'usage',
    corrects_event_id   String DEFAULT '',
    INDEX idx_event_id event_id TYPE bloom_filter(0.001) GRANULARITY 4
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (tenant_id, service, toStartOfHour(event_time), learner_id, event_time, event_id);

-- Idempotency keys, written by the same INSERT as the event (through the
-- materialized view below), ordered for point look-ups by (tenant, event_id).
CREATE TABLE IF NOT EXISTS {db:Identifier}.usage_event_keys
(
    tenant_id   LowCardinality(String),
    event_id    String,
    event_time  DateTime64(3, 'UTC'),
    received_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (tenant_id, event_id)
TTL toDateTime(received_at) + INTERVAL 35 DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db:Identifier}.usage_event_keys_mv
TO {db:Identifier}.usage_event_keys
AS SELECT tenant_id, event_id, event_time, received_at
FROM {db:Identifier}.usage_events
WHERE record_type = 'usage';
