"""Who is calling, and what that caller may do: Google ID tokens and the callers allow-list.

Under ``CALLER_POLICY=enforce`` every request carries ``Authorization: Bearer <Google ID token>``.
``authenticate`` checks it with google-auth (signature against Google's certificates, expiry, audience
in ``CALLER_AUDIENCES``) plus the issuer, and looks the token's ``email`` up in the allow-list table
``skill_email_callers``; ``authorize`` then applies the caller's role to the target and the request.

Invariants:
- Nothing here reads anything about a user (no token row, no Google call for a user): ``web`` runs both
  checks before the handler, so a refused caller never reaches the token store, the token endpoint or
  Gmail.
- Google's certificates are fetched once per instance (again only after their ``max-age``, or at most
  once a minute when a token names a key id we do not have, which is how Google's key rotation shows).
- The allow-list is cached per instance for at most ``ALLOW_LIST_TTL_S``: a change made with
  ``python -m shared.cli callers ...`` takes effect within that, with no redeploy.
"""

from __future__ import annotations

import contextvars
import logging
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared import clock, config, db, targets
from shared.errors import PermissionDenied, Unauthenticated, Unavailable

logger = logging.getLogger(__name__)

ROLES = (targets.ROBEING, targets.SCHEDULER, targets.OPERATOR)
GOOGLE_ISSUERS = frozenset({"accounts.google.com", "https://accounts.google.com"})
# The contract: a change to the list takes effect within 60 s.
ALLOW_LIST_TTL_S = 60.0
# A token naming a key id we lack refetches the certificates, but at most this often, so a stream of
# forged key ids cannot turn every request into a round trip to Google.
UNKNOWN_KID_REFETCH_S = 60.0
# Google serves its certificates with max-age of several hours; without one we keep them an hour. A
# key Google retires leaves our cache within that time.
DEFAULT_CERTS_MAX_AGE_S = 3600.0
MAX_CERTS_MAX_AGE_S = 24 * 3600.0
# (connect, read) for the certificate fetch: Google answers in ~50 ms.
CERTS_TIMEOUT_S = (3.05, 5.0)
# Clocks of Google's token minting and ours may differ a little.
CLOCK_SKEW_S = 10
# What Cloud Run leaves in place of the signature of a token it checked itself.
SIGNATURE_REMOVED = "SIGNATURE_REMOVED_BY_GOOGLE"
MAX_EMAIL_CHARS = 320
MAX_TOKEN_CHARS = 8192
_MAX_AGE = re.compile(r"max-age=(\d+)")


@dataclass(frozen=True)
class Caller:
    """A verified caller: its email (lower case), its role, and the robeing ids a robeing holds."""

    email: str
    role: str
    robeing_ids: frozenset[str] = frozenset()


# The current request's caller, for audit rows written anywhere below the entry point.
current: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("caller", default=None)


def current_email() -> str | None:
    """The email of the caller of the request being served (None under ``CALLER_POLICY=off``)."""
    caller = current.get()
    return caller.email if caller else None


def normalize_email(value: str) -> str:
    """An allow-list key: trimmed and lower case (email domains and Google accounts ignore case).

    Raises:
        ValueError: not an email address of at most 320 characters without control characters.
    """
    email = value.strip().lower()
    if not email or len(email) > MAX_EMAIL_CHARS or "@" not in email.strip("@"):
        raise ValueError(f"not an email address: {value!r}")
    if any(ord(char) < 33 or ord(char) == 127 for char in email):
        raise ValueError("an email address has no spaces or control characters")
    return email


# -- Google's certificates ---------------------------------------------------------------------------


