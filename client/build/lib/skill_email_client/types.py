"""The shapes of the functions' answers (CONTRACT.md), as TypedDicts for editors and type checkers.

They describe JSON; at run time every answer is a plain ``dict``. ``total=False`` where a key is present
only sometimes (bodies only with ``include_body``, counts only with ``include_counts``).
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict


class Address(TypedDict):
    name: str | None
    email: str


class AttachmentInfo(TypedDict):
    filename: str
    mime_type: str
    size: int
    attachment_id: str
    inline: bool
    content_id: str | None


class Message(TypedDict, total=False):
    id: str
    thread_id: str
    label_ids: list[str]
    snippet: str
    # "from" is a keyword in Python: read it as message["from"].
    subject: str | None
    to: str | None
    cc: str | None
    date: str | None
    internal_date: str | None
    size_estimate: int
    attachments: list[AttachmentInfo]
    from_address: Address | None
    to_addresses: list[Address]
    cc_addresses: list[Address]
    body_text: str | None
    body_html: str | None


class MessageDetail(Message, total=False):
    body_truncated: bool
    headers: dict[str, str | None]


class MessageList(TypedDict):
    messages: list[Message]
    next_page_token: str | None
    result_size_estimate: int


class Thread(TypedDict):
    id: str
    history_id: str
    messages: list[MessageDetail]


class Sent(TypedDict):
    id: str
    thread_id: str
    label_ids: list[str]


class Draft(TypedDict):
    draft_id: str
    message_id: str
    thread_id: str


class Modified(TypedDict, total=False):
    id: str
    thread_id: str
    label_ids: list[str]
    messages: list[dict[str, Any]]


class Label(TypedDict, total=False):
    id: str
    name: str
    type: Literal["system", "user"]
    messages_total: int
    messages_unread: int


class LabelList(TypedDict):
    labels: list[Label]


class TokenStatus(TypedDict):
    user_id: str
    connected: bool
    needs_reauth: bool
    scopes: list[str]
    expiry: str | None
    equipped_to: str | None


class RefreshFailure(TypedDict):
    user_id: str
    code: str


class RefreshSummary(TypedDict):
    checked: int
    refreshed: int
    skipped: int
    failed: list[RefreshFailure]


class Watch(TypedDict, total=False):
    history_id: str
    expiration: str
    stopped: bool


class Event(TypedDict):
    id: str
    type: str
    created_at: str
    user_id: str
    robeing_id: str
    message: Message


class EventPage(TypedDict):
    events: list[Event]
    next_cursor: str | None


class AttachmentFile(TypedDict):
    """An outgoing attachment as send_email takes it: ``content`` is base64 (see ``attachment()``)."""

    filename: str
    content: str
    mime_type: str


class Download(TypedDict):
    """get_attachment's answer: the bytes, their MIME type and the decoded filename."""

    content: bytes
    mime_type: str
    filename: str | None
