"""Text from the wild into clean Unicode: charsets, RFC 2047 encoded words, lenient base64, controls.

Every function here is total: mail in the wild carries every charset, malformed encoded words and broken
base64, and reading a mailbox must never fail on one odd message. Invariant: what comes out is valid
Unicode (no unpaired surrogates), and header text has no control characters (a header value that decodes
to CR/LF would otherwise end up in a reply's Subject and break it).
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re

# Everything str.splitlines() breaks on and every other C0/C1 control character, TAB included: a header
# that decodes to any of these is shown with a space in its place (policy.default refuses a header
# value holding a line break with a bare ValueError, and the rest has no business in a header).
HEADER_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_SURROGATES = re.compile(r"[\ud800-\udfff]")
NEWLINES = re.compile(r"\r\n|\r|\n")
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_NOT_BASE64 = re.compile(r"[^A-Za-z0-9+/]")
# An RFC 2047 encoded word; the text is printable ASCII without "?" so that decoding it cannot fail
# on anything but its own content.
ENCODED_WORD = re.compile(r"=\?([!->@-~]+?)\?([bBqQ])\?([!->@-~]*?)\?=")

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


def b64decode_lenient(text: str) -> bytes:
    """Decodes base64 in either alphabet (standard or URL-safe), padded or not, never raising.

    The one base64 decoder of the package: Gmail's body data (base64url, unpadded), RFC 2047 ``B``
    words and the send request's attachments (after ``request`` has checked them strictly) all go
    through it.

    Args:
        text: base64 or base64url text; whitespace and characters outside both alphabets are skipped.

    Returns:
        The bytes; padding is optional, and a dangling last character is dropped.
    """
    compact = _NOT_BASE64.sub("", text.replace("-", "+").replace("_", "/"))
    if len(compact) % 4 == 1:
        compact = compact[:-1]
    try:
        return base64.b64decode(compact + "=" * (-len(compact) % 4))
    except (binascii.Error, ValueError):  # pragma: no cover - the alphabet was checked above
        return b""


def without_controls(value: str) -> str:
    """Header text with every control character (CR, LF, NUL, the rest of C0 and C1) turned into a space."""
    return HEADER_CONTROLS.sub(" ", value)


def decode_header_text(value: str) -> str:
    """Decodes RFC 2047 encoded words in a header value to Unicode on one line, never raising.

    Whitespace between adjacent encoded words is dropped (RFC 2047 section 6.2), adjacent words in one
    charset are joined before decoding (senders split multibyte characters across words), and a
    malformed word is kept as it was written. Control characters, whether written raw or decoded out of
    an encoded word, become spaces.

    Args:
        value: A raw header value, possibly folded.

    Returns:
        The decoded text on one line, without control characters.
    """
    text = NEWLINES.sub(" ", _FOLD.sub("", value))
    pieces: list[tuple[str | bytes, str]] = []  # (literal text, "") or (bytes, charset)
    position = 0
    previous_was_word = False
    for match in ENCODED_WORD.finditer(text):
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
    return without_controls(decoded_text)


def _decode_encoded_word(match: re.Match[str]) -> tuple[bytes, str] | None:
    charset = match.group(1).partition("*")[0].lower()  # RFC 2231 section 5 allows charset*language
    encoding = match.group(2).lower()
    encoded = match.group(3)
    if encoding == "b":
        # Strict about the alphabet here: a word that is not base64 is kept as written, not guessed at.
        if _NOT_BASE64.search(encoded.rstrip("=")) or len(encoded.rstrip("=")) % 4 == 1:
            return None
        return b64decode_lenient(encoded), charset
    try:
        return binascii.a2b_qp(encoded.encode("ascii"), header=True), charset
    except (binascii.Error, ValueError):
        return None


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
