-- Effective-dated provider prices. A price change is a new row with a later
-- effective_from; `version` only orders edits of the same row (quarantine,
-- retraction). Read with FINAL. Rates are USD per unit named by the column.
CREATE TABLE IF NOT EXISTS {db:Identifier}.provider_pricing
(
    provider                   LowCardinality(String),
    model                      String,
    region                     LowCardinality(String),
    effective_from             DateTime64(3, 'UTC'),
    aliases                    Array(String),
    input_per_mtok             Nullable(Decimal(18, 9)),
    output_per_mtok            Nullable(Decimal(18, 9)),
    cached_input_per_mtok      Nullable(Decimal(18, 9)),
    cache_write_per_mtok       Nullable(Decimal(18, 9)),
    input_per_kchar            Nullable(Decimal(18, 9)),
    output_per_kchar           Nullable(Decimal(18, 9)),
    per_image                  Nullable(Decimal(18, 9)),
    batch_discount_pct         Nullable(Decimal(9, 4)),
    long_context_threshold     Nullable(UInt64),
    lc_input_per_mtok          Nullable(Decimal(18, 9)),
    lc_output_per_mtok         Nullable(Decimal(18, 9)),
    lc_cached_input_per_mtok   Nullable(Decimal(18, 9)),
    lc_input_per_kchar         Nullable(Decimal(18, 9)),
    lc_output_per_kchar        Nullable(Decimal(18, 9)),
    lc_per_image               Nullable(Decimal(18, 9)),
    source                     String,
    origin                     LowCardinality(String),
    version                    UInt64,
    is_deleted                 UInt8 DEFAULT 0,
    updated_at                 DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(version, is_deleted)
ORDER BY (provider, model, region, effective_from);
