"""Send-request validation: the mail fields of a ``send_email`` request into an :class:`OutgoingMail`.

The fields themselves are listed once, in ``request_types.MAIL_FIELDS``. Invariant: whatever this module
returns can be composed and sent (addresses are single, canonical mailboxes; header text has no control
character; attachments are decoded and within the contract's 24 MiB), and anything else is a 400 (or 413)
naming the field.
"""

from __future__ import annotations

import mimetypes
import re
from collections.abc import Mapping
from dataclasses import dataclass
from email import errors as email_errors
from email import policy
from email.headerregistry import Address

from shared import errors
from shared.mime import text as mime_text
from shared.request_types import MAIL_FIELDS

# Gmail caps a message at 500 recipients (To, Cc and Bcc together) for consumer accounts and at 500
# external ones for Workspace; asking for more only earns a Gmail error after the work is done.
MAX_RECIPIENTS = 500
# The contract's limit on decoded attachments: base64 makes 24 MiB about 32 MiB on the wire, which
# leaves room for the bodies under Gmail's 35 MB message limit.
MAX_ATTACHMENT_BYTES = 24 * 1024 * 1024
# Common file systems (and therefore the people saving an attachment) stop at 255 characters.
MAX_FILENAME_CHARS = 255
# RFC 5321 limits a path to 256 octets including the angle brackets, and a local part to 64.
MAX_ADDR_SPEC_CHARS = 254
MAX_LOCAL_PART_CHARS = 64
_MAIL_FIELDS = frozenset(MAIL_FIELDS)
_ATTACHMENT_FIELDS = frozenset({"filename", "content", "mime_type"})

_CR_LF = re.compile(r"[\r\n]")
# Everything str.splitlines() breaks on and every other control character except TAB, which a subject
# may hold: policy.default refuses multi-line header values with a bare ValueError.
_HEADER_CONTROLS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
_SURROGATES = re.compile(r"[\ud800-\udfff]")
DOMAIN_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_MIME_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*")
_BASE64_CHARS = re.compile(r"[A-Za-z0-9+/]*={0,2}")

# Types Python's built-in table lacks but people attach every day. Built-in table only (no
# /etc/mime.types), so that the guess is the same on every machine.
_MIME_TYPES = mimetypes.MimeTypes()
_EXTRA_TYPES = {
    ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    ".xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    ".pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    ".hwp": "application/x-hwp",
    ".gz": "application/gzip",
    ".7z": "application/x-7z-compressed",
    ".ics": "text/calendar",
    ".md": "text/markdown",
    ".webp": "image/webp",
    ".heic": "image/heic",
}
DEFAULT_MIME_TYPE = "application/octet-stream"


@dataclass(frozen=True)
class Attachment:
    """One decoded attachment of an outgoing message."""

    filename: str
    content: bytes
    mime_type: str


@dataclass(frozen=True)
class OutgoingMail:
    """The validated mail fields of a send_email request; addresses are canonical single mailboxes."""

    to: tuple[str, ...]
    cc: tuple[str, ...]
    bcc: tuple[str, ...]
    subject: str | None
    body: str | None
    html: str | None
    attachments: tuple[Attachment, ...]
    from_name: str | None
    reply_to: str | None


def parse_outgoing(fields: Mapping[str, object]) -> OutgoingMail:
    """Validates the mail fields of a send_email request.

    Strings are taken as JSON decoded them. Subject and display names lose surrounding whitespace
    (mail parsers drop it anyway); an empty ``from_name`` means none; attachment filenames are cut to
    their last path component, since a recipient's client would do so anyway.

    Args:
        fields: ``to`` (required), ``cc``, ``bcc``, ``subject``, ``body``, ``html``, ``attachments``,
            ``from_name``, ``reply_to``; any other key is rejected.

    Returns:
        The validated mail.

    Raises:
        errors.InvalidArgument: A field is missing, of the wrong type or malformed; the message names it.
        errors.PayloadTooLarge: The decoded attachments exceed 24 MiB together.
    """
    unknown = sorted(str(key) for key in fields if key not in _MAIL_FIELDS)
    if unknown:
        raise errors.InvalidArgument(f"unknown field {unknown[0]!r}")
    if "to" not in fields:
        raise errors.InvalidArgument("to: is required")

    to = _parse_recipients(fields["to"], "to")
    if not to:
        raise errors.InvalidArgument("to: at least one address is required")
    cc = _parse_recipients(fields["cc"], "cc") if "cc" in fields else ()
    bcc = _parse_recipients(fields["bcc"], "bcc") if "bcc" in fields else ()
    total = len(to) + len(cc) + len(bcc)
    if total > MAX_RECIPIENTS:
        raise errors.InvalidArgument(f"to/cc/bcc: {total} recipients; Gmail accepts at most {MAX_RECIPIENTS}")

    subject = _header_text(fields["subject"], "subject") if "subject" in fields else None
    from_name = _header_text(fields["from_name"], "from_name") if "from_name" in fields else None
    reply_to = None
    if "reply_to" in fields:
        reply_to = _format_address(parse_address(fields["reply_to"], "reply_to"))

    return OutgoingMail(
        to=to,
        cc=cc,
        bcc=bcc,
        subject=subject,
        body=_body_text(fields["body"], "body") if "body" in fields else None,
        html=_body_text(fields["html"], "html") if "html" in fields else None,
        attachments=_parse_attachments(fields["attachments"]) if "attachments" in fields else (),
        from_name=from_name or None,
        reply_to=reply_to,
    )


