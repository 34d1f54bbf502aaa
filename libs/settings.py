"""One typed settings object, read once from the environment (the variable names are a public contract).

An unset backing-service URL means "start the embedded engine" (see `libs.embedded`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_JWT_SECRET = "dev-insecure-jwt-secret-change-me"
MIN_PRODUCTION_SECRET_LENGTH = 32
GOOGLE_ISSUER = "https://accounts.google.com"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)

    analytics_env: Literal["development", "production", "test"] = "development"
    analytics_data_dir: Path = Path(".data")

    kafka_bootstrap_servers: str | None = None
    clickhouse_url: str | None = None
    database_url: str | None = None
    redis_url: str | None = None
    smtp_url: str | None = None
    smtp_from: str = "Analytics <no-reply@analytics.localhost>"

    @field_validator("kafka_bootstrap_servers", "clickhouse_url", "database_url", "redis_url", "smtp_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """`CLICKHOUSE_URL=` (empty, or blanks) means unset, as if the line were not there: the embedded
        engine then, wherever the URL is read."""
        return None if isinstance(value, str) and not value.strip() else value

    jwt_secret: str = DEFAULT_JWT_SECRET
    jwt_algorithm: Literal["HS256", "HS384", "HS512"] = "HS256"
    # 4 hours access, 30 days refresh.
    jwt_access_expires: int = 14400
    jwt_refresh_expires: int = 2592000

    kafka_partitions: int = Field(default=6, ge=1)
    kafka_replication_factor: int = Field(default=1, ge=1)

    api_key_ttl_days: int = Field(default=365, ge=0)  # 0 = keys never expire
    # Auth's periodic key check: "expiring soon" emails this many days ahead, and an "expired"
    # message on auth.api-keys.v1 once a key's expiry has passed.
    auth_expiry_check_interval_s: float = Field(default=300, gt=0)
    auth_expiry_warning_days: int = Field(default=7, ge=0)
    # Failed logins allowed per moving window (`limits` notation), per account and per client IP.
    auth_login_limit_per_account: str = "10/minute"
    auth_login_limit_per_ip: str = "30/minute"
    # How often gateways and query write when each API key was last used (to Redis, off the hot path).
    api_key_usage_flush_interval_s: float = Field(default=2, gt=0)
    # Auth republishes every key's state this often (and at start), so a gateway that rebuilds its
    # table from auth.api-keys.v1 alone (Postgres down) finds every key within the topic's retention.
    auth_key_snapshot_interval_s: float = Field(default=86400, gt=0)
    public_base_url: str = "http://127.0.0.1:8000"
    # OpenID Connect sign-in ("Sign in with Google" on the dashboard): on when OIDC_CLIENT_ID is set.
    # No OIDC_ISSUER means Google (https://accounts.google.com); any other issuer is found through its
    # /.well-known/openid-configuration. The provider redirects back to
    # PUBLIC_BASE_URL/api/user/oidc/callback, the redirect URI to register with it.
    oidc_issuer: str = ""
    oidc_client_id: str = ""
    oidc_client_secret: str = ""
    oidc_provider_name: str = ""  # the button's "Sign in with NAME"; default: Google, or the issuer's host

    # Aggregator batching: flush by size or by age, whichever comes first.
    aggregator_batch_size: int = Field(default=5000, ge=1)
    aggregator_batch_max_age_ms: int = Field(default=500, ge=10)
    # Stop instead of dead-lettering everything: past this share of bad messages (over at least
    # `aggregator_dlq_min_bad` of the last 1,000), coming from more than that share of the apps sending
    # and from at least `aggregator_bad_min_apps` apps, the consumer stops with an error (and is
    # restarted with backoff). One app's bad messages are only dead-lettered.
    aggregator_max_bad_ratio: float = Field(default=0.5, gt=0, le=1)
    aggregator_dlq_min_bad: int = Field(default=100, ge=1)
    aggregator_bad_min_apps: int = Field(default=3, ge=1)
    # How long a killed aggregator keeps its partitions before the group hands them to the others.
    aggregator_session_timeout_ms: int = Field(default=10000, ge=1000)
    clickhouse_retention_days: int = Field(default=730, ge=1)
    # Cluster mode: the name of a cluster in the ClickHouse servers' <remote_servers> (with Keeper).
    # Empty: one server. Set: ON CLUSTER DDL, Replicated*_local tables and Distributed tables under the
    # usual names (libs/clickhouse/schema.py). A plain identifier: it is written into DDL.
    clickhouse_cluster: str = Field(default="", pattern=r"^([A-Za-z_][A-Za-z0-9_]*)?$")

    query_cache_ttl_live_s: int = Field(default=5, ge=1)
    query_cache_ttl_closed_s: int = 3600
    # format=csv: at most this many rows (then a last line says the export was cut).
    query_csv_max_rows: int = Field(default=1_000_000, ge=1)

    # Notifier. SMTP TLS: verify the server's certificate against the system CAs, or this CA file
    # (PEM; a private CA or a self-signed certificate); `smtp_tls_verify=false` only for development.
    smtp_ca_file: Path | None = None
    smtp_tls_verify: bool = True
    smtp_timeout_s: float = Field(default=10, gt=0)
    # Temporary failures are retried with backoff and jitter for this long, then dead-lettered.
    notifier_retry_budget_s: float = Field(default=600, gt=0)
    notifier_retry_max_wait_s: float = Field(default=30, gt=0)
    # Scheduled reports: how often the query service looks for subscriptions that are due.
    reports_check_interval_s: float = Field(default=60, gt=0)

    # Outbound HTTP (libs/outbound.py): the one pooled client per process for webhooks and external APIs.
    outbound_connect_timeout_s: float = Field(default=5, gt=0)
    outbound_read_timeout_s: float = Field(default=10, gt=0)
    outbound_max_connections: int = Field(default=50, ge=1)
    # Webhooks: targets on private, loopback or link-local networks are refused unless this is true.
    # A failed delivery is tried again after webhook_retry_base_s, doubling each time, up to
    # webhook_max_attempts tries in all (8 from 30 s: the last about an hour after the first).
    webhook_allow_private: bool = False
    webhook_max_attempts: int = Field(default=8, ge=1, le=20)
    webhook_retry_base_s: float = Field(default=30, gt=0)
    webhook_poll_interval_s: float = Field(default=1, gt=0)
    # Alerts: how often the query service checks every alert.
    alerts_check_interval_s: float = Field(default=60, gt=0)
    # External metric source: OpenWeather's current weather for each app's cities, when a key is set.
    openweather_api_key: str | None = None
    openweather_base_url: str = "https://api.openweathermap.org/data/2.5/weather"
    openweather_interval_s: float = Field(default=600, gt=0)

    # On SIGINT/SIGTERM: how long the aggregator and the notifier may take to store and send what
    # Kafka holds (up to the end offsets read at stop) before they stop anyway and say what is left;
    # also how long `analytics infra` waits for their groups before stopping its Kafka. Under the
    # 30 s grace period that Kubernetes and Compose give before SIGKILL.
    drain_timeout_s: float = Field(default=20, gt=0)

    # Gateway: which proxies' X-Forwarded-For to believe (CIDRs, comma-separated), whether to keep
    # only a network prefix of client IPs, what to do with bots, and the per-key ingest limit.
    trusted_proxies: str = "127.0.0.1/32,::1/128"
    ip_anonymize: bool = False
    bot_policy: Literal["flag", "drop"] = "flag"
    ingest_rate_limit: str = "10000/second"

    # Browser origins (comma-separated, e.g. https://dash.example.com) allowed to call the account,
    # key and query APIs cross-origin: a dashboard served elsewhere. Empty: same-origin only. Ingest
    # and the snippet are open to every origin regardless.
    cors_allowed_origins: str = ""

    log_level: str = "INFO"

    @model_validator(mode="after")
    def _refuse_default_secrets_in_production(self) -> Settings:
        if self.analytics_env == "production":
            if self.jwt_secret == DEFAULT_JWT_SECRET or len(self.jwt_secret) < MIN_PRODUCTION_SECRET_LENGTH:
                raise ValueError(
                    "ANALYTICS_ENV=production needs JWT_SECRET set to a random value of at least "
                    f"{MIN_PRODUCTION_SECRET_LENGTH} characters, e.g. `python -c 'import secrets; "
                    "print(secrets.token_urlsafe(48))'`"
                )
        return self

    @model_validator(mode="after")
    def _cluster_needs_a_server(self) -> Settings:
        if self.clickhouse_cluster and not self.clickhouse_url:
            raise ValueError(
                "CLICKHOUSE_CLUSTER needs CLICKHOUSE_URL (a node of that cluster): the embedded chDB is one node"
            )
        return self

    @model_validator(mode="after")
    def _oidc_complete(self) -> Settings:
        if (self.oidc_issuer or self.oidc_client_secret or self.oidc_provider_name) and not self.oidc_client_id:
            raise ValueError("OIDC_ISSUER, OIDC_CLIENT_SECRET and OIDC_PROVIDER_NAME need OIDC_CLIENT_ID (OpenID Connect sign-in)")
        if self.oidc_client_id and not self.oidc_client_secret:
            raise ValueError("OIDC_CLIENT_ID needs OIDC_CLIENT_SECRET: the client secret the OpenID provider gave with it")
        if self.oidc_issuer and not self.oidc_issuer.startswith(("https://", "http://")):
            raise ValueError("OIDC_ISSUER must be the provider's issuer URL, e.g. https://accounts.google.com")
        if self.analytics_env == "production" and self.oidc_issuer.startswith("http://"):
            raise ValueError("ANALYTICS_ENV=production needs an https:// OIDC_ISSUER")
        return self

    @property
    def oidc_enabled(self) -> bool:
        return bool(self.oidc_client_id)

    @property
    def oidc_issuer_url(self) -> str:
        """The issuer sign-ins are checked against: OIDC_ISSUER, or Google's."""
        return (self.oidc_issuer or GOOGLE_ISSUER).rstrip("/")

    @property
    def oidc_name(self) -> str:
        if self.oidc_provider_name:
            return self.oidc_provider_name
        if self.oidc_issuer_url == GOOGLE_ISSUER:
            return "Google"
        return urlsplit(self.oidc_issuer_url).hostname or "OpenID Connect"

    @property
    def cors_origins(self) -> list[str]:
        return [origin.strip().rstrip("/") for origin in self.cors_allowed_origins.split(",") if origin.strip()]

    def insecure_defaults(self) -> list[str]:
        """What is insecure but allowed outside production (production refuses to start instead)."""
        if self.jwt_secret != DEFAULT_JWT_SECRET:
            return []
        return [
            "JWT_SECRET is the development default: anyone who reads this code can sign tokens for any "
            "account. Set JWT_SECRET to a random value before this service is reachable by others, e.g. "
            "`python -c 'import secrets; print(secrets.token_urlsafe(48))'` (ANALYTICS_ENV=production "
            "refuses to start without one)"
        ]

    @property
    def data_dir(self) -> Path:
        return self.analytics_data_dir.resolve()

