"""Decoding Gmail message resources into the contract's MESSAGE dicts.

Decoded by hand, tolerantly, because mail in the wild carries every charset and every kind of malformed
header, and reading a mailbox must never fail on one odd message. Invariants: every function here is total
on any JSON-shaped resource; header text holds no control characters; a header that appears more than
once (two ``To:`` lines) counts in full; addresses are parsed from the raw header before RFC 2047
decoding, so a display name holding a comma stays one address.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import html
from collections.abc import Mapping

from shared import clock
from shared.mime import parts
from shared.mime.compose import ReplyContext
from shared.mime.render import html_to_text
from shared.mime.text import decode_header_text, without_controls

# The headers whose every occurrence counts: a second To: or Cc: line adds recipients.
_ADDRESS_LISTS = ("to", "cc")


def reply_context_from_gmail(resource: Mapping[str, object]) -> ReplyContext:
    """Extracts what a reply needs from a Gmail message resource.

    Args:
        resource: A ``users.messages.get`` result, typically ``format=metadata`` with the
            ``Message-ID``, ``References`` and ``Subject`` headers.

    Returns:
        The reply context; fields absent from the resource are None.
    """
    headers = _headers(parts.mapping(resource.get("payload")))
    subject = _first(headers, "subject")
    return ReplyContext(
        message_id=_clean_header(_first(headers, "message-id")),
        references=_clean_header(_first(headers, "references")),
        subject=decode_header_text(subject) if subject is not None else None,
        thread_id=_str_or_none(resource.get("threadId")),
    )


def parse_gmail_message(resource: Mapping[str, object], *, include_body: bool) -> dict[str, object]:
    """Turns a Gmail message resource into the contract's MESSAGE.

    ``from``, ``to`` and ``cc`` are the decoded header values as strings (what a mail client shows; every
    ``To:`` line joined with ", "); ``from_address``, ``to_addresses`` and ``cc_addresses`` are the same
    addresses as ``{name, email}`` data. ``snippet`` is HTML-unescaped (Gmail returns ``&#39;``). Never
    raises on message content: unknown charsets, malformed encoded words and bad base64 come out as
    best-effort text.

    Args:
        resource: A ``users.messages.get`` result, ``format=metadata`` or ``format=full``.
        include_body: Whether to add ``body_text`` and ``body_html`` (None when there is no such part).

    Returns:
        ``{id, thread_id, label_ids, snippet, from, to, cc, subject, date, internal_date, size_estimate,
        attachments, from_address, to_addresses, cc_addresses}`` plus ``body_text`` and ``body_html``
        when asked.
    """
    payload = parts.mapping(resource.get("payload"))
    headers = _headers(payload)
    label_ids = resource.get("labelIds")
    snippet = resource.get("snippet")
    senders = addresses(headers.get("from", [])[:1])
    message: dict[str, object] = {
        "id": _str_or_none(resource.get("id")),
        "thread_id": _str_or_none(resource.get("threadId")),
        "label_ids": [label for label in label_ids if isinstance(label, str)]
        if isinstance(label_ids, list)
        else [],
        "snippet": without_controls(html.unescape(snippet)) if isinstance(snippet, str) else "",
        "from": _decoded(_first(headers, "from")),
        "to": _decoded_all(headers.get("to")),
        "cc": _decoded_all(headers.get("cc")),
        "subject": _decoded(_first(headers, "subject")),
        "date": _parse_date(_first(headers, "date")),
        "internal_date": _parse_internal_date(resource.get("internalDate")),
        "size_estimate": parts.int_or_none(resource.get("sizeEstimate")),
        "attachments": parts.attachments(payload),
        "from_address": senders[0] if senders else None,
        "to_addresses": addresses(headers.get("to", [])),
        "cc_addresses": addresses(headers.get("cc", [])),
    }
    if include_body:
        found = parts.bodies(payload)
        message["body_text"] = found.text
        message["body_html"] = found.html
    return message


def full_message(
    resource: Mapping[str, object], *, max_body_chars: int | None, fetched: Mapping[str, bytes] | None = None
) -> dict[str, object]:
    """The MESSAGE of ``get_email`` and ``get_thread``: bodies always, reply headers, optional truncation.

    ``body_text`` of a message with only HTML is a readable rendering of it (see ``render``). With
    ``max_body_chars``, ``body_text`` and ``body_html`` are each cut to that many characters and
    ``body_truncated`` says whether either was.

    Args:
        resource: A ``format=full`` message resource.
        max_body_chars: The most characters of each body to return; None for all.
        fetched: Bytes of body parts Gmail left behind an attachmentId, by part path.

    Returns:
        MESSAGE plus ``body_text``, ``body_html``, ``body_truncated`` and ``headers``:
        ``{message_id, in_reply_to, references, reply_to}`` (null when absent).
    """
    message = parse_gmail_message(resource, include_body=False)
    payload = parts.mapping(resource.get("payload"))
    found = parts.bodies(payload)
    text, markup = found.text, found.html
    for leaf in found.pending:
        data = (fetched or {}).get(leaf.path)
        if data is None:
            continue
        decoded = parts.part_text(leaf.part, data)
        if parts.mime_type(leaf.part) == "text/plain":
            text = decoded
        else:
            markup = decoded
    if text is None and markup:
        text = html_to_text(markup)
    truncated = False
    if max_body_chars is not None:
        if text is not None and len(text) > max_body_chars:
            text, truncated = text[:max_body_chars], True
        if markup is not None and len(markup) > max_body_chars:
            markup, truncated = markup[:max_body_chars], True
    headers = _headers(payload)
    message["body_text"] = text
    message["body_html"] = markup
    message["body_truncated"] = truncated
    message["headers"] = {
        "message_id": _clean_header(_first(headers, "message-id")),
        "in_reply_to": _clean_header(_first(headers, "in-reply-to")),
        "references": _clean_header(_first(headers, "references")),
        "reply_to": _decoded_all(headers.get("reply-to")),
    }
    return message


def addresses(values: list[str]) -> list[dict[str, str | None]]:
    """Every mailbox in the raw header values, as ``{name, email}`` (``name`` None when there is none).

    Parsed before RFC 2047 decoding, so an encoded name holding a comma ("김, 철수") is one address.
    Group syntax contributes its members; entries without an address are left out.

    Args:
        values: The raw values of every occurrence of one header (two ``To:`` lines give two values).
    """
    cleaned = [without_controls(value) for value in values]
    try:
        # strict=False where it exists (3.11.10+, 3.12.6+): the lenient parse of earlier releases,
        # rather than dropping every address of a header with one malformed entry.
        pairs = email.utils.getaddresses(cleaned, strict=False)
    except TypeError:
        pairs = email.utils.getaddresses(cleaned)
    except Exception:  # the legacy parser is total in practice; a header is not worth a 500
        return []
    found: list[dict[str, str | None]] = []
    for name, address in pairs:
        address = address.strip()
        if not address:
            continue
        display = decode_header_text(name).strip() if name else ""
        found.append({"name": display or None, "email": address})
    return found


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _headers(part: Mapping[str, object]) -> dict[str, list[str]]:
    """A part's headers by lower-cased name, every occurrence in order."""
    found: dict[str, list[str]] = {}
    raw = part.get("headers")
    if not isinstance(raw, list):
        return found
    for header in raw:
        if not isinstance(header, Mapping):
            continue
        name, value = header.get("name"), header.get("value")
        if isinstance(name, str) and isinstance(value, str):
            found.setdefault(name.lower(), []).append(value)
    return found


def _first(headers: Mapping[str, list[str]], name: str) -> str | None:
    values = headers.get(name)
    return values[0] if values else None


def _clean_header(value: str | None) -> str | None:
    if value is None:
        return None
    return " ".join(without_controls(value).split()) or None


def _decoded(value: str | None) -> str | None:
    return decode_header_text(value).strip() if value is not None else None


def _decoded_all(values: list[str] | None) -> str | None:
    """Every occurrence of an address header, decoded and joined as one list ("a, b")."""
    if not values:
        return None
    decoded = [text for text in (decode_header_text(value).strip() for value in values) if text]
    return ", ".join(decoded) if decoded else ""


def _parse_date(value: str | None) -> str | None:
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except Exception:  # ValueError, TypeError, OverflowError, IndexError all occur on real mail
        return None
    return clock.rfc3339(parsed)


def _parse_internal_date(value: object) -> str | None:
    millis = parts.int_or_none(value)
    if millis is None:
        return None
    try:
        return clock.rfc3339(dt.datetime(1970, 1, 1, tzinfo=clock.UTC) + dt.timedelta(milliseconds=millis))
    except OverflowError:
        return None
