"""Composition: the RFC 5322 message Gmail sends, from a validated :class:`~shared.mime.request.OutgoingMail`.

Built with :class:`email.message.EmailMessage` and :data:`email.policy.default`, except the headers whose
folding the standard library gets wrong, which are encoded and folded here (see :class:`_FoldedHeader`).
Invariants: the message is 7-bit ASCII with CRLF line ends, and no header line that holds an RFC 2047
encoded word is longer than 76 octets (RFC 2047 section 2).
"""

from __future__ import annotations

import base64
import datetime as dt
import re
import uuid
from dataclasses import dataclass
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import Policy

from shared import clock, errors
from shared.mime import text as mime_text
from shared.mime.request import DOMAIN_LABEL, OutgoingMail, parse_address

# RFC 5322 forbids lines longer than 998 octets; a longer text line forces base64.
_MAX_7BIT_LINE = 998
# RFC 2047 section 2: "any header line containing an encoded-word must be no more than 76 characters".
# Every line we fold ourselves keeps to it, whether or not it holds an encoded word.
MAX_FOLDED_LINE = 76
_NEWLINES = mime_text.NEWLINES
_MSG_ID = re.compile(r"<[^<>\s]+>")
_RE_PREFIX = re.compile(r"re\s*:", re.IGNORECASE)

# Policy for the wire: CRLF as RFC 5322 wants, and 7bit so that anything not ASCII fails loudly.
_WIRE_POLICY = policy.SMTP.clone(cte_type="7bit")


@dataclass(frozen=True)
class ReplyContext:
    """What a reply needs to know about the message it answers."""

    message_id: str | None
    references: str | None
    subject: str | None
    thread_id: str | None


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
    if not all(DOMAIN_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"not a domain: {domain!r}")
    millis = int(clock.utcnow().timestamp() * 1000)
    return f"<{uuid.uuid4().hex}.{millis}@{domain.lower()}>"


def build_message(
    mail: OutgoingMail,
    sender: str | None,
    *,
    message_id: str,
    reply: ReplyContext | None = None,
    date: dt.datetime | None = None,
) -> EmailMessage:
    """Builds the message Gmail will send.

    Bcc stays in the message: Gmail's send API reads the recipients from it and removes it before delivery.

    Args:
        mail: The validated request.
        sender: The mailbox's own address (Gmail's profile ``emailAddress``), for a From with
            ``mail.from_name``; None leaves From out, and Gmail sets it to the mailbox's own address.
        message_id: The Message-ID to set, e.g. from :func:`new_message_id`.
        reply: The message answered, to set In-Reply-To, References and a "Re: " subject.
        date: The Date header; now when omitted (naive values are taken as UTC).

    Returns:
        The message, ready for :func:`to_raw`.

    Raises:
        ValueError: ``sender`` or ``message_id`` is malformed, or ``sender`` is missing for a
            ``from_name`` (our bug or Gmail's, never the caller's).
    """
    own = None
    if sender is not None:
        try:
            own = parse_address(sender, "sender")
        except errors.InvalidArgument as exc:
            raise ValueError(f"unusable sender address {sender!r}: {exc.message}") from exc
    elif mail.from_name:
        raise ValueError("a from_name needs the mailbox's own address")
    if not _MSG_ID.fullmatch(message_id):
        raise ValueError(f"not a Message-ID: {message_id!r}")

    message = EmailMessage(policy=policy.default)
    if own is not None:
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
    if subject and (not subject.isascii() or mime_text.ENCODED_WORD.search(subject)):
        # policy.default drops a space that falls between two of its encoded words, and decodes text
        # that merely looks like encoded words (see _FoldedHeader); ours keep every character.
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
    # add_* builds parts as EmailMessage, which (3.11 and 3.12 alike) stamps each with its own
    # MIME-Version; only the top needs it.
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
    return tuple(parse_address(value, "address") for value in values)


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
    own ``fold`` (documented in email.policy). We use that where policy.default's folder goes wrong;
    each behaviour below was checked on CPython 3.11.7 and 3.12.1 (the deployed python312):

    - In-Reply-To and References count as unstructured text, so an id longer than a line (Outlook's
      are) is rewritten as RFC 2047 encoded words (``=?utf-8?q?=3CAAA...?=``), which breaks threading.
    - A quoted display name longer than a line is refolded without its quotes, so a comma in it splits
      one address into several and parentheses in it become comments.
    - Text that looks like an encoded word (``literal =?utf-8?q?x?= text``) is decoded when the header
      is set, so the subject sent is not the one asked for.
    - Its encoded words run to 77-78 octets a line, past RFC 2047's 76, and a space that falls where it
      splits one encoded word from the next is dropped from the decoded text.
    """

    name: str
    tokens: tuple[str, ...]

    def __new__(cls, name: str, value: str, tokens: list[str]) -> _FoldedHeader:
        header = super().__new__(cls, value)
        header.name = name
        header.tokens = tuple(tokens)
        return header

    def fold(self, *, policy: Policy) -> str:
        limit = min(policy.max_line_length or _MAX_7BIT_LINE, MAX_FOLDED_LINE)
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
# 39 bytes are 52 base64 characters; with "=?utf-8?b?" and "?=" a word is 64 characters, so the first
# line of the longest header that carries one ("Reply-To: " + word) is 74 octets, within RFC 2047's 76.
_ENCODED_WORD_BYTES = 39


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

    Encoded by hand rather than with set_content(str), which (CPython 3.11.7 and 3.12.1) picks 8bit for
    non-ASCII text under policy.default and appends a newline the caller never wrote.
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