def _type_name(value: object) -> str:
    """Names a decoded JSON value's type the way a caller wrote it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


def _require_str(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise errors.InvalidArgument(f"{field}: must be a string, not {_type_name(value)}")
    if _SURROGATES.search(value):
        raise errors.InvalidArgument(f"{field}: contains an unpaired UTF-16 surrogate")
    return value


def _check_header_chars(value: str, field: str) -> None:
    if _CR_LF.search(value):
        raise errors.InvalidArgument(f"{field}: must not contain CR or LF")
    match = _HEADER_CONTROLS.search(value)
    if match:
        raise errors.InvalidArgument(
            f"{field}: must not contain control character U+{ord(match.group()):04X}"
        )


def _header_text(value: object, field: str) -> str:
    text = _require_str(value, field)
    _check_header_chars(text, field)
    return text.strip()


def _body_text(value: object, field: str) -> str:
    return _require_str(value, field)


def _parse_recipients(value: object, field: str) -> tuple[str, ...]:
    if isinstance(value, str):
        items: list[object] = [value]
        names = [field]
    elif isinstance(value, list):
        items = value
        names = [f"{field}[{index}]" for index in range(len(value))]
    else:
        raise errors.InvalidArgument(
            f"{field}: must be a string or a list of strings, not {_type_name(value)}"
        )
    if len(items) > MAX_RECIPIENTS:
        raise errors.InvalidArgument(
            f"{field}: {len(items)} recipients; Gmail accepts at most {MAX_RECIPIENTS}"
        )
    return tuple(_format_address(parse_address(item, name)) for item, name in zip(items, names, strict=True))


def parse_address(value: object, field: str) -> Address:
    """Parses exactly one mailbox, ``addr@example.com`` or ``Name <addr@example.com>``."""
    text = _require_str(value, field)
    _check_header_chars(text, field)
    if not text.strip():
        raise errors.InvalidArgument(f"{field}: is empty")
    try:
        header = policy.default.header_factory("to", text)
        groups = header.groups
        defects = header.defects
    except Exception as exc:  # the stdlib parser raises IndexError and friends on some garbage
        raise errors.InvalidArgument(f"{field}: not an email address: {text!r}") from exc
    # Obsolete syntax ("John Q. Public <jq@example.com>") is still one clear address.
    real_defects = [d for d in defects if not isinstance(d, email_errors.ObsoleteHeaderDefect)]
    if len(groups) > 1 or (groups and len(groups[0].addresses) > 1):
        raise errors.InvalidArgument(f"{field}: must hold exactly one address; use a list for several")
    if not groups or not groups[0].addresses or real_defects:
        raise errors.InvalidArgument(f"{field}: not an email address: {text!r}")
    if groups[0].display_name is not None:
        raise errors.InvalidArgument(f"{field}: address groups are not supported")
    address = groups[0].addresses[0]
    _check_addr_spec(address.username, address.domain, field, text)
    display_name = address.display_name.strip()
    _check_header_chars(display_name, field)
    if "=?" in display_name:
        # An encoded word the parser could not decode; it cannot be sent back out faithfully.
        raise errors.InvalidArgument(f"{field}: malformed RFC 2047 encoded word in display name: {text!r}")
    return Address(display_name=display_name, username=address.username, domain=address.domain)


def _check_addr_spec(username: str, domain: str, field: str, text: str) -> None:
    if not username or not domain:
        raise errors.InvalidArgument(f"{field}: {text!r} has no domain")
    if not (username.isascii() and domain.isascii()):
        raise errors.InvalidArgument(f"{field}: non-ASCII email addresses are not supported: {text!r}")
    if len(username) > MAX_LOCAL_PART_CHARS or len(username) + 1 + len(domain) > MAX_ADDR_SPEC_CHARS:
        raise errors.InvalidArgument(f"{field}: address too long: {text!r}")
    # Internet mail goes to host names: letters, digits and hyphens, at least two labels.
    labels = domain.split(".")
    if len(labels) < 2 or not all(DOMAIN_LABEL.fullmatch(label) for label in labels):
        raise errors.InvalidArgument(f"{field}: invalid domain {domain!r}")


def _format_address(address: Address) -> str:
    return str(address)


def _parse_attachments(value: object) -> tuple[Attachment, ...]:
    if not isinstance(value, list):
        raise errors.InvalidArgument(f"attachments: must be a list, not {_type_name(value)}")
    attachments = []
    total = 0
    for index, item in enumerate(value):
        field = f"attachments[{index}]"
        if not isinstance(item, Mapping):
            raise errors.InvalidArgument(f"{field}: must be an object, not {_type_name(item)}")
        unknown = sorted(str(key) for key in item if key not in _ATTACHMENT_FIELDS)
        if unknown:
            raise errors.InvalidArgument(f"{field}: unknown field {unknown[0]!r}")
        for key in ("filename", "content"):
            if key not in item:
                raise errors.InvalidArgument(f"{field}.{key}: is required")
        filename = _attachment_filename(item["filename"], f"{field}.filename")
        if isinstance(item["content"], bytes):
            content = item["content"]  # a multipart/form-data file part: already bytes
        else:
            content_text = _require_str(item["content"], f"{field}.content")
            # Checked before decoding so that a huge request fails without a huge allocation.
            if total + _decoded_size_estimate(content_text) > MAX_ATTACHMENT_BYTES:
                raise _too_large()
            content = _decode_base64(content_text, f"{field}.content")
        total += len(content)
        if total > MAX_ATTACHMENT_BYTES:
            raise _too_large()
        if "mime_type" in item:
            mime_type = _explicit_mime_type(item["mime_type"], f"{field}.mime_type")
        else:
            mime_type = guess_mime_type(filename)
        attachments.append(Attachment(filename=filename, content=content, mime_type=mime_type))
    return tuple(attachments)


def _too_large() -> errors.PayloadTooLarge:
    return errors.PayloadTooLarge(
        f"attachments: more than {MAX_ATTACHMENT_BYTES // (1024 * 1024)} MiB decoded"
    )


def _attachment_filename(value: object, field: str) -> str:
    text = _require_str(value, field)
    _check_header_chars(text, field)
    name = text.replace("\\", "/").rsplit("/", 1)[-1].strip()
    if name in ("", ".", ".."):
        raise errors.InvalidArgument(f"{field}: must name a file, got {text!r}")
    if len(name) > MAX_FILENAME_CHARS:
        raise errors.InvalidArgument(f"{field}: longer than {MAX_FILENAME_CHARS} characters")
    return name


def _decoded_size_estimate(text: str) -> int:
    return len(text) * 3 // 4


def _decode_base64(text: str, field: str) -> bytes:
    """Checks standard base64 strictly (a caller's mistake is named), then decodes it leniently.

    Line breaks and missing padding are tolerated: both are unambiguous.
    """
    compact = "".join(text.split())
    if not compact.isascii() or not _BASE64_CHARS.fullmatch(compact):
        hint = " (URL-safe alphabet? use + and /)" if "-" in compact or "_" in compact else ""
        raise errors.InvalidArgument(f"{field}: not valid base64{hint}")
    if len(compact) % 4 == 1:
        raise errors.InvalidArgument(f"{field}: not valid base64 (truncated)")
    if "=" in compact and len(compact) % 4:
        raise errors.InvalidArgument(f"{field}: not valid base64")
    return mime_text.b64decode_lenient(compact)


def _explicit_mime_type(value: object, field: str) -> str:
    text = _require_str(value, field).strip().lower()
    if not _MIME_TYPE.fullmatch(text):
        raise errors.InvalidArgument(f"{field}: must look like type/subtype, got {text!r}")
    # Both need their own transfer encodings (RFC 2046 forbids base64 for them), which raw bytes cannot get.
    if text.startswith(("multipart/", "message/")):
        raise errors.InvalidArgument(f"{field}: {text} cannot be attached; use application/octet-stream")
    return text


def guess_mime_type(filename: str) -> str:
    """Guesses an attachment's type from its filename's extension.

    Args:
        filename: The attachment's filename.

    Returns:
        A ``type/subtype``; ``application/octet-stream`` when the extension is unknown or names a type
        (``message/*``, ``multipart/*``) that cannot be sent as a base64 attachment.
    """
    extension = filename[filename.rfind(".") :].lower() if "." in filename else ""
    if not extension:
        return DEFAULT_MIME_TYPE
    guessed = _MIME_TYPES.types_map[True].get(extension) or _EXTRA_TYPES.get(extension)
    if not guessed or guessed.startswith(("multipart/", "message/")):
        return DEFAULT_MIME_TYPE
    return guessed
