"""``SkillEmailClient``: one typed method per skill-email target, with the calling rules built in.

- Authentication: a Google ID token whose audience is the target's URL, from google-auth's
  ``fetch_id_token`` (metadata server, or ``GOOGLE_APPLICATION_CREDENTIALS``), cached per audience until
  five minutes before it expires. None for a local URL (``http://``, ``localhost``, ``127.0.0.1``).
- ``send_email``, ``create_draft`` and ``send_draft`` carry an ``Idempotency-Key`` (a new UUID unless
  one is given), the same on every retry of that call, so a retry never sends twice.
- Retries: 429 and 503, and a connection that failed or timed out, are retried after ``Retry-After``
  (else exponential backoff with jitter), at most ``max_attempts`` tries and never past
  ``retry_budget`` seconds in all. A send without an Idempotency-Key is never retried once its outcome
  is unknown (503 with ``error.message_id``, or no answer): only the same key makes a retry safe.
  A 409 on a retry of a keyed call means the first attempt is still running; it is retried too.
- Errors: every error answer raises the class of its contract code (``errors.py``).
"""

from __future__ import annotations

import base64
import email.message
import email.utils
import mimetypes
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, cast
from urllib.parse import urlsplit

import requests

from skill_email_client import errors
from skill_email_client.types import (
    AttachmentFile,
    Download,
    Draft,
    EventPage,
    LabelList,
    Message,
    MessageDetail,
    MessageList,
    Modified,
    RefreshSummary,
    Sent,
    Thread,
    TokenStatus,
    Watch,
)

__all__ = ["SkillEmailClient", "attachment"]

USER_AGENT = "skill-email-client/0.1"
IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
RETRY_STATUSES = frozenset({429, 503})
# An ID token lives an hour; a new one is fetched this long before it expires, so no request carries
# a token that expires in flight.
ID_TOKEN_MARGIN_S = 300.0
# (connect, read) seconds. send_email may take up to its own 120 s timeout; the others answer in seconds.
DEFAULT_TIMEOUT = (10.0, 130.0)
BACKOFF_BASE_S = 0.5
MAX_BACKOFF_S = 8.0
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})

IdTokenFetcher = Callable[[str], str]


def attachment(filename: str, content: bytes, mime_type: str | None = None) -> AttachmentFile:
    """An attachment for ``send_email`` / ``create_draft``: the bytes base64-encoded, the MIME type
    guessed from the filename when not given."""
    guessed = mime_type or mimetypes.guess_type(filename)[0] or "application/octet-stream"
    return {"filename": filename, "content": base64.b64encode(content).decode("ascii"), "mime_type": guessed}


