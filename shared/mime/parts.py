"""The MIME part tree of a Gmail message resource: its bodies, its attachments and their ids.

Every leaf part is either a body (the first ``text/plain`` and the first ``text/html`` that are not
attachments) or listed as an attachment: a part with a filename, a ``Content-Disposition: attachment``,
or any type that is not text (inline images included, flagged ``inline`` with their ``content_id``).

Attachment ids: every listed attachment gets ``part-<path>``, where ``<path>`` is the part's position in
the tree, the same numbering as Gmail's ``partId`` (``0``, ``1.2``; ``root`` for a message that is a single
part). Unlike Gmail's own ``attachmentId`` (which Gmail issues anew on every read, and which parts it
returned inline with ``body.data`` do not have at all), these are stable and exist for every part.
``get_attachment`` reads the message once to find the part, then its bytes from ``body.data`` or with one
``attachments.get``; a Gmail ``attachmentId`` is accepted too. Invariant: nothing here raises on content.
"""

from __future__ import annotations

import email.message
import re
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from shared.mime.request import DEFAULT_MIME_TYPE
from shared.mime.text import NEWLINES, b64decode_lenient, decode_bytes, decode_header_text, without_controls

PART_ID_PREFIX = "part-"
ROOT_PATH = "root"
_PART_ID = re.compile(r"part-(root|\d{1,4}(?:\.\d{1,4}){0,49})")
# An RFC 2231 extended value (charset'language'percent-encoded) that Gmail sometimes leaves in `filename`.
_RFC2231_VALUE = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.:-]*)'[A-Za-z0-9-]*'(.*%[0-9A-Fa-f]{2}.*)")
_BODY_TYPES = ("text/plain", "text/html")
# Gmail nests only as deep as the MIME tree; the cap guards against a pathological message.
_MAX_DEPTH = 50


@dataclass(frozen=True)
class Leaf:
    """One leaf part: its path in the tree, the resource, and whether it is listed as an attachment."""

    path: str
    part: Mapping[str, object]
    is_attachment: bool


@dataclass(frozen=True)
class Bodies:
    """A message's text bodies; None where there is no such part (or Gmail left it behind an id)."""

    text: str | None
    html: str | None
    # Body parts Gmail left behind an attachmentId (large bodies), which a reader may fetch.
    pending: tuple[Leaf, ...] = ()


def mapping(value: object) -> Mapping[str, object]:
    """``value`` if it is a JSON object, else an empty one."""
    return value if isinstance(value, Mapping) else {}


def int_or_none(value: object) -> int | None:
    """An int from a JSON number or numeric string (Gmail writes int64 as strings); None otherwise."""
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


def leaves(payload: Mapping[str, object]) -> Iterator[Leaf]:
    """Leaf parts depth-first; an attachment is not entered (an attached message is one attachment)."""
    yield from _walk(payload, "", 0)


def _walk(part: Mapping[str, object], path: str, depth: int) -> Iterator[Leaf]:
    if depth > _MAX_DEPTH:
        return
    children = part.get("parts")
    child_parts = (
        [child for child in children if isinstance(child, Mapping)] if isinstance(children, list) else []
    )
    if not mime_type(part).startswith("multipart/"):
        is_attachment = _is_attachment(part)
        yield Leaf(path or ROOT_PATH, part, is_attachment)
        if is_attachment:
            return
    for index, child in enumerate(child_parts):
        yield from _walk(child, f"{path}.{index}" if path else str(index), depth + 1)


def mime_type(part: Mapping[str, object]) -> str:
    """The part's ``type/subtype`` in lower case ("" when Gmail gave none)."""
    value = part.get("mimeType")
    return value.strip().lower() if isinstance(value, str) else ""


def _content_headers(part: Mapping[str, object]) -> email.message.Message:
    """The part's Content-* headers in a compat32 Message, whose parameter parsing tolerates anything."""
    headers = email.message.Message()
    raw = part.get("headers")
    if isinstance(raw, list):
        for header in raw:
            if isinstance(header, Mapping):
                name, value = header.get("name"), header.get("value")
                if isinstance(name, str) and isinstance(value, str) and name.lower().startswith("content-"):
                    headers[name] = value
    return headers


def _disposition(part: Mapping[str, object]) -> str | None:
    try:
        return _content_headers(part).get_content_disposition()
    except Exception:  # compat32 parsing of a hostile header
        return None