class CertCache:
    """Google's ID-token certificates (key id -> PEM), fetched on first use and kept per instance."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._url: str | None = None
        self._certs: dict[str, str] = {}
        self._fetched_at = float("-inf")
        self._max_age = DEFAULT_CERTS_MAX_AGE_S
        self.fetches = 0

    def clear(self) -> None:
        """Forgets the certificates (tests; the next call fetches them)."""
        with self._lock:
            self._url, self._certs, self._fetched_at = None, {}, float("-inf")
            self.fetches = 0

    def get(self, url: str, key_id: str | None) -> dict[str, str]:
        """The certificates from ``url``, refetched when stale or (rarely) when ``key_id`` is unknown.

        Raises:
            Unavailable: the certificates could not be fetched (and none are cached for ``url``).
        """
        now = clock.monotonic()
        with self._lock:
            fresh = self._url == url and now - self._fetched_at < self._max_age
            known = key_id is None or key_id in self._certs
            may_refetch = now - self._fetched_at >= UNKNOWN_KID_REFETCH_S
            if fresh and (known or not may_refetch):
                return self._certs
            try:
                certs, max_age = _fetch_certs(url)
            except Unavailable:
                if self._url != url or not self._certs:
                    raise
                # Keys Google published recently are still good: better than refusing every caller.
                logger.warning("kept the cached ID token certificates; the refetch failed")
                self._fetched_at = now - self._max_age + UNKNOWN_KID_REFETCH_S  # try again in a minute
                return self._certs
            self._url, self._certs, self._fetched_at, self._max_age = url, certs, now, max_age
            self.fetches += 1
            return certs


def _fetch_certs(url: str) -> tuple[dict[str, str], float]:
    from shared.transport import http_session  # requests is imported only where it is needed

    try:
        response = http_session().get(url, timeout=CERTS_TIMEOUT_S)
    except Exception as exc:  # requests' own errors: the network, not the caller
        logger.error("ID token certificates unreachable: %s", type(exc).__name__)
        raise Unavailable("Google's ID token certificates could not be fetched") from None
    try:
        payload = response.json() if response.status_code == 200 else None
    except ValueError:
        payload = None
    if not isinstance(payload, dict) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in payload.items()
    ):
        logger.error("ID token certificates unusable: HTTP %s", response.status_code)
        raise Unavailable("Google's ID token certificates could not be read")
    match = _MAX_AGE.search(response.headers.get("Cache-Control", ""))
    max_age = float(match.group(1)) if match else DEFAULT_CERTS_MAX_AGE_S
    # Bounded both ways: a max-age=0 must not turn every request into a fetch.
    max_age = min(max(max_age, UNKNOWN_KID_REFETCH_S), MAX_CERTS_MAX_AGE_S)
    return dict(payload), max_age


certs = CertCache()


def verify_id_token(token: str, settings: config.Settings) -> Mapping[str, Any]:
    """The claims of a Google ID token whose signature, expiry, audience and issuer check.

    Raises:
        Unauthenticated: the token fails any check (the message says which, never the token).
        Unavailable: Google's certificates could not be fetched.
    """
    import google.auth.exceptions
    from google.auth import jwt

    if token.endswith("." + SIGNATURE_REMOVED):
        raise Unauthenticated(
            "Cloud Run removed this ID token's signature after checking it; send the token for Cloud "
            "Run in X-Serverless-Authorization and the same token in Authorization for the function"
        )
    try:
        key_id = jwt.decode_header(token).get("kid")
    except (ValueError, TypeError, google.auth.exceptions.GoogleAuthError):
        raise Unauthenticated("the bearer token is not a JWT") from None
    known = certs.get(settings.id_token_certs_url, key_id if isinstance(key_id, str) else None)
    try:
        claims = jwt.decode(
            token,
            certs=known,
            audience=list(settings.caller_audiences),
            clock_skew_in_seconds=CLOCK_SKEW_S,
        )
    except (ValueError, TypeError, google.auth.exceptions.GoogleAuthError) as exc:
        # google-auth's message names the failed check (signature, expiry, audience); it never holds
        # the token itself.
        raise Unauthenticated(f"the ID token did not verify: {_short(str(exc))}") from None
    if claims.get("iss") not in GOOGLE_ISSUERS:
        raise Unauthenticated("the ID token was not issued by Google (accounts.google.com)")
    return claims


def _short(text: str) -> str:
    return text.splitlines()[0][:200] if text else "rejected"


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer`` header.

    Raises:
        Unauthenticated: no such header, another scheme, or an absurdly long value.
    """
    scheme, _, value = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthenticated("this function needs Authorization: Bearer <Google ID token>")
    token = value.strip()
    if len(token) > MAX_TOKEN_CHARS:
        raise Unauthenticated("the bearer token is too long to be an ID token")
    return token


# -- the allow-list ------------------------------------------------------------------------------------