def is_local(url: str) -> bool:
    """True for a URL of a local run (no ID token is sent there): plain http, or a loopback host."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    return parts.scheme == "http" or host in LOCAL_HOSTS or host.endswith(".localhost")


def _google_id_token(audience: str) -> str:
    """An ID token for ``audience`` from google-auth (metadata server or a service-account key file)."""
    import google.auth.transport.requests
    import google.oauth2.id_token

    token = google.oauth2.id_token.fetch_id_token(google.auth.transport.requests.Request(), audience)
    return str(token)


def _token_expiry(token: str) -> float:
    """The ``exp`` claim of a JWT (read, not verified: the function verifies it; we only cache it)."""
    import google.auth.jwt

    claims = google.auth.jwt.decode(token, verify=False)
    return float(claims.get("exp", 0))


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds: a number, or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _drop_none(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in fields.items() if value is not None}


class SkillEmailClient:
    """A client for the skill-email functions.

    Args:
        base_url: where the targets live, each at ``{base_url}/{target}``: ``http://localhost:8080`` for
            ``python3 tasks.py serve``, or ``https://REGION-PROJECT.cloudfunctions.net`` when deployed.
        urls: per-target URLs that replace ``{base_url}/{target}`` (e.g. Cloud Run ``*.run.app`` URLs).
        id_tokens: send a Google ID token (audience: the target's URL). ``None`` (default): yes, except
            for a local URL.
        id_token_fetcher: ``audience -> token``; default google-auth's ``fetch_id_token``.
        auto_idempotency_keys: give sends and drafts a new Idempotency-Key when none is passed.
        max_attempts: tries per call, the first included.
        retry_budget: seconds a call may spend in all, waits included, before its last error is raised.
        timeout: ``requests`` timeout, seconds or ``(connect, read)``.
        session: a ``requests.Session`` to reuse (connection pooling, proxies).
    """

    def __init__(
        self,
        base_url: str = "http://localhost:8080",
        *,
        urls: Mapping[str, str] | None = None,
        id_tokens: bool | None = None,
        id_token_fetcher: IdTokenFetcher | None = None,
        auto_idempotency_keys: bool = True,
        max_attempts: int = 5,
        retry_budget: float = 60.0,
        timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.urls = dict(urls or {})
        self.id_tokens = id_tokens
        self.auto_idempotency_keys = auto_idempotency_keys
        self.max_attempts = max(1, max_attempts)
        self.retry_budget = retry_budget
        self.timeout = timeout
        self.session = session or requests.Session()
        self._fetch_id_token = id_token_fetcher or _google_id_token
        self._sleep = sleep
        self._tokens: dict[str, tuple[str, float]] = {}
        self._tokens_lock = threading.Lock()

    # -- plumbing ---------------------------------------------------------------------------------

    def url(self, target: str) -> str:
        """The URL of ``target`` (also the audience of its ID token)."""
        return self.urls.get(target) or f"{self.base_url}/{target}"

    def _authorization(self, url: str) -> dict[str, str]:
        wanted = self.id_tokens if self.id_tokens is not None else not is_local(url)
        if not wanted:
            return {}
        audience = url.split("?", 1)[0]
        with self._tokens_lock:
            cached = self._tokens.get(audience)
            if cached is None or time.time() >= cached[1] - ID_TOKEN_MARGIN_S:
                token = self._fetch_id_token(audience)
                cached = (token, _token_expiry(token))
                self._tokens[audience] = cached
        return {"Authorization": f"Bearer {cached[0]}"}

    def _backoff(self, attempt: int) -> float:
        return random.uniform(0, min(MAX_BACKOFF_S, BACKOFF_BASE_S * 2 ** (attempt - 1)))  # noqa: S311

    def _request(
        self,
        target: str,
        method: str,
        *,
        body: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        keyed: bool = False,
        idempotency_key: str | None = None,
    ) -> requests.Response:
        """One call with the retry rules of the module docstring; returns the 2xx response."""
        url = self.url(target)
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        key = idempotency_key
        if keyed and key is None and self.auto_idempotency_keys:
            key = str(uuid.uuid4())
        if key is not None:
            headers[IDEMPOTENCY_KEY_HEADER] = key
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            wait: float | None
            try:
                response = self.session.request(
                    method,
                    url,
                    json=body if method != "GET" else None,
                    params=params,
                    headers={**headers, **self._authorization(url)},
                    timeout=self.timeout,
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                error: errors.SkillEmailError = errors.TransportError(f"{target}: no answer ({exc})")
                # Without a key, a send that got no answer may have been sent: never again.
                retry = not keyed or key is not None
                wait = None
            else:
                if response.status_code < 400:
                    return response
                error = self._error(response)
                retry = response.status_code in RETRY_STATUSES
                if keyed and key is None and error.message_id:
                    retry = False  # the outcome is unknown; only the same key makes a retry safe
                if response.status_code == 409 and keyed and key is not None and attempt > 1:
                    retry = True  # our own first attempt is still running under this key
                wait = error.retry_after
            if not retry or attempt >= self.max_attempts:
                raise error
            delay = wait if wait is not None else self._backoff(attempt)
            if time.monotonic() - started + delay > self.retry_budget:
                raise error
            self._sleep(delay)

    @staticmethod
    def _error(response: requests.Response) -> errors.SkillEmailError:
        try:
            body = response.json()
        except ValueError:
            body = None
        retry_after = _retry_after(response.headers.get("Retry-After"))
        return errors.from_response(response.status_code, body, response.text, retry_after)

    def _json(self, target: str, method: str, fields: Mapping[str, Any], **options: Any) -> Any:
        fields = _drop_none(fields)
        if method == "GET":
            params = {k: ",".join(v) if isinstance(v, list) else v for k, v in fields.items()}
            params = {k: str(v).lower() if isinstance(v, bool) else v for k, v in params.items()}
            response = self._request(target, "GET", params=params, **options)
        else:
            response = self._request(target, method, body=fields, **options)
        return response.json()

    # -- mail --------------------------------------------------------------------------------------

    def send_email(
        self,
        user_id: str,
        to: str | list[str],
        *,
        subject: str | None = None,
        body: str | None = None,
        html: str | None = None,
        cc: str | list[str] | None = None,
        bcc: str | list[str] | None = None,
        attachments: list[AttachmentFile] | None = None,
        reply_to_message_id: str | None = None,
        thread_id: str | None = None,
        from_name: str | None = None,
        reply_to: str | None = None,
        robeing_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> Sent:
        """Sends a message from the user's mailbox. Retried safely under one Idempotency-Key."""
        fields = {key: value for key, value in locals().items() if key not in ("self", "idempotency_key")}
        return cast(
            Sent, self._json("send_email", "POST", fields, keyed=True, idempotency_key=idempotency_key)
        )

    def list_emails(
        self,
        user_id: str,
        *,
        q: str | None = None,
        label_ids: list[str] | None = None,
        max_results: int | None = None,
        page_token: str | None = None,
        include_body: bool | None = None,
        include_spam_trash: bool | None = None,
        robeing_id: str | None = None,
    ) -> MessageList:
        """One page of the user's messages (Gmail search syntax in ``q``), newest first."""
        fields = {key: value for key, value in locals().items() if key != "self"}
        return cast(MessageList, self._json("list_emails", "POST", fields))

    def iter_emails(self, user_id: str, **filters: Any) -> Iterator[Message]:
        """Every message ``list_emails`` finds, following ``next_page_token`` page after page."""
        page_token = filters.pop("page_token", None)
        while True:
            page = self.list_emails(user_id, page_token=page_token, **filters)
            yield from page["messages"]
            page_token = page["next_page_token"]
            if not page_token:
                return

    def get_email(
        self,
        user_id: str,
        message_id: str,
        *,
        max_body_chars: int | None = None,
        robeing_id: str | None = None,
    ) -> MessageDetail:
        """One message with decoded bodies and the headers a reply needs."""
        fields = {key: value for key, value in locals().items() if key != "self"}
        return cast(MessageDetail, self._json("get_email", "POST", fields))

    def get_thread(
        self,
        user_id: str,
        thread_id: str,
        *,
        max_body_chars: int | None = None,
        robeing_id: str | None = None,
    ) -> Thread:
        """A whole conversation, oldest message first."""
        fields = {key: value for key, value in locals().items() if key != "self"}
        return cast(Thread, self._json("get_thread", "POST", fields))

    def get_attachment(
        self, user_id: str, message_id: str, attachment_id: str, *, robeing_id: str | None = None
    ) -> Download:
        """The bytes of one attachment (``attachment_id`` as listed in a message's ``attachments``)."""
        params = _drop_none(
            {
                "user_id": user_id,
                "message_id": message_id,
                "attachment_id": attachment_id,
                "robeing_id": robeing_id,
            }
        )
        response = self._request("get_attachment", "GET", params=params)
        disposition = email.message.Message()
        disposition["Content-Disposition"] = response.headers.get("Content-Disposition", "attachment")
        return {
            "content": response.content,
            "mime_type": response.headers.get("Content-Type", "application/octet-stream"),
            "filename": disposition.get_filename(),
        }

    def create_draft(
        self,
        user_id: str,
        to: str | list[str],
        *,
        subject: str | None = None,
        body: str | None = None,
        html: str | None = None,
        cc: str | list[str] | None = None,
        bcc: str | list[str] | None = None,
        attachments: list[AttachmentFile] | None = None,
        reply_to_message_id: str | None = None,
        thread_id: str | None = None,
        from_name: str | None = None,
        reply_to: str | None = None,
        robeing_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> Draft:
        """A draft for a person to review, built like ``send_email``."""
        fields = {key: value for key, value in locals().items() if key not in ("self", "idempotency_key")}
        return cast(
            Draft, self._json("create_draft", "POST", fields, keyed=True, idempotency_key=idempotency_key)
        )

    def send_draft(
        self,
        user_id: str,
        draft_id: str,
        *,
        robeing_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> Sent:
        """Sends a draft. Retried safely under one Idempotency-Key."""
        fields = {"user_id": user_id, "draft_id": draft_id, "robeing_id": robeing_id}
        return cast(
            Sent, self._json("send_draft", "POST", fields, keyed=True, idempotency_key=idempotency_key)
        )

    def modify_email(
        self,
        user_id: str,
        *,
        message_id: str | None = None,
        thread_id: str | None = None,
        add_labels: list[str] | None = None,
        remove_labels: list[str] | None = None,
        mark_read: bool | None = None,
        archive: bool | None = None,
        trash: bool | None = None,
        robeing_id: str | None = None,
    ) -> Modified:
        """Labels, read/unread, archive or trash, for one message or a whole thread."""
        fields = {key: value for key, value in locals().items() if key != "self"}
        return cast(Modified, self._json("modify_email", "POST", fields))

    def list_labels(
        self, user_id: str, *, include_counts: bool | None = None, robeing_id: str | None = None
    ) -> LabelList:
        """The mailbox's labels, with message counts when asked."""
        fields = {key: value for key, value in locals().items() if key != "self"}
        return cast(LabelList, self._json("list_labels", "POST", fields))

    # -- tokens and events -------------------------------------------------------------------------

    def token_status(self, user_id: str, *, robeing_id: str | None = None) -> TokenStatus:
        """Whether the user has a usable token (never the token itself)."""
        fields = {"user_id": user_id, "robeing_id": robeing_id}
        return cast(TokenStatus, self._json("token_status", "POST", fields))

    def refresh_tokens(
        self,
        user_id: str | None = None,
        *,
        robeing_id: str | None = None,
        window_seconds: int | None = None,
    ) -> RefreshSummary:
        """Refreshes one user's token now, or (no user) every token close to expiry."""
        fields = {key: value for key, value in locals().items() if key != "self"}
        return cast(RefreshSummary, self._json("refresh_tokens", "POST", fields))

    def watch_mailbox(
        self,
        user_id: str,
        robeing_id: str,
        *,
        action: str | None = None,
        label_ids: list[str] | None = None,
    ) -> Watch:
        """Starts (``action="start"``, the default) or stops new-mail notifications for a robeing."""
        fields = {key: value for key, value in locals().items() if key != "self"}
        return cast(Watch, self._json("watch_mailbox", "POST", fields))

    def list_events(
        self, robeing_id: str, *, after: str | None = None, limit: int | None = None
    ) -> EventPage:
        """The events queued for a robeing, oldest first; pass ``next_cursor`` as ``after`` to go on."""
        fields = {key: value for key, value in locals().items() if key != "self"}
        return cast(EventPage, self._json("list_events", "POST", fields))
