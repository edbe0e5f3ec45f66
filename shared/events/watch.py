"""``watch_mailbox`` start and stop, and renewing Gmail watches before they lapse.

Gmail keeps one watch per mailbox (a second ``users.watch`` replaces the first), while several robeings may
watch one mailbox, each for its labels. So Gmail is asked to watch the union of the active watchers'
labels; each robeing's events are filtered to its own labels at sync time. Start and stop hold the
mailbox's row lock across their Gmail call, so two robeings starting or stopping at once cannot leave
Gmail watching the wrong labels, or stopped while someone still watches.

Invariants: starting again is safe and keeps the events queued; Gmail's watch is stopped only when the
last active watcher stops; a mailbox nobody watched is synced from Gmail's history id at the new start,
never from an old id (which would replay what arrived while nobody watched).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from shared import clock, config, db
from shared.errors import SkillEmailError
from shared.events import gmail_access
from shared.events.sync import watchers_of

logger = logging.getLogger(__name__)

DEFAULT_LABELS = ("INBOX",)
# CONTRACT.md: the scheduled run renews every watch that expires within 24 h (Gmail's last 7 days).
RENEW_WITHIN = timedelta(hours=24)
# The scheduled run renews for at most this long; mailboxes left over are renewed by the next run,
# still hours before they lapse.
RENEW_BUDGET_S = 20.0


def _now() -> datetime:
    return clock.to_naive_utc(clock.utcnow())


def _now_ms() -> int:
    return int(clock.utcnow().timestamp() * 1000)


def start(user_id: str, robeing_id: str, label_ids: Sequence[str] | None) -> dict[str, Any]:
    """Starts (or renews) this robeing's watch of the user's mailbox.

    Returns:
        ``{"history_id", "expiration"}``: Gmail's history id and when its watch lapses (RFC 3339).
    """
    labels = sorted(set(label_ids or DEFAULT_LABELS))
    topic = config.pubsub_topic()
    with gmail_access.client_for(user_id, robeing_id) as client:
        email_address, profile_history_id = gmail_access.profile(client)
        with db.connection() as conn, conn.transaction():
            conn.run(
                "INSERT INTO gmail_mailbox_watch (email_address, history_id, last_message_ms, "
                "watched_labels) VALUES (:e, :h, :ms, :labels) ON CONFLICT (email_address) DO NOTHING",
                e=email_address,
                h=profile_history_id,
                ms=_now_ms(),
                labels=labels,
            )
            conn.run("SELECT 1 FROM gmail_mailbox_watch WHERE email_address = :e FOR UPDATE", e=email_address)
            watchers = watchers_of(conn, email_address)
            others = [w for w in watchers if (w.user_id, w.robeing_id) != (user_id, robeing_id)]
            union = sorted({*labels, *(label for w in others for label in w.label_ids)})
            history_id, expiration = gmail_access.watch(client, topic, union)
            if not watchers:  # nobody watched: start from now, not from where an old watch stopped
                conn.run(
                    "UPDATE gmail_mailbox_watch SET history_id = :h, last_message_ms = :ms "
                    "WHERE email_address = :e",
                    h=history_id,
                    ms=_now_ms(),
                    e=email_address,
                )
            conn.run(
                "UPDATE gmail_mailbox_watch SET watched_labels = :labels, watch_expiration = :exp, "
                "updated_at = :now WHERE email_address = :e",
                labels=union,
                exp=expiration,
                now=_now(),
                e=email_address,
            )
            conn.run(
                "INSERT INTO gmail_watchers (user_id, robeing_id, email_address, label_ids, active, "
                "started_at, updated_at) VALUES (:u, :r, :e, :labels, TRUE, :now, :now) "
                "ON CONFLICT (user_id, robeing_id) DO UPDATE SET email_address = EXCLUDED.email_address, "
                "label_ids = EXCLUDED.label_ids, "
                "active = TRUE, started_at = CASE WHEN gmail_watchers.active THEN gmail_watchers.started_at "
                "ELSE EXCLUDED.started_at END, updated_at = EXCLUDED.updated_at",
                u=user_id,
                r=robeing_id,
                e=email_address,
                labels=labels,
                now=_now(),
            )
    return {"history_id": str(history_id), "expiration": clock.rfc3339(expiration)}


def stop(user_id: str, robeing_id: str) -> dict[str, Any]:
    """Stops this robeing's watch; Gmail's watch stops with the last watcher. Safe to repeat.

    Stopping needs no usable token unless this is the last watcher, and not even then: a mailbox whose
    token is gone cannot be told to stop, but it is no longer renewed, so Gmail's watch lapses within 7
    days, and notifications meanwhile are acknowledged as for a mailbox nobody watches.
    """
    with db.connection() as conn, conn.transaction():
        watcher = conn.one(
            "SELECT email_address FROM gmail_watchers WHERE user_id = :u AND robeing_id = :r AND active",
            u=user_id,
            r=robeing_id,
        )
        if watcher is None:
            return {"stopped": True}
        email_address = watcher["email_address"]
        conn.run("SELECT 1 FROM gmail_mailbox_watch WHERE email_address = :e FOR UPDATE", e=email_address)
        conn.run(
            "UPDATE gmail_watchers SET active = FALSE, updated_at = :now "
            "WHERE user_id = :u AND robeing_id = :r",
            now=_now(),
            u=user_id,
            r=robeing_id,
        )
        if watchers_of(conn, email_address):
            return {"stopped": True}
        try:
            with gmail_access.client_for(user_id, robeing_id) as client:
                gmail_access.stop(client)
        except gmail_access.TOKEN_UNUSABLE as exc:
            logger.warning("Gmail's watch not stopped (%s): it lapses unrenewed within 7 days", exc.code)
        conn.run(
            "UPDATE gmail_mailbox_watch SET watch_expiration = NULL, updated_at = :now "
            "WHERE email_address = :e",
            now=_now(),
            e=email_address,
        )
    return {"stopped": True}


def renew_expiring(within: timedelta = RENEW_WITHIN) -> dict[str, int]:
    """The scheduled run: renews Gmail's watch of every watched mailbox expiring within ``within``.

    A mailbox whose renewal fails (no usable token, Gmail or the database down) is counted and tried
    again by the next run.

    Raises:
        Unavailable: the database could not be reached for the list of mailboxes.
    """
    topic = config.pubsub_topic()
    with db.connection() as conn:
        rows = conn.run(
            "SELECT m.email_address FROM gmail_mailbox_watch m WHERE (m.watch_expiration IS NULL "
            "OR m.watch_expiration < :limit) AND EXISTS (SELECT 1 FROM gmail_watchers w "
            "WHERE w.email_address = m.email_address AND w.active) ORDER BY m.watch_expiration NULLS FIRST",
            limit=_now() + within,
        )
    counts = {"renewed": 0, "renew_failed": 0}
    started = clock.monotonic()
    for row in rows:
        if clock.monotonic() - started > RENEW_BUDGET_S:
            break
        try:
            _renew(row["email_address"], topic)
            counts["renewed"] += 1
        except SkillEmailError as exc:  # this mailbox only; a database that is down fails the next step
            counts["renew_failed"] += 1
            logger.warning("watch renewal failed: %s", exc.code)
    return counts


def _renew(email_address: str, topic: str) -> None:
    with db.connection() as conn:
        watchers = watchers_of(conn, email_address)
        tokens = [(w.user_id, w.robeing_id) for w in watchers]
        with gmail_access.client_for_any(tokens) as client, conn.transaction():
            conn.run("SELECT 1 FROM gmail_mailbox_watch WHERE email_address = :e FOR UPDATE", e=email_address)
            watchers = watchers_of(conn, email_address)
            if not watchers:
                return
            union = sorted({label for w in watchers for label in w.label_ids})
            _history_id, expiration = gmail_access.watch(client, topic, union)
            conn.run(
                "UPDATE gmail_mailbox_watch SET watched_labels = :labels, watch_expiration = :exp, "
                "updated_at = :now WHERE email_address = :e",
                labels=union,
                exp=expiration,
                now=_now(),
                e=email_address,
            )
