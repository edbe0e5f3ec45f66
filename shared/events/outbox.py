"""The events outbox (``gmail_events``): queueing one event per robeing and message, reading, retention.

Invariants:

- One event per ``(robeing_id, user_id, gmail message id)``: a unique key, so a redelivered, late or
  concurrent notification can never queue a second one (``ON CONFLICT DO NOTHING``).
- ``seq`` is the queued order, and for each robeing it is also the commit order: events are inserted under
  a transaction-level advisory lock per robeing, taken just before the insert and held to the commit. So
  a reader paging with ``after`` never skips an event that commits later with a smaller ``seq``.
- Events are kept ``RETENTION`` (7 days, the contract's minimum) and purged in bounded batches after.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from shared import clock
from shared.db import Connection
from shared.errors import InvalidArgument

EVENT_TYPE = "message.received"
RETENTION = timedelta(days=7)
# A purge deletes this many rows per statement, so one run never holds a long lock or a huge WAL burst.
PURGE_BATCH = 5_000
# Key space of the per-robeing advisory locks (pg_advisory_xact_lock(int, int)): any constant of ours.
EVENTS_LOCK_NAMESPACE = 0x5E_11_E7
MAX_CURSOR_DIGITS = 19  # seq is a BIGINT


@dataclass(frozen=True)
class Watcher:
    """One robeing watching one user's mailbox, for the labels it asked for."""

    user_id: str
    robeing_id: str
    label_ids: tuple[str, ...]

    def wants(self, labels: Iterable[str]) -> bool:
        """True when a message with ``labels`` was added to one of the watched labels."""
        return not set(self.label_ids).isdisjoint(labels)


def new_event_id() -> str:
    """A unique event id; it is also the ``webhook-id`` of every delivery attempt of the event."""
    return "evt_" + secrets.token_hex(12)


def queue(
    conn: Connection, items: Sequence[tuple[Watcher, dict[str, Any]]], now: datetime | None = None
) -> list[int]:
    """Queues one event per (watcher, MESSAGE) not queued before; call inside the sync's transaction.

    An event for a robeing with a webhook is due for delivery at once (``next_attempt_at = now``).

    Returns:
        The ``seq`` of the events queued now (duplicates of earlier ones are left out), in queued order.
    """
    if not items:
        return []
    now = clock.to_naive_utc(now or clock.utcnow())
    # One statement for all the robeings' locks, taken in sorted order (no lock cycles between syncs):
    # PostgreSQL evaluates a volatile function of the select list after the ORDER BY.
    conn.run(
        "SELECT pg_advisory_xact_lock(:namespace, hashtext(r)) FROM unnest(CAST(:robeings AS TEXT[])) AS r "
        "ORDER BY r",
        namespace=EVENTS_LOCK_NAMESPACE,
        robeings=sorted({watcher.robeing_id for watcher, _ in items}),
    )
    rows = conn.run(
        """
        INSERT INTO gmail_events (event_id, event_type, robeing_id, user_id, gmail_message_id, message,
                                  created_at, next_attempt_at)
        SELECT e.event_id, :event_type, e.robeing_id, e.user_id, e.message_id, CAST(e.message AS JSONB), :now,
               CASE WHEN EXISTS (SELECT 1 FROM gmail_webhooks w WHERE w.robeing_id = e.robeing_id)
                    THEN CAST(:now AS TIMESTAMP) END
        FROM unnest(CAST(:event_ids AS TEXT[]), CAST(:robeing_ids AS TEXT[]), CAST(:user_ids AS TEXT[]),
                    CAST(:message_ids AS TEXT[]), CAST(:messages AS TEXT[]))
             WITH ORDINALITY AS e(event_id, robeing_id, user_id, message_id, message, position)
        ORDER BY e.position
        ON CONFLICT (robeing_id, user_id, gmail_message_id) DO NOTHING
        RETURNING seq
        """,
        event_type=EVENT_TYPE,
        now=now,
        event_ids=[new_event_id() for _ in items],
        robeing_ids=[watcher.robeing_id for watcher, _ in items],
        user_ids=[watcher.user_id for watcher, _ in items],
        message_ids=[str(message["id"]) for _, message in items],
        messages=[json.dumps(message, ensure_ascii=False) for _, message in items],
    )
    return sorted(int(row["seq"]) for row in rows)


def event_body(row: dict[str, Any]) -> dict[str, Any]:
    """The event object, as ``list_events`` shows it and webhooks receive it."""
    message = row["message"]
    if isinstance(message, str):
        message = json.loads(message)
    return {
        "id": row["event_id"],
        "type": row["event_type"],
        "created_at": clock.rfc3339(row["created_at"]),
        "user_id": row["user_id"],
        "robeing_id": row["robeing_id"],
        "message": message,
    }


EVENT_COLUMNS = "seq, event_id, event_type, robeing_id, user_id, message, created_at"


def parse_cursor(cursor: str | None) -> int:
    """The ``seq`` a cursor continues after (0 for none).

    Raises:
        InvalidArgument: not a cursor this function gave out.
    """
    if cursor is None:
        return 0
    if not cursor.isdigit() or len(cursor) > MAX_CURSOR_DIGITS or not cursor.isascii():
        raise InvalidArgument("after: not a cursor from a previous list_events answer")
    return int(cursor)


def list_events(conn: Connection, robeing_id: str, after: str | None, limit: int) -> dict[str, Any]:
    """``list_events``: a robeing's events after the cursor, in queued order.

    Returns:
        ``{"events": [...], "next_cursor"}``; ``next_cursor`` continues after the page's last event and is
        None only when the page is empty.
    """
    rows = conn.run(
        f"SELECT {EVENT_COLUMNS} FROM gmail_events WHERE robeing_id = :robeing_id AND seq > :after "
        "ORDER BY seq LIMIT :limit",
        robeing_id=robeing_id,
        after=parse_cursor(after),
        limit=limit,
    )
    return {
        "events": [event_body(row) for row in rows],
        "next_cursor": str(rows[-1]["seq"]) if rows else None,
    }


def purge(conn: Connection, now: datetime | None = None, batch: int = PURGE_BATCH) -> int:
    """Deletes events older than ``RETENTION``, in batches; returns how many."""
    cutoff = clock.to_naive_utc(now or clock.utcnow()) - RETENTION
    total = 0
    while True:
        rows = conn.run(
            "DELETE FROM gmail_events WHERE seq IN (SELECT seq FROM gmail_events WHERE created_at < :cutoff "
            "ORDER BY created_at LIMIT :batch) RETURNING seq",
            cutoff=cutoff,
            batch=batch,
        )
        total += len(rows)
        if len(rows) < batch:
            return total
