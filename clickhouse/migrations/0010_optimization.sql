-- Cost optimization suggestions, cached. A run computes every suggestion for
-- one tenant (run_scope = the tenant) or for every tenant (run_scope = '*')
-- over a window of `window_days` ending at `window_end`; its suggestions are
-- the rows of optimization_suggestions with the same (window_days, run_scope,
-- computed_at). Readers take the newest run that covers them and decide
-- whether it is still fresh (service/optimization/service.py). Old runs expire.
CREATE TABLE IF NOT EXISTS {db:Identifier}.optimization_runs
(
    window_days  UInt16,
    run_scope    String,
    computed_at  DateTime64(3, 'UTC'),
    window_start DateTime64(3, 'UTC'),
    window_end   DateTime64(3, 'UTC'),
    suggestions  UInt32,
    seconds      Float64
)
ENGINE = MergeTree
ORDER BY (window_days, run_scope, computed_at)
TTL toDateTime(computed_at) + INTERVAL 7 DAY;

CREATE TABLE IF NOT EXISTS {db:Identifier}.optimization_suggestions
(
    window_days                   UInt16,
    run_scope                     String,
    computed_at                   DateTime64(3, 'UTC'),
    tenant_id                     LowCardinality(String),
    service                       String,
    suggestion_id                 String,
    kind                          LowCardinality(String),
    estimated_monthly_savings_usd Decimal(38, 12),
    body                          String
)
ENGINE = MergeTree
ORDER BY (window_days, run_scope, computed_at, tenant_id, service)
TTL toDateTime(computed_at) + INTERVAL 7 DAY;