class AllowList:
    """The callers table, read whole (it is a handful of rows) and kept at most ``ALLOW_LIST_TTL_S``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, Caller] = {}
        self._loaded_at = float("-inf")
        self.loads = 0

    def clear(self) -> None:
        """Forgets the cached list (tests; the next lookup reads the table)."""
        with self._lock:
            self._entries, self._loaded_at = {}, float("-inf")
            self.loads = 0

    def lookup(self, email: str) -> Caller | None:
        """The caller entry for ``email``, or None when it is not on the list.

        Raises:
            Unavailable: the table could not be read (a failure is never cached).
        """
        now = clock.monotonic()
        with self._lock:
            if now - self._loaded_at < ALLOW_LIST_TTL_S:
                return self._entries.get(email)
        with db.connection() as conn:
            entries = {entry.email: entry for entry in list_callers(conn)}
        with self._lock:
            self._entries, self._loaded_at = entries, now
            self.loads += 1
        return entries.get(email)


allow_list = AllowList()


def authenticate(authorization: str | None, settings: config.Settings) -> Caller | None:
    """The request's caller, or None when ``CALLER_POLICY`` is off.

    Raises:
        Unauthenticated: no valid Google ID token.
        PermissionDenied: a valid token whose email is not on the allow-list.
        Unavailable: Google's certificates or the allow-list could not be read.
    """
    if settings.caller_policy != "enforce":
        return None
    claims = verify_id_token(bearer_token(authorization), settings)
    email_claim = claims.get("email")
    if not isinstance(email_claim, str) or not email_claim:
        raise Unauthenticated("the ID token has no email claim (from a service account, ask for format=full)")
    if claims.get("email_verified") is False:
        raise Unauthenticated("the ID token's email is not verified")
    try:
        email = normalize_email(email_claim)
    except ValueError:
        raise Unauthenticated("the ID token's email is malformed") from None
    caller = allow_list.lookup(email)
    if caller is None:
        raise PermissionDenied(f"{email} is not on this service's callers list", caller_email=email)
    return caller


def authorize(caller: Caller | None, target: targets.Target, args: Any) -> None:
    """Refuses a call the caller's role does not allow (nothing to refuse under policy off).

    Rules (CONTRACT.md, Callers): an operator may do everything; another role only the targets whose
    ``Target.roles`` name it; a scheduler only the scheduled run (no ``user_id``); a robeing only with a
    ``robeing_id`` it holds, so that only tokens equipped to that robeing are ever used.

    Raises:
        PermissionDenied: the call is not allowed; the message says why.
    """
    if caller is None or caller.role == targets.OPERATOR:
        return
    if caller.role not in target.roles:
        raise PermissionDenied(f"a {caller.role} caller may not call {target.name}")
    if caller.role == targets.SCHEDULER:
        if getattr(args, "user_id", None) is not None or getattr(args, "robeing_id", None) is not None:
            raise PermissionDenied("a scheduler caller may start only the scheduled run (no user_id)")
        return
    if caller.role == targets.ROBEING:
        robeing_id = getattr(args, "robeing_id", None)
        if robeing_id is None:
            raise PermissionDenied(
                "a robeing caller must name one of its robeing ids in robeing_id: "
                + ", ".join(sorted(caller.robeing_ids))
            )
        if robeing_id not in caller.robeing_ids:
            raise PermissionDenied(f"this caller does not hold robeing_id {robeing_id!r}")
        return
    raise PermissionDenied(f"unknown caller role {caller.role!r}")


# -- the table, for the CLI -------------------------------------------------------------------------


def list_callers(conn: db.Connection) -> list[Caller]:
    """Every caller on the list, by email."""
    rows = conn.run("SELECT email, role, robeing_ids FROM skill_email_callers ORDER BY email")
    return [Caller(row["email"], row["role"], frozenset(row["robeing_ids"] or ())) for row in rows]


def add_caller(conn: db.Connection, email: str, role: str, robeing_ids: list[str]) -> str:
    """Adds or replaces a caller; returns ``added`` or ``updated``.

    Raises:
        ValueError: a malformed email, an unknown role, a robeing without robeing ids or another role
            with some, or a malformed robeing id.
    """
    email = normalize_email(email)
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    ids = sorted(set(robeing_ids))
    if role == targets.ROBEING and not ids:
        raise ValueError("a robeing caller needs at least one --robeing-id")
    if role != targets.ROBEING and ids:
        raise ValueError(f"a {role} caller takes no --robeing-id")
    for robeing_id in ids:
        if not 1 <= len(robeing_id) <= 50 or any(ord(char) < 32 or ord(char) == 127 for char in robeing_id):
            raise ValueError(f"robeing id must be 1-50 characters without control characters: {robeing_id!r}")
    row = conn.one(
        "INSERT INTO skill_email_callers (email, role, robeing_ids) VALUES (:email, :role, "
        "CAST(:ids AS TEXT[])) ON CONFLICT (email) DO UPDATE SET role = EXCLUDED.role, "
        "robeing_ids = EXCLUDED.robeing_ids, updated_at = now() AT TIME ZONE 'UTC' "
        "RETURNING (xmax = 0) AS inserted",
        email=email,
        role=role,
        ids=ids,
    )
    return "added" if row and row["inserted"] else "updated"


def remove_caller(conn: db.Connection, email: str) -> bool:
    """Removes a caller; False when it was not on the list."""
    rows = conn.run(
        "DELETE FROM skill_email_callers WHERE email = :email RETURNING email", email=normalize_email(email)
    )
    return bool(rows)


def clear_caches() -> None:
    """Forgets the cached certificates and allow-list (tests)."""
    certs.clear()
    allow_list.clear()
