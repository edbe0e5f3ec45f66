"""The typed request of every target: its fields, their bounds, and the headers it reads.

Each request type declares its schema once, in ``FIELDS`` (and ``HEADERS`` for request headers such as
``Idempotency-Key``). ``params.parse`` checks a request against that schema and returns an instance;
the registry in ``targets`` names the type per target, and the OpenAPI checks and (later) the MCP tool
schemas read the same declarations, so the field lists cannot drift apart.

Invariant: importing this module is cheap (no Google, database or MIME code), because every target's
cold start imports it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

from shared.params import Field, ident

USER_FIELDS: dict[str, Field] = {"user_id": ident(100, required=True), "robeing_id": ident(50)}
# The scheduled run's default window, and the longest a caller may ask for (a week: past that,
# "due" means every token, which is what a user-less refresh of everything would be).
DEFAULT_WINDOW_SECONDS = 900
MAX_WINDOW_SECONDS = 7 * 24 * 3600
IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"


@dataclass(frozen=True)
class Request:
    """Base of every typed request: ``FIELDS`` is its body or query schema, ``HEADERS`` its headers."""

    FIELDS: ClassVar[dict[str, Field]] = {}
    HEADERS: ClassVar[dict[str, str]] = {}
    # Set to a field's name to also take multipart/form-data: a "json" part with the fields, and one
    # file part named so per file, which reaches that field as {filename, content: bytes, mime_type}.
    MULTIPART_FILES: ClassVar[str | None] = None

    def as_body(self) -> dict[str, Any]:
        """The request's body fields (headers excluded), every declared one, defaults included."""
        return {item.name: getattr(self, item.name) for item in fields(self) if item.name in self.FIELDS}


@dataclass(frozen=True)
class UserRequest(Request):
    """A request about one person's mailbox: ``user_id`` and, optionally, the robeing it is for."""

    user_id: str
    robeing_id: str | None = None

    FIELDS: ClassVar[dict[str, Field]] = USER_FIELDS


@dataclass(frozen=True)
class TokenStatusRequest(UserRequest):
    """``token_status``."""


# A fanned-out scheduled run's slice (shared/tokens/scheduled.py SLICE_SIZE), with room to spare.
MAX_SLICE_ROWS = 5000


@dataclass(frozen=True)
class RefreshTokensRequest(Request):
    """``refresh_tokens``: one user's token now (``user_id``), the scheduled run (no user), or one slice
    of a fanned-out scheduled run (``row_ids``, sent by the run's own Cloud Tasks)."""

    user_id: str | None = None
    robeing_id: str | None = None
    window_seconds: int = DEFAULT_WINDOW_SECONDS
    row_ids: list[int] | None = None

    FIELDS: ClassVar[dict[str, Field]] = {
        "user_id": ident(100),
        "robeing_id": ident(50),
        "row_ids": Field("int_list", max_length=MAX_SLICE_ROWS),
        "window_seconds": Field("int", minimum=0, maximum=MAX_WINDOW_SECONDS, default=DEFAULT_WINDOW_SECONDS),
    }


@dataclass(frozen=True)
class ListEmailsRequest(UserRequest):
    """``list_emails``."""

    q: str | None = None
    label_ids: list[str] | None = None
    max_results: int = 20
    page_token: str | None = None
    include_body: bool = False
    include_spam_trash: bool = False

    FIELDS: ClassVar[dict[str, Field]] = {
        **USER_FIELDS,
        "q": Field("str", max_length=2048, description="Gmail search syntax, e.g. `is:unread from:a@b.com`"),
        "label_ids": Field("str_list", max_length=50),
        "max_results": Field("int", minimum=1, maximum=500, default=20),
        "page_token": Field(
            "str", min_length=1, max_length=1024, description="a previous answer's `next_page_token`"
        ),
        "include_body": Field("bool", default=False),
        "include_spam_trash": Field("bool", default=False),
    }


# Gmail ids are short hex strings; attachment ids are long tokens (Gmail's run to ~1,000 characters).
MAX_ID_CHARS = 256
MAX_ATTACHMENT_ID_CHARS = 4096


@dataclass(frozen=True)
class GetEmailRequest(UserRequest):
    """``get_email``."""

    message_id: str = ""
    max_body_chars: int | None = None

    FIELDS: ClassVar[dict[str, Field]] = {
        **USER_FIELDS,
        "message_id": Field("str", required=True, min_length=1, max_length=MAX_ID_CHARS),
        "max_body_chars": Field("int", minimum=1),
    }


