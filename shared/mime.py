"""RFC 5322 messages out of send requests, and the contract's MESSAGE dicts out of Gmail resources.

Pure code: no network, no database. Outgoing messages are built with :class:`email.message.EmailMessage`
and :data:`email.policy.default`, whose header folding encodes non-ASCII display names, subjects and
filenames correctly (the legacy ``MIMEText`` API does not). Incoming Gmail resources are decoded by hand,
tolerantly, because mail in the wild carries every charset and every kind of malformed header, and
reading a mailbox must never fail on one odd message.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import datetime as dt
import email.message
import email.utils
import html
import mimetypes
import re
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from email import errors as email_errors
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import Policy

from shared import clock, errors
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
# RFC 5322 forbids lines longer than 998 octets; a longer text line forces base64.
_MAX_7BIT_LINE = 998

_MAIL_FIELDS = frozenset(MAIL_FIELDS)
_ATTACHMENT_FIELDS = frozenset({"filename", "content", "mime_type"})

_CR_LF = re.compile(r"[\r\n]")
# Everything str.splitlines() breaks on and every other control character except TAB: policy.default
# refuses multi-line header values with a bare ValueError, and the rest has no business in a header.
_HEADER_CONTROLS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
_SURROGATES = re.compile(r"[\ud800-\udfff]")
_NEWLINES = re.compile(r"\r\n|\r|\n")
_DOMAIN_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_MIME_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*")
_BASE64_CHARS = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_MSG_ID = re.compile(r"<[^<>\s]+>")
_RE_PREFIX = re.compile(r"re\s*:", re.IGNORECASE)
# An RFC 2047 encoded word; the text is printable ASCII without "?" so that decoding it cannot fail
# on anything but its own content.
_ENCODED_WORD = re.compile(r"=\?([!->@-~]+?)\?([bBqQ])\?([!->@-~]*?)\?=")
# An RFC 2231 extended value (charset'language'percent-encoded) that Gmail sometimes leaves in `filename`.
_RFC2231_VALUE = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.:-]*)'[A-Za-z0-9-]*'(.*%[0-9A-Fa-f]{2}.*)")

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
_DEFAULT_MIME_TYPE = "application/octet-stream"

# Charsets mail declares and the codec that decodes what senders really put under that label (the
# WHATWG Encoding Standard's mapping): "euc-kr" mail routinely holds CP949-only Hangul, "iso-8859-1"
# mail Windows-1252 quotes, "shift_jis" mail CP932 characters.
_CHARSET_SUPERSETS = {
    "euc-kr": "cp949",
    "ks-c-5601-1987": "cp949",
    "ks-c-5601": "cp949",
    "ksc5601": "cp949",
    "windows-949": "cp949",
    "x-windows-949": "cp949",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "shift-jis": "cp932",
    "sjis": "cp932",
    "x-sjis": "cp932",
    "ms-kanji": "cp932",
    "iso-2022-jp": "iso2022_jp_2",
    "iso-8859-1": "cp1252",
    "latin1": "cp1252",
    "latin-1": "cp1252",
    "l1": "cp1252",
}
# Codecs Python finds by a charset name that are not charsets: they would interpret the bytes.
_NOT_CHARSETS = frozenset(
    {"unicode-escape", "raw-unicode-escape", "idna", "punycode", "undefined", "mbcs", "oem"}
)

# Policy for the wire: CRLF as RFC 5322 wants, and 7bit so that anything not ASCII fails loudly.
_WIRE_POLICY = policy.SMTP.clone(cte_type="7bit")


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


@dataclass(frozen=True)
class ReplyContext:
    """What a reply needs to know about the message it answers."""

    message_id: str | None
    references: str | None
    subject: str | None
    thread_id: str | None


# --------------------------------------------------------------------------------------------------
# Validating a send request


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
        reply_to = _format_address(_parse_address(fields["reply_to"], "reply_to"))

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
    return tuple(_format_address(_parse_address(item, name)) for item, name in zip(items, names, strict=True))


def _parse_address(value: object, field: str) -> Address:
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
    if len(labels) < 2 or not all(_DOMAIN_LABEL.fullmatch(label) for label in labels):
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
    """Decodes standard base64, tolerating line breaks and missing padding (both unambiguous)."""
    compact = "".join(text.split())
    if not compact.isascii() or not _BASE64_CHARS.fullmatch(compact):
        hint = " (URL-safe alphabet? use + and /)" if "-" in compact or "_" in compact else ""
        raise errors.InvalidArgument(f"{field}: not valid base64{hint}")
    if len(compact) % 4 == 1:
        raise errors.InvalidArgument(f"{field}: not valid base64 (truncated)")
    if "=" not in compact:
        compact += "=" * (-len(compact) % 4)
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise errors.InvalidArgument(f"{field}: not valid base64") from exc


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
        return _DEFAULT_MIME_TYPE
    guessed = _MIME_TYPES.types_map[True].get(extension) or _EXTRA_TYPES.get(extension)
    if not guessed or guessed.startswith(("multipart/", "message/")):
        return _DEFAULT_MIME_TYPE
    return guessed


# --------------------------------------------------------------------------------------------------
# Building the message


def new_message_id(domain: str) -> str:
    """Makes a fresh RFC 5322 Message-ID.

    Args:
        domain: The sender's domain, e.g. ``gmail.com``.

    Returns:
        ``<random-hex.milliseconds@domain>``; the random part alone makes it unique.

    Raises:
        ValueError: ``domain`` is not a host name.
    """
    labels = domain.split(".")
    if not all(_DOMAIN_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"not a domain: {domain!r}")
    millis = int(clock.utcnow().timestamp() * 1000)
    return f"<{uuid.uuid4().hex}.{millis}@{domain.lower()}>"


def build_message(
    mail: OutgoingMail,
    sender: str,
    *,
    message_id: str,
    reply: ReplyContext | None = None,
    date: dt.datetime | None = None,
) -> EmailMessage:
    """Builds the message Gmail will send.

    Bcc stays in the message: Gmail's send API reads the recipients from it and removes it before delivery.

    Args:
        mail: The validated request.
        sender: The mailbox's own address (Gmail's profile ``emailAddress``); From always uses it.
        message_id: The Message-ID to set, e.g. from :func:`new_message_id`.
        reply: The message answered, to set In-Reply-To, References and a "Re: " subject.
        date: The Date header; now when omitted (naive values are taken as UTC).

    Returns:
        The message, ready for :func:`to_raw`.

    Raises:
        ValueError: ``sender`` or ``message_id`` is malformed (our bug or Gmail's, never the caller's).
    """
    try:
        own = _parse_address(sender, "sender")
    except errors.InvalidArgument as exc:
        raise ValueError(f"unusable sender address {sender!r}: {exc.message}") from exc
    if not _MSG_ID.fullmatch(message_id):
        raise ValueError(f"not a Message-ID: {message_id!r}")

    message = EmailMessage(policy=policy.default)
    from_address = Address(display_name=mail.from_name or "", username=own.username, domain=own.domain)
    message["From"] = _address_header("From", (from_address,))
    message["To"] = _address_header("To", _addresses(mail.to))
    if mail.cc:
        message["Cc"] = _address_header("Cc", _addresses(mail.cc))
    if mail.bcc:
        message["Bcc"] = _address_header("Bcc", _addresses(mail.bcc))
    if mail.reply_to:
        message["Reply-To"] = _address_header("Reply-To", _addresses((mail.reply_to,)))
    subject = mail.subject
    if reply is not None and not subject:
        subject = reply_subject(reply.subject)
    if subject and (not subject.isascii() or _ENCODED_WORD.search(subject)):
        # policy.default drops runs of spaces that fall between its encoded words, and decodes text
        # that merely looks like encoded words; ours keep every character inside the words.
        message["Subject"] = _encoded_text_header("Subject", subject)
    elif subject:
        message["Subject"] = subject
    when = date if date is not None else clock.utcnow()
    if when.tzinfo is None:
        when = when.replace(tzinfo=clock.UTC)
    message["Date"] = when.astimezone(clock.UTC)
    message["Message-ID"] = _msg_id_header("Message-ID", message_id)
    if reply is not None:
        in_reply_to, references = _threading_ids(reply)
        if in_reply_to:
            message["In-Reply-To"] = _msg_id_header("In-Reply-To", in_reply_to)
            message["References"] = _msg_id_header("References", " ".join(references))

    _set_body(message, mail)
    for attachment in mail.attachments:
        maintype, _, subtype = attachment.mime_type.partition("/")
        message.add_attachment(attachment.content, maintype, subtype, filename=attachment.filename)
    # add_* builds parts as EmailMessage, which stamps each with its own MIME-Version; only the top needs it.
    for part in message.walk():
        if part is not message:
            del part["MIME-Version"]
    if "MIME-Version" not in message:
        message["MIME-Version"] = "1.0"
    return message


def reply_subject(original: str | None) -> str:
    """The subject of a reply: ``Re: `` before the original's, never a second ``Re:``.

    Args:
        original: The answered message's decoded subject, if any.

    Returns:
        The reply's subject.
    """
    text = (original or "").strip()
    if _RE_PREFIX.match(text):
        return text
    return f"Re: {text}" if text else "Re:"


def _addresses(values: tuple[str, ...]) -> tuple[Address, ...]:
    # Values were validated by parse_outgoing; parsing again turns them back into Address objects.
    return tuple(_parse_address(value, "address") for value in values)


def _threading_ids(reply: ReplyContext) -> tuple[str | None, list[str]]:
    """In-Reply-To and References for a reply, from whatever the original's headers held."""
    original = _extract_msg_ids(reply.message_id)
    if not original:
        return None, []
    in_reply_to = original[0]
    references = _extract_msg_ids(reply.references)
    if not references or references[-1] != in_reply_to:
        references.append(in_reply_to)
    return in_reply_to, references