def _is_attachment(part: Mapping[str, object]) -> bool:
    if filename(part) or _disposition(part) == "attachment":
        return True
    kind = mime_type(part)
    # Every other non-text leaf (an inline image without a name, a calendar invite's binary twin) is
    # something a reader may want to open, so it is listed too; text parts are bodies.
    return not (kind.startswith("text/") or kind == "")


def filename(part: Mapping[str, object]) -> str:
    """The part's decoded filename ("" when it has none), never raising."""
    name = part.get("filename")
    if not isinstance(name, str) or not name:
        try:
            found = _content_headers(part).get_filename()
        except Exception:
            found = None
        name = found if isinstance(found, str) else ""
    match = _RFC2231_VALUE.fullmatch(name)
    if match:
        name = decode_bytes(urllib.parse.unquote_to_bytes(match.group(2)), match.group(1))
    return decode_header_text(name).strip()


def _content_id(part: Mapping[str, object]) -> str | None:
    try:
        value = _content_headers(part).get("Content-ID")
    except Exception:
        value = None
    if not isinstance(value, str):
        return None
    cleaned = without_controls(value).strip().strip("<>").strip()
    return cleaned or None


def attachment_id(leaf: Leaf) -> str:
    """The id ``get_attachment`` takes for this part: ``part-<path>``, stable across reads."""
    return PART_ID_PREFIX + leaf.path


def attachment_entry(leaf: Leaf) -> dict[str, object]:
    """The contract's ``{filename, mime_type, size, attachment_id, inline, content_id}``."""
    part = leaf.part
    body = mapping(part.get("body"))
    content_id = _content_id(part)
    disposition = _disposition(part)
    return {
        "filename": filename(part),
        "mime_type": mime_type(part) or DEFAULT_MIME_TYPE,
        "size": int_or_none(body.get("size")),
        "attachment_id": attachment_id(leaf),
        # Shown in the body rather than offered as a file: said so, or referenced by Content-ID.
        "inline": disposition == "inline" or (disposition is None and content_id is not None),
        "content_id": content_id,
    }


def attachments(payload: Mapping[str, object]) -> list[dict[str, object]]:
    """Every attachment of the message, in MIME order."""
    return [attachment_entry(leaf) for leaf in leaves(payload) if leaf.is_attachment]


def bodies(payload: Mapping[str, object]) -> Bodies:
    """The first text/plain and text/html body parts, decoded; line ends made ``\\n``."""
    found: dict[str, str | None] = {}
    pending: list[Leaf] = []
    for leaf in leaves(payload):
        kind = mime_type(leaf.part)
        if leaf.is_attachment or kind not in _BODY_TYPES or kind in found:
            continue
        text = part_text(leaf.part)
        found[kind] = text
        if text is None:
            pending.append(leaf)
    return Bodies(found.get("text/plain"), found.get("text/html"), tuple(pending))


def part_text(part: Mapping[str, object], data: bytes | None = None) -> str | None:
    """A text part's body as Unicode (``data`` when fetched separately); None when left behind an id."""
    if data is None:
        body = mapping(part.get("body"))
        encoded = body.get("data")
        if not isinstance(encoded, str):
            return None if isinstance(body.get("attachmentId"), str) else ""
        data = b64decode_lenient(encoded)
    try:
        charset = _content_headers(part).get_content_charset()
    except Exception:
        charset = None
    return NEWLINES.sub("\n", decode_bytes(data, charset))


def decode_data(data: str) -> bytes:
    """Gmail's base64url ``body.data`` (or ``attachments.get`` data) as bytes, never raising."""
    return b64decode_lenient(data)


def find_attachment(payload: Mapping[str, object], wanted: str) -> Leaf | None:
    """The listed attachment ``wanted`` names: a ``part-<path>`` id, or a Gmail ``attachmentId``."""
    by_path = _PART_ID.fullmatch(wanted)
    for leaf in leaves(payload):
        if not leaf.is_attachment:
            continue
        if by_path is not None and leaf.path == by_path.group(1):
            return leaf
        if by_path is None and mapping(leaf.part.get("body")).get("attachmentId") == wanted:
            return leaf
    return None


def is_part_id(value: str) -> bool:
    """True for our ``part-<path>`` ids (a Gmail attachmentId never has that shape)."""
    return _PART_ID.fullmatch(value) is not None
