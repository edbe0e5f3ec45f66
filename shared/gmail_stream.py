"""One Gmail attachment streamed: ``attachments.get``'s JSON read as it arrives, its base64url decoded chunk
by chunk, so a 35 MB attachment never sits in memory whole (and the answer can stream past Cloud Run's
32 MiB cap on unstreamed responses).

googleapiclient reads every answer whole, so this request is built by it (URL, headers) but sent through
the instance's ``requests`` session with ``stream=True``. Retries, the refresh on 401 and error mapping
are those of ``GmailClient``. Invariant: once ``open_attachment`` returns, the status is 200 and the only
thing left to fail is the transfer itself.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import requests
from googleapiclient.errors import HttpError

from shared import clock
from shared.errors import Unavailable, UpstreamError
from shared.gmail import ATTEMPTS, GmailClient
from shared.gmail_errors import classify

logger = logging.getLogger(__name__)

# Read size: large enough that a 30 MB answer is ~600 reads, small enough to be nothing in memory.
CHUNK_BYTES = 64 * 1024
# The fields before "data" are a few short ones ("size", "attachmentId"); more than this is not Gmail.
_MAX_PREFIX_CHARS = 64 * 1024
_NOT_BASE64 = bytes(range(256)).translate(
    None, b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+/"
)


@dataclass
class AttachmentStream:
    """An attachment being read: ``size`` from Gmail's answer (when it came before the data) and the bytes."""

    size: int | None
    chunks: Iterator[bytes]


def open_attachment(client: GmailClient, message_id: str, attachment_id: str) -> AttachmentStream:
    """Starts reading one attachment; the bytes arrive as ``chunks`` is iterated.

    Raises:
        NotFound, RateLimited, PermissionDenied, ReauthRequired, Unavailable, UpstreamError: as
            ``GmailClient.execute`` would, before any byte is returned.
    """
    request = (
        client.service.users()
        .messages()
        .attachments()
        .get(userId="me", messageId=message_id, id=attachment_id)
    )
    credentials = client.http.credentials
    started = clock.monotonic()
    refreshed = False
    attempt = 0
    while True:
        attempt += 1
        headers = {str(name): str(value) for name, value in dict(request.headers).items()}
        credentials.before_request(None, "GET", request.uri, headers)
        try:
            response = client.transport.stream(request.uri, headers)
        except requests.RequestException as exc:
            if attempt >= ATTEMPTS or not client.backoff(attempt, None, started):
                raise Unavailable("Gmail could not be reached") from exc
            continue
        if response.status_code == 200:
            return _stream(response)
        content = response.content  # an error answer is a small JSON object
        response.close()
        if response.status_code == 401 and not refreshed:
            refreshed = True  # as google-auth-httplib2 does: one refresh, then the same request again
            credentials.refresh(None)
            continue
        import httplib2

        info = {name.lower(): value for name, value in response.headers.items()}
        info["status"] = str(response.status_code)
        failure = classify(HttpError(httplib2.Response(info), content, uri=request.uri))
        if (
            not failure.retryable
            or attempt >= ATTEMPTS
            or not client.backoff(attempt, failure.retry_after, started)
        ):
            raise failure.error


def _stream(response: requests.Response) -> AttachmentStream:
    raw = response.iter_content(CHUNK_BYTES)
    try:
        fields, rest = _read_prefix(raw)
    except BaseException:
        response.close()
        raise
    size = fields.get("size")
    return AttachmentStream(
        size=size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else None,
        chunks=_decode_data(rest, raw, response),
    )


def _read_prefix(raw: Iterator[bytes]) -> tuple[dict[str, Any], str]:
    """Reads the answer up to the start of the ``data`` string; the fields before it, and what follows."""
    buffer = ""
    for chunk in raw:
        buffer += chunk.decode("latin-1")
        found = _scan_prefix(buffer)
        if found is not None:
            return found
        if len(buffer) > _MAX_PREFIX_CHARS:
            break
    raise UpstreamError("Gmail's attachment answer has no data")


def _scan_prefix(text: str) -> tuple[dict[str, Any], str] | None:
    """Parses ``{"key": value, ..., "data": "`` from the start of ``text``; None until it is all there."""
    decoder = json.JSONDecoder()
    fields: dict[str, Any] = {}
    index = _skip(text, 0)
    if index >= len(text):
        return None
    if text[index] != "{":
        raise UpstreamError("Gmail's attachment answer is not a JSON object")
    index += 1
    while True:
        index = _skip(text, index)
        if index >= len(text):
            return None
        if text[index] == "}":
            raise UpstreamError("Gmail's attachment answer has no data")
        if text[index] != '"':
            raise UpstreamError("Gmail's attachment answer is not a JSON object")
        try:
            key, index = decoder.raw_decode(text, index)
        except ValueError:
            return None  # the key itself is cut off
        index = _skip(text, index)
        if index >= len(text):
            return None
        if text[index] != ":":
            raise UpstreamError("Gmail's attachment answer is not a JSON object")
        index = _skip(text, index + 1)
        if index >= len(text):
            return None
        if key == "data":
            if text[index] != '"':
                raise UpstreamError("Gmail's attachment data is not a string")
            return fields, text[index + 1 :]
        try:
            value, end = decoder.raw_decode(text, index)
        except ValueError:
            return None  # cut off mid-value
        after = _skip(text, end)
        if after >= len(text):
            return None  # "12" may be the start of "123": wait for what follows
        fields[key] = value
        if text[after] not in ",}":
            raise UpstreamError("Gmail's attachment answer is not a JSON object")
        index = after + 1 if text[after] == "," else after


def _skip(text: str, index: int) -> int:
    while index < len(text) and text[index] in " \t\r\n":
        index += 1
    return index


def _decode_data(first: str, raw: Iterator[bytes], response: requests.Response) -> Iterator[bytes]:
    """Yields the decoded bytes of the ``data`` string, which starts with ``first``."""
    carry = b""
    pending = first.encode("latin-1")
    try:
        done = False
        while True:
            end = pending.find(b'"')
            if end >= 0:
                pending, done = pending[:end], True
            if b"\\" in pending:
                # base64url needs no JSON escapes; "\/" is the only one an encoder might add.
                pending = pending.replace(b"\\/", b"/")
                if b"\\" in pending:
                    raise UpstreamError("Gmail's attachment data holds an unexpected escape")
            compact = carry + pending.translate(None, _NOT_BASE64)
            usable = len(compact) - len(compact) % 4
            if usable:
                yield _b64(compact[:usable])
            carry = compact[usable:]
            if done:
                break
            try:
                pending = next(raw)
            except StopIteration:
                raise UpstreamError("Gmail's attachment answer ended inside the data") from None
        if len(carry) > 1:
            yield _b64(carry + b"=" * (-len(carry) % 4))
    finally:
        response.close()


def _b64(data: bytes) -> bytes:
    try:
        return base64.b64decode(data.replace(b"-", b"+").replace(b"_", b"/"))
    except (binascii.Error, ValueError) as exc:  # pragma: no cover - the alphabet was filtered above
        raise UpstreamError("Gmail's attachment data is not base64") from exc
