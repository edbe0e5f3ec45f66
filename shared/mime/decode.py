"""Decoding Gmail message resources into the contract's MESSAGE dicts.

Decoded by hand, tolerantly, because mail in the wild carries every charset and every kind of malformed
header, and reading a mailbox must never fail on one odd message. Invariant: every function here is total
on any JSON-shaped resource, and its output holds valid Unicode with no control characters in header text.
"""

from __future__ import annotations

import datetime as dt
import email.message
import email.utils
import html
import re
import urllib.parse
from collections.abc import Iterator, Mapping

from shared import clock
from shared.mime.compose import ReplyContext
from shared.mime.request import DEFAULT_MIME_TYPE
from shared.mime.text import NEWLINES, b64decode_lenient, decode_bytes, decode_header_text

# An RFC 2231 extended value (charset'language'percent-encoded) that Gmail sometimes leaves in `filename`.
_RFC2231_VALUE = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.:-]*)'[A-Za-z0-9-]*'(.*%[0-9A-Fa-f]{2}.*)")


def reply_context_from_gmail(resource: Mapping[str, object]) -> ReplyContext:
    """Extracts what a reply needs from a Gmail message resource.

    Args:
        resource: A ``users.messages.get`` result, typically ``format=metadata`` with the
            ``Message-ID``, ``References`` and ``Subject`` headers.

    Returns:
        The reply context; fields absent from the resource are None.
    """
    payload = _mapping(resource.get("payload"))
    headers = _headers(payload)
    subject = headers.get("subject")
    return ReplyContext(
        message_id=_clean_header(headers.get("message-id")),
        references=_clean_header(headers.get("references")),
        subject=decode_header_text(subject) if subject is not None else None,
        thread_id=_str_or_none(resource.get("threadId")),
    )


def parse_gmail_message(resource: Mapping[str, object], *, include_body: bool) -> dict[str, object]:
    """Turns a Gmail message resource into the contract's MESSAGE.

    ``from``, ``to`` and ``cc`` are the decoded header values as strings (display names and all, several
    addresses comma-separated as the sender wrote them), not parsed address lists: the caller gets what a
    mail client shows. ``snippet`` is HTML-unescaped (Gmail returns ``&#39;`` and ``&amp;``). Bodies have
    their line ends turned into ``\\n``. Never raises on message content: unknown charsets, malformed
    encoded words and bad base64 come out as best-effort text.

    Args:
        resource: A ``users.messages.get`` result, ``format=metadata`` or ``format=full``.
        include_body: Whether to add ``body_text`` and ``body_html`` (None when there is no such part).

    Returns:
        ``{id, thread_id, label_ids, snippet, from, to, cc, subject, date, internal_date, size_estimate,
        attachments}`` plus ``body_text`` and ``body_html`` when asked.
    """
    payload = _mapping(resource.get("payload"))
    headers = _headers(payload)
    label_ids = resource.get("labelIds")
    snippet = resource.get("snippet")
    message: dict[str, object] = {
        "id": _str_or_none(resource.get("id")),
        "thread_id": _str_or_none(resource.get("threadId")),
        "label_ids": [label for label in label_ids if isinstance(label, str)]
        if isinstance(label_ids, list)
        else [],
        "snippet": html.unescape(snippet) if isinstance(snippet, str) else "",
        "from": _decoded(headers.get("from")),
        "to": _decoded(headers.get("to")),
        "cc": _decoded(headers.get("cc")),
        "subject": _decoded(headers.get("subject")),
        "date": _parse_date(headers.get("date")),
        "internal_date": _parse_internal_date(resource.get("internalDate")),
        "size_estimate": _int_or_none(resource.get("sizeEstimate")),
        "attachments": [],
    }
    attachments: list[dict[str, object]] = []
    body_text: str | None = None
    body_html: str | None = None
    found_text = found_html = False
    for part, is_attachment in _walk_parts(payload):
        if is_attachment:
            attachments.append(_attachment_entry(part))
            continue
        mime_type = _part_mime_type(part)
        if mime_type == "text/plain" and not found_text:
            found_text = True
            body_text = _part_text(part)
        elif mime_type == "text/html" and not found_html:
            found_html = True
            body_html = _part_text(part)
    message["attachments"] = attachments
    if include_body:
        message["body_text"] = body_text
        message["body_html"] = body_html
    return message