def _extract_msg_ids(value: str | None) -> list[str]:
    if not value:
        return []
    found = _MSG_ID.findall(value)
    if found:
        return found
    # Some mailers write a bare id without angle brackets; a single token is still usable.
    tokens = value.split()
    if len(tokens) == 1 and "<" not in tokens[0] and ">" not in tokens[0] and tokens[0].isascii():
        return [f"<{tokens[0]}>"]
    return []


class _FoldedHeader(str):
    """A header value we encode and fold ourselves, breaking lines only between tokens.

    EmailPolicy stores a value that has a ``name`` attribute as is and serialises it with the value's
    own ``fold`` (documented in email.policy). We use that where policy.default's folder goes wrong
    in Python 3.11:

    - In-Reply-To and References count as unstructured text there, and an id longer than a line
      (Outlook's are) is rewritten as an RFC 2047 encoded word, which breaks threading.
    - A quoted display name longer than a line makes it raise (TypeError, IndexError) or write an
      unparsable header.
    - Text that looks like an encoded word ("=?utf-8?q?x?=") is decoded when the header is set.
    """

    name: str
    tokens: tuple[str, ...]

    def __new__(cls, name: str, value: str, tokens: list[str]) -> _FoldedHeader:
        header = super().__new__(cls, value)
        header.name = name
        header.tokens = tuple(tokens)
        return header

    def fold(self, *, policy: Policy) -> str:
        limit = policy.max_line_length or _MAX_7BIT_LINE
        lines = [f"{self.name}:"]
        for index, token in enumerate(self.tokens):
            if index == 0 or len(lines[-1]) + 1 + len(token) <= limit:
                lines[-1] += f" {token}"
            else:
                lines.append(f" {token}")
        return policy.linesep.join(lines) + policy.linesep


