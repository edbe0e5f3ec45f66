"""The push-notification part of the Gmail fake: users.watch, users.stop and users.history.list.

Endpoints (as googleapiclient builds them from the discovery document):

- POST /gmail/v1/users/{userId}/watch     JSON {"topicName", "labelIds"?, "labelFilterBehavior"?}
                                          -> {"historyId", "expiration"} (epoch ms, 7 days ahead)
- POST /gmail/v1/users/{userId}/stop      -> 204, no body
- GET  /gmail/v1/users/{userId}/history   startHistoryId (required), historyTypes (repeated), labelId,
                                          maxResults (1-500, default 100), pageToken

History is derived from the stored messages: every message added to a mailbox (seeded, sent) is one
``messageAdded`` record at its historyId, carrying the message's current labels. A ``startHistoryId`` older
than the mailbox's history floor (``expire_history()``) is 404, as Gmail answers when it no longer has that
history. Simplifications: deleted messages vanish from history; labelAdded/labelRemoved/messageDeleted
records are never produced (asking for only those types gives an empty list).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from typing import TYPE_CHECKING, Any

from devtools.fakes._server import RecordedRequest, Response

if TYPE_CHECKING:
    from devtools.fakes.gmail import Mailbox

_USER = r"/gmail/v1/users/(?P<user>[^/]+)"
WATCH_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("POST", re.compile(rf"^{_USER}/watch$"), "_watch"),
    ("POST", re.compile(rf"^{_USER}/stop$"), "_stop"),
    ("GET", re.compile(rf"^{_USER}/history$"), "_history"),
]
WATCH_DAYS = 7
_TOPIC = re.compile(r"^projects/[^/]+/topics/[^/]+$")
HISTORY_TYPES = ("messageAdded", "messageDeleted", "labelAdded", "labelRemoved")


def _error(status: int, message: str, reason: str) -> Response:
    from devtools.fakes.gmail import google_error  # the shared error shape; imported late (gmail imports us)

    return google_error(status, message, reason)


class GmailWatchMixin:
    """State and handlers of watch/stop/history; mixed into FakeGmail before FakeServer.

    Attributes: ``watches`` (mailbox address -> the last watch request body, or absent once stopped),
    ``watch_calls`` and ``stop_calls`` (addresses, one entry per call).
    """

    lock: Any
    mailboxes: dict[str, Mailbox]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.watches: dict[str, dict[str, Any]] = {}
        self.watch_calls: list[str] = []
        self.stop_calls: list[str] = []
        self._history_floor: dict[str, int] = {}

    # ---- configuration and inspection --------------------------------------------------------------

    def expire_history(self, email_address: str | None = None) -> None:
        """Forget the mailbox's history so far: a startHistoryId older than the current one is 404."""
        with self.lock:
            mailbox = self.mailboxes[email_address or self.email_address]  # type: ignore[attr-defined]
            self._history_floor[mailbox.email_address] = mailbox.history_id

    def notification(self, email_address: str | None = None) -> dict[str, Any]:
        """What Gmail publishes to the topic now: ``{"emailAddress", "historyId"}`` (historyId a number)."""
        with self.lock:
            mailbox = self.mailboxes[email_address or self.email_address]  # type: ignore[attr-defined]
            return {"emailAddress": mailbox.email_address, "historyId": mailbox.history_id}

    # ---- handlers ----------------------------------------------------------------------------------

    def _watch(self, mailbox: Mailbox, request: RecordedRequest, match: re.Match[str]) -> Response:
        try:
            body = request.json()
        except ValueError:
            return _error(400, "Invalid JSON payload received.", "parseError")
        if not isinstance(body, dict) or not isinstance(body.get("topicName"), str):
            return _error(400, "Invalid topicName does not match projects/*/topics/*", "invalidArgument")
        if not _TOPIC.match(body["topicName"]):
            return _error(400, "Invalid topicName does not match projects/*/topics/*", "invalidArgument")
        labels = body.get("labelIds", [])
        if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
            return _error(400, "Invalid labelIds", "invalidArgument")
        self.watches[mailbox.email_address] = body
        self.watch_calls.append(mailbox.email_address)
        expiration = int(time.time() * 1000) + WATCH_DAYS * 24 * 3600 * 1000
        return Response.json(200, {"historyId": str(mailbox.history_id), "expiration": str(expiration)})

    def _stop(self, mailbox: Mailbox, request: RecordedRequest, match: re.Match[str]) -> Response:
        self.watches.pop(mailbox.email_address, None)
        self.stop_calls.append(mailbox.email_address)
        return Response(204, b"")

    def _history(self, mailbox: Mailbox, request: RecordedRequest, match: re.Match[str]) -> Response:
        start_text = request.param("startHistoryId")
        if not start_text or not start_text.isdigit():
            return _error(400, "Invalid startHistoryId", "invalidArgument")
        start = int(start_text)
        if start < self._history_floor.get(mailbox.email_address, 0):
            return _error(404, "Requested entity was not found.", "notFound")
        types = [value for value in request.query.get("historyTypes", [])]
        if any(value not in HISTORY_TYPES for value in types):
            return _error(400, "Invalid value for historyTypes", "invalidArgument")
        try:
            max_results = min(500, max(1, int(request.param("maxResults") or 100)))
            offset = _decode_page_token(request.param("pageToken"))
        except ValueError:
            return _error(400, "Invalid pageToken or maxResults", "invalidArgument")
        label = request.param("labelId")
        records = []
        if not types or "messageAdded" in types:
            for stored in sorted(mailbox.messages.values(), key=lambda m: m.history_id):
                if stored.history_id <= start or (label and label not in stored.labels):
                    continue
                message = {"id": stored.id, "threadId": stored.thread_id}
                records.append(
                    {
                        "id": str(stored.history_id),
                        "messages": [message],
                        "messagesAdded": [{"message": {**message, "labelIds": list(stored.labels)}}],
                    }
                )
        page = records[offset : offset + max_results]
        payload: dict[str, Any] = {"historyId": str(mailbox.history_id)}
        if page:  # like Gmail, no "history" key when nothing changed
            payload["history"] = page
        if offset + max_results < len(records):
            payload["nextPageToken"] = _encode_page_token(offset + max_results)
        return Response.json(200, payload)


def _encode_page_token(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"h": offset}).encode()).decode("ascii")


def _decode_page_token(token: str | None) -> int:
    if not token:
        return 0
    try:
        value = json.loads(base64.urlsafe_b64decode(token.encode("ascii")))
    except (binascii.Error, UnicodeError, ValueError) as exc:
        raise ValueError(token) from exc
    if not isinstance(value, dict) or not isinstance(value.get("h"), int):
        raise ValueError(token)
    return int(value["h"])
