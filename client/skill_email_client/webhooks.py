"""Verifying the events skill-email POSTs to a robeing's webhook (Standard Webhooks signatures).

The signing secret is the ``whsec_...`` line ``python -m shared.cli webhooks set`` printed. Verification
checks the HMAC over ``webhook-id.webhook-timestamp.body`` and that the timestamp is within five minutes,
so a captured request cannot be replayed later; ``webhook-id`` is the event id, the same on every retry,
so a robeing that stores the ids it has handled also drops duplicates.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from skill_email_client.types import Event

__all__ = ["WebhookVerificationError", "verify_webhook"]


def verify_webhook(body: bytes | str, headers: Mapping[str, str], secret: str) -> Event:
    """Checks a delivery's signature and returns the event it carries.

    Args:
        body: the request body exactly as received (bytes, before any JSON parsing).
        headers: the request headers (any mapping; names are matched case-insensitively).
        secret: the robeing's signing secret, ``whsec_...``.

    Returns:
        The event: ``{"id", "type", "created_at", "user_id", "robeing_id", "message"}``.

    Raises:
        WebhookVerificationError: a missing or wrong signature, or a timestamp too old or too new.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    try:
        payload = body.decode("utf-8") if isinstance(body, bytes) else body
        event: Any = Webhook(secret).verify(payload, lowered)
    except WebhookVerificationError:
        raise
    except (ValueError, TypeError) as exc:  # a malformed header or body: standardwebhooks lets these out
        raise WebhookVerificationError(f"malformed webhook delivery: {exc}") from exc
    if not isinstance(event, dict):
        raise WebhookVerificationError("the signed body is not a JSON object")
    return cast(Event, event)
