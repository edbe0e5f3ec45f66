"""Python client for the skill-email functions (send and read a person's Gmail from a robeing).

    from skill_email_client import SkillEmailClient

    mail = SkillEmailClient("http://localhost:8080")  # or the deployed functions' base URL
    sent = mail.send_email("demo", "friend@example.com", subject="안녕하세요", body="Hi")
    found = mail.list_emails("demo", q="in:sent")

See ``client.py`` for the calling rules (ID tokens, Idempotency-Keys, retries), ``errors.py`` for the
exceptions (one per contract error code) and ``webhooks.py`` for verifying event deliveries.
"""

from skill_email_client.client import SkillEmailClient, attachment
from skill_email_client.errors import (
    IdempotencyConflict,
    Internal,
    InvalidArgument,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    ReauthRequired,
    SkillEmailError,
    TransportError,
    Unauthenticated,
    Unavailable,
    UpstreamError,
)
from skill_email_client.webhooks import WebhookVerificationError, verify_webhook

__all__ = [
    "IdempotencyConflict",
    "Internal",
    "InvalidArgument",
    "MethodNotAllowed",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "RateLimited",
    "ReauthRequired",
    "SkillEmailClient",
    "SkillEmailError",
    "TransportError",
    "Unauthenticated",
    "Unavailable",
    "UpstreamError",
    "WebhookVerificationError",
    "attachment",
    "verify_webhook",
]
