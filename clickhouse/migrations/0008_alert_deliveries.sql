-- The channels an alert is to be delivered to (stable keys, see
-- service/alerts/channels.py), fixed when the alert fires.
ALTER TABLE {db:Identifier}.budget_alerts ADD COLUMN IF NOT EXISTS channel_keys Array(String) AFTER delivery_state;

-- One row per delivery attempt and alert: a digest that covers 40 alerts
-- writes 40 rows per attempt, all with the same delivery_id. Targets are
-- masked; secrets are never written here.
CREATE TABLE IF NOT EXISTS {db:Identifier}.alert_deliveries
(
    delivery_id       String,
    alert_id          String,
    budget_id         String,
    tenant_id         String,
    channel_key       String,
    channel_type      LowCardinality(String),
    target            String,
    threshold_percent UInt32,
    kind              LowCardinality(String),
    attempt           UInt16,
    status            Enum8('delivered' = 1, 'retrying' = 2, 'failed' = 3),
    response_code     UInt16,
    error             String,
    digest_size       UInt32,
    is_test           Bool,
    attempted_at      DateTime64(3, 'UTC')
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(attempted_at)
ORDER BY (alert_id, channel_key, attempted_at);
