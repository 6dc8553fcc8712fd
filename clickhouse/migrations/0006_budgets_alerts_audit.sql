-- Budgets: every change is a new version; a delete is a version with
-- is_deleted = 1. Read with FINAL. Empty scope fields mean "any".
CREATE TABLE IF NOT EXISTS {db:Identifier}.budgets
(
    budget_id    String,
    name         String,
    tenant_id    String,
    service      String,
    learner_id   String,
    per_learner  Bool,
    period       Enum8('daily' = 1, 'weekly' = 2, 'monthly' = 3, 'quarterly' = 4, 'yearly' = 5, 'custom' = 6),
    timezone     String,
    period_start Nullable(DateTime64(3, 'UTC')),
    period_end   Nullable(DateTime64(3, 'UTC')),
    limit_usd    Decimal(38, 12),
    thresholds   String,
    channels     String,
    enabled      Bool,
    created_at   DateTime64(3, 'UTC'),
    created_by   String,
    updated_at   DateTime64(3, 'UTC'),
    updated_by   String,
    version      UInt64,
    is_deleted   UInt8
)
ENGINE = ReplacingMergeTree(version, is_deleted)
ORDER BY budget_id;

-- One row per (budget, period, threshold, kind, limit[, learner]) that fired;
-- alert_id is derived from those, so concurrent evaluators write the same row.
CREATE TABLE IF NOT EXISTS {db:Identifier}.budget_alerts
(
    alert_id          String,
    budget_id         String,
    budget_name       String,
    tenant_id         String,
    service           String,
    learner_id        String,
    period_start      DateTime64(3, 'UTC'),
    period_end        DateTime64(3, 'UTC'),
    threshold_percent UInt32,
    kind              Enum8('actual' = 1, 'forecast' = 2),
    spend_usd         Decimal(38, 12),
    forecast_usd      Decimal(38, 12),
    limit_usd         Decimal(38, 12),
    percent_used      Decimal(18, 4),
    state             Enum8('active' = 1, 'resolved' = 2),
    delivery_state    Enum8('pending' = 1, 'delivered' = 2, 'failed' = 3, 'no_channels' = 4),
    created_at        DateTime64(3, 'UTC'),
    updated_at        DateTime64(3, 'UTC'),
    version           UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY alert_id;

-- Who changed what.
CREATE TABLE IF NOT EXISTS {db:Identifier}.audit_log
(
    event_time  DateTime64(3, 'UTC'),
    request_id  String,
    actor       String,
    role        LowCardinality(String),
    tenant_id   String,
    action      LowCardinality(String),
    target_type LowCardinality(String),
    target_id   String,
    before      String,
    after       String
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (tenant_id, event_time);
