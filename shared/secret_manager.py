"""Secret Manager: secret values read once per instance with one REST call, and cached.

The database URL (``DB_URL_SECRET``) and the token keyring (``TOKEN_KEY_SECRET``) live in Secret Manager.
Production pays for reading them on every cold start, so this is one authenticated
``GET v1/{name}:access`` through google-auth rather than the ``google-cloud-secret-manager`` client:
measured here, importing that client costs ~300 ms and 57 MiB of RSS, against ~180 ms and 40 MiB for
google-auth and requests, which the send path needs anyway (docs/performance.md).

Invariants: a value is cached per instance and never logged; a failure is never cached, so the next call
tries again; ``forget`` drops one value so a rotated secret is re-read after a failed connect.
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
from typing import TYPE_CHECKING, Any

from shared import clock
from shared.config import ConfigError, Settings, load_settings, secret_version_name
from shared.errors import Unavailable
from shared.transport import google_api_session

if TYPE_CHECKING:
    import requests

logger = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://secretmanager.googleapis.com"
# Secret Manager calls are bounded so that a cold start with Secret Manager down answers 503 within
# seconds instead of a client default of 60 s; the caller (or Cloud Scheduler) retries.
SECRET_ATTEMPT_TIMEOUT_S = 3.0
SECRET_TOTAL_TIMEOUT_S = 3.0
# Statuses Google documents as transient for this API; anything else (403, 404) will not get better.
_TRANSIENT = frozenset({429, 500, 502, 503, 504})


class SecretCache:
    """Secret values fetched once per instance; a failure is never cached, a value never logged."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, str] = {}
        self._sessions: dict[str | None, requests.Session] = {}

    def clear(self) -> None:
        """Forgets cached values and sessions (tests; and a rotated secret after a failed connect)."""
        with self._lock:
            self._values.clear()
            self._sessions.clear()

    def forget(self, secret: str, settings: Settings | None = None) -> None:
        """Drops one cached value, so the next read fetches it again (e.g. after a rotated DB password)."""
        settings = settings or load_settings()
        with self._lock:
            self._values.pop(secret_version_name(secret, settings.project), None)

    def read(self, secret: str, settings: Settings | None = None) -> str:
        """Returns the secret's value as text, fetching it on first use.

        Raises:
            ConfigError: the name is malformed, or the value is not UTF-8 text.
            Unavailable: Secret Manager could not be reached or refused the read.
        """
        settings = settings or load_settings()
        name = secret_version_name(secret, settings.project)
        with self._lock:
            cached = self._values.get(name)
        if cached is not None:
            return cached
        value = self._fetch(settings.secret_manager_endpoint, name)
        with self._lock:
            self._values[name] = value
        return value

    def _session(self, endpoint: str | None) -> requests.Session:
        with self._lock:
            session = self._sessions.get(endpoint)
            if session is None:
                session = google_api_session(endpoint)
                self._sessions[endpoint] = session
            return session

    def _fetch(self, endpoint: str | None, name: str) -> str:
        import requests
        from google.auth import exceptions as auth_exceptions

        url = f"{(endpoint or DEFAULT_ENDPOINT).rstrip('/')}/v1/{name}:access"
        deadline = clock.monotonic() + SECRET_TOTAL_TIMEOUT_S
        attempt = 0
        while True:
            attempt += 1
            status: int | None = None
            try:
                response = self._session(endpoint).get(url, timeout=SECRET_ATTEMPT_TIMEOUT_S)
                status = response.status_code
                if status == 200:
                    return _payload_text(response.json(), name)
                reason = f"HTTP {status}"
            except (requests.RequestException, auth_exceptions.GoogleAuthError, ValueError) as exc:
                # ValueError: a 200 whose body is not JSON. The reason names the type only: a
                # transport error's text may quote the URL or headers.
                reason = type(exc).__name__
            # Capped: at most SECRET_TOTAL_TIMEOUT_S in all, waits of 0.2, 0.4, 0.8 ... s.
            delay = min(2.0, 0.2 * 2 ** (attempt - 1))
            if (status is not None and status not in _TRANSIENT) or clock.monotonic() + delay > deadline:
                logger.error("Secret Manager did not give %s: %s", name, reason)
                raise Unavailable("the configuration secret could not be read")
            clock.sleep(delay)


def _payload_text(body: Any, name: str) -> str:
    data = body.get("payload", {}).get("data") if isinstance(body, dict) else None
    if not isinstance(data, str):
        raise Unavailable("the configuration secret could not be read: the answer had no payload")
    try:
        return base64.b64decode(data, validate=True).decode("utf-8").strip()
    except (binascii.Error, UnicodeDecodeError):
        raise ConfigError(f"secret {name} is not UTF-8 text") from None


secrets = SecretCache()
