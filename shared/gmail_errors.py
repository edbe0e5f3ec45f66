"""What Gmail's failures mean to us: each ``HttpError`` as one of our errors, and whether to try again.

Invariant: the errors made here carry the HTTP status and Google's reason code only, never Gmail's
message or body (an answer may echo what we sent), and are raised ``from None`` by the client.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from googleapiclient.errors import HttpError

from shared.errors import (
    InvalidArgument,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    ReauthRequired,
    SkillEmailError,
    Unavailable,
    UpstreamError,
)

RATE_LIMIT_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded", "RATE_LIMIT_EXCEEDED"})
SCOPE_REASONS = frozenset({"insufficientPermissions", "ACCESS_TOKEN_SCOPE_INSUFFICIENT"})
PERMISSION_REASONS = frozenset(
    {"insufficientPermissions", "ACCESS_TOKEN_SCOPE_INSUFFICIENT", "forbidden", "PERMISSION_DENIED"}
)


class SendOutcomeUnknown(Exception):
    """messages.send failed in a way that does not tell whether Gmail sent the message."""


@dataclass(frozen=True)
class Failure:
    """What a Gmail error means. It is raised ``from None``: googleapiclient's ``HttpError`` carries
    Gmail's answer (which may echo what we sent) into any traceback, so only ``summary`` (HTTP status
    and Google's reason code) travels on, in the error's message."""

    error: SkillEmailError
    retryable: bool
    retry_after: float | None = None
    summary: str = ""


def _error_reason(exc: HttpError) -> tuple[str | None, str]:
    try:
        payload = json.loads(exc.content.decode("utf-8", "replace"))
        error = payload.get("error", {}) if isinstance(payload, dict) else {}
    except (ValueError, AttributeError):
        return None, ""
    if not isinstance(error, dict):
        return None, str(error)
    reasons = [item.get("reason") for item in error.get("errors", []) if isinstance(item, dict)]
    for detail in error.get("details", []) or []:
        if isinstance(detail, dict) and detail.get("reason"):
            reasons.append(detail["reason"])
    reason = next((item for item in reasons if item), None)
    return reason, str(error.get("message") or "")


def classify(exc: HttpError) -> Failure:
    """What a Gmail error means to a caller, and whether trying again can help.

    The error's text holds the HTTP status and Google's reason code, never Gmail's message or body.
    """
    status = int(exc.resp.status)
    reason, message = _error_reason(exc)
    summary = f"HTTP {status} {reason or 'no reason given'}"
    failure = _classify(status, reason, message, _retry_after(exc.resp.get("retry-after")), summary)
    return Failure(failure.error, failure.retryable, failure.retry_after, summary)


def _classify(
    status: int, reason: str | None, message: str, retry_after: float | None, summary: str
) -> Failure:
    if status == 429 or (status == 403 and reason in RATE_LIMIT_REASONS):
        return Failure(
            RateLimited(
                f"Gmail is rate-limiting this mailbox ({summary}); slow down",
                retry_after=int(retry_after or 30),
            ),
            True,
            retry_after,
        )
    if reason == "dailyLimitExceeded":
        return Failure(RateLimited("the Gmail API's daily quota is used up", retry_after=3600), False)
    if status == 403 and (reason in PERMISSION_REASONS or "scope" in message.lower() or reason is None):
        return Failure(
            PermissionDenied(
                f"Gmail refused ({summary}): the token lacks the permission (scope) this call "
                "needs; reconnect Gmail granting it",
                # Only these say "scope"; "forbidden" is about the mailbox (delegation), not the token.
                scope_insufficient=reason in SCOPE_REASONS or "scope" in message.lower(),
            ),
            False,
        )
    if status == 401:
        return Failure(ReauthRequired("Gmail refused the token even after a refresh: reconnect Gmail"), False)
    if status == 404:
        return Failure(NotFound("no such message or thread in this mailbox"), False)
    if status == 413:
        return Failure(PayloadTooLarge("Gmail refused the message as too large"), False)
    if status == 400:
        return Failure(InvalidArgument(f"Gmail rejected the request ({summary})"), False)
    if status >= 500:
        return Failure(Unavailable(f"Gmail is failing ({summary}); try again later"), True, retry_after)
    return Failure(UpstreamError(f"Gmail answered {summary}"), False)


def _retry_after(value: Any) -> float | None:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if seconds >= 0 else None
