"""Configuration: every environment variable the functions read, and the secrets behind them.

Settings are read from the environment on each call (cheap, and it lets tests change them); the values
fetched from Secret Manager are cached once per instance because each fetch is a network round trip.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from shared.errors import Unavailable

logger = logging.getLogger(__name__)

DATABASE_URL = "DATABASE_URL"
DB_URL_SECRET = "DB_URL_SECRET"
SECRET_MANAGER_ENDPOINT = "SECRET_MANAGER_ENDPOINT"
GMAIL_API_ENDPOINT = "GMAIL_API_ENDPOINT"
TOKEN_PROVIDER = "TOKEN_PROVIDER"
TOKEN_DIR = "TOKEN_DIR"
TOKEN_KEY_SECRET = "TOKEN_KEY_SECRET"
TOKEN_KEYS = "TOKEN_KEYS"
LOG_LEVEL = "LOG_LEVEL"
GOOGLE_CLOUD_PROJECT = "GOOGLE_CLOUD_PROJECT"
REFRESH_CONCURRENCY = "REFRESH_CONCURRENCY"
PUBSUB_TOPIC = "PUBSUB_TOPIC"
WEBHOOK_RETRY_BASE_SECONDS = "WEBHOOK_RETRY_BASE_SECONDS"
AUDIT_RETENTION_DAYS = "AUDIT_RETENTION_DAYS"
CALLER_POLICY = "CALLER_POLICY"
CALLER_AUDIENCES = "CALLER_AUDIENCES"
ID_TOKEN_CERTS_URL = "ID_TOKEN_CERTS_URL"
ALLOWED_TOKEN_URIS = "ALLOWED_TOKEN_URIS"
REQUIRE_ENCRYPTED_TOKENS = "REQUIRE_ENCRYPTED_TOKENS"
ACTIVE_DAYS = "ACTIVE_DAYS"
REFRESH_TASKS_QUEUE = "REFRESH_TASKS_QUEUE"
REFRESH_TASKS_URL = "REFRESH_TASKS_URL"
REFRESH_TASKS_SERVICE_ACCOUNT = "REFRESH_TASKS_SERVICE_ACCOUNT"
CLOUD_TASKS_ENDPOINT = "CLOUD_TASKS_ENDPOINT"

DEFAULT_GMAIL_API_ENDPOINT = "https://gmail.googleapis.com"
DEFAULT_TOKEN_URI = "https://oauth2.googleapis.com/token"
# Google's token endpoint under the names older client libraries and authorized-user files carry; a
# row naming one of these is honoured without a warning (they are Google's, and answer alike).
GOOGLE_TOKEN_URIS = frozenset(
    {
        DEFAULT_TOKEN_URI,
        "https://accounts.google.com/o/oauth2/token",
        "https://www.googleapis.com/oauth2/v4/token",
        "https://www.googleapis.com/oauth2/v3/token",
    }
)
TOKEN_PROVIDERS = ("database", "file")
CALLER_POLICIES = ("off", "enforce")
# Google's signing certificates for ID tokens, key id -> PEM certificate (google-auth's default too).
DEFAULT_ID_TOKEN_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
# Workers of the scheduled refresh, each holding one database connection: 1,000 tokens behind a 100 ms
# token endpoint take about 1000 * 0.1 / 16 = 6 s, and 16 connections fit a small Cloud SQL instance.
DEFAULT_REFRESH_CONCURRENCY = 16
# CONTRACT.md, New mail: the first retry of a failed webhook delivery waits this long (then doubling).
DEFAULT_WEBHOOK_RETRY_BASE_SECONDS = 30.0
# Audit rows older than this are purged by the scheduled run: 400 days keeps a full year of history
# plus a month, enough for a yearly abuse or access review.
DEFAULT_AUDIT_RETENTION_DAYS = 400
MAX_AUDIT_RETENTION_DAYS = 36500
# A token used within this many days is refreshed before it expires; one idle longer only when a call
# needs it, and once a day so that a revoked grant is still found (docs/performance.md, "A million").
DEFAULT_ACTIVE_DAYS = 7


class ConfigError(Unavailable):
    """A setting is missing or malformed: the operator must fix the deployment."""


@dataclass(frozen=True)
class Settings:
    """The environment, read in one place."""

    database_url: str | None
    db_url_secret: str | None
    secret_manager_endpoint: str | None
    gmail_api_endpoint: str
    token_provider: str
    token_dir: str | None
    token_key_secret: str | None
    token_keys: str | None
    log_level: str
    project: str | None
    refresh_concurrency: int
    audit_retention_days: int
    allowed_token_uris: frozenset[str]
    require_encrypted_tokens: bool
    active_days: int = DEFAULT_ACTIVE_DAYS
    # The scheduled run's fan-out (all three set, or none: then every slice runs inline).
    refresh_tasks_queue: str | None = None
    refresh_tasks_url: str | None = None
    refresh_tasks_service_account: str | None = None
    cloud_tasks_endpoint: str | None = None
    caller_policy: str = "off"
    caller_audiences: tuple[str, ...] = ()
    id_token_certs_url: str = DEFAULT_ID_TOKEN_CERTS_URL


def _env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def _whole_number(name: str, default: int, minimum: int, maximum: int) -> int:
    text = _env(name)
    try:
        value = int(text) if text else default
    except ValueError:
        raise ConfigError(f"{name} must be a whole number") from None
    if not minimum <= value <= maximum:
        raise ConfigError(f"{name} must be between {minimum} and {maximum}")
    return value


def _flag(name: str) -> bool:
    text = (_env(name) or "false").lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false")


def load_settings() -> Settings:
    """Reads and checks every setting from the environment.

    Raises:
        ConfigError: a value is malformed; the message names the variable.
    """
    provider = (_env(TOKEN_PROVIDER) or "database").lower()
    if provider not in TOKEN_PROVIDERS:
        raise ConfigError(f"{TOKEN_PROVIDER} must be one of {', '.join(TOKEN_PROVIDERS)}")
    concurrency = _whole_number(REFRESH_CONCURRENCY, DEFAULT_REFRESH_CONCURRENCY, 1, 128)
    retention = _whole_number(AUDIT_RETENTION_DAYS, DEFAULT_AUDIT_RETENTION_DAYS, 1, MAX_AUDIT_RETENTION_DAYS)
    policy = (_env(CALLER_POLICY) or "off").lower()
    if policy not in CALLER_POLICIES:
        raise ConfigError(f"{CALLER_POLICY} must be one of {', '.join(CALLER_POLICIES)}")
    audiences = tuple(item.strip() for item in (_env(CALLER_AUDIENCES) or "").split(",") if item.strip())
    if policy == "enforce" and not audiences:
        # Without an audience any Google ID token minted for any other service would be accepted here.
        raise ConfigError(f"{CALLER_AUDIENCES} must name this function's URL when {CALLER_POLICY}=enforce")
    tasks = (_env(REFRESH_TASKS_QUEUE), _env(REFRESH_TASKS_URL), _env(REFRESH_TASKS_SERVICE_ACCOUNT))
    if any(tasks) and not all(tasks):
        raise ConfigError(
            f"{REFRESH_TASKS_QUEUE}, {REFRESH_TASKS_URL} and {REFRESH_TASKS_SERVICE_ACCOUNT} go together"
        )
    return Settings(
        database_url=_env(DATABASE_URL),
        db_url_secret=_env(DB_URL_SECRET),
        secret_manager_endpoint=_env(SECRET_MANAGER_ENDPOINT),
        gmail_api_endpoint=(_env(GMAIL_API_ENDPOINT) or DEFAULT_GMAIL_API_ENDPOINT).rstrip("/"),
        token_provider=provider,
        token_dir=_env(TOKEN_DIR),
        token_key_secret=_env(TOKEN_KEY_SECRET),
        token_keys=_env(TOKEN_KEYS),
        log_level=(_env(LOG_LEVEL) or "INFO").upper(),
        project=_env(GOOGLE_CLOUD_PROJECT),
        refresh_concurrency=concurrency,
        audit_retention_days=retention,
        caller_policy=policy,
        caller_audiences=audiences,
        id_token_certs_url=_env(ID_TOKEN_CERTS_URL) or DEFAULT_ID_TOKEN_CERTS_URL,
        allowed_token_uris=frozenset(
            uri.strip() for uri in (_env(ALLOWED_TOKEN_URIS) or "").split(",") if uri.strip()
        ),
        require_encrypted_tokens=_flag(REQUIRE_ENCRYPTED_TOKENS),
        active_days=_whole_number(ACTIVE_DAYS, DEFAULT_ACTIVE_DAYS, 1, 365),
        refresh_tasks_queue=tasks[0],
        refresh_tasks_url=tasks[1],
        refresh_tasks_service_account=tasks[2],
        cloud_tasks_endpoint=_env(CLOUD_TASKS_ENDPOINT),
    )


def pubsub_topic() -> str:
    """``PUBSUB_TOPIC``: the ``projects/P/topics/T`` Gmail publishes new-mail notifications to.

    Raises:
        ConfigError: unset or not of that shape.
    """
    topic = _env(PUBSUB_TOPIC)
    if not topic:
        raise ConfigError(f"set {PUBSUB_TOPIC} to projects/PROJECT/topics/TOPIC to watch mailboxes")
    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != "projects" or parts[2] != "topics" or not parts[1] or not parts[3]:
        raise ConfigError(f"{PUBSUB_TOPIC} must be projects/PROJECT/topics/TOPIC")
    return topic


def webhook_retry_base_seconds() -> float:
    """``WEBHOOK_RETRY_BASE_SECONDS`` (default 30): the wait before the first webhook retry.

    Raises:
        ConfigError: not a positive number.
    """
    text = _env(WEBHOOK_RETRY_BASE_SECONDS)
    if text is None:
        return DEFAULT_WEBHOOK_RETRY_BASE_SECONDS
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{WEBHOOK_RETRY_BASE_SECONDS} must be a number of seconds") from None
    if not value > 0:
        raise ConfigError(f"{WEBHOOK_RETRY_BASE_SECONDS} must be more than 0")
    return value


def database_url(settings: Settings | None = None) -> str:
    """The database URL: ``DATABASE_URL``, else the Secret Manager secret named by ``DB_URL_SECRET``.

    Raises:
        ConfigError: neither is set.
        Unavailable: Secret Manager could not be read.
    """
    settings = settings or load_settings()
    if settings.database_url:
        return settings.database_url
    if settings.db_url_secret:
        from shared.secret_manager import secrets

        return secrets.read(settings.db_url_secret, settings)
    raise ConfigError(f"set {DATABASE_URL} or {DB_URL_SECRET}")


def secret_version_name(secret: str, project: str | None) -> str:
    """Expands ``S`` or ``projects/P/secrets/S`` to a full ``projects/P/secrets/S/versions/V`` name."""
    if secret.startswith("projects/"):
        parts = secret.split("/")
        if len(parts) == 4 and parts[2] == "secrets":
            return f"{secret}/versions/latest"
        if len(parts) == 6 and parts[2] == "secrets" and parts[4] == "versions":
            return secret
        raise ConfigError("a secret name must be S, projects/P/secrets/S or projects/P/secrets/S/versions/V")
    if "/" in secret:
        raise ConfigError("a secret name must be S, projects/P/secrets/S or projects/P/secrets/S/versions/V")
    if not project:
        raise ConfigError(f"{GOOGLE_CLOUD_PROJECT} must be set when a secret is named without its project")
    return f"projects/{project}/secrets/{secret}/versions/latest"
