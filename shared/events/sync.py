"""One Gmail notification: read the mailbox's history since the last processed id and queue the events.

Concurrency (CONTRACT.md: a notification arriving while the mailbox is being synced is not dropped): each
page of history (500 records) is synced in one transaction holding the mailbox's row lock (``SELECT ...
FOR UPDATE``) from before it reads the page until it has queued the events and advanced ``history_id``.
A second notification for the same mailbox waits on that lock (at most the connection's ``lock_timeout``,
12 s; past that it answers 503 and Pub/Sub redelivers it), then re-reads the history from the id the first
one stored, so whatever Gmail added meanwhile is found. Events and the new history id commit together or
not at all: a sync that fails half way leaves the old id, and the redelivered notification does the work
again (the outbox's unique key absorbs any overlap). A page per transaction keeps each one short (the
connection's idle-in-transaction limit is 30 s) however long the backlog.

A notification whose history id is not beyond the stored one (a duplicate, or one overtaken by a later
notification) is answered without taking the lock or calling Gmail.

When Gmail no longer has the history asked for (404), the watched labels are listed since the newest
message seen (less ``RESYNC_MARGIN_MS``), starting from the profile's history id read before the listing, so
nothing added during the listing falls between the two. The listed messages are fetched outside any
transaction and queued ``RESYNC_CHUNK`` at a time; the history id moves at the end.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from shared import clock, db
from shared.errors import NotFound
from shared.events import gmail_access, outbox
from shared.events.outbox import Watcher
from shared.gmail import GmailClient
from shared.mime import decode

logger = logging.getLogger(__name__)

# Listing again after a 404 starts this long before the newest message seen: internalDate and Gmail's
# after: search disagree by up to a second, and a message delivered late may carry an earlier date.
RESYNC_MARGIN_MS = 10 * 60 * 1000
# A resync queues this many messages per transaction (ten Gmail batches of 50).
RESYNC_CHUNK = 500


@dataclass
class SyncResult:
    """What one notification did."""

    known: bool
    watchers: int = 0
    added: int = 0
    queued: list[int] = field(default_factory=list)
    resynced: bool = False
    skipped: bool = False
    history_id: int | None = None
    user_ids: list[str] = field(default_factory=list)


def watchers_of(conn: db.Connection, email_address: str) -> list[Watcher]:
    """The active watchers of a mailbox, oldest first (whose token a sync tries first)."""
    rows = conn.run(
        "SELECT user_id, robeing_id, label_ids FROM gmail_watchers WHERE email_address = :e AND active "
        "ORDER BY started_at, robeing_id",
        e=email_address,
    )
    return [Watcher(row["user_id"], row["robeing_id"], tuple(row["label_ids"] or ())) for row in rows]


def sync_mailbox(conn: db.Connection, email_address: str, notified_history_id: int) -> SyncResult:
    """Processes one notification for ``email_address`` on ``conn``; see the module docstring.

    Raises:
        Unavailable: the database or Gmail could not be reached (the notification should be redelivered).
        NotFound, ReauthRequired, PermissionDenied: no watcher's token can read the mailbox.
    """
    email_address = email_address.strip().lower()
    stored = conn.one("SELECT history_id FROM gmail_mailbox_watch WHERE email_address = :e", e=email_address)
    if stored is None:
        return SyncResult(known=False)
    watchers = watchers_of(conn, email_address)
    if not watchers:
        return SyncResult(known=False)
    user_ids = sorted({w.user_id for w in watchers})
    result = SyncResult(known=True, watchers=len(watchers), user_ids=user_ids)
    if notified_history_id <= int(stored["history_id"]):
        result.skipped = True
        return result
    tokens = [(w.user_id, w.robeing_id) for w in watchers]
    with gmail_access.client_for_any(tokens) as client:
        first = True
        while True:  # one transaction per history page, so a long backlog never holds one open for long
            try:
                with conn.transaction():
                    locked = _lock(conn, email_address)
                    if locked is None:
                        return SyncResult(known=False)
                    start, last_ms, watchers = locked
                    if first and notified_history_id <= start:  # the sync we waited for covered this one
                        result.skipped = True
                        return result
                    more = _sync_page(conn, client, email_address, start, last_ms, watchers, result)
            except _HistoryExpired as expired:
                _resync(conn, client, email_address, expired.start, expired.last_message_ms, result)
                return result
            first = False
            if not more:
                return result


class _HistoryExpired(Exception):
    """users.history.list answered 404 for ``start``: the mailbox must be listed instead."""

    def __init__(self, start: int, last_message_ms: int) -> None:
        super().__init__(start)
        self.start = start
        self.last_message_ms = last_message_ms


def _lock(conn: db.Connection, email_address: str) -> tuple[int, int, list[Watcher]] | None:
    """Locks the mailbox's row; its history id, newest message seen and watchers, or None if unwatched."""
    row = conn.one(
        "SELECT history_id, last_message_ms FROM gmail_mailbox_watch WHERE email_address = :e FOR UPDATE",
        e=email_address,
    )
    watchers = watchers_of(conn, email_address) if row is not None else []  # as they are now, locked
    if row is None or not watchers:
        return None
    return int(row["history_id"]), int(row["last_message_ms"]), watchers


