"""A fake of the Gmail API v1 (the parts skill-email uses), speaking real HTTP on loopback.

Endpoints (paths exactly as googleapiclient builds them from the discovery document):

- GET  /gmail/v1/users/{userId}/profile
- GET  /gmail/v1/users/{userId}/messages            q, labelIds (repeated), maxResults, pageToken,
                                                     includeSpamTrash
- GET  /gmail/v1/users/{userId}/messages/{id}       format=full|metadata|minimal|raw, metadataHeaders
- GET  /gmail/v1/users/{userId}/messages/{id}/attachments/{attachmentId}    -> {"size", "data"}
- GET  /gmail/v1/users/{userId}/threads/{id}        format=full|metadata|minimal, metadataHeaders: the
                                                     thread's messages oldest first (by internalDate)
- POST /gmail/v1/users/{userId}/messages/send       JSON {"raw", "threadId"?}
- POST /upload/gmail/v1/users/{userId}/messages/send?uploadType=media|multipart|resumable
       (+ the PUT of a resumable session; `/resumable/upload/...` is accepted too)
- POST /batch/gmail/v1 and POST /batch              multipart/mixed of application/http parts, at most 100
- POST /gmail/v1/users/{userId}/drafts              JSON {"message": {"raw", "threadId"?}}; uploads too
- GET  /gmail/v1/users/{userId}/drafts              q, maxResults, pageToken
- GET  /gmail/v1/users/{userId}/drafts/{id}         format as for messages.get
- POST /gmail/v1/users/{userId}/drafts/send         JSON {"id"}: the draft message turns SENT (same id)
- POST /gmail/v1/users/{userId}/{messages|threads}/{id}/{modify|trash|untrash}
- GET  /gmail/v1/users/{userId}/labels              system labels and the mailbox's user labels, no counts
- GET  /gmail/v1/users/{userId}/labels/{id}         with messagesTotal/Unread and threadsTotal/Unread
- POST /gmail/v1/users/{userId}/labels              JSON {"name"}; a name in use (any case) is 409
- POST .../watch, POST .../stop, GET .../history    push notifications: see devtools/fakes/gmail_watch.py

`userId` must be `me` or the mailbox's address (else 403). Every call needs `Authorization: Bearer T` with T
allowed by `allow_token()` or issued by a `FakeTokenEndpoint` passed to `trust()` (else 401, Google's shape).

The `q` subset: `rfc822msgid:ID`, `in:LABEL` / `label:LABEL` (in:sent, in:inbox, in:spam, in:trash,
in:anywhere), `is:unread|read|starred|important`, `from:`, `to:`, `cc:`, `subject:` (case-insensitive
substring of the decoded header), `has:attachment`, `after:`/`before:` (epoch seconds, internalDate),
a leading `-` negates a term, and bare words match the subject or the text body. Any other `op:value`
term matches NOTHING and is appended to `unsupported_query_terms`, so a test notices it relied on syntax
the fake does not know. Terms are ANDed;
`OR`, braces and parentheses are not supported. `fields`, `alt` and `prettyPrint` are ignored.

Attachments in `format=full`: a part with a filename or `Content-Disposition: attachment` has
`body.attachmentId` and no data, unless it is at most `inline_data_max_bytes` long (default 0), in which case
its bytes come inline as `body.data` with no attachmentId, as Gmail does for some small parts; any other
non-multipart part (a body, an inline image without a name) has `body.data`, unless it is longer than
`body_attachment_over_bytes` (default None: never), when it too is left behind an attachmentId.
`attachment_json_style` lays out attachments.get's answer: "compact" (default), "pretty" (Google's
default layout) or "data_first".

Known simplifications: `format=metadata` returns `payload` as {"mimeType", "headers"} only (as Gmail does);
header values are returned exactly as in the raw message (RFC 2047 encoded words NOT decoded, like Gmail);
`snippet` is the first 200 characters of the text, HTML-escaped (`'` -> `&#39;`), like Gmail; sending a
message without From adds `From: <the mailbox's address>`, as Gmail does (the sent copy and the delivered
mail carry the account's address); sending does not add a Message-ID or rewrite a From given; threading
uses only the `threadId` given (else a new thread). Trash adds `TRASH` and untrash
removes it, other labels untouched; `modify` refuses ids that are no label (400 "Invalid label"); a
draft's message carries `DRAFT` only and becomes `SENT` only when sent (gaining a From, as a send does).
"""

from __future__ import annotations

import base64
import binascii
import collections
import email
import email.errors
import email.header
import email.utils
import html
import itertools
import json
import re
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from email.message import Message
from typing import TYPE_CHECKING, Any

from devtools.fakes._server import (
    FailRule,
    FakeServer,
    RecordedRequest,
    Response,
    parse_target,
    status_line,
    take_failure,
)
from devtools.fakes.gmail_watch import WATCH_ROUTES, GmailWatchMixin

if TYPE_CHECKING:
    from devtools.fakes.oauth import FakeTokenEndpoint

DEFAULT_EMAIL = "me@example.com"
DEFAULT_TOKEN = "test-access-token"
MAX_BATCH_PARTS = 100  # Gmail's documented limit per batch request
MAX_MESSAGE_BYTES = 36_700_160  # "maxSize" of messages.send in the discovery document (35 MB)

_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
_DEFAULT_REASONS = {
    400: "invalidArgument",
    401: "authError",
    403: "insufficientPermissions",
    404: "notFound",
    429: "rateLimitExceeded",
    500: "backendError",
    503: "backendError",
}
_REASON_MESSAGES = {
    "rateLimitExceeded": "Resource has been exhausted (e.g. check quota).",
    "userRateLimitExceeded": "User-rate limit exceeded.  Retry after 2030-01-01T00:00:00.000Z",
    "dailyLimitExceeded": "Daily Limit Exceeded",
    "insufficientPermissions": "Request had insufficient authentication scopes.",
    "backendError": "Backend Error",
    "notFound": "Requested entity was not found.",
    "authError": "Invalid Credentials",
}
_USAGE_LIMIT_REASONS = {"rateLimitExceeded", "userRateLimitExceeded", "dailyLimitExceeded"}

