"""The HTTP targets ``watch_mailbox`` and ``list_events``: typed request in, JSON body out."""

from __future__ import annotations

from typing import Any

from shared import db
from shared.errors import InvalidArgument
from shared.events import outbox, watch
from shared.request_types import WATCH_ACTIONS, ListEventsRequest, WatchMailboxRequest
from shared.web import Call


def watch_mailbox(args: WatchMailboxRequest, call: Call) -> dict[str, Any]:
    """``watch_mailbox``: start (default) or stop; see ``watch``."""
    if args.action not in WATCH_ACTIONS:
        raise InvalidArgument("action: must be start or stop")
    assert args.robeing_id is not None  # required by the request type
    call.log["action"] = args.action
    if args.action == "stop":
        if args.label_ids is not None:
            raise InvalidArgument("label_ids: only with action start")
        return watch.stop(args.user_id, args.robeing_id)
    if args.label_ids is not None and not args.label_ids:
        raise InvalidArgument("label_ids: at least one label, or leave it out for INBOX")
    return watch.start(args.user_id, args.robeing_id, args.label_ids)


def list_events(args: ListEventsRequest, call: Call) -> dict[str, Any]:
    """``list_events``: the robeing's events after ``after``, at most ``limit``, in queued order."""
    outbox.parse_cursor(args.after)  # a malformed cursor is 400 before the database is reached
    with db.connection() as conn:
        page = outbox.list_events(conn, args.robeing_id, args.after, args.limit)
    call.log["result_count"] = len(page["events"])
    return page
