"""The Gmail API through googleapiclient: one parsed discovery document and service per instance,
credentials from the token store, batch gets, and retries that are capped and explained.

Retries (list, get, batch, profile): on 429, 403 ``rateLimitExceeded``/``userRateLimitExceeded`` and
5xx, at most ``ATTEMPTS`` tries with exponential backoff and jitter from ``BACKOFF_BASE_S``, honouring
``Retry-After``, and never past ``RETRY_BUDGET_S`` in all, which keeps a call well inside the 60 s
function timeout. ``dailyLimitExceeded`` is not retried: it will not clear for hours.

``messages.send`` is different: Gmail may have sent a message whose answer was a 5xx or a timeout, so
it is re-posted only when the failure proves nothing was sent (429, a rate-limit 403, a connection that
never opened). Anything else raises ``SendOutcomeUnknown`` and the caller looks for our Message-ID.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import logging
import random
import threading
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

import google.auth.credentials
import google_auth_httplib2
import requests
from googleapiclient.discovery import build_from_document
from googleapiclient.discovery_cache import get_static_doc
from googleapiclient.errors import HttpError
from googleapiclient.http import BatchHttpRequest, MediaIoBaseUpload

from shared import clock
from shared.errors import PayloadTooLarge, Unavailable, UpstreamError
from shared.gmail_errors import Failure, SendOutcomeUnknown, classify
from shared.transport import RequestsHttp

logger = logging.getLogger(__name__)

ATTEMPTS = 4
BACKOFF_BASE_S = 0.25
MAX_SLEEP_S = 8.0
RETRY_BUDGET_S = 20.0
# Google advises at most 50 requests per Gmail batch; larger batches get rate-limited.
BATCH_SIZE = 50
# Above 5 MB Gmail wants the media upload endpoint; 35 MB is its hard limit for a message.
SIMPLE_SEND_MAX_BYTES = 5 * 1024 * 1024
MAX_MESSAGE_BYTES = 35 * 1024 * 1024
METADATA_HEADERS = ("From", "To", "Cc", "Subject", "Date", "Message-ID", "References", "In-Reply-To")

_documents: dict[str, dict[str, Any]] = {}
_services: dict[str, Any] = {}
_resources: dict[tuple[str, ...], Any] = {}
_build_lock = threading.Lock()


def _document(endpoint: str) -> dict[str, Any]:
    """Gmail's discovery document, read from googleapiclient's static copy (never fetched) and
    pointed at ``endpoint``: rootUrl moves plain calls, batch and uploads alike."""
    base = _documents.get("")
    if base is None:
        text = get_static_doc("gmail", "v1")
        if text is None:
            raise RuntimeError("googleapiclient ships no static Gmail discovery document")
        base = _documents[""] = json.loads(text)
    document = copy.copy(base)
    root = endpoint.rstrip("/") + "/"
    document["rootUrl"] = root
    document["baseUrl"] = root + document.get("servicePath", "")
    document["mtlsRootUrl"] = root
    return document


def service(endpoint: str) -> Any:
    """The Gmail ``Resource`` for ``endpoint``, built once per instance; calls pass their own http."""
    with _build_lock:
        built = _services.get(endpoint)
        if built is None:
            built = build_from_document(_document(endpoint), http=RequestsHttp())
            _services[endpoint] = built
        return built


def resource(endpoint: str, *path: str) -> Any:
    """The nested ``Resource`` at ``path`` (e.g. ``"users", "messages"``), built once per instance.

    Each ``users()`` / ``messages()`` call builds a new Resource and every one of its methods from the
    discovery document: ~4 ms a send, measured, of a warm call's ~10 ms budget. A Resource keeps no
    per-call state (calls pass their own http), so one per instance serves every call and thread.
    """
    key = (endpoint, *path)
    found = _resources.get(key)
    if found is None:
        found = service(endpoint)
        for name in path:
            found = getattr(found, name)()
        with _build_lock:
            found = _resources.setdefault(key, found)
    return found


class StoreCredentials(google.auth.credentials.Credentials):
    """Credentials whose every refresh goes through the token store.

    google-auth-httplib2 refreshes by itself when the token has expired or Gmail answers 401; routing
    that through the store locks the row, reuses a token another invocation just got, and saves the
    new one, so no refresh is ever lost.
    """

    def __init__(
        self,
        token: str | None,
        expiry: datetime | None,
        refresher: Callable[[str | None], tuple[str | None, datetime | None]],
    ) -> None:
        super().__init__()
        self.token = token
        self.expiry = expiry
        self._refresher = refresher

    def refresh(self, request: Any) -> None:
        self.token, self.expiry = self._refresher(self.token)


def _never_sent(exc: requests.RequestException) -> bool:
    """True when the connection never opened, so the request cannot have reached Gmail."""
    return isinstance(exc, requests.ConnectTimeout) or (
        isinstance(exc, requests.ConnectionError) and "NewConnectionError" in repr(exc)
    )


class GmailClient:
    """Gmail calls for one invocation, with that user's credentials."""

    def __init__(self, endpoint: str, credentials: google.auth.credentials.Credentials) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.service = service(self.endpoint)
        self.messages = resource(self.endpoint, "users", "messages")
        self.transport = RequestsHttp()
        self.http = google_auth_httplib2.AuthorizedHttp(credentials, http=self.transport)

    @property
    def calls(self) -> int:
        """HTTP round trips to Gmail made so far (a batch counts once)."""
        return self.transport.calls

    # -- retries -----------------------------------------------------------------------------------

    def backoff(self, attempt: int, retry_after: float | None, started: float) -> bool:
        """Sleeps (``clock.sleep``) before the next attempt; False when the budget does not allow one."""
        delay = min(MAX_SLEEP_S, BACKOFF_BASE_S * 2 ** (attempt - 1)) * (0.5 + random.random())  # noqa: S311
        if retry_after is not None:
            delay = max(delay, retry_after)
        if clock.monotonic() - started + delay > RETRY_BUDGET_S:
            return False
        clock.sleep(delay)
        return True

    def execute(self, make_request: Callable[[], Any]) -> Any:
        """Runs a request that is safe to repeat (reads, and writes that set a state), with capped retries.

        ``make_request`` builds a fresh googleapiclient request per attempt. 429, rate-limit 403s and 5xx
        are retried with backoff, at most ``ATTEMPTS`` times within ``RETRY_BUDGET_S``.
        """
        started = clock.monotonic()
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return make_request().execute(http=self.http)
            except HttpError as exc:
                failure = classify(exc)
                if not failure.retryable or attempt == ATTEMPTS:
                    raise failure.error from None
                if not self.backoff(attempt, failure.retry_after, started):
                    raise failure.error from None
                logger.info("Gmail answered %s; retrying (attempt %d)", exc.resp.status, attempt + 1)
            except requests.RequestException as exc:
                if attempt == ATTEMPTS or not self.backoff(attempt, None, started):
                    raise Unavailable("Gmail could not be reached") from exc
        raise AssertionError("unreachable")

    def execute_for_object(self, make_request: Callable[[], Any]) -> dict[str, Any]:
        """``execute``, for a method whose answer is a JSON object ({} if Gmail answered anything else)."""
        result = self.execute(make_request)
        return result if isinstance(result, dict) else {}

    # -- calls ---------------------------------------------------------------------------------------

    def email_address(self) -> str:
        """The mailbox's own address (users.getProfile)."""
        profile = self.execute(lambda: self.service.users().getProfile(userId="me"))
        address = profile.get("emailAddress") if isinstance(profile, dict) else None
        if not address:
            raise UpstreamError("Gmail's profile has no email address")
        return str(address)

    def list_messages(
        self,
        *,
        q: str | None,
        label_ids: list[str] | None,
        max_results: int,
        page_token: str | None,
        include_spam_trash: bool,
    ) -> dict[str, Any]:
        """One page of users.messages.list."""
        return self.execute_for_object(
            lambda: self.messages.list(
                userId="me",
                q=q or None,
                labelIds=label_ids or None,
                maxResults=max_results,
                pageToken=page_token or None,
                includeSpamTrash=include_spam_trash,
            )
        )

    def get_message(
        self, message_id: str, *, fmt: str = "metadata", headers: Iterable[str] = METADATA_HEADERS
    ) -> dict[str, Any]:
        """One users.messages.get."""
        header_list = list(headers) if fmt == "metadata" else None
        return self.execute_for_object(
            lambda: self.messages.get(userId="me", id=message_id, format=fmt, metadataHeaders=header_list)
        )

    def get_thread(self, thread_id: str) -> dict[str, Any]:
        """One users.threads.get (``format=full``): every message of the thread in one round trip."""
        return self.execute_for_object(
            lambda: resource(self.endpoint, "users", "threads").get(userId="me", id=thread_id, format="full")
        )

    def get_attachment(self, message_id: str, attachment_id: str) -> dict[str, Any]:
        """One users.messages.attachments.get, read whole: ``{size, data}`` (for body parts, not files)."""
        return self.execute_for_object(
            lambda: resource(self.endpoint, "users", "messages", "attachments").get(
                userId="me", messageId=message_id, id=attachment_id
            )
        )

    def get_messages(
        self, ids: list[str], *, fmt: str, headers: Iterable[str] = METADATA_HEADERS
    ) -> list[dict[str, Any]]:
        """users.messages.get for many ids in Gmail batch requests (see ``batch_get``)."""
        header_list = list(headers) if fmt == "metadata" else None
        return self.batch_get(
            ids, lambda item: self.messages.get(userId="me", id=item, format=fmt, metadataHeaders=header_list)
        )

    def batch_get(self, ids: list[str], make_request: Callable[[str], Any]) -> list[dict[str, Any]]:
        """One read per id (``make_request(id)``) in Gmail batch requests of at most ``BATCH_SIZE``.

        Answers in the order of ``ids``; an item gone since it was listed (404 in the batch) is left out.
        Reads only: rate-limited or 5xx inner answers, or a whole failed batch, go again in a later batch,
        within the same caps as single calls.
        """
        found: dict[str, dict[str, Any]] = {}
        pending = list(dict.fromkeys(ids))
        started = clock.monotonic()
        for attempt in range(1, ATTEMPTS + 1):
            retry: list[str] = []
            last: Failure | None = None
            for offset in range(0, len(pending), BATCH_SIZE):
                chunk = pending[offset : offset + BATCH_SIZE]
                outcome = self._run_batch(chunk, make_request, found)
                retry.extend(outcome[0])
                last = outcome[1] or last
            if not retry:
                break
            pending = retry
            if attempt == ATTEMPTS or not self.backoff(attempt, last.retry_after if last else None, started):
                assert last is not None
                raise last.error
        return [found[item_id] for item_id in ids if item_id in found]

    def _run_batch(
        self, chunk: list[str], make_request: Callable[[str], Any], found: dict[str, dict[str, Any]]
    ) -> tuple[list[str], Failure | None]:
        retry: list[str] = []
        failures: list[Failure] = []

        def collect(request_id: str, response: Any, exception: Exception | None) -> None:
            if exception is None:
                found[request_id] = response
                return
            if isinstance(exception, HttpError):
                failure = classify(exception)
                if exception.resp.status == 404:
                    return  # deleted between list and get: not a failure of the whole list
                failures.append(failure)
                if failure.retryable:
                    retry.append(request_id)
                    return
                raise failure.error from None
            raise exception

        batch = BatchHttpRequest(callback=collect, batch_uri=f"{self.endpoint}/batch/gmail/v1")
        for item_id in chunk:
            batch.add(make_request(item_id), request_id=item_id)
        try:
            batch.execute(http=self.http)
        except HttpError as exc:  # the batch itself failed: every request in it is pending again
            failure = classify(exc)
            if not failure.retryable:
                raise failure.error from None
            return list(chunk), failure
        except requests.RequestException:  # reads only: the whole chunk may safely go again
            return list(chunk), Failure(Unavailable("Gmail could not be reached"), True)
        return retry, (failures[-1] if failures else None)

    def send(self, raw: bytes, thread_id: str | None) -> dict[str, Any]:
        """users.messages.send, re-posted only when Gmail provably did not take the message.

        Raises:
            SendOutcomeUnknown: a 5xx or a broken connection after the request went out.
        """
        if len(raw) > MAX_MESSAGE_BYTES:
            raise PayloadTooLarge("the message is over Gmail's 35 MB limit")
        body: dict[str, Any] = {"threadId": thread_id} if thread_id else {}

        def make() -> Any:
            messages = self.messages
            if len(raw) <= SIMPLE_SEND_MAX_BYTES:
                return messages.send(
                    userId="me", body={**body, "raw": base64.urlsafe_b64encode(raw).decode()}
                )
            media = MediaIoBaseUpload(io.BytesIO(raw), mimetype="message/rfc822", resumable=False)
            return messages.send(userId="me", body=body, media_body=media)

        return self.execute_once(make)

    def execute_once(self, make_request: Callable[[], Any]) -> dict[str, Any]:
        """Runs a request that must not happen twice (a send): re-posted only if Gmail provably refused it.

        Raises:
            SendOutcomeUnknown: a 5xx or a broken connection after the request went out; the caller must
                look for the result (by Message-ID) before anything is sent again.
        """
        started = clock.monotonic()
        for attempt in range(1, ATTEMPTS + 1):
            try:
                result = make_request().execute(http=self.http)
                return result if isinstance(result, dict) else {}
            except HttpError as exc:
                failure = classify(exc)
                if int(exc.resp.status) >= 500:
                    raise SendOutcomeUnknown(f"Gmail answered {failure.summary} to the send") from None
                # 429 and rate-limit 403s are refusals: nothing was sent, so trying again is safe.
                if not failure.retryable or attempt == ATTEMPTS:
                    raise failure.error from None
                if not self.backoff(attempt, failure.retry_after, started):
                    raise failure.error from None
            except requests.RequestException as exc:
                if not _never_sent(exc):
                    raise SendOutcomeUnknown(
                        f"the connection broke during the send ({type(exc).__name__})"
                    ) from exc
                if attempt == ATTEMPTS or not self.backoff(attempt, None, started):
                    raise Unavailable("Gmail could not be reached") from exc
        raise AssertionError("unreachable")

    def find_by_message_id(self, message_id: str) -> dict[str, Any] | None:
        """The message carrying our ``Message-ID`` header, if Gmail has it (``rfc822msgid:`` search)."""
        listed = self.list_messages(
            q=f"rfc822msgid:{message_id.strip('<>')}",
            label_ids=None,
            max_results=1,
            page_token=None,
            include_spam_trash=True,
        )
        messages = listed.get("messages") or []
        if not messages:
            return None
        return self.get_message(str(messages[0]["id"]), fmt="minimal")