_USER = r"/gmail/v1/users/(?P<user>[^/]+)"
_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("GET", re.compile(rf"^{_USER}/profile$"), "_profile"),
    ("GET", re.compile(rf"^{_USER}/messages$"), "_list"),
    ("POST", re.compile(rf"^{_USER}/messages/send$"), "_send_json"),
    ("GET", re.compile(rf"^{_USER}/messages/(?P<id>[^/]+)$"), "_get"),
    ("GET", re.compile(rf"^{_USER}/messages/(?P<id>[^/]+)/attachments/(?P<aid>[^/]+)$"), "_attachment"),
    ("GET", re.compile(rf"^{_USER}/threads/(?P<id>[^/]+)$"), "_get_thread"),
    ("POST", re.compile(rf"^/(?:resumable/)?upload{_USER}/messages/send$"), "_upload"),
    ("PUT", re.compile(rf"^/(?:resumable/)?upload{_USER}/messages/send$"), "_upload_put"),
    ("POST", re.compile(rf"^{_USER}/drafts$"), "_draft_create"),
    ("POST", re.compile(rf"^/upload{_USER}/drafts$"), "_draft_upload"),
    ("GET", re.compile(rf"^{_USER}/drafts$"), "_draft_list"),
    ("POST", re.compile(rf"^{_USER}/drafts/send$"), "_draft_send"),
    ("GET", re.compile(rf"^{_USER}/drafts/(?P<id>[^/]+)$"), "_draft_get"),
    (
        "POST",
        re.compile(rf"^{_USER}/(?P<kind>messages|threads)/(?P<id>[^/]+)/(?P<action>modify|trash|untrash)$"),
        "_modify",
    ),
    ("GET", re.compile(rf"^{_USER}/labels$"), "_labels_list"),
    ("POST", re.compile(rf"^{_USER}/labels$"), "_label_create"),
    ("GET", re.compile(rf"^{_USER}/labels/(?P<id>[^/]+)$"), "_label_get"),
]
# Gmail's system labels (labels.list shows them to every mailbox); their names are their ids.
SYSTEM_LABELS = (
    "INBOX", "SENT", "DRAFT", "SPAM", "TRASH", "UNREAD", "STARRED", "IMPORTANT", "CHAT",
    "CATEGORY_PERSONAL", "CATEGORY_SOCIAL", "CATEGORY_PROMOTIONS", "CATEGORY_UPDATES", "CATEGORY_FORUMS",
)  # fmt: skip
_ROUTES.extend(WATCH_ROUTES)
_BATCH_PATH = re.compile(r"^/batch(?:/gmail/v1)?/?$")


def _route(request: RecordedRequest) -> tuple[re.Match[str], str] | None:
    """The path match and handler method name for a request, or None (a 404)."""
    for method, pattern, handler_name in _ROUTES:
        match = pattern.match(request.path)
        if match and method == request.method:
            return match, handler_name
    return None


def discovery_document(root_url: str) -> dict[str, Any]:
    """The packaged gmail v1 discovery document with rootUrl (and baseUrl, mtlsRootUrl) set to `root_url`.

    `build_from_document(discovery_document(fake.url), credentials=...)` reaches the fake for plain calls,
    uploads AND batches. `client_options={"api_endpoint": ...}` alone is not enough: googleapiclient still
    takes the batch URI (rootUrl + "batch") and the upload URL's scheme from the document's rootUrl.
    """
    from googleapiclient.discovery_cache import get_static_doc  # only tests that build a service need it

    document: dict[str, Any] = json.loads(get_static_doc("gmail", "v1"))
    root = root_url.rstrip("/") + "/"
    document["rootUrl"] = document["baseUrl"] = document["mtlsRootUrl"] = root
    return document


def google_error(
    status: int, message: str | None = None, reason: str | None = None, headers: dict[str, str] | None = None
) -> Response:
    """A response in Google's JSON error shape, e.g. 429 with errors[0].reason "rateLimitExceeded"."""
    reason = reason or _DEFAULT_REASONS.get(status, "backendError")
    message = message or _REASON_MESSAGES.get(reason, "Error")
    domain = "usageLimits" if reason in _USAGE_LIMIT_REASONS else "global"
    detail: dict[str, str] = {"message": message, "domain": domain, "reason": reason}
    if status == 401:
        detail |= {"location": "Authorization", "locationType": "header"}
    payload = {
        "error": {
            "code": status,
            "message": message,
            "errors": [detail],
            "status": _STATUS_NAMES.get(status, "UNKNOWN"),
        }
    }
    return Response.json(status, payload, headers)


@dataclass
class StoredMessage:
    """A message in a fake mailbox: the raw RFC 822 bytes plus Gmail's bookkeeping."""

    id: str
    thread_id: str
    raw: bytes
    labels: list[str]
    internal_date_ms: int
    history_id: int
    parsed: Message = field(repr=False)


@dataclass
class Mailbox:
    """One user's messages by id; `sent` keeps the raw bytes sent through the API, in order."""

    email_address: str
    messages: dict[str, StoredMessage] = field(default_factory=dict)
    sent: list[bytes] = field(default_factory=list)
    history_id: int = 1000
    drafts: dict[str, str] = field(default_factory=dict)  # draft id -> its message's id
    labels: dict[str, str] = field(default_factory=dict)  # user label id -> name


