"""One exception class per error code of the skill-email contract, raised by every client method.

Each carries what the answer said: ``status``, ``code``, ``message``, and where the contract adds them
``retry_after`` (429), ``message_id`` (a send whose outcome is unknown) and ``required_scopes`` (403).
"""

from __future__ import annotations

from typing import Any


class SkillEmailError(Exception):
    """Base class: an error answer (or no answer) from a skill-email function."""

    code: str = "unknown"

    def __init__(
        self,
        message: str,
        *,
        status: int = 0,
        code: str | None = None,
        body: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        if code is not None:
            self.code = code
        self.body = body or {}
        error = self.body.get("error") if isinstance(self.body.get("error"), dict) else {}
        self.retry_after = retry_after
        #: The Message-ID of a send whose outcome is unknown; retry only with the same Idempotency-Key.
        self.message_id: str | None = error.get("message_id") if error else None
        #: For a 403 about scopes: the scope URLs, any one of which would do.
        self.required_scopes: list[str] = list(error.get("required_scopes") or []) if error else []

    def __str__(self) -> str:
        where = f" ({self.status})" if self.status else ""
        return f"{self.code}{where}: {self.message}"


class InvalidArgument(SkillEmailError):
    """400: bad JSON, a missing, malformed or unknown field, a bad address."""

    code = "invalid_argument"


class Unauthenticated(SkillEmailError):
    """401: no valid Google ID token for the function (``CALLER_POLICY=enforce``)."""

    code = "unauthenticated"


class ReauthRequired(SkillEmailError):
    """401: Google refused the user's refresh token; the person must reconnect Gmail."""

    code = "reauth_required"


class PermissionDenied(SkillEmailError):
    """403: the caller may not do this, or the token lacks a scope (see ``required_scopes``)."""

    code = "permission_denied"


class NotFound(SkillEmailError):
    """404: no equipped token for that user (and robeing), or no such message, thread, draft."""

    code = "not_found"


class MethodNotAllowed(SkillEmailError):
    """405: a method the target does not take."""

    code = "method_not_allowed"


class IdempotencyConflict(SkillEmailError):
    """409: the Idempotency-Key was used for another request, or its first request is still running."""

    code = "idempotency_conflict"


class PayloadTooLarge(SkillEmailError):
    """413: attachments over 24 MiB, or a message over Gmail's 35 MB."""

    code = "payload_too_large"


class RateLimited(SkillEmailError):
    """429: Gmail still rate-limits after the function's retries; ``retry_after`` says how long to wait."""

    code = "rate_limited"


class UpstreamError(SkillEmailError):
    """502: Gmail or Google's token endpoint answered something unexpected."""

    code = "upstream_error"


class Unavailable(SkillEmailError):
    """503: the database, Secret Manager or Gmail could not be reached. With ``message_id`` set, a send's
    outcome is unknown: it may be retried only with the same Idempotency-Key."""

    code = "unavailable"


class Internal(SkillEmailError):
    """500: a bug in the function; its log has the details."""

    code = "internal"


class TransportError(SkillEmailError):
    """No answer at all: the connection failed or timed out (after the client's own retries)."""

    code = "transport_error"


BY_CODE: dict[str, type[SkillEmailError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        Unauthenticated,
        ReauthRequired,
        PermissionDenied,
        NotFound,
        MethodNotAllowed,
        IdempotencyConflict,
        PayloadTooLarge,
        RateLimited,
        UpstreamError,
        Unavailable,
        Internal,
    )
}
# For an answer that is not the contract's JSON (a proxy's or Cloud Run's own page): by status alone.
BY_STATUS: dict[int, type[SkillEmailError]] = {
    400: InvalidArgument,
    401: Unauthenticated,
    403: PermissionDenied,
    404: NotFound,
    405: MethodNotAllowed,
    409: IdempotencyConflict,
    413: PayloadTooLarge,
    429: RateLimited,
    500: Internal,
    502: UpstreamError,
    503: Unavailable,
}


def from_response(status: int, body: Any, text: str, retry_after: float | None) -> SkillEmailError:
    """The exception for an error answer: by ``error.code`` when the body is the contract's JSON."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        cls = BY_CODE.get(error["code"], SkillEmailError)
        message = str(error.get("message") or error["code"])
        return cls(message, status=status, code=error["code"], body=body, retry_after=retry_after)
    cls = BY_STATUS.get(status, SkillEmailError)
    message = (text or "").strip()[:300] or f"HTTP {status}"
    return cls(message, status=status, body=None, retry_after=retry_after)
