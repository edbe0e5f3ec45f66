"""``modify_email``: labels, read/unread, archive and trash for one message or one whole thread.

Invariants:

- the request is checked (exactly one of ``message_id``/``thread_id``, at least one change, no label both
  added and removed) before any token is read;
- label names are resolved with at most one ``labels.list`` per call;
- the thread form changes every message of the thread in one Gmail request per kind of change
  (``threads.modify``, ``threads.trash``, ``threads.untrash``), never one request per message;
- every call writes an audit row (``modify_email``).

Each Gmail call here sets a state (labels present or absent, in or out of the trash), so repeating it
is harmless and it goes through ``GmailClient.execute`` with its capped retries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared import audit, gmail
from shared.errors import InvalidArgument, SkillEmailError
from shared.gmail import GmailClient
from shared.mailbox.labels import LabelIds
from shared.mailbox.session import gmail_client, record_audit
from shared.request_types import ModifyEmailRequest
from shared.tokens import provider
from shared.web import Call


@dataclass(frozen=True)
class _Changes:
    """What to do, labels still as the caller named them."""

    add: tuple[str, ...]
    remove: tuple[str, ...]
    trash: bool | None


def _changes(args: ModifyEmailRequest) -> _Changes:
    if (args.message_id is None) == (args.thread_id is None):
        raise InvalidArgument("give exactly one of message_id and thread_id")
    if (
        not args.add_labels
        and not args.remove_labels
        and args.mark_read is None
        and args.archive is None
        and args.trash is None
    ):
        raise InvalidArgument(
            "nothing to change: give add_labels, remove_labels, mark_read, archive or trash"
        )
    add = list(args.add_labels or [])
    remove = list(args.remove_labels or [])
    if args.mark_read is not None:
        (remove if args.mark_read else add).append("UNREAD")
    if args.archive is not None:
        # archive=false is the way back: the message returns to the inbox.
        (remove if args.archive else add).append("INBOX")
    return _Changes(tuple(dict.fromkeys(add)), tuple(dict.fromkeys(remove)), args.trash)


def modify_email(args: ModifyEmailRequest, call: Call) -> dict[str, Any]:
    """Changes one message or thread; see the README, modify_email."""
    changes = _changes(args)
    target = args.message_id or args.thread_id
    assert target is not None
    with provider.open_session() as session:
        try:
            with gmail_client(session, args.user_id, args.robeing_id, call.log, target="modify_email") as (
                client,
                _record,
            ):
                result = _apply(client, changes, target, thread=args.thread_id is not None)
        except SkillEmailError as exc:
            record_audit(
                session,
                args,
                audit.MODIFY,
                call,
                http_status=exc.status,
                error_code=exc.code,
                gmail_message_id=args.message_id,
                gmail_thread_id=args.thread_id,
            )
            raise
        body = _answer(result, thread=args.thread_id is not None)
        record_audit(
            session,
            args,
            audit.MODIFY,
            call,
            http_status=200,
            gmail_message_id=args.message_id,
            gmail_thread_id=body.get("thread_id"),
            result_count=len(body["messages"]) if "messages" in body else 1,
        )
        return body


def _apply(client: GmailClient, changes: _Changes, target: str, *, thread: bool) -> dict[str, Any]:
    names = LabelIds(client)
    add = names.resolve("add_labels", changes.add) if changes.add else []
    remove = names.resolve("remove_labels", changes.remove) if changes.remove else []
    both = sorted(set(add) & set(remove))
    if both:
        raise InvalidArgument(f"label {both[0]!r} would be both added and removed")
    kind = "threads" if thread else "messages"
    calls = gmail.resource(client.endpoint, "users", kind)
    result: Any = None
    # Out of the trash before relabelling, into it after: the last answer then shows the final state.
    if changes.trash is False:
        result = client.execute(lambda: calls.untrash(userId="me", id=target))
    if add or remove:
        body = {"addLabelIds": add, "removeLabelIds": remove}
        result = client.execute(lambda: calls.modify(userId="me", id=target, body=body))
    if changes.trash is True:
        result = client.execute(lambda: calls.trash(userId="me", id=target))
    result = result if isinstance(result, dict) else {}
    if thread and not result.get("messages"):
        # Gmail's Thread answer normally lists the messages with their labels; should one come without
        # them, the labels are read back in one threads.get rather than answered as an empty thread.
        threads = gmail.resource(client.endpoint, "users", "threads")
        result = client.execute(lambda: threads.get(userId="me", id=target, format="minimal"))
    return result if isinstance(result, dict) else {}


def _label_ids(resource: dict[str, Any]) -> list[str]:
    return [str(label) for label in resource.get("labelIds") or []]


def _answer(result: dict[str, Any], *, thread: bool) -> dict[str, Any]:
    if not thread:
        return {"id": result.get("id"), "thread_id": result.get("threadId"), "label_ids": _label_ids(result)}
    messages = [message for message in result.get("messages") or [] if isinstance(message, dict)]
    return {
        "thread_id": result.get("id"),
        "messages": [{"id": message.get("id"), "label_ids": _label_ids(message)} for message in messages],
    }