class FakeGmail(GmailWatchMixin, FakeServer):
    """The Gmail API v1 fake. See the module docstring for endpoints and the `q` subset.

    Attributes: `url`, `requests` (wire requests), `batch_requests` (requests inside batches),
    `batch_sizes` (inner-request count of each batch call), `upload_types` (uploadType of each upload call),
    `unsupported_query_terms`, `latency`.
    """

    name = "fake-gmail"

    def __init__(
        self,
        *,
        email_address: str = DEFAULT_EMAIL,
        tokens: Iterable[str] = (DEFAULT_TOKEN,),
        latency: float = 0.0,
    ) -> None:
        super().__init__(latency=latency)
        self.email_address = email_address
        self.mailboxes: dict[str, Mailbox] = {email_address: Mailbox(email_address)}
        self._tokens: dict[str, str] = dict.fromkeys(tokens, email_address)
        self._trusted: list[tuple[FakeTokenEndpoint, str]] = []
        self._failures: list[FailRule] = []
        self._send_failures: collections.deque[int | None] = collections.deque()
        self._draft_failures: collections.deque[int | None] = collections.deque()
        self._uploads: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(0x18C2F00000000001)
        self.batch_requests: list[RecordedRequest] = []
        self.batch_sizes: list[int] = []
        self.upload_types: list[str] = []
        self.unsupported_query_terms: list[str] = []
        self.inline_data_max_bytes = 0
        # attachments.get's JSON: "compact" {"size", "data"}, "pretty" (Google's default layout, with
        # "attachmentId" first) or "data_first" (no size before the data).
        self.attachment_json_style = "compact"
        # Gmail leaves a very large body part behind an attachmentId too; None: never.
        self.body_attachment_over_bytes: int | None = None

    # ---- configuration -------------------------------------------------------------------------

    def allow_token(self, token: str, email_address: str | None = None) -> None:
        """Accept `Bearer token` for mailbox `email_address` (default: the primary one; created if new)."""
        address = email_address or self.email_address
        with self.lock:
            self.mailboxes.setdefault(address, Mailbox(address))
            self._tokens[token] = address

    def issued_secrets(self) -> set[str]:
        with self.lock:
            return set(self._tokens)

    def revoke_token(self, token: str) -> None:
        """Stop accepting `token` (later calls get 401)."""
        with self.lock:
            self._tokens.pop(token, None)

    def trust(self, oauth: FakeTokenEndpoint, email_address: str | None = None) -> None:
        """Accept every access token `oauth` has issued or will issue, for mailbox `email_address`."""
        address = email_address or self.email_address
        with self.lock:
            self.mailboxes.setdefault(address, Mailbox(address))
            self._trusted.append((oauth, address))

    def fail_next(
        self,
        path_regex: str,
        status: int,
        *,
        count: int = 1,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        reason: str | None = None,
        method: str | None = None,
    ) -> None:
        """Answer the next `count` requests whose path matches `path_regex` (re.search) with an error.

        Applies per inner request inside batches too (and to the batch call itself if the regex matches
        `/batch`). `body` replaces Google's error JSON; `reason` sets errors[0].reason (default by status:
        429 rateLimitExceeded, 403 insufficientPermissions, 5xx backendError, ...). Checked after auth.
        """
        if body is not None:
            response = Response.json(status, body, headers)
        else:
            response = google_error(status, reason=reason, headers=headers)
        with self.lock:
            self._failures.append(FailRule(path_regex, response, count, method))

    def fail_after_send(self, status: int | None = 500, *, count: int = 1) -> None:
        """The next `count` sends store the message, then answer `status` (None: drop the connection).

        Models "Gmail may have sent it". Careful: on a dropped connection httplib2 itself resends the POST
        once (its BadStatusLine retry), so `status=None` with count=1 yields two stored messages when the
        caller uses httplib2; use count=2 to make the resend fail too.
        """
        with self.lock:
            self._send_failures.extend([status] * count)

    # ---- seeding and inspection ----------------------------------------------------------------

    def add_message(
        self,
        raw: bytes,
        *,
        labels: Iterable[str] = ("INBOX", "UNREAD"),
        thread_id: str | None = None,
        internal_date_ms: int | None = None,
        email_address: str | None = None,
    ) -> str:
        """Store a raw RFC 822 message in a mailbox; returns its Gmail id.

        `internal_date_ms` defaults to the Date header, else now. `thread_id` defaults to the new id.
        """
        parsed = email.message_from_bytes(raw)
        if internal_date_ms is None:
            internal_date_ms = _date_header_ms(parsed) or int(time.time() * 1000)
        with self.lock:
            mailbox = self.mailboxes.setdefault(
                email_address or self.email_address, Mailbox(email_address or self.email_address)
            )
            return self._store(mailbox, raw, parsed, list(labels), thread_id, internal_date_ms).id

    def sent_messages(self, email_address: str | None = None) -> list[bytes]:
        """Raw bytes of every message sent through the API to this mailbox, oldest first."""
        with self.lock:
            return list(self.mailboxes[email_address or self.email_address].sent)

    def message(self, message_id: str) -> StoredMessage | None:
        """The stored message with this id, in any mailbox."""
        with self.lock:
            for mailbox in self.mailboxes.values():
                if message_id in mailbox.messages:
                    return mailbox.messages[message_id]
        return None

    def delete_message(self, message_id: str) -> None:
        """Remove a message (e.g. between a test's list and get)."""
        with self.lock:
            for mailbox in self.mailboxes.values():
                mailbox.messages.pop(message_id, None)

    def count_inner(self, method: str | None = None, path_regex: str = "") -> int:
        """Like `count`, over the requests inside batches."""
        pattern = re.compile(path_regex)
        with self.lock:
            return sum(
                1
                for r in self.batch_requests
                if (method is None or r.method == method.upper()) and pattern.search(r.path)
            )

    def clear_requests(self) -> None:
        """Forget wire requests, batch requests and counters (not messages or queued failures)."""
        with self.lock:
            super().clear_requests()
            self.batch_requests.clear()
            self.batch_sizes.clear()
            self.upload_types.clear()
            self.unsupported_query_terms.clear()

    # ---- request handling ----------------------------------------------------------------------

    def handle(self, request: RecordedRequest) -> Response:
        if _BATCH_PATH.match(request.path):
            if request.method != "POST":
                return google_error(405, "Method Not Allowed", "badRequest")
            return self._batch(request)
        return self._dispatch(request, in_batch=False)

    def _dispatch(self, request: RecordedRequest, *, in_batch: bool) -> Response:
        route = _route(request)
        if route is None:
            return google_error(404, f"Not Found: {request.method} {request.path}", "notFound")
        match, handler_name = route
        with self.lock:
            mailbox = self._authorize(request)
            if mailbox is None:
                return _unauthenticated(request)
            user = match["user"]
            if user not in ("me", mailbox.email_address):
                return google_error(403, f"Delegation denied for {mailbox.email_address}", "forbidden")
            failure = take_failure(self._failures, request.method, request.path)
            if failure is not None:
                return failure
            handler = getattr(self, handler_name)
            response: Response = handler(mailbox, request, match)
        if response.drop and in_batch:
            return google_error(500)
        return response

    def _authorize(self, request: RecordedRequest) -> Mailbox | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        address = self._tokens.get(token)
        if address is None:
            for oauth, trusted_address in self._trusted:
                with oauth.lock:
                    if token in oauth.issued_access_tokens:
                        address = trusted_address
                        break
        return self.mailboxes.get(address) if address else None

    def _profile(self, mailbox: Mailbox, request: RecordedRequest, match: re.Match[str]) -> Response:
        return Response.json(
            200,
            {
                "emailAddress": mailbox.email_address,
                "messagesTotal": len(mailbox.messages),
                "threadsTotal": len({m.thread_id for m in mailbox.messages.values()}),
                "historyId": str(mailbox.history_id),
            },
        )

    def _list(self, mailbox: Mailbox, request: RecordedRequest, match: re.Match[str]) -> Response:
        label_ids = [label for value in request.query.get("labelIds", []) for label in value.split(",")]
        include_spam_trash = (request.param("includeSpamTrash") or "false").lower() == "true"
        query = request.param("q") or ""
        try:
            max_results = min(500, max(1, int(request.param("maxResults") or 100)))
            offset = _decode_page_token(request.param("pageToken"))
        except ValueError:
            return google_error(400, "Invalid pageToken or maxResults", "invalidArgument")
        terms = _tokenize(query)
        if not include_spam_trash and not any(
            t.lstrip("-").lower() in ("in:spam", "in:trash", "in:anywhere") for t in terms
        ):
            terms.append("-in:spam")
            terms.append("-in:trash")
        matching = [
            m
            for m in sorted(mailbox.messages.values(), key=lambda m: (m.internal_date_ms, m.id), reverse=True)
            if all(label in m.labels for label in label_ids) and all(self._term_matches(t, m) for t in terms)
        ]
        page = matching[offset : offset + max_results]
        payload: dict[str, Any] = {}
        if page:  # like Gmail, an empty result has no "messages" key at all
            payload["messages"] = [{"id": m.id, "threadId": m.thread_id} for m in page]
        if offset + max_results < len(matching):
            payload["nextPageToken"] = _encode_page_token(offset + max_results)
        payload["resultSizeEstimate"] = len(matching)
        return Response.json(200, payload)

    def _get(self, mailbox: Mailbox, request: RecordedRequest, match: re.Match[str]) -> Response:
        stored = mailbox.messages.get(match["id"])
        if stored is None:
            return google_error(404, "Requested entity was not found.", "notFound")
        fmt = (request.param("format") or "full").lower()
        if fmt not in ("full", "metadata", "minimal", "raw"):
            return google_error(400, f"Invalid value at 'format' ({fmt})", "invalidArgument")
        return Response.json(200, self._resource(stored, fmt, request))

    def _get_thread(self, mailbox: Mailbox, request: RecordedRequest, match: re.Match[str]) -> Response:
        members = sorted(
            (m for m in mailbox.messages.values() if m.thread_id == match["id"]),
            key=lambda m: (m.internal_date_ms, m.id),
        )
        if not members:
            return google_error(404, "Requested entity was not found.", "notFound")
        fmt = (request.param("format") or "full").lower()
        if fmt not in ("full", "metadata", "minimal"):  # threads.get has no raw format
            return google_error(400, f"Invalid value at 'format' ({fmt})", "invalidArgument")
        resource = {
            "id": match["id"],
            "historyId": str(max(m.history_id for m in members)),
            "messages": [self._resource(m, fmt, request) for m in members],
        }
        return Response.json(200, resource)

    def _resource(self, stored: StoredMessage, fmt: str, request: RecordedRequest) -> dict[str, Any]:
        resource: dict[str, Any] = {
            "id": stored.id,
            "threadId": stored.thread_id,
            "labelIds": list(stored.labels),
            "snippet": _snippet(stored.parsed),
            "sizeEstimate": len(stored.raw),
            "historyId": str(stored.history_id),
            "internalDate": str(stored.internal_date_ms),
        }
        if fmt == "raw":
            resource["raw"] = base64.urlsafe_b64encode(stored.raw).decode("ascii")
        elif fmt == "metadata":
            requested = request.query.get("metadataHeaders", [])
            wanted = {name.lower() for value in requested for name in value.split(",")}
            headers = _headers(stored.parsed)
            if wanted:
                headers = [h for h in headers if h["name"].lower() in wanted]
            resource["payload"] = {"mimeType": stored.parsed.get_content_type(), "headers": headers}
        elif fmt == "full":
            resource["payload"] = _part_resource(
                stored.parsed, "", stored.id, self.inline_data_max_bytes, self.body_attachment_over_bytes
            )
        return resource

    def _attachment(self, mailbox: Mailbox, request: RecordedRequest, match: re.Match[str]) -> Response:
        stored = mailbox.messages.get(match["id"])
        part_id = _attachment_part_id(match["aid"], match["id"])
        part = dict(_walk(stored.parsed)).get(part_id) if stored and part_id is not None else None
        if part is None:
            return google_error(404, "Requested entity was not found.", "notFound")
        data = _part_bytes(part)
        encoded = base64.urlsafe_b64encode(data).decode("ascii")
        if self.attachment_json_style == "data_first":
            payload: dict[str, Any] = {"data": encoded, "size": len(data)}
        else:
            payload = {"size": len(data), "data": encoded}
        if self.attachment_json_style != "pretty":
            return Response.json(200, payload)
        # Google's APIs answer pretty-printed JSON unless asked for prettyPrint=false.
        body = json.dumps({"attachmentId": match["aid"], **payload}, indent=2).encode()
        return Response(200, body, {"Content-Type": "application/json; charset=UTF-8"})

    def _send_json(self, mailbox: Mailbox, request: RecordedRequest, match: re.Match[str]) -> Response:
        try:
            body = request.json()
        except ValueError:
            return google_error(400, "Invalid JSON payload received.", "parseError")
        if not isinstance(body, dict) or not isinstance(body.get("raw"), str) or not body["raw"]:
            return google_error(400, "'raw' RFC822 payload message string or uploading message via /upload/*")
        raw = _decode_base64url(body["raw"])
        if raw is None:
            return google_error(400, "Invalid value for ByteString: " + body["raw"][:40], "invalidArgument")
        return self._send(mailbox, raw, body.get("threadId"))

    def _upload(self, mailbox: Mailbox, request: RecordedRequest, match: re.Match[str]) -> Response:
        upload_type = request.param("uploadType") or ""
        self.upload_types.append(upload_type)
        content_type = request.headers.get("content-type", "")
        if upload_type == "media":
            if not content_type.lower().startswith("message/"):
                return google_error(400, f"Media type '{content_type}' is not supported.", "badContent")
            return self._send(mailbox, request.body, None)
        if upload_type == "multipart":
            boundary = _boundary(content_type)
            parts = split_multipart(request.body, boundary) if boundary else []
            if len(parts) != 2:
                return google_error(400, "Multipart upload needs a metadata and a media part", "badContent")
            try:
                metadata = json.loads(parts[0][1] or b"{}")
            except ValueError:
                return google_error(400, "Invalid JSON payload received.", "parseError")
            return self._send(mailbox, parts[1][1], metadata.get("threadId"))
        if upload_type == "resumable":
            metadata = json.loads(request.body) if request.body.strip() else {}
            upload_id = uuid.uuid4().hex
            self._uploads[upload_id] = {"metadata": metadata, "data": bytearray()}
            location = f"{self.url}{request.path}?uploadType=resumable&upload_id={upload_id}"
            return Response(200, b"", {"Location": location, "X-GUploader-UploadID": upload_id})
        return google_error(400, f"Invalid uploadType: {upload_type!r}", "invalidArgument")

    def _upload_put(self, mailbox: Mailbox, request: RecordedRequest, match: re.Match[str]) -> Response:
        upload = self._uploads.get(request.param("upload_id") or "")
        if upload is None:
            return google_error(404, "No such upload session", "notFound")
        upload["data"].extend(request.body)
        # Content-Range: "bytes 0-99/1000" (a chunk), "bytes */1000" (status query) or absent (all of it).
        total_match = re.search(r"/(\d+)\s*$", request.headers.get("content-range", ""))
        total = int(total_match[1]) if total_match else len(upload["data"])
        if len(upload["data"]) < total:
            received = len(upload["data"])
            headers = {"Range": f"bytes=0-{received - 1}"} if received else {}
            return Response(308, b"", headers)
        del self._uploads[request.param("upload_id") or ""]
        return self._send(mailbox, bytes(upload["data"]), upload["metadata"].get("threadId"))

    def _send(self, mailbox: Mailbox, raw: bytes, thread_id: str | None) -> Response:
        """Store a sent message (caller holds the lock) and answer like messages.send."""
        if len(raw) > MAX_MESSAGE_BYTES:
            message = f"Request payload size exceeds the limit: {MAX_MESSAGE_BYTES} bytes."
            return google_error(413, message, "uploadTooLarge")
        parsed = email.message_from_bytes(raw)
        if not any(parsed.get(name, "").strip() for name in ("To", "Cc", "Bcc")):
            return google_error(400, "Recipient address required", "invalidArgument")
        if "From" not in parsed:
            raw = f"From: {mailbox.email_address}\r\n".encode("ascii") + raw
            parsed = email.message_from_bytes(raw)
        if thread_id and not any(m.thread_id == thread_id for m in mailbox.messages.values()):
            return google_error(404, "Requested entity was not found.", "notFound")
        stored = self._store(mailbox, raw, parsed, ["SENT"], thread_id, int(time.time() * 1000))
        mailbox.sent.append(raw)
        if self._send_failures:
            status = self._send_failures.popleft()
            return Response(0, drop=True) if status is None else google_error(status)
        return Response.json(200, {"id": stored.id, "threadId": stored.thread_id, "labelIds": ["SENT"]})

    # ---- drafts, label changes, trash, labels (create_draft, send_draft, modify_email, list_labels) ----

    def add_label(self, name: str, email_address: str | None = None) -> str:
        """Create a user label in a mailbox (as labels.create does); returns its id (`Label_N`)."""
        with self.lock:
            mailbox = self.mailboxes[email_address or self.email_address]
            label_id = f"Label_{len(mailbox.labels) + 1}"
            mailbox.labels[label_id] = name
            return label_id

    def drafts(self, email_address: str | None = None) -> dict[str, str]:
        """The mailbox's drafts: draft id -> the id of the draft's message."""
        with self.lock:
            return dict(self.mailboxes[email_address or self.email_address].drafts)

    def _draft_create(self, mailbox: Mailbox, request: RecordedRequest, match: re.Match[str]) -> Response:
        try:
            body = request.json()
        except ValueError:
            return google_error(400, "Invalid JSON payload received.", "parseError")
        message = body.get("message") if isinstance(body, dict) else None
        if not isinstance(message, dict) or not isinstance(message.get("raw"), str) or not message["raw"]:
            return google_error(400, "Missing draft message", "invalidArgument")
        raw = _decode_base64url(message["raw"])
        if raw is None:
            return google_error(
                400, "Invalid value for ByteString: " + message["raw"][:40], "invalidArgument"
            )
        return self._new_draft(mailbox, raw, message.get("threadId"))

    def _draft_upload(self, mailbox: Mailbox, request: RecordedRequest, match: re.Match[str]) -> Response:
        upload_type = request.param("uploadType") or ""
        self.upload_types.append(upload_type)
        content_type = request.headers.get("content-type", "")
        if upload_type == "media":
            if not content_type.lower().startswith("message/"):
                return google_error(400, f"Media type '{content_type}' is not supported.", "badContent")
            return self._new_draft(mailbox, request.body, None)
        if upload_type == "multipart":
            boundary = _boundary(content_type)
            parts = split_multipart(request.body, boundary) if boundary else []
            if len(parts) != 2:
                return google_error(400, "Multipart upload needs a metadata and a media part", "badContent")
            try:
                metadata = json.loads(parts[0][1] or b"{}")
            except ValueError:
                return google_error(400, "Invalid JSON payload received.", "parseError")
            message = metadata.get("message") if isinstance(metadata, dict) else None
            thread_id = message.get("threadId") if isinstance(message, dict) else None
            return self._new_draft(mailbox, parts[1][1], thread_id)
        return google_error(400, f"Invalid uploadType: {upload_type!r}", "invalidArgument")

    def _new_draft(self, mailbox: Mailbox, raw: bytes, thread_id: str | None) -> Response:
        """Store a draft (caller holds the lock) and answer like drafts.create. No recipient is needed."""
        if len(raw) > MAX_MESSAGE_BYTES:
            message = f"Request payload size exceeds the limit: {MAX_MESSAGE_BYTES} bytes."
            return google_error(413, message, "uploadTooLarge")
        if thread_id and not any(m.thread_id == thread_id for m in mailbox.messages.values()):
            return google_error(404, "Requested entity was not found.", "notFound")
        parsed = email.message_from_bytes(raw)
        stored = self._store(mailbox, raw, parsed, ["DRAFT"], thread_id, int(time.time() * 1000))
        draft_id = f"r{int(stored.id, 16) % 10**19}"
        mailbox.drafts[draft_id] = stored.id
        if self._draft_failures:
            status = self._draft_failures.popleft()
            return Response(0, drop=True) if status is None else google_error(status)
        return Response.json(200, {"id": draft_id, "message": _label_view(stored)})

    def fail_after_draft(self, status: int | None = 500, *, count: int = 1) -> None:
        """The next `count` drafts.create calls store the draft, then answer `status` (None: drop)."""
        with self.lock:
            self._draft_failures.extend([status] * count)

    def _draft_list(self, mailbox: Mailbox, request: RecordedRequest, match: re.Match[str]) -> Response:
        try:
            max_results = min(500, max(1, int(request.param("maxResults") or 100)))
            offset = _decode_page_token(request.param("pageToken"))
        except ValueError:
            return google_error(400, "Invalid pageToken or maxResults", "invalidArgument")
        terms = _tokenize(request.param("q") or "")
        drafts = [
            (draft_id, mailbox.messages[message_id])
            for draft_id, message_id in mailbox.drafts.items()
            if message_id in mailbox.messages
        ]
        matching = [
            (draft_id, m)
            for draft_id, m in sorted(drafts, key=lambda d: (d[1].internal_date_ms, d[1].id), reverse=True)
            if all(self._term_matches(t, m) for t in terms)
        ]
        page = matching[offset : offset + max_results]
        payload: dict[str, Any] = {}
        if page:
            payload["drafts"] = [{"id": d, "message": {"id": m.id, "threadId": m.thread_id}} for d, m in page]
        if offset + max_results < len(matching):
            payload["nextPageToken"] = _encode_page_token(offset + max_results)
        payload["resultSizeEstimate"] = len(matching)
        return Response.json(200, payload)

    def _draft_get(self, mailbox: Mailbox, request: RecordedRequest, match: re.Match[str]) -> Response:
        message_id = mailbox.drafts.get(match["id"])
        stored = mailbox.messages.get(message_id) if message_id else None
        if stored is None:
            return google_error(404, "Requested entity was not found.", "notFound")
        fmt = (request.param("format") or "full").lower()
        if fmt not in ("full", "metadata", "minimal", "raw"):
            return google_error(400, f"Invalid value at 'format' ({fmt})", "invalidArgument")
        return Response.json(200, {"id": match["id"], "message": self._resource(stored, fmt, request)})

    def _draft_send(self, mailbox: Mailbox, request: RecordedRequest, match: re.Match[str]) -> Response:
        try:
            body = request.json()
        except ValueError:
            return google_error(400, "Invalid JSON payload received.", "parseError")
        draft_id = body.get("id") if isinstance(body, dict) else None
        if not isinstance(draft_id, str) or not draft_id:
            return google_error(400, "Missing draft ID", "invalidArgument")
        message_id = mailbox.drafts.get(draft_id)
        stored = mailbox.messages.get(message_id) if message_id else None
        if stored is None:
            return google_error(404, "Requested entity was not found.", "notFound")
        if not any(stored.parsed.get(name, "").strip() for name in ("To", "Cc", "Bcc")):
            return google_error(400, "Invalid To header", "invalidArgument")
        del mailbox.drafts[draft_id]
        mailbox.history_id += 1
        if "From" not in stored.parsed:  # as messages.send: Gmail sets the mailbox's own address
            stored.raw = f"From: {mailbox.email_address}\r\n".encode("ascii") + stored.raw
            stored.parsed = email.message_from_bytes(stored.raw)
        stored.labels = ["SENT"]
        stored.history_id = mailbox.history_id
        mailbox.sent.append(stored.raw)
        if self._send_failures:
            status = self._send_failures.popleft()
            return Response(0, drop=True) if status is None else google_error(status)
        return Response.json(200, _label_view(stored))

    def _known_label(self, mailbox: Mailbox, label_id: str) -> bool:
        return label_id in SYSTEM_LABELS or label_id in mailbox.labels

    def _modify(self, mailbox: Mailbox, request: RecordedRequest, match: re.Match[str]) -> Response:
        if match["kind"] == "messages":
            targets = [mailbox.messages[match["id"]]] if match["id"] in mailbox.messages else []
        else:
            targets = [m for m in mailbox.messages.values() if m.thread_id == match["id"]]
        if not targets:
            return google_error(404, "Requested entity was not found.", "notFound")
        if match["action"] == "modify":
            try:
                body = request.json() or {}
            except ValueError:
                return google_error(400, "Invalid JSON payload received.", "parseError")
            add = list(body.get("addLabelIds") or [])
            remove = list(body.get("removeLabelIds") or [])
            if not add and not remove:
                return google_error(400, "No label add or removes specified", "invalidArgument")
            for label_id in add + remove:
                if not isinstance(label_id, str) or not self._known_label(mailbox, label_id):
                    return google_error(400, f"Invalid label: {label_id}", "invalidArgument")
        elif match["action"] == "trash":
            add, remove = ["TRASH"], []
        else:
            add, remove = [], ["TRASH"]
        mailbox.history_id += 1
        for message in targets:
            message.labels = [label for label in message.labels if label not in remove]
            message.labels += [label for label in add if label not in message.labels]
            message.history_id = mailbox.history_id
        if match["kind"] == "messages":
            return Response.json(200, _label_view(targets[0]))
        ordered = sorted(targets, key=lambda m: (m.internal_date_ms, m.id))
        return Response.json(
            200,
            {
                "id": match["id"],
                "historyId": str(mailbox.history_id),
                "messages": [_label_view(m) for m in ordered],
            },
        )

    def _label_resource(self, mailbox: Mailbox, label_id: str, *, counts: bool) -> dict[str, Any]:
        if label_id in SYSTEM_LABELS:
            resource: dict[str, Any] = {"id": label_id, "name": label_id, "type": "system"}
        else:
            resource = {
                "id": label_id,
                "name": mailbox.labels[label_id],
                "messageListVisibility": "show",
                "labelListVisibility": "labelShow",
                "type": "user",
            }
        if counts:
            having = [m for m in mailbox.messages.values() if label_id in m.labels]
            unread = [m for m in having if "UNREAD" in m.labels]
            resource |= {
                "messagesTotal": len(having),
                "messagesUnread": len(unread),
                "threadsTotal": len({m.thread_id for m in having}),
                "threadsUnread": len({m.thread_id for m in unread}),
            }
        return resource

    def _labels_list(self, mailbox: Mailbox, request: RecordedRequest, match: re.Match[str]) -> Response:
        ids = [*SYSTEM_LABELS, *mailbox.labels]
        return Response.json(200, {"labels": [self._label_resource(mailbox, i, counts=False) for i in ids]})

    def _label_get(self, mailbox: Mailbox, request: RecordedRequest, match: re.Match[str]) -> Response:
        if not self._known_label(mailbox, match["id"]):
            return google_error(404, "Requested entity was not found.", "notFound")
        return Response.json(200, self._label_resource(mailbox, match["id"], counts=True))

    def _label_create(self, mailbox: Mailbox, request: RecordedRequest, match: re.Match[str]) -> Response:
        try:
            body = request.json()
        except ValueError:
            return google_error(400, "Invalid JSON payload received.", "parseError")
        name = body.get("name") if isinstance(body, dict) else None
        if not isinstance(name, str) or not name.strip():
            return google_error(400, "Invalid label name", "invalidArgument")
        taken = {label.lower() for label in (*SYSTEM_LABELS, *mailbox.labels.values())}
        if name.lower() in taken:
            return google_error(409, "Label name exists or conflicts", "duplicate")
        label_id = f"Label_{len(mailbox.labels) + 1}"
        mailbox.labels[label_id] = name
        return Response.json(200, self._label_resource(mailbox, label_id, counts=False))

    def _store(
        self,
        mailbox: Mailbox,
        raw: bytes,
        parsed: Message,
        labels: list[str],
        thread_id: str | None,
        internal_date_ms: int,
    ) -> StoredMessage:
        message_id = f"{next(self._ids):x}"
        mailbox.history_id += 1
        stored = StoredMessage(
            id=message_id,
            thread_id=thread_id or message_id,
            raw=raw,
            labels=labels,
            internal_date_ms=internal_date_ms,
            history_id=mailbox.history_id,
            parsed=parsed,
        )
        mailbox.messages[message_id] = stored
        return stored

    def _term_matches(self, term: str, message: StoredMessage) -> bool:
        if term.startswith("-") and len(term) > 1:
            return not self._term_matches(term[1:], message)
        op, sep, value = term.partition(":")
        value = value.strip('"')
        op = op.lower()
        if not sep:
            needle = term.strip('"').lower()
            return needle in _decoded(message.parsed.get("Subject", "")).lower() or needle in (
                _text_body(message.parsed).lower()
            )
        if op == "rfc822msgid":
            return message.parsed.get("Message-ID", "").strip().strip("<>") == value.strip("<>")
        if op in ("in", "label"):
            label = value.upper()
            return label == "ANYWHERE" or label in message.labels
        if op == "is":
            flags = {"unread": "UNREAD", "starred": "STARRED", "important": "IMPORTANT"}
            if value.lower() == "read":
                return "UNREAD" not in message.labels
            return flags.get(value.lower(), "\0") in message.labels
        if op in ("from", "to", "cc", "subject"):
            headers = message.parsed.get_all(op, [])
            return any(value.lower() in _decoded(h).lower() for h in headers)
        if op in ("after", "before") and value.isdigit():
            seconds = message.internal_date_ms // 1000
            return seconds >= int(value) if op == "after" else seconds < int(value)
        if op == "has" and value.lower() == "attachment":
            return any(_is_attachment(part) for _, part in _walk(message.parsed))
        self.unsupported_query_terms.append(term)
        return False

    def _batch(self, request: RecordedRequest) -> Response:
        boundary = _boundary(request.headers.get("content-type", ""))
        if not boundary or not request.headers.get("content-type", "").lower().startswith("multipart/mixed"):
            return google_error(400, "Batch request must be multipart/mixed", "badRequest")
        parts = split_multipart(request.body, boundary)
        if not parts:
            return google_error(400, "Batch request contains no parts", "badRequest")
        if len(parts) > MAX_BATCH_PARTS:
            message = f"Too many requests in batch; the limit is {MAX_BATCH_PARTS}."
            return google_error(400, message, "badRequest")
        with self.lock:
            failure = take_failure(self._failures, request.method, request.path)
            if failure is not None:
                return failure
            self.batch_sizes.append(len(parts))
        out_boundary = "batch_" + uuid.uuid4().hex
        chunks: list[bytes] = []
        for part_headers, content in parts:
            inner = _parse_inner_request(content, request.headers.get("authorization"))
            with self.lock:
                self.batch_requests.append(inner)
            response = self._dispatch(inner, in_batch=True)
            content_id = part_headers.get("Content-ID", "").strip()
            response_id = f"<response-{content_id[1:-1]}>" if content_id.startswith("<") else content_id
            head = [f"{status_line(response.status)}", *(f"{k}: {v}" for k, v in response.headers.items())]
            head.append(f"Content-Length: {len(response.body)}")
            chunks.append(
                (
                    f"--{out_boundary}\r\nContent-Type: application/http\r\nContent-ID: {response_id}\r\n\r\n"
                    + "\r\n".join(head)
                    + "\r\n\r\n"
                ).encode("utf-8")
                + response.body
                + b"\r\n"
            )
        body = b"".join(chunks) + f"--{out_boundary}--\r\n".encode()
        return Response(200, body, {"Content-Type": f"multipart/mixed; boundary={out_boundary}"})