def _sync_page(
    conn: db.Connection,
    client: GmailClient,
    email_address: str,
    start: int,
    last_message_ms: int,
    watchers: Sequence[Watcher],
    result: SyncResult,
) -> bool:
    """One page of history, queued and committed with its history id; whether there are more pages.

    Raises:
        _HistoryExpired: Gmail answered 404 (nothing was written; the transaction is rolled back).
    """
    try:
        added, history_id, more = gmail_access.history_page(client, start)
    except NotFound:
        raise _HistoryExpired(start, last_message_ms) from None
    labels = {label for watcher in watchers for label in watcher.label_ids}
    # Labels as Gmail recorded them when the message was added, when the history says; else as they are now.
    labels_at_add = {str(item["id"]): item.get("labelIds") for item in added}
    wanted = [
        message_id
        for message_id, at_add in labels_at_add.items()
        if at_add is None or not labels.isdisjoint(at_add)
    ]
    resources = client.get_messages(wanted, fmt="full") if wanted else []
    newest = _queue(conn, resources, labels_at_add, watchers, result)
    _advance(conn, email_address, max(start, history_id), max(last_message_ms, newest), result)
    return more


def _resync(
    conn: db.Connection,
    client: GmailClient,
    email_address: str,
    start: int,
    last_message_ms: int,
    result: SyncResult,
) -> None:
    """After a 404: lists the watched labels since the newest message seen and queues what it finds.

    The profile's history id is read first, so history continues from before the listing. Messages are
    fetched outside any transaction and queued ``RESYNC_CHUNK`` at a time under the mailbox's lock; the
    history id moves only at the end, so a resync cut short is simply done again (the unique key absorbs
    what was queued).
    """
    history_id = gmail_access.profile(client)[1]
    labels = sorted({label for watcher in watchers_of(conn, email_address) for label in watcher.label_ids})
    since_ms = max(0, last_message_ms - RESYNC_MARGIN_MS)
    listed = gmail_access.list_since(client, labels, since_ms // 1000)
    result.resynced = True
    logger.warning("history %d expired; listing the watched labels again (%d messages)", start, len(listed))
    listed.reverse()  # a listing is newest first: queue oldest first, as history does
    newest = last_message_ms
    for offset in range(0, len(listed), RESYNC_CHUNK):
        resources = client.get_messages(listed[offset : offset + RESYNC_CHUNK], fmt="full")
        resources.sort(key=lambda resource: (_internal_date_ms(resource), _int(resource.get("historyId"))))
        with conn.transaction():
            locked = _lock(conn, email_address)
            if locked is None:
                return
            newest = max(newest, _queue(conn, resources, {}, locked[2], result))
    with conn.transaction():
        if _lock(conn, email_address) is not None:
            _advance(conn, email_address, max(start, history_id), newest, result)


def _queue(
    conn: db.Connection,
    resources: list[dict[str, Any]],
    labels_at_add: dict[str, Any],
    watchers: Sequence[Watcher],
    result: SyncResult,
) -> int:
    """Queues each message's event for the watchers of its labels; returns the newest internalDate."""
    items: list[tuple[Watcher, dict[str, Any]]] = []
    newest = 0
    for resource in resources:
        message = decode.parse_gmail_message(resource, include_body=False)
        message_labels = labels_at_add.get(str(resource.get("id"))) or message["label_ids"]
        newest = max(newest, _internal_date_ms(resource))
        items.extend((watcher, message) for watcher in watchers if watcher.wants(message_labels))  # type: ignore[arg-type]
    result.added += len(resources)
    result.queued.extend(outbox.queue(conn, items))
    return newest


def _advance(
    conn: db.Connection, email_address: str, history_id: int, newest: int, result: SyncResult
) -> None:
    result.history_id = history_id
    conn.run(
        "UPDATE gmail_mailbox_watch SET history_id = GREATEST(history_id, :history_id), "
        "last_message_ms = GREATEST(last_message_ms, :newest), updated_at = :now WHERE email_address = :e",
        history_id=history_id,
        newest=newest,
        now=clock.to_naive_utc(clock.utcnow()),
        e=email_address,
    )


def _internal_date_ms(resource: dict[str, Any]) -> int:
    return _int(resource.get("internalDate"))


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0
