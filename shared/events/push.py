"""``gmail_push``: Gmail's Pub/Sub notification as a CloudEvent, turned into queued and delivered events.

What is acknowledged and what is retried (Pub/Sub redelivers when the function raises, functions-framework
then answering 500):

- not a Pub/Sub ``messagePublished`` event, ``message.data`` not base64 of ``{"emailAddress", "historyId"}``:
  acknowledged, logged as a warning (redelivering it would fail the same way);
- a mailbox nobody watches: acknowledged, logged;
- no watcher's token can read the mailbox (gone, refused, lacking scope), or Gmail refusing the request
  (4xx): acknowledged, logged as an error; the next notification after the token is fixed catches up,
  since the sync starts from the last processed history id, not from the notification's;
- the database or Gmail unavailable, Gmail rate-limiting, a bug: raised, so Pub/Sub redelivers (with its
  backoff, and to the dead-letter topic after the subscription's maximum attempts).

Webhook deliveries happen after the events are committed; their failures never fail the notification
(the events are queued, and the scheduled run retries them).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from typing import Any

from shared import clock, config, db, logs, params
from shared.errors import InvalidArgument, SkillEmailError
from shared.events import delivery, sync
from shared.request_types import GmailPushRequest

logger = logging.getLogger("skill_email.push")

PUBLISHED = "google.cloud.pubsub.topic.v1.messagePublished"
TARGET = "gmail_push"


def parse(event: Any) -> GmailPushRequest:
    """The notification inside a Pub/Sub CloudEvent.

    Raises:
        InvalidArgument: not a Pub/Sub message, or its data is not Gmail's notification.
    """
    event_type = event.get("type")
    if event_type != PUBLISHED:
        raise InvalidArgument(f"not a Pub/Sub message: type {str(event_type)[:100]!r}")
    data = event.data
    if isinstance(data, bytes | str):
        try:
            data = json.loads(data)
        except ValueError:
            raise InvalidArgument("the event's data is not JSON") from None
    message = data.get("message") if isinstance(data, dict) else None
    encoded = message.get("data") if isinstance(message, dict) else None
    if not isinstance(encoded, str):
        raise InvalidArgument("the Pub/Sub message has no data")
    try:
        notification = json.loads(base64.b64decode(encoded, validate=True))
    except (binascii.Error, ValueError):
        raise InvalidArgument("the Pub/Sub message's data is not base64 of JSON") from None
    if not isinstance(notification, dict):
        raise InvalidArgument("the notification is not a JSON object")
    history_id = notification.get("historyId")
    if isinstance(history_id, str) and history_id.isdigit():
        history_id = int(history_id)  # Gmail sends a number; a string of digits means the same
    fields = {"email_address": notification.get("emailAddress"), "history_id": history_id}
    parsed = params.build(GmailPushRequest, fields)
    if "@" not in parsed.email_address:
        raise InvalidArgument("emailAddress: not an address")
    return parsed


def handle(event: Any) -> None:
    """Processes one CloudEvent; returns to acknowledge it, raises to have it redelivered."""
    try:
        logs.configure(config.load_settings().log_level)
    except SkillEmailError:
        logs.configure("INFO")
    started = clock.monotonic()
    context = {"target": TARGET, "request_id": str(event["id"])[:64] if "id" in event else None}
    token = logs.request_context.set(context)
    fields: dict[str, Any] = {}
    outcome = "acknowledged"
    try:
        outcome = _handle(event, fields)
    except Exception:
        outcome = "retry"
        raise
    finally:
        fields["duration_ms"] = round((clock.monotonic() - started) * 1000, 1)
        fields["outcome"] = outcome
        level = logging.ERROR if outcome == "retry" else logging.INFO
        logger.log(level, "gmail_push %s", outcome, extra={"fields": {**context, **fields}})
        logs.request_context.reset(token)


def _handle(event: Any, fields: dict[str, Any]) -> str:
    try:
        notification = parse(event)
    except InvalidArgument as exc:
        logger.warning("unparseable notification acknowledged: %s", exc.message)
        return "unparseable"
    fields["history_id"] = notification.history_id
    try:
        with db.connection() as conn:  # one connection for the sync and the deliveries after it
            return _sync_and_deliver(conn, notification, fields)
    except SkillEmailError as exc:
        fields["error_code"] = exc.code
        if exc.status >= 500 or exc.retryable:
            logger.error("notification to be redelivered: %s: %s", exc.code, exc.message)
            raise
        logger.error("notification acknowledged without sync: %s: %s", exc.code, exc.message)
        return "acknowledged"


def _sync_and_deliver(conn: db.Connection, notification: GmailPushRequest, fields: dict[str, Any]) -> str:
    result = sync.sync_mailbox(conn, notification.email_address, notification.history_id)
    if not result.known:
        logger.info("notification for a mailbox nobody watches, acknowledged (@%s)", _domain(notification))
        return "unwatched"
    fields.update(
        user_ids=result.user_ids,
        watchers=result.watchers,
        added=result.added,
        queued=len(result.queued),
        resynced=result.resynced,
    )
    if result.skipped:
        return "up_to_date"
    if result.queued:
        try:
            fields.update(delivery.deliver_new(conn, result.queued).as_dict())
        except SkillEmailError as exc:  # queued already: the scheduled run delivers them
            logger.warning("immediate delivery skipped: %s; the scheduled run retries", exc.code)
    return "synced"


def _domain(notification: GmailPushRequest) -> str:
    return notification.email_address.rpartition("@")[2][:100]