# ---- helpers: multipart, HTTP-in-MIME, message rendering ---------------------------------------


def _label_view(stored: StoredMessage) -> dict[str, Any]:
    """What messages.send, drafts.send and the modify/trash calls answer: id, threadId, labelIds."""
    return {"id": stored.id, "threadId": stored.thread_id, "labelIds": list(stored.labels)}


def split_multipart(body: bytes, boundary: str) -> list[tuple[Message, bytes]]:
    """Split a multipart body into (headers, content) pairs, content bytes untouched.

    Done by hand rather than with the email parser because the parser would re-parse a message/rfc822
    part and the exact bytes matter. Accepts CRLF and bare-LF line endings (googleapiclient writes LF).
    """
    delimiter = b"--" + boundary.encode("ascii")
    parts = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):  # the closing delimiter
            break
        chunk = chunk.removeprefix(b"\r\n") if chunk.startswith(b"\r\n") else chunk.removeprefix(b"\n")
        chunk = chunk.removesuffix(b"\r\n") if chunk.endswith(b"\r\n") else chunk.removesuffix(b"\n")
        head, content = _split_head(chunk)
        parts.append((email.message_from_bytes(head + b"\n\n"), content))
    return parts


def _split_head(data: bytes) -> tuple[bytes, bytes]:
    """Split at the first blank line (CRLF CRLF or LF LF, whichever comes first)."""
    candidates = [(i, len(sep)) for sep in (b"\r\n\r\n", b"\n\n") if (i := data.find(sep)) >= 0]
    if not candidates:
        return data, b""
    index, length = min(candidates)
    return data[:index], data[index + length :]


