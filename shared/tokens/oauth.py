"""The call to Google's token endpoint, through google-auth, and what its answers mean to us.

Invariants: a refresh token and client secret go only to Google's endpoint or one an operator listed in
``ALLOWED_TOKEN_URIS``; every answer, however malformed, becomes one of our errors (never a 500), and no
error or log line carries the endpoint's response body.
"""

from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import google.auth.exceptions
import google.auth.transport.requests
from google.oauth2.credentials import Credentials

from shared import clock, config
from shared.errors import ReauthRequired, SkillEmailError, Unavailable, UpstreamError
from shared.transport import http_session

logger = logging.getLogger(__name__)

# (connect, read): the token endpoint answers in ~100 ms; 10 s means it is not going to.
TOKEN_TIMEOUT_S = (3.05, 10.0)
# google-auth itself retries 500/503/504/408/429 answers three times with ~1 s and ~2 s backoff.
# We retry what it does not: a connection that failed or timed out, twice more, after 0.5 s and 1 s.
# Worst case: 3 attempts x (3 + 10) s + 1.5 s, under the functions' 60 s timeout.
TRANSPORT_ATTEMPTS = 3
TRANSPORT_BACKOFF_S = 0.5
# What an OAuth error code looks like (RFC 6749 5.2: a short ASCII word); anything else is not quoted.
_ERROR_CODE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


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


def allowed_token_uri(token_uri: str | None, settings: config.Settings | None = None) -> str:
    """The endpoint a refresh may go to: the row's ``token_uri`` if Google's or listed, else Google's.

    A row's ``token_uri`` decides where its refresh token and client secret are sent, so a tampered row
    must not be able to name any URL: only Google's endpoints and those in ``ALLOWED_TOKEN_URIS`` are
    honoured. Any other is ignored (Google's is used) and logged as a warning, with its host only.
    """
    settings = settings or config.load_settings()
    if not token_uri or token_uri in config.GOOGLE_TOKEN_URIS or token_uri in settings.allowed_token_uris:
        return token_uri or config.DEFAULT_TOKEN_URI
    host = urlsplit(token_uri).hostname or "unparseable"
    logger.warning(
        "a stored token_uri is neither Google's nor in %s: using Google's endpoint instead",
        config.ALLOWED_TOKEN_URIS,
        extra={"fields": {"refused_uri_host": host[:100]}},
    )
    return config.DEFAULT_TOKEN_URI


class _StatusRecorder(google.auth.transport.Request):
    """Passes requests to the instance's transport and remembers the last HTTP status (for our errors)."""

    def __init__(self, inner: google.auth.transport.Request) -> None:
        self.inner = inner
        self.status: int | None = None

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: Any = None,
        headers: Any = None,
        timeout: Any = None,
        **kwargs: Any,
    ) -> Any:
        response = self.inner(url, method=method, body=body, headers=headers, timeout=timeout, **kwargs)
        self.status = response.status
        return response


def refresh_access_token(
    *, refresh_token: str | None, client_id: str | None, client_secret: str | None, token_uri: str
) -> RefreshedToken:
    """Exchanges a refresh token for a new access token.

    Every error raised here carries the HTTP status, Google's error code and a short reason of our own,
    and is raised ``from None``: google-auth's exceptions quote the endpoint's answer, which can echo
    what we sent, so none of them is chained into a traceback or a log line.

    Raises:
        ReauthRequired: no refresh token or client, or Google answered ``invalid_grant``.
        Unavailable: the token endpoint failed (5xx, timeouts) after the retries.
        UpstreamError: the token endpoint answered something else we cannot use or cannot read.
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
        token_uri=allowed_token_uri(token_uri),
    )
    recorder = _StatusRecorder(auth_request())
    for attempt in range(1, TRANSPORT_ATTEMPTS + 1):
        try:
            credentials.refresh(recorder)
            break
        except google.auth.exceptions.RefreshError as exc:
            failure = _classify_refresh_error(exc, recorder.status)
        except google.auth.exceptions.TransportError as exc:
            if attempt < TRANSPORT_ATTEMPTS:
                clock.sleep(TRANSPORT_BACKOFF_S * attempt * (1 + random.random() / 5))  # noqa: S311
                continue
            logger.warning("token endpoint unreachable after %d attempts: %s", attempt, type(exc).__name__)
            failure = Unavailable("Google's token endpoint could not be reached", reason=type(exc).__name__)
        except (ValueError, TypeError, KeyError, OverflowError) as exc:
            # google-auth parsing an answer it cannot read: a body that is not JSON, a JSON that is not
            # an object, "expires_in": "soon". Google's fault or a proxy's, not ours: 502, not 500.
            failure = _unreadable(recorder.status, type(exc).__name__)
        raise failure from None
    if not isinstance(credentials.token, str) or not credentials.token:
        raise _unreadable(recorder.status, "no access token")
    return RefreshedToken(
        access_token=credentials.token,
        expiry=clock.from_library_clock(credentials.expiry) if credentials.expiry else None,
        refresh_token=credentials.refresh_token or refresh_token or "",
    )


def _unreadable(status: int | None, reason: str) -> UpstreamError:
    logger.warning("token endpoint answered %s that we cannot read: %s", status, reason)
    return UpstreamError(
        "Google's token endpoint answered something we cannot read", status=status, reason=reason
    )


def _error_code(data: object) -> str | None:
    """Google's ``error`` code from an answer, only when it looks like one (never free text)."""
    error = data.get("error") if isinstance(data, dict) else None
    return error if isinstance(error, str) and _ERROR_CODE.fullmatch(error) else None


def _classify_refresh_error(exc: google.auth.exceptions.RefreshError, status: int | None) -> SkillEmailError:
    # args[0] is google-auth's message, built from the answer's body; only args[1] (the parsed answer)
    # is read, and of it only the error code.
    error = _error_code(exc.args[1] if len(exc.args) > 1 else None)
    if error == "invalid_grant":
        return ReauthRequired(
            "Google refused the refresh token: reconnect Gmail", reason="invalid_grant", status=status
        )
    if getattr(exc, "retryable", False):
        logger.warning("token endpoint kept failing: %s %s", status, error or "no error code")
        return Unavailable(
            f"Google's token endpoint is failing ({error or 'no error code'}); try again later",
            status=status,
            error=error,
        )
    logger.warning("token endpoint refused the refresh: %s %s", status, error or "unexpected answer")
    if error in ("invalid_client", "unauthorized_client"):
        return UpstreamError(f"Google refused the stored OAuth client ({error})", status=status, error=error)
    return UpstreamError(
        f"Google's token endpoint answered something unexpected ({error or 'no error code'})",
        status=status,
        error=error,
    )