def _msg_id_header(name: str, value: str) -> _FoldedHeader:
    tokens = value.split()
    return _FoldedHeader(name, " ".join(tokens), tokens)


def _address_header(name: str, addresses: tuple[Address, ...]) -> _FoldedHeader:
    tokens: list[str] = []
    for index, address in enumerate(addresses):
        words = [*_phrase_words(address.display_name), f"<{address.addr_spec}>"]
        if not address.display_name:
            words = [address.addr_spec]
        if index < len(addresses) - 1:
            words[-1] += ","
        tokens.extend(words)
    return _FoldedHeader(name, ", ".join(str(address) for address in addresses), tokens)


def _encoded_text_header(name: str, text: str) -> _FoldedHeader:
    return _FoldedHeader(name, text, _encoded_words(text))


# RFC 5322 atext: a display name made of these words needs neither quotes nor encoding.
_ATOM_PHRASE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?: [A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
# "=?utf-8?b?" + "?=" leave 63 of RFC 2047's 75 characters, i.e. 47 bytes of base64 input.
_ENCODED_WORD_BYTES = 45


def _phrase_words(name: str) -> list[str]:
    """A display name as atoms, one quoted string, or UTF-8 encoded words that each fit a line."""
    if not name:
        return []
    # "=?" would be read back as the start of an encoded word, so such names are always encoded.
    if "=?" not in name and _ATOM_PHRASE.fullmatch(name):
        return name.split(" ")
    quoted = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if "=?" not in name and all(" " <= char <= "~" for char in name) and len(quoted) <= 70:
        return [quoted]
    return _encoded_words(name)


def _encoded_words(text: str) -> list[str]:
    """Base64 UTF-8 encoded words, split between characters; readers drop the spaces between them."""
    words: list[str] = []
    chunk = b""
    for char in text:
        encoded = char.encode("utf-8")
        if len(chunk) + len(encoded) > _ENCODED_WORD_BYTES:
            words.append(_b_word(chunk))
            chunk = b""
        chunk += encoded
    words.append(_b_word(chunk))
    return words


def _b_word(data: bytes) -> str:
    return f"=?utf-8?b?{base64.b64encode(data).decode('ascii')}?="


def _set_body(message: EmailMessage, mail: OutgoingMail) -> None:
    if mail.body is not None or mail.html is None:
        _set_text(message, mail.body or "", "plain")
        if mail.html is not None:
            data, cte = _text_payload(mail.html)
            message.add_alternative(data, "text", "html", cte=cte, params={"charset": "utf-8"})
    else:
        _set_text(message, mail.html, "html")


def _set_text(message: EmailMessage, text: str, subtype: str) -> None:
    data, cte = _text_payload(text)
    message.set_content(data, "text", subtype, cte=cte, params={"charset": "utf-8"})


def _text_payload(text: str) -> tuple[bytes, str]:
    """UTF-8 bytes of a text part in canonical CRLF form, and the transfer encoding that keeps it ASCII.

    Encoded by hand rather than with set_content(str), which picks 8bit for non-ASCII text under
    policy.default and appends a newline the caller never wrote.
    """
    data = _NEWLINES.sub("\r\n", text).encode("utf-8")
    lines = data.split(b"\r\n")
    printable = all(32 <= byte < 127 or byte in (9, 10, 13) for byte in data)
    if printable and all(len(line) <= _MAX_7BIT_LINE for line in lines):
        return data, "7bit"
    return data, "base64"


def to_raw(message: EmailMessage) -> bytes:
    """Serialises a message for Gmail's ``raw`` field (before base64url).

    CRLF line ends, as RFC 5322 prescribes; Gmail takes LF too, but one form everywhere is simpler to test.

    Args:
        message: A message from :func:`build_message`.

    Returns:
        The message as ASCII bytes.

    Raises:
        ValueError: The message would not be pure ASCII (a bug: every part is encoded for 7bit).
    """
    raw = message.as_bytes(policy=_WIRE_POLICY)
    if not raw.isascii():
        raise ValueError("message is not 7-bit clean")
    return raw


# --------------------------------------------------------------------------------------------------
# Reading Gmail resources


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


def decode_header_text(value: str) -> str:
    """Decodes RFC 2047 encoded words in a header value to Unicode, never raising.

    Whitespace between adjacent encoded words is dropped (RFC 2047 section 6.2), adjacent words in one
    charset are joined before decoding (senders split multibyte characters across words), and a
    malformed word is kept as it was written.

    Args:
        value: A raw header value, possibly folded.

    Returns:
        The decoded text on one line.
    """
    text = re.sub(r"\r?\n(?=[ \t])", "", value)
    text = _NEWLINES.sub(" ", text)
    pieces: list[tuple[str | bytes, str]] = []  # (literal text, "") or (bytes, charset)
    position = 0
    previous_was_word = False
    for match in _ENCODED_WORD.finditer(text):
        between = text[position : match.start()]
        decoded = _decode_encoded_word(match)
        if decoded is None:
            continue  # left in place: it is copied with the literal text around it
        if between and not (previous_was_word and between.isspace()):
            pieces.append((between, ""))
        data, charset = decoded
        last = pieces[-1] if pieces else None
        if (
            previous_was_word
            and (not between or between.isspace())
            and last is not None
            and isinstance(last[0], bytes)
            and last[1] == charset
        ):
            pieces[-1] = (last[0] + data, charset)
        else:
            pieces.append((data, charset))
        position = match.end()
        previous_was_word = True
    if position < len(text):
        pieces.append((text[position:], ""))
    decoded_text = "".join(
        piece if isinstance(piece, str) else decode_bytes(piece, charset) for piece, charset in pieces
    )
    return _SURROGATES.sub("\ufffd", decoded_text)


def _decode_encoded_word(match: re.Match[str]) -> tuple[bytes, str] | None:
    charset = match.group(1).partition("*")[0].lower()  # RFC 2231 section 5 allows charset*language
    encoding = match.group(2).lower()
    encoded = match.group(3)
    try:
        if encoding == "b":
            data = base64.b64decode(encoded + "=" * (-len(encoded) % 4))
        else:
            data = binascii.a2b_qp(encoded.encode("ascii"), header=True)
    except (binascii.Error, ValueError):
        return None
    return data, charset


def decode_bytes(data: bytes, charset: str | None) -> str:
    """Decodes bytes declared to be in ``charset`` as well as it can be done, never raising.

    Tries the declared charset (or the superset senders really mean by it), then UTF-8, then the
    declared charset with replacement characters, then Latin-1, which decodes anything.

    Args:
        data: The bytes.
        charset: The declared charset, if any.

    Returns:
        The text, without unpaired surrogates.
    """
    codec = _codec_for(charset)
    text: str | None = None
    for attempt in (codec, "utf-8"):
        if attempt is None:
            continue
        try:
            text = data.decode(attempt)
            break
        except (UnicodeError, LookupError):
            continue
    if text is None and codec is not None and codec != "ascii":
        try:
            text = data.decode(codec, "replace")
        except (UnicodeError, LookupError):
            text = None
    if text is None:
        text = data.decode("latin-1")
    return _SURROGATES.sub("\ufffd", text)


def _codec_for(charset: str | None) -> str | None:
    if not charset:
        return None
    name = charset.strip().strip("\"'").lower().replace("_", "-")
    name = _CHARSET_SUPERSETS.get(name, name)
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError):
        return None
    if not getattr(info, "_is_text_encoding", True) or info.name in _NOT_CHARSETS:
        return None
    return info.name


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
        "mime_type": _part_mime_type(part) or _DEFAULT_MIME_TYPE,
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
    text = decode_bytes(decode_base64url(data), charset)
    return _NEWLINES.sub("\n", text)


def decode_base64url(data: str) -> bytes:
    """Decodes Gmail's base64url body data, with or without padding, never raising.

    Args:
        data: base64url text (standard-alphabet characters are accepted too).

    Returns:
        The bytes; characters outside the alphabet are skipped, a dangling last character dropped.
    """
    compact = re.sub(r"[^A-Za-z0-9_-]", "", data.replace("+", "-").replace("/", "_"))
    if len(compact) % 4 == 1:
        compact = compact[:-1]
    try:
        return base64.urlsafe_b64decode(compact + "=" * (-len(compact) % 4))
    except (binascii.Error, ValueError):
        return b""