def _parse_inner_request(content: bytes, outer_authorization: str | None) -> RecordedRequest:
    """Parse an application/http part: request line, headers, blank line, body."""
    head, body = _split_head(content)
    lines = head.decode("utf-8", "replace").splitlines()
    method, target = [*lines[0].split(" "), "", ""][:2] if lines else ("", "")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip():
            headers[name.strip().lower()] = value.strip()
    # Google applies the outer request's headers to inner requests that do not set their own.
    if "authorization" not in headers and outer_authorization:
        headers["authorization"] = outer_authorization
    if "content-length" in headers and headers["content-length"].isdigit():
        body = body[: int(headers["content-length"])]
    path, query = parse_target(target)
    return RecordedRequest(method=method.upper(), path=path, query=query, headers=headers, body=body)


def _unauthenticated(request: RecordedRequest) -> Response:
    if "authorization" not in request.headers:
        message = "Request is missing required authentication credential. Expected OAuth 2 access token."
    else:
        message = "Request had invalid authentication credentials. Expected OAuth 2 access token."
    headers = {"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/", error="invalid_token"'}
    response = google_error(401, message, "authError", headers)
    return response


def _boundary(content_type: str) -> str | None:
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    return match[1] if match else None


def _decode_base64url(text: str) -> bytes | None:
    """Gmail wants URL-safe base64 (padding optional); '+', '/' or junk -> None (a 400)."""
    stripped = text.strip()
    if not re.fullmatch(r"[A-Za-z0-9_-]*={0,2}", stripped):
        return None
    try:
        return base64.urlsafe_b64decode(stripped.rstrip("=") + "=" * (-len(stripped.rstrip("=")) % 4))
    except (binascii.Error, ValueError):
        return None


def _encode_page_token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode("ascii")


def _decode_page_token(token: str | None) -> int:
    if not token:
        return 0
    try:
        text = base64.urlsafe_b64decode(token.encode("ascii")).decode("ascii")
    except (binascii.Error, UnicodeError) as exc:
        raise ValueError(token) from exc
    if not text.startswith("offset:") or not text[7:].isdigit():
        raise ValueError(token)
    return int(text[7:])


def _tokenize(query: str) -> list[str]:
    return re.findall(r'-?[\w.-]+:"[^"]*"|-?"[^"]*"|\S+', query)


def _clean(value: str) -> str:
    """Header text parsed from bytes keeps 8-bit bytes as surrogates; show them as UTF-8 (JSON-safe)."""
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _unfold(value: str) -> str:
    return re.sub(r"\r?\n(?=[ \t])", "", value)


def _decoded(value: str) -> str:
    """RFC 2047-decoded header text, for matching `from:` etc. the way Gmail's search does."""
    try:
        return str(email.header.make_header(email.header.decode_header(_clean(_unfold(value)))))
    except (ValueError, LookupError, email.errors.HeaderParseError):
        return _clean(value)


def _headers(part: Message) -> list[dict[str, str]]:
    # raw_items(): the values exactly as in the message, never re-encoded Header objects
    return [{"name": name, "value": _clean(_unfold(value))} for name, value in part.raw_items()]


def _date_header_ms(parsed: Message) -> int | None:
    try:
        date = email.utils.parsedate_to_datetime(parsed.get("Date", ""))
    except (TypeError, ValueError):
        return None
    return int(date.timestamp() * 1000) if date else None


def _walk(part: Message, part_id: str = "") -> Iterator[tuple[str, Message]]:
    """(partId, part) for the part and all its descendants, with Gmail's ids: "", "0", "1", "1.0", ..."""
    yield part_id, part
    if part.get_content_maintype() == "multipart" and isinstance(part.get_payload(), list):
        for index, child in enumerate(part.get_payload()):
            yield from _walk(child, f"{part_id}.{index}" if part_id else str(index))


def _is_attachment(part: Message) -> bool:
    if part.get_content_maintype() == "multipart":
        return False
    disposition = (part.get("Content-Disposition") or "").split(";")[0].strip().lower()
    return disposition == "attachment" or bool(part.get_filename())


def _part_bytes(part: Message) -> bytes:
    if part.get_content_type() == "message/rfc822" and isinstance(part.get_payload(), list):
        return part.get_payload(0).as_bytes()
    return part.get_payload(decode=True) or b""


def _filename(part: Message) -> str:
    name = part.get_filename() or ""  # decodes RFC 2231 (filename*=utf-8''...)
    return _decoded(name) if "=?" in name else _clean(name)


def _attachment_id(message_id: str, part_id: str) -> str:
    token = base64.urlsafe_b64encode(f"{message_id}:{part_id}".encode()).decode("ascii").rstrip("=")
    return "ANGjdJ8" + token


def _attachment_part_id(attachment_id: str, message_id: str) -> str | None:
    token = attachment_id.removeprefix("ANGjdJ8")
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii")
    except (binascii.Error, UnicodeError):
        return None
    owner, _, part_id = text.partition(":")
    return part_id if owner == message_id else None


def _part_resource(
    part: Message, part_id: str, message_id: str, inline_max: int = 0, body_over: int | None = None
) -> dict[str, Any]:
    """The `payload` / `parts[]` MessagePart resource of format=full."""
    resource: dict[str, Any] = {
        "partId": part_id,
        "mimeType": part.get_content_type(),
        "filename": _filename(part),
        "headers": _headers(part),
    }
    if part.get_content_maintype() == "multipart" and isinstance(part.get_payload(), list):
        resource["body"] = {"size": 0}
        resource["parts"] = [
            _part_resource(child, f"{part_id}.{i}" if part_id else str(i), message_id, inline_max, body_over)
            for i, child in enumerate(part.get_payload())
        ]
        return resource
    data = _part_bytes(part)
    large_body = body_over is not None and len(data) > body_over
    if (_is_attachment(part) and len(data) > inline_max) or large_body:
        resource["body"] = {"attachmentId": _attachment_id(message_id, part_id), "size": len(data)}
    elif data:
        resource["body"] = {"size": len(data), "data": base64.urlsafe_b64encode(data).decode("ascii")}
    else:
        resource["body"] = {"size": 0}
    return resource


def _part_text(part: Message) -> str:
    data = part.get_payload(decode=True) or b""
    try:
        return data.decode(part.get_content_charset() or "us-ascii", "replace")
    except LookupError:
        return data.decode("utf-8", "replace")


def _text_body(parsed: Message) -> str:
    """The first text/plain part, else the first text/html part with tags removed."""
    parts = [part for _, part in _walk(parsed) if not _is_attachment(part)]
    for wanted in ("text/plain", "text/html"):
        for part in parts:
            if part.get_content_type() == wanted:
                text = _part_text(part)
                return re.sub(r"<[^>]+>", " ", text) if wanted == "text/html" else text
    return ""


def _snippet(parsed: Message) -> str:
    text = " ".join(_text_body(parsed).split())[:200]
    return html.escape(text, quote=False).replace('"', "&quot;").replace("'", "&#39;")
