"""Every error the functions answer with, each carrying its HTTP status and contract code.

Foreign exceptions (pg8000, requests, googleapiclient, Secret Manager) are wrapped once, at the
boundary where they occur, with ``raise ... from exc``; everything above that sees only these.
"""

from __future__ import annotations


class SkillEmailError(Exception):
    """Base class: an error with a contract code, an HTTP status and a message safe to show callers."""

    status: int = 500
    code: str = "internal"
    retryable: bool = False

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.message = message
        # Extra, non-secret facts for logs and some responses (e.g. retry_after, message_id).
        self.details = details

    def headers(self) -> dict[str, str]:
        """Extra HTTP response headers this error calls for."""
        return {}


class InvalidArgument(SkillEmailError):
    """The request is malformed: bad JSON, a missing, unknown or malformed field."""

    status = 400
    code = "invalid_argument"


class Unauthenticated(SkillEmailError):
    """``CALLER_POLICY=enforce`` and no valid Google ID token."""

    status = 401
    code = "unauthenticated"

    def headers(self) -> dict[str, str]:
        # RFC 6750: a 401 for a bearer-token resource names the scheme it wants.
        return {"WWW-Authenticate": 'Bearer error="invalid_token"'}


class ReauthRequired(SkillEmailError):
    """Google refused the refresh token (invalid_grant): the user must reconnect Gmail."""

    status = 401
    code = "reauth_required"


class PermissionDenied(SkillEmailError):
    """The caller may not do this, the token lacks the scope the call needs, or Gmail answered 403."""

    status = 403
    code = "permission_denied"


class NotFound(SkillEmailError):
    """No equipped token for that user (and robeing), or no such message."""

    status = 404
    code = "not_found"


class MethodNotAllowed(SkillEmailError):
    """The target does not take this HTTP method."""

    status = 405
    code = "method_not_allowed"

    def __init__(self, message: str, allowed: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.allowed = allowed

    def headers(self) -> dict[str, str]:
        return {"Allow": ", ".join(self.allowed)} if self.allowed else {}


class IdempotencyConflict(SkillEmailError):
    """An Idempotency-Key reused with a different request, or while the first is still running."""

    status = 409
    code = "idempotency_conflict"


class PayloadTooLarge(SkillEmailError):
    """Attachments over 24 MiB decoded, or a message over Gmail's 35 MB limit."""

    status = 413
    code = "payload_too_large"


class RateLimited(SkillEmailError):
    """Gmail still rate-limits after the retries."""

    status = 429
    code = "rate_limited"
    retryable = True

    def __init__(self, message: str, retry_after: int = 30, **details: object) -> None:
        super().__init__(message, **details)
        self.retry_after = max(1, int(retry_after))

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class UpstreamError(SkillEmailError):
    """Gmail or Google's token endpoint answered something unexpected."""

    status = 502
    code = "upstream_error"


class Unavailable(SkillEmailError):
    """The database, Secret Manager or Gmail (5xx after retries) could not be reached."""

    status = 503
    code = "unavailable"
    retryable = True


class Internal(SkillEmailError):
    """A bug; callers see only that, the log has the details."""

    status = 500
    code = "internal"
