"""``get_email``, ``get_thread`` and ``get_attachment``: reading whole messages, conversations and files.

Round trips (the README's promise): ``get_email`` one ``messages.get``; ``get_thread`` one
``threads.get`` however long the thread; ``get_attachment`` one ``messages.get`` to find the part (its
type and name), plus one ``attachments.get`` unless Gmail returned the part's bytes inline. Only a body
part that Gmail itself left behind an attachmentId (very large bodies) costs one more request each.
Attachments are streamed: the bytes pass through in 64 KiB chunks, never whole.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import flask

from shared import audit, gmail_stream
from shared.errors import InvalidArgument, NotFound, SkillEmailError
from shared.gmail import GmailClient
from shared.mailbox.session import gmail_client, record_audit
from shared.mime import decode, parts
from shared.mime.request import DEFAULT_MIME_TYPE
from shared.request_types import GetAttachmentRequest, GetEmailRequest, GetThreadRequest, UserRequest
from shared.tokens import provider
from shared.web import Call

T = TypeVar("T")


def get_email(args: GetEmailRequest, call: Call) -> dict[str, Any]:
    """One message with its bodies and reply headers; see the README, get_email."""

    def read(client: GmailClient) -> dict[str, Any]:
        resource = client.get_message(args.message_id, fmt="full")
        fetched = _fetch_pending_bodies(client, resource)
        return decode.full_message(resource, max_body_chars=args.max_body_chars, fetched=fetched)

    message = _audited(args, call, "get_email", audit.READ, read)
    call.log["gmail_message_id"] = message.get("id")
    return message


def get_thread(args: GetThreadRequest, call: Call) -> dict[str, Any]:
    """A whole conversation, oldest message first, from one threads.get; see the README, get_thread."""

    def read(client: GmailClient) -> dict[str, Any]:
        thread = client.get_thread(args.thread_id)
        resources = [item for item in thread.get("messages") or [] if isinstance(item, Mapping)]
        # Gmail lists a thread oldest first; sorting (stably) by internalDate makes that a promise.
        resources.sort(key=lambda item: parts.int_or_none(item.get("internalDate")) or 0)
        messages = [
            decode.full_message(
                resource,
                max_body_chars=args.max_body_chars,
                fetched=_fetch_pending_bodies(client, resource),
            )
            for resource in resources
        ]
        history_id = thread.get("historyId")
        return {
            "id": thread.get("id") if isinstance(thread.get("id"), str) else args.thread_id,
            "history_id": str(history_id) if history_id is not None else None,
            "messages": messages,
        }

    result = _audited(args, call, "get_thread", audit.READ_THREAD, read)
    call.log["result_count"] = len(result["messages"])
    return result


@dataclass(frozen=True)
class _Located:
    """Where an attachment's bytes are: inline in the message resource, or behind a Gmail attachmentId."""

    filename: str
    mime_type: str
    size: int | None
    data: bytes | None
    gmail_id: str | None


def _locate(resource: Mapping[str, object], attachment_id: str) -> _Located:
    leaf = parts.find_attachment(parts.mapping(resource.get("payload")), attachment_id)
    if leaf is None:
        if parts.is_part_id(attachment_id):
            raise NotFound("no such attachment in this message")
        # A Gmail attachmentId that is not in this read of the message: Gmail issues new ids on every
        # read, so it may still be valid. Its bytes then come without a known name or type.
        return _Located("attachment", DEFAULT_MIME_TYPE, None, None, attachment_id)
    entry = parts.attachment_entry(leaf)
    body = parts.mapping(leaf.part.get("body"))
    data, gmail_id = body.get("data"), body.get("attachmentId")
    return _Located(
        filename=str(entry["filename"] or "attachment"),
        mime_type=str(entry["mime_type"]),
        size=parts.int_or_none(body.get("size")),
        data=parts.decode_data(data) if isinstance(data, str) else None,
        gmail_id=gmail_id if isinstance(gmail_id, str) else None,
    )


def get_attachment(args: GetAttachmentRequest, call: Call) -> flask.Response:
    """The attachment's bytes, streamed, with its type and RFC 6266 filename; see the README."""

    def read(client: GmailClient) -> flask.Response:
        found = _locate(client.get_message(args.message_id, fmt="full"), args.attachment_id)
        size = found.size
        chunks: Iterator[bytes]
        if found.data is not None:
            chunks, size = iter([found.data]), len(found.data)
        elif found.gmail_id is not None:
            try:
                stream = gmail_stream.open_attachment(client, args.message_id, found.gmail_id)
            except InvalidArgument as exc:  # Gmail answers 400 for an attachment id it does not know
                raise NotFound("no such attachment in this message") from exc
            chunks = stream.chunks
            size = stream.size if stream.size is not None else size
        else:
            chunks, size = iter([b""]), 0
        call.log["attachment_bytes"] = size
        headers = {
            "Content-Disposition": content_disposition(found.filename),
            "X-Content-Type-Options": "nosniff",
        }
        if size is not None:
            headers["Content-Length"] = str(size)
        return flask.Response(
            chunks, status=200, mimetype=found.mime_type, headers=headers, direct_passthrough=True
        )

    return _audited(args, call, "get_attachment", audit.ATTACHMENT, read)


def content_disposition(filename: str) -> str:
    """``attachment`` with an ASCII ``filename`` fallback and the exact name as RFC 6266 ``filename*``.

    Args:
        filename: The decoded filename (any Unicode).

    Returns:
        e.g. ``attachment; filename="_.pdf"; filename*=UTF-8''%EB%B3%B4.pdf``.
    """
    fallback = (
        "".join(char if " " <= char <= "~" and char not in '"\\%' else "_" for char in filename).strip()
        or "attachment"
    )
    encoded = urllib.parse.quote(filename, safe="!#$&+-.^_`|~")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"


def _fetch_pending_bodies(client: GmailClient, resource: Mapping[str, object]) -> dict[str, bytes]:
    """Bytes of the body parts Gmail left behind an attachmentId (rare: very large bodies), by path."""
    message_id = resource.get("id")
    fetched: dict[str, bytes] = {}
    if not isinstance(message_id, str):
        return fetched
    for leaf in parts.bodies(parts.mapping(resource.get("payload"))).pending:
        gmail_id = parts.mapping(leaf.part.get("body")).get("attachmentId")
        if isinstance(gmail_id, str):
            answer = client.get_attachment(message_id, gmail_id)
            data = answer.get("data")
            fetched[leaf.path] = parts.decode_data(data) if isinstance(data, str) else b""
    return fetched


def _audited(args: UserRequest, call: Call, target: str, action: str, read: Callable[[GmailClient], T]) -> T:
    """Runs ``read`` with the user's Gmail client and writes the audit row, success or not."""
    with provider.open_session() as session:
        try:
            with gmail_client(session, args.user_id, args.robeing_id, call.log, target=target) as (client, _):
                result = read(client)
        except SkillEmailError as exc:
            record_audit(session, args, action, call, http_status=exc.status, error_code=exc.code)
            raise
        record_audit(
            session,
            args,
            action,
            call,
            http_status=200,
            gmail_message_id=getattr(args, "message_id", None),
            gmail_thread_id=getattr(args, "thread_id", None),
        )
        return result