def _mapping(value: object) -> Mapping[str, object]:
    return value if isinstance(value, Mapping) else {}


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _int_or_none(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return None
    return None


def _headers(part: Mapping[str, object]) -> dict[str, str]:
    """A part's headers by lower-cased name; the first of repeated headers wins."""
    found: dict[str, str] = {}
    raw = part.get("headers")
    if not isinstance(raw, list):
        return found
    for header in raw:
        if not isinstance(header, Mapping):
            continue
        name, value = header.get("name"), header.get("value")
        if isinstance(name, str) and isinstance(value, str):
            found.setdefault(name.lower(), value)
    return found


def _clean_header(value: str | None) -> str | None:
    if value is None:
        return None
    return " ".join(value.split()) or None


def _decoded(value: str | None) -> str | None:
    return decode_header_text(value).strip() if value is not None else None


def _parse_date(value: str | None) -> str | None:
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except Exception:  # ValueError, TypeError, OverflowError, IndexError all occur on real mail
        return None
    return clock.rfc3339(parsed)


def _parse_internal_date(value: object) -> str | None:
    millis = _int_or_none(value)
    if millis is None:
        return None
    try:
        return clock.rfc3339(dt.datetime(1970, 1, 1, tzinfo=clock.UTC) + dt.timedelta(milliseconds=millis))
    except OverflowError:
        return None


def _walk_parts(part: Mapping[str, object], depth: int = 0) -> Iterator[tuple[Mapping[str, object], bool]]:
    """Yields leaf parts depth-first with whether each is an attachment; attachments are not entered."""
    # Gmail nests only as deep as the MIME tree; the cap guards against a pathological message.
    if depth > 50:
        return
    mime_type = _part_mime_type(part)
    children = part.get("parts")
    child_parts = (
        [child for child in children if isinstance(child, Mapping)] if isinstance(children, list) else []
    )
    if not mime_type.startswith("multipart/"):
        is_attachment = _is_attachment(part)
        yield part, is_attachment
        if is_attachment:
            return
    for child in child_parts:
        yield from _walk_parts(child, depth + 1)


def _part_mime_type(part: Mapping[str, object]) -> str:
    value = part.get("mimeType")
    return value.strip().lower() if isinstance(value, str) else ""


def _part_headers_message(part: Mapping[str, object]) -> email.message.Message:
    """The part's headers in a compat32 Message, whose parameter parsing tolerates anything."""
    headers = email.message.Message()
    raw = part.get("headers")
    if isinstance(raw, list):
        for header in raw:
            if isinstance(header, Mapping):
                name, value = header.get("name"), header.get("value")
                if isinstance(name, str) and isinstance(value, str) and name.lower().startswith("content-"):
                    headers[name] = value
    return headers


def _is_attachment(part: Mapping[str, object]) -> bool:
    if _part_filename(part):
        return True
    try:
        return _part_headers_message(part).get_content_disposition() == "attachment"
    except Exception:
        return False


def _part_filename(part: Mapping[str, object]) -> str:
    name = part.get("filename")
    if not isinstance(name, str) or not name:
        try:
            found = _part_headers_message(part).get_filename()
        except Exception:
            found = None
        name = found if isinstance(found, str) else ""
    return _decode_filename(name)


def _decode_filename(name: str) -> str:
    match = _RFC2231_VALUE.fullmatch(name)
    if match:
        name = decode_bytes(urllib.parse.unquote_to_bytes(match.group(2)), match.group(1))
    return decode_header_text(name).strip()


def _attachment_entry(part: Mapping[str, object]) -> dict[str, object]:
    body = _mapping(part.get("body"))
    return {
        "filename": _part_filename(part),
        "mime_type": _part_mime_type(part) or DEFAULT_MIME_TYPE,
        "size": _int_or_none(body.get("size")),
        "attachment_id": _str_or_none(body.get("attachmentId")),
    }


def _part_text(part: Mapping[str, object]) -> str | None:
    """A text part's body as Unicode; None when Gmail left it behind an attachmentId."""
    body = _mapping(part.get("body"))
    data = body.get("data")
    if not isinstance(data, str):
        return None if isinstance(body.get("attachmentId"), str) else ""
    try:
        charset = _part_headers_message(part).get_content_charset()
    except Exception:
        charset = None
    text = decode_bytes(b64decode_lenient(data), charset)
    return NEWLINES.sub("\n", text)