@dataclass(frozen=True)
class GetThreadRequest(UserRequest):
    """``get_thread``."""

    thread_id: str = ""
    max_body_chars: int | None = None

    FIELDS: ClassVar[dict[str, Field]] = {
        **USER_FIELDS,
        "thread_id": Field("str", required=True, min_length=1, max_length=MAX_ID_CHARS),
        "max_body_chars": Field("int", minimum=1),
    }


@dataclass(frozen=True)
class GetAttachmentRequest(UserRequest):
    """``get_attachment``: ``attachment_id`` as listed in a MESSAGE's ``attachments``."""

    message_id: str = ""
    attachment_id: str = ""

    FIELDS: ClassVar[dict[str, Field]] = {
        **USER_FIELDS,
        "message_id": Field("str", required=True, min_length=1, max_length=MAX_ID_CHARS),
        "attachment_id": Field("str", required=True, min_length=1, max_length=MAX_ATTACHMENT_ID_CHARS),
    }


# The fields that describe the message itself. They are checked in depth by the MIME request parser
# (addresses, base64, CR/LF), so here they are only declared, with the JSON Schema that tells a caller
# (an MCP tool's input schema, docs/openapi.yaml) what that parser takes; this is the one list of them.
MAIL_FIELDS = ("to", "cc", "bcc", "subject", "body", "html", "attachments", "from_name", "reply_to")
# Any Unicode but no CR, LF or other control character (TAB allowed): what a header value may hold.
HEADER_TEXT: dict[str, Any] = {
    "type": "string",
    "pattern": r"^[^\u0000-\u0008\u000a-\u001f\u007f-\u009f\u2028\u2029]*$",
}
ADDRESS: dict[str, Any] = {**HEADER_TEXT, "minLength": 1, "description": "`addr@x` or `Name <addr@x>`"}
ADDRESSES: dict[str, Any] = {
    "oneOf": [ADDRESS, {"type": "array", "minItems": 1, "maxItems": 500, "items": ADDRESS}],
    "description": "`addr@x` or `Name <addr@x>` (non-ASCII names allowed), or a list of them",
}
ATTACHMENT: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["filename", "content"],
    "properties": {
        "filename": {**HEADER_TEXT, "minLength": 1},
        "content": {
            "type": "string",
            "contentEncoding": "base64",
            "pattern": r"^[A-Za-z0-9+/=\s]*$",
            "description": "the file's bytes, standard base64",
        },
        "mime_type": {
            "type": "string",
            "pattern": r"^\s*[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*\s*$",
        },
    },
}
MAIL_FIELD_SCHEMAS: dict[str, dict[str, Any]] = {
    "to": ADDRESSES,
    "cc": ADDRESSES,
    "bcc": ADDRESSES,
    "subject": {**HEADER_TEXT, "description": "any Unicode (Korean included); no CR/LF"},
    "body": {"type": "string", "description": "plain-text body"},
    "html": {"type": "string", "description": "HTML body; with `body` the message is multipart/alternative"},
    "attachments": {
        "type": "array",
        "items": ATTACHMENT,
        "description": "at most 24 MiB decoded in all",
    },
    "from_name": {**HEADER_TEXT, "description": "display name; the address is always the mailbox's own"},
    "reply_to": ADDRESS,
}
# What HTTP takes as a header, as a field for callers without per-call headers (MCP tool arguments).
HEADER_FIELDS: dict[str, Field] = {
    "idempotency_key": Field(
        "str",
        min_length=1,
        max_length=255,
        description="as the Idempotency-Key header: a repeat with the same key and request sends nothing",
    ),
}


@dataclass(frozen=True)
class SendEmailRequest(UserRequest):
    """``send_email`` (and ``create_draft``): the message's fields, unchecked until composed."""

    to: Any = None
    cc: Any = None
    bcc: Any = None
    subject: Any = None
    body: Any = None
    html: Any = None
    attachments: Any = None
    from_name: Any = None
    reply_to: Any = None
    reply_to_message_id: str | None = None
    thread_id: str | None = None
    idempotency_key: str | None = None

    FIELDS: ClassVar[dict[str, Field]] = {
        **USER_FIELDS,
        **{
            name: Field("any", required=name == "to", query_ok=False, schema=MAIL_FIELD_SCHEMAS[name])
            for name in MAIL_FIELDS
        },
        "reply_to_message_id": Field(
            "str", min_length=1, max_length=256, description="Gmail id of the message answered"
        ),
        "thread_id": Field("str", min_length=1, max_length=256),
    }
    HEADERS: ClassVar[dict[str, str]] = {"idempotency_key": IDEMPOTENCY_KEY_HEADER}
    # 24 MiB of attachments is ~32 MiB as base64 in JSON, past Cloud Run's 32 MiB request cap.
    MULTIPART_FILES: ClassVar[str | None] = "attachments"

    def mail_fields(self) -> dict[str, Any]:
        """The message's fields that were given, for the MIME request parser."""
        return {name: getattr(self, name) for name in MAIL_FIELDS if getattr(self, name) is not None}


