"""Configuration: every environment variable the functions read, and the secrets behind them.

Settings are read from the environment on each call (cheap, and it lets tests change them); the values
fetched from Secret Manager are cached once per instance because each fetch is a network round trip.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Any, Protocol

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
CALLER_POLICY = "CALLER_POLICY"
CALLER_AUDIENCES = "CALLER_AUDIENCES"
ID_TOKEN_CERTS_URL = "ID_TOKEN_CERTS_URL"

DEFAULT_GMAIL_API_ENDPOINT = "https://gmail.googleapis.com"
DEFAULT_TOKEN_URI = "https://oauth2.googleapis.com/token"
TOKEN_PROVIDERS = ("database", "file")
CALLER_POLICIES = ("off", "enforce")
# Google's signing certificates for ID tokens, key id -> PEM certificate (google-auth's default too).
DEFAULT_ID_TOKEN_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
# Workers of the scheduled refresh, each holding one database connection: 1,000 tokens behind a 100 ms
# token endpoint take about 1000 * 0.1 / 16 = 6 s, and 16 connections fit a small Cloud SQL instance.
DEFAULT_REFRESH_CONCURRENCY = 16


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
    caller_policy: str = "off"
    caller_audiences: tuple[str, ...] = ()
    id_token_certs_url: str = DEFAULT_ID_TOKEN_CERTS_URL


def _env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def load_settings() -> Settings:
    """Reads and checks every setting from the environment.

    Raises:
        ConfigError: a value is malformed; the message names the variable.
    """
    provider = (_env(TOKEN_PROVIDER) or "database").lower()
    if provider not in TOKEN_PROVIDERS:
        raise ConfigError(f"{TOKEN_PROVIDER} must be one of {', '.join(TOKEN_PROVIDERS)}")
    concurrency_text = _env(REFRESH_CONCURRENCY)
    try:
        concurrency = int(concurrency_text) if concurrency_text else DEFAULT_REFRESH_CONCURRENCY
    except ValueError:
        raise ConfigError(f"{REFRESH_CONCURRENCY} must be a whole number") from None
    if not 1 <= concurrency <= 128:
        raise ConfigError(f"{REFRESH_CONCURRENCY} must be between 1 and 128")
    policy = (_env(CALLER_POLICY) or "off").lower()
    if policy not in CALLER_POLICIES:
        raise ConfigError(f"{CALLER_POLICY} must be one of {', '.join(CALLER_POLICIES)}")
    audiences = tuple(item.strip() for item in (_env(CALLER_AUDIENCES) or "").split(",") if item.strip())
    if policy == "enforce" and not audiences:
        # Without an audience any Google ID token minted for any other service would be accepted here.
        raise ConfigError(f"{CALLER_AUDIENCES} must name this function's URL when {CALLER_POLICY}=enforce")
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
        caller_policy=policy,
        caller_audiences=audiences,
        id_token_certs_url=_env(ID_TOKEN_CERTS_URL) or DEFAULT_ID_TOKEN_CERTS_URL,
    )


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


class SecretClient(Protocol):
    """The one method of Secret Manager's client that we use (so tests may inject another)."""

    def access_secret_version(self, *, name: str, timeout: float, retry: Any) -> Any: ...


# Secret Manager calls are bounded so that a cold start with Secret Manager down answers 503 within
# seconds instead of the client's default 60 s deadline; the caller (or Cloud Scheduler) retries.
SECRET_ATTEMPT_TIMEOUT_S = 3.0
SECRET_TOTAL_TIMEOUT_S = 3.0


class SecretCache:
    """Secret values fetched once per instance; a failure is never cached, a value never logged."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, str] = {}
        self._clients: dict[str | None, SecretClient] = {}

    def clear(self) -> None:
        """Forgets cached values and clients (tests; and a rotated secret after a failed connect)."""
        with self._lock:
            self._values.clear()
            self._clients.clear()

    def forget(self, secret: str, settings: Settings | None = None) -> None:
        """Drops one cached value, so the next read fetches it again (e.g. after a rotated DB password)."""
        settings = settings or load_settings()
        with self._lock:
            self._values.pop(secret_version_name(secret, settings.project), None)

    def read(self, secret: str, settings: Settings | None = None) -> str:
        """Returns the secret's value as text, fetching it on first use.

        Raises:
            ConfigError: the name is malformed.
            Unavailable: Secret Manager could not be reached or refused the read.
        """
        settings = settings or load_settings()
        name = secret_version_name(secret, settings.project)
        with self._lock:
            cached = self._values.get(name)
        if cached is not None:
            return cached
        client = self._client(settings.secret_manager_endpoint)
        value = self._fetch(client, name)
        with self._lock:
            self._values[name] = value
        return value

    def _client(self, endpoint: str | None) -> SecretClient:
        with self._lock:
            client = self._clients.get(endpoint)
            if client is None:
                client = _make_secret_client(endpoint)
                self._clients[endpoint] = client
            return client

    @staticmethod
    def _fetch(client: SecretClient, name: str) -> str:
        from google.api_core import exceptions as api_exceptions
        from google.api_core import retry as api_retry

        retry = api_retry.Retry(
            predicate=api_retry.if_transient_error,
            initial=0.2,
            maximum=2.0,
            multiplier=2.0,
            timeout=SECRET_TOTAL_TIMEOUT_S,
        )
        try:
            response = client.access_secret_version(name=name, timeout=SECRET_ATTEMPT_TIMEOUT_S, retry=retry)
        except api_exceptions.GoogleAPIError as exc:
            logger.error("Secret Manager refused %s: %s", name, type(exc).__name__)
            raise Unavailable("the configuration secret could not be read") from exc
        except Exception as exc:  # the transport may raise requests or grpc errors of its own
            logger.error("Secret Manager unreachable for %s: %s", name, type(exc).__name__)
            raise Unavailable("the configuration secret could not be read") from exc
        try:
            return str(response.payload.data.decode("utf-8")).strip()
        except UnicodeDecodeError as exc:
            raise ConfigError(f"secret {name} is not UTF-8 text") from exc


def _make_secret_client(endpoint: str | None) -> SecretClient:
    # Imported here: google-cloud-secret-manager costs ~0.3 s of import, paid only by instances that
    # actually read a secret, on first use rather than at cold start of every instance.
    from google.api_core.client_options import ClientOptions
    from google.cloud import secretmanager

    if endpoint and endpoint.startswith("http://"):
        # A plain-HTTP endpoint is an emulator: REST transport, and no Google credentials to look up.
        from google.auth.credentials import AnonymousCredentials

        client: Any = secretmanager.SecretManagerServiceClient(
            credentials=AnonymousCredentials(),
            transport="rest",
            client_options=ClientOptions(api_endpoint=endpoint),
        )
        return client
    options = ClientOptions(api_endpoint=endpoint) if endpoint else None
    client = secretmanager.SecretManagerServiceClient(client_options=options)
    return client


secrets = SecretCache()
