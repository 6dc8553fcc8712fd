"""Typed settings, each read once from a named environment variable."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

TRUE_VALUES = frozenset({"1", "true", "yes", "on"})
FALSE_VALUES = frozenset({"0", "false", "no", "off", ""})


class SettingsError(ValueError):
    """An environment variable holds a value the service cannot use."""


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in TRUE_VALUES:
        return True
    if value in FALSE_VALUES:
        return False
    raise SettingsError(f"{name}={raw!r} is not a boolean (use true or false)")


def _int(name: str, default: int, minimum: int = 0) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}={raw!r} is not an integer") from exc
    if value < minimum:
        raise SettingsError(f"{name}={value} is below the minimum {minimum}")
    return value


def default_clickhouse_url() -> str:
    """The embedded engine under ./data/clickhouse of the working directory."""
    return "chdb://" + str(Path.cwd() / "data" / "clickhouse")


@dataclass(frozen=True)
class ServerSettings:
    host: str = field(default_factory=lambda: _env("HOST", "127.0.0.1"))
    """Address `finops serve` binds to (HOST)."""
    port: int = field(default_factory=lambda: _int("PORT", 8080, minimum=1))
    """Port `finops serve` listens on (PORT)."""
    environment: str = field(default_factory=lambda: _env("FINOPS_ENV", "production"))
    """`development` relaxes start-up checks such as a missing JWT_SECRET (FINOPS_ENV)."""
    api_url: str = field(default_factory=lambda: _env("FINOPS_API_URL", "http://127.0.0.1:8080"))
    """Where CLI commands look for a running service (FINOPS_API_URL)."""

    @property
    def development(self) -> bool:
        return self.environment == "development"


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = field(default_factory=lambda: _env("CLICKHOUSE_URL", default_clickhouse_url()))
    """`chdb:///abs/path` (embedded) or `http(s)://user:pass@host:8123/db` (CLICKHOUSE_URL)."""
    database: str = field(default_factory=lambda: _env("CLICKHOUSE_DATABASE", "finops"))
    """Database for the embedded engine, or when the URL names none (CLICKHOUSE_DATABASE)."""
    pool_size: int = field(default_factory=lambda: _int("DATABASE_POOL_SIZE", 4, minimum=1))
    """ClickHouse clients kept open for concurrent queries (DATABASE_POOL_SIZE)."""
    max_overflow: int = field(default_factory=lambda: _int("DATABASE_MAX_OVERFLOW", 4))
    """Extra short-lived clients allowed under load beyond the pool (DATABASE_MAX_OVERFLOW)."""
    query_timeout_s: int = field(default_factory=lambda: _int("CLICKHOUSE_QUERY_TIMEOUT", 30, minimum=1))
    """Per-query execution limit in seconds (CLICKHOUSE_QUERY_TIMEOUT)."""


@dataclass(frozen=True)
class AuthSettings:
    jwt_secret: str = field(default_factory=lambda: _env("JWT_SECRET", ""))
    """HMAC secret for signing and verifying tokens (JWT_SECRET). Required outside development."""
    jwt_algorithm: str = field(default_factory=lambda: _env("JWT_ALGORITHM", "HS256"))
    """JWT_ALGORITHM: HS256, HS384 or HS512."""
    jwt_expiration_minutes: int = field(default_factory=lambda: _int("JWT_EXPIRATION_MINUTES", 60, minimum=1))
    """Lifetime of tokens issued by `finops token` (JWT_EXPIRATION_MINUTES)."""


@dataclass(frozen=True)
class IngestSettings:
    flush_interval_ms: int = field(default_factory=lambda: _int("INGEST_FLUSH_INTERVAL_MS", 5, minimum=0))
    """How long the idle flusher gathers rows after the first arrives before it writes; at most 50
    (INGEST_FLUSH_INTERVAL_MS). Rows that arrive while a write runs form the next batch."""
    flush_max_rows: int = field(default_factory=lambda: _int("INGEST_FLUSH_MAX_ROWS", 20000, minimum=1))
    """Rows per INSERT at most; a single batch request is never split (INGEST_FLUSH_MAX_ROWS)."""
    max_concurrent_writes: int = field(default_factory=lambda: _int("INGEST_MAX_CONCURRENT_WRITES", 2, minimum=1))
    """Group-commit INSERTs in flight at once; the next batch gathers meanwhile
    (INGEST_MAX_CONCURRENT_WRITES)."""
    buffer_max_rows: int = field(default_factory=lambda: _int("INGEST_BUFFER_MAX_ROWS", 100000, minimum=1))
    """Rows waiting for a write, or in the ingest journal waiting for a move, at most; beyond it
    requests get 503 (INGEST_BUFFER_MAX_ROWS)."""
    journal: bool = field(default_factory=lambda: _bool("INGEST_JOURNAL", True))
    """With the embedded engine, acknowledge events once they are in the ingest journal on
    local disk and INSERT the journal into ClickHouse in larger moves (INGEST_JOURNAL).
    Off, or with a ClickHouse server, each group-commit batch is its own INSERT."""
    journal_dir: str = field(default_factory=lambda: _env("INGEST_JOURNAL_DIR", ""))
    """Directory of the ingest journal; default: `<engine path>-journal/<database>` (INGEST_JOURNAL_DIR)."""
    move_interval_ms: int = field(default_factory=lambda: _int("INGEST_MOVE_INTERVAL_MS", 500, minimum=0))
    """Under load, the journal moves into ClickHouse at most once per this many ms; an idle
    service moves at once, and a read moves first what was acknowledged before it
    (INGEST_MOVE_INTERVAL_MS)."""
    max_batch_events: int = field(default_factory=lambda: _int("INGEST_MAX_BATCH_EVENTS", 10000, minimum=1))
    """Events accepted in one POST /usage-events/batch (INGEST_MAX_BATCH_EVENTS)."""
    bedrock_default_region: str = field(default_factory=lambda: _env("BEDROCK_DEFAULT_REGION", "us-east-1"))
    """Region used to price Bedrock events that name none (BEDROCK_DEFAULT_REGION)."""


@dataclass(frozen=True)
class CostSettings:
    max_range_days: int = field(default_factory=lambda: _int("COST_QUERY_MAX_DAYS", 732, minimum=1))
    """Longest range a cost query may span (COST_QUERY_MAX_DAYS)."""
    aggregation_interval_s: int = field(default_factory=lambda: _int("COST_AGGREGATION_INTERVAL", 3600, minimum=1))
    """Seconds between refreshes of `cost_summaries` (COST_AGGREGATION_INTERVAL)."""
    summary_slack_s: int = field(default_factory=lambda: _int("COST_SUMMARY_SLACK_SECONDS", 60))
    """Longest delay between accepting an event and its write landing; summaries distrust
    that much before their watermark (COST_SUMMARY_SLACK_SECONDS)."""


@dataclass(frozen=True)
class BudgetSettings:
    check_interval_s: int = field(default_factory=lambda: _int("BUDGET_CHECK_INTERVAL", 300, minimum=1))
    """Seconds between scheduled evaluations of every budget (BUDGET_CHECK_INTERVAL)."""
    trigger_delay_ms: int = field(default_factory=lambda: _int("BUDGET_TRIGGER_DELAY_MS", 250))
    """After ingest touches a budget's scope, evaluation runs this soon, once for all writes
    meanwhile (BUDGET_TRIGGER_DELAY_MS)."""


@dataclass(frozen=True)
class AlertSettings:
    sendgrid_api_key: str = field(default_factory=lambda: _env("SENDGRID_API_KEY", ""))
    """API key for email alerts through SendGrid (SENDGRID_API_KEY)."""
    sendgrid_api_host: str = field(default_factory=lambda: _env("SENDGRID_API_HOST", "https://api.sendgrid.com"))
    """SendGrid API base URL (SENDGRID_API_HOST)."""
    email_from: str = field(default_factory=lambda: _env("ALERT_EMAIL_FROM", ""))
    """Sender address of alert emails (ALERT_EMAIL_FROM)."""
    slack_webhook_url: str = field(default_factory=lambda: _env("SLACK_WEBHOOK_URL", ""))
    """Slack incoming webhook used by Slack channels that name none (SLACK_WEBHOOK_URL)."""
    twilio_account_sid: str = field(default_factory=lambda: _env("TWILIO_ACCOUNT_SID", ""))
    """Twilio account for SMS alerts (TWILIO_ACCOUNT_SID)."""
    twilio_auth_token: str = field(default_factory=lambda: _env("TWILIO_AUTH_TOKEN", ""))
    """Twilio auth token (TWILIO_AUTH_TOKEN)."""
    twilio_from_number: str = field(default_factory=lambda: _env("TWILIO_FROM_NUMBER", ""))
    """E.164 number SMS alerts come from (TWILIO_FROM_NUMBER)."""
    twilio_api_base_url: str = field(default_factory=lambda: _env("TWILIO_API_BASE_URL", "https://api.twilio.com"))
    """Twilio REST API base URL (TWILIO_API_BASE_URL)."""
    dashboard_url: str = field(default_factory=lambda: _env("ALERT_DASHBOARD_URL", ""))
    """Link put in every alert, e.g. a Grafana dashboard (ALERT_DASHBOARD_URL)."""
    allow_private_urls: bool = field(default_factory=lambda: _bool("ALERT_ALLOW_PRIVATE_URLS", False))
    """Let Slack and webhook URLs be http or point at loopback/private addresses; for tests and
    local setups only (ALERT_ALLOW_PRIVATE_URLS)."""
    cooldown_s: int = field(default_factory=lambda: _int("ALERT_COOLDOWN_SECONDS", 600))
    """After a budget's alert reaches a channel, further alerts of that budget wait this long and
    go out together as one digest, unless they are more severe (ALERT_COOLDOWN_SECONDS)."""
    max_attempts: int = field(default_factory=lambda: _int("ALERT_MAX_ATTEMPTS", 6, minimum=1))
    """Attempts per (alert, channel) before it is recorded as failed (ALERT_MAX_ATTEMPTS)."""
    retry_base_ms: int = field(default_factory=lambda: _int("ALERT_RETRY_BASE_MS", 2000, minimum=1))
    """First retry delay; each later one doubles, with jitter, at most 10 minutes (ALERT_RETRY_BASE_MS)."""
    send_timeout_s: int = field(default_factory=lambda: _int("ALERT_SEND_TIMEOUT_SECONDS", 10, minimum=1))
    """Time limit of one delivery request (ALERT_SEND_TIMEOUT_SECONDS)."""
    dispatch_interval_s: int = field(default_factory=lambda: _int("ALERT_DISPATCH_INTERVAL", 30, minimum=1))
    """Seconds between sweeps that send alerts held by a cooldown or left undelivered
    (ALERT_DISPATCH_INTERVAL)."""


LITELLM_PRICES_URL = "https://raw.githubusercontent.com/BerriAI/litellm/main/model_prices_and_context_window.json"


@dataclass(frozen=True)
class PricingSettings:
    update_interval_s: int = field(default_factory=lambda: _int("PRICING_UPDATE_INTERVAL", 86400, minimum=60))
    """Seconds between scheduled runs of every configured price source (PRICING_UPDATE_INTERVAL)."""
    max_change_factor: int = field(default_factory=lambda: _int("PRICING_MAX_CHANGE_FACTOR", 3, minimum=2))
    """A fetched rate more than this many times above or below the current one is quarantined,
    not applied (PRICING_MAX_CHANGE_FACTOR)."""
    catalog_url: str = field(default_factory=lambda: _env("PRICING_CATALOG_URL", LITELLM_PRICES_URL))
    """A LiteLLM-format price map to follow; empty turns the source off (PRICING_CATALOG_URL)."""
    openai_api_key: str = field(default_factory=lambda: _env("OPENAI_API_KEY", ""))
    """Lists OpenAI's models to find ones the catalog does not price (OPENAI_API_KEY)."""
    openai_base_url: str = field(default_factory=lambda: _env("OPENAI_BASE_URL", "https://api.openai.com"))
    """OpenAI API base URL (OPENAI_BASE_URL)."""
    aws_access_key_id: str = field(default_factory=lambda: _env("AWS_ACCESS_KEY_ID", ""))
    """AWS Price List API credentials for Bedrock prices (AWS_ACCESS_KEY_ID)."""
    aws_secret_access_key: str = field(default_factory=lambda: _env("AWS_SECRET_ACCESS_KEY", ""))
    """(AWS_SECRET_ACCESS_KEY)."""
    aws_pricing_endpoint_url: str = field(default_factory=lambda: _env("AWS_PRICING_ENDPOINT_URL", ""))
    """Price List API endpoint; empty uses AWS's own (AWS_PRICING_ENDPOINT_URL)."""
    google_api_key: str = field(default_factory=lambda: _env("GOOGLE_API_KEY", ""))
    """Cloud Billing Catalog API key for Gemini prices (GOOGLE_API_KEY)."""
    google_credentials: str = field(default_factory=lambda: _env("GOOGLE_APPLICATION_CREDENTIALS", ""))
    """Service account file for the Cloud Billing Catalog API, instead of a key (GOOGLE_APPLICATION_CREDENTIALS)."""
    google_billing_base_url: str = field(
        default_factory=lambda: _env("GOOGLE_BILLING_BASE_URL", "https://cloudbilling.googleapis.com")
    )
    """Cloud Billing Catalog API base URL (GOOGLE_BILLING_BASE_URL)."""
    fetch_timeout_s: int = field(default_factory=lambda: _int("PRICING_FETCH_TIMEOUT_SECONDS", 30, minimum=1))
    """Time limit of each request to a price source (PRICING_FETCH_TIMEOUT_SECONDS)."""
    alert_channels: str = field(default_factory=lambda: _env("PRICING_ALERT_CHANNELS", ""))
    """JSON list of channels (as a budget's) told about price changes, quarantines and unpriced
    models seen in traffic (PRICING_ALERT_CHANNELS)."""


