"""The call to Google's token endpoint, through google-auth, and what its answers mean to us."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import google.auth.exceptions
import google.auth.transport.requests
from google.oauth2.credentials import Credentials

from shared import clock
from shared.errors import ReauthRequired, Unavailable, UpstreamError
from shared.transport import http_session

logger = logging.getLogger(__name__)

# (connect, read): the token endpoint answers in ~100 ms; 10 s means it is not going to.
TOKEN_TIMEOUT_S = (3.05, 10.0)
# google-auth itself retries 500/503/504/408/429 answers three times with ~1 s and ~2 s backoff.
# We retry what it does not: a connection that failed or timed out, twice more, after 0.5 s and 1 s.
# Worst case: 3 attempts x (3 + 10) s + 1.5 s, under the functions' 60 s timeout.
TRANSPORT_ATTEMPTS = 3
TRANSPORT_BACKOFF_S = 0.5


class _BoundedRequest(google.auth.transport.requests.Request):
    """google-auth's transport over the instance's session, with our timeout (its default waits 120 s)."""

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: Any = None,
        headers: Any = None,
        timeout: Any = None,
        **kwargs: Any,
    ) -> Any:
        return super().__call__(
            url, method=method, body=body, headers=headers, timeout=TOKEN_TIMEOUT_S, **kwargs
        )

    def __del__(self) -> None:
        # google-auth's Request closes its session when collected, which would drop the shared pool
        # (and its TLS sessions) after every refresh; the session belongs to the instance, not to us.
        pass


_request: _BoundedRequest | None = None


def auth_request() -> google.auth.transport.Request:
    """The instance's one google-auth transport request, over the shared session."""
    global _request
    if _request is None:
        _request = _BoundedRequest(session=http_session())
    return _request


@dataclass(frozen=True)
class RefreshedToken:
    """What Google granted: a new access token, its expiry (naive UTC), and the refresh token to keep."""

    access_token: str
    expiry: datetime | None
    refresh_token: str


def refresh_access_token(
    *, refresh_token: str | None, client_id: str | None, client_secret: str | None, token_uri: str
) -> RefreshedToken:
    """Exchanges a refresh token for a new access token.

    Raises:
        ReauthRequired: no refresh token or client, or Google answered ``invalid_grant``.
        Unavailable: the token endpoint failed (5xx, timeouts) after the retries.
        UpstreamError: the token endpoint answered something else we cannot use.
    """
    missing = [
        name
        for name, value in (
            ("refresh_token", refresh_token),
            ("client_id", client_id),
            ("client_secret", client_secret),
        )
        if not value
    ]
    if missing:
        # Google would refuse; saying so without the call keeps the error clear and costs nothing.
        raise ReauthRequired(
            f"the stored token has no {' or '.join(missing)}: reconnect Gmail", reason="incomplete_token"
        )
    credentials = Credentials(
        token=None,
        refresh_token=refresh_token,
        client_id=client_id,
        client_secret=client_secret,
        token_uri=token_uri,
    )
    for attempt in range(1, TRANSPORT_ATTEMPTS + 1):
        try:
            credentials.refresh(auth_request())
            break
        except google.auth.exceptions.RefreshError as exc:
            raise _classify_refresh_error(exc) from exc
        except google.auth.exceptions.TransportError as exc:
            if attempt == TRANSPORT_ATTEMPTS:
                logger.warning(
                    "token endpoint unreachable after %d attempts: %s", attempt, type(exc).__name__
                )
                raise Unavailable("Google's token endpoint could not be reached") from exc
            clock.sleep(TRANSPORT_BACKOFF_S * attempt * (1 + random.random() / 5))  # noqa: S311
    if not credentials.token:
        raise UpstreamError("Google's token endpoint answered without an access token")
    return RefreshedToken(
        access_token=credentials.token,
        expiry=credentials.expiry,
        refresh_token=credentials.refresh_token or refresh_token or "",
    )


def _classify_refresh_error(exc: google.auth.exceptions.RefreshError) -> Exception:
    data = exc.args[1] if len(exc.args) > 1 else None
    error = data.get("error") if isinstance(data, dict) else None
    if error == "invalid_grant":
        return ReauthRequired("Google refused the refresh token: reconnect Gmail", reason="invalid_grant")
    if getattr(exc, "retryable", False):
        logger.warning("token endpoint kept failing: %s", error or "no error code")
        return Unavailable("Google's token endpoint is failing; try again later")
    logger.warning("token endpoint refused the refresh: %s", error or "unexpected answer")
    if error in ("invalid_client", "unauthorized_client"):
        return UpstreamError(f"Google refused the stored OAuth client ({error})")
    return UpstreamError("Google's token endpoint answered something unexpected")