@dataclass(frozen=True)
class CreateDraftRequest(SendEmailRequest):
    """``create_draft``: every field of ``send_email``, composed by the same code."""


@dataclass(frozen=True)
class SendDraftRequest(UserRequest):
    """``send_draft``."""

    draft_id: str = ""
    idempotency_key: str | None = None

    FIELDS: ClassVar[dict[str, Field]] = {
        **USER_FIELDS,
        "draft_id": Field("str", required=True, min_length=1, max_length=256),
    }
    HEADERS: ClassVar[dict[str, str]] = {"idempotency_key": IDEMPOTENCY_KEY_HEADER}


# Gmail allows 10,000 labels per mailbox; a call naming more than this is a mistake, not a use.
MAX_LABELS_PER_CALL = 100


@dataclass(frozen=True)
class ModifyEmailRequest(UserRequest):
    """``modify_email``: one message or one thread, and what to change on it."""

    message_id: str | None = None
    thread_id: str | None = None
    add_labels: list[str] | None = None
    remove_labels: list[str] | None = None
    mark_read: bool | None = None
    archive: bool | None = None
    trash: bool | None = None

    FIELDS: ClassVar[dict[str, Field]] = {
        **USER_FIELDS,
        "message_id": Field("str", min_length=1, max_length=256),
        "thread_id": Field("str", min_length=1, max_length=256),
        "add_labels": Field("str_list", max_length=MAX_LABELS_PER_CALL),
        "remove_labels": Field("str_list", max_length=MAX_LABELS_PER_CALL),
        "mark_read": Field("bool"),
        "archive": Field("bool"),
        "trash": Field("bool"),
    }


@dataclass(frozen=True)
class ListLabelsRequest(UserRequest):
    """``list_labels``."""

    include_counts: bool = False

    FIELDS: ClassVar[dict[str, Field]] = {**USER_FIELDS, "include_counts": Field("bool", default=False)}


WATCH_ACTIONS = ("start", "stop")


@dataclass(frozen=True)
class WatchMailboxRequest(UserRequest):
    """``watch_mailbox``: start (the default) or stop this robeing's new-mail watch of the user's mailbox."""

    action: str = "start"
    label_ids: list[str] | None = None

    FIELDS: ClassVar[dict[str, Field]] = {
        "user_id": ident(100, required=True),
        "robeing_id": ident(50, required=True),
        "action": Field("str", min_length=1, max_length=16, default="start", choices=WATCH_ACTIONS),
        "label_ids": Field("str_list", min_length=1, max_length=50),
    }


@dataclass(frozen=True)
class ListEventsRequest(Request):
    """``list_events``: a robeing's queued events after a cursor."""

    robeing_id: str = ""
    after: str | None = None
    limit: int = 100

    FIELDS: ClassVar[dict[str, Field]] = {
        "robeing_id": ident(50, required=True),
        "after": Field("str", min_length=1, max_length=32, pattern=r"^[0-9]+$"),
        "limit": Field("int", minimum=1, maximum=500, default=100),
    }


@dataclass(frozen=True)
class GmailPushRequest(Request):
    """``gmail_push``: Gmail's notification, the JSON object base64-encoded in the Pub/Sub message's data
    (``{"emailAddress", "historyId"}``, read into these fields by ``shared.events.push.parse``)."""

    email_address: str = ""
    history_id: int = 0

    FIELDS: ClassVar[dict[str, Field]] = {
        "email_address": Field("str", required=True, min_length=3, max_length=320),
        "history_id": Field("int", required=True, minimum=1, maximum=2**64 - 1),
    }


@dataclass(frozen=True)
class McpRequest(Request):
    """``mcp``: the body is one JSON-RPC message, read by the MCP SDK rather than checked here; each tool
    call's arguments are checked as the request of the target it names."""