@dataclass(frozen=True)
class OperationsSettings:
    log_format: str = field(default_factory=lambda: _env("LOG_FORMAT", "json"))
    """`json` (one object per line) or `text` (LOG_FORMAT)."""
    log_level: str = field(default_factory=lambda: _env("LOG_LEVEL", "INFO"))
    """DEBUG, INFO, WARNING or ERROR (LOG_LEVEL)."""
    log_requests: bool = field(default_factory=lambda: _bool("LOG_REQUESTS", False))
    """Log every request (method, route, status, duration); 5xx answers are always logged (LOG_REQUESTS)."""
    rate_limits_enabled: bool = field(default_factory=lambda: _bool("RATE_LIMITS_ENABLED", True))
    """Limit requests per principal and route group (RATE_LIMITS_ENABLED)."""
    rate_limit_ingest: str = field(default_factory=lambda: _env("RATE_LIMIT_INGEST", "2000/second"))
    """Limit for POST /usage-events and /usage-events/batch per principal (RATE_LIMIT_INGEST)."""
    rate_limit_read: str = field(default_factory=lambda: _env("RATE_LIMIT_READ", "100/second"))
    """Limit for reads (GET) per principal (RATE_LIMIT_READ)."""
    rate_limit_write: str = field(default_factory=lambda: _env("RATE_LIMIT_WRITE", "20/second"))
    """Limit for other changes (POST, PUT, DELETE) per principal (RATE_LIMIT_WRITE)."""
    metrics_refresh_interval_s: int = field(default_factory=lambda: _int("METRICS_REFRESH_INTERVAL", 60, minimum=1))
    """Seconds between refreshes of the business gauges read from ClickHouse (METRICS_REFRESH_INTERVAL)."""
    metrics_learner_top_n: int = field(default_factory=lambda: _int("METRICS_LEARNER_TOP_N", 0))
    """Learners exported in finops_cost_by_learner_usd (the top N this month); 0 exports none
    (METRICS_LEARNER_TOP_N)."""
    metrics_budget_top_n: int = field(default_factory=lambda: _int("METRICS_BUDGET_TOP_N", 100))
    """Budgets exported in finops_budget_percentage_used (the N most used) (METRICS_BUDGET_TOP_N)."""
    worker_metrics_port: int = field(default_factory=lambda: _int("WORKER_METRICS_PORT", 9100))
    """Port where `finops worker` serves /metrics; 0 serves none (WORKER_METRICS_PORT)."""


@dataclass(frozen=True)
class OptimizationSettings:
    refresh_interval_s: int = field(default_factory=lambda: _int("OPTIMIZATION_REFRESH_INTERVAL", 3600, 60))
    """How often the job recomputes the default window's suggestions for every tenant."""
    max_age_s: int = field(default_factory=lambda: _int("OPTIMIZATION_MAX_AGE", 7200, 1))
    """A cached run older than this is stale (its window has slid too far)."""
    new_events_grace_s: int = field(default_factory=lambda: _int("OPTIMIZATION_NEW_EVENTS_GRACE", 900))
    """A cached run younger than this is served even when events arrived after it was computed."""
    default_window_days: int = field(default_factory=lambda: _int("OPTIMIZATION_WINDOW_DAYS", 30, 1))
    """The window the job keeps cached (the endpoint's default `window_days`)."""


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    ingest: IngestSettings = field(default_factory=IngestSettings)
    costs: CostSettings = field(default_factory=CostSettings)
    budgets: BudgetSettings = field(default_factory=BudgetSettings)
    alerts: AlertSettings = field(default_factory=AlertSettings)
    operations: OperationsSettings = field(default_factory=OperationsSettings)
    pricing: PricingSettings = field(default_factory=PricingSettings)
    optimization: OptimizationSettings = field(default_factory=OptimizationSettings)
    redis_url: str = field(default_factory=lambda: _env("REDIS_URL", ""))
    """Redis for arq job queues and shared state; empty runs everything in-process (REDIS_URL)."""
    prometheus_metrics_enabled: bool = field(default_factory=lambda: _bool("PROMETHEUS_METRICS_ENABLED", True))
    """Serve GET /metrics (PROMETHEUS_METRICS_ENABLED)."""

    @classmethod
    def from_env(cls) -> Settings:
        return cls()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings loaded once per process."""
    return Settings.from_env()
