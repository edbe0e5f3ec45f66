"""Self-tests of the fake Google servers, driven by the REAL client libraries over loopback HTTP.

They also pin down how each client must be configured to reach a fake (see `_gmail_service`).
"""

from __future__ import annotations

import base64
import concurrent.futures
import email
import email.policy
import http.client
import io
import time
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

import google.auth.transport.requests
import httplib2
import pytest
import requests
from google.api_core import exceptions as core_exceptions
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.auth.exceptions import RefreshError
from google.cloud import secretmanager
from google.oauth2.credentials import Credentials
from googleapiclient.discovery import build, build_from_document
from googleapiclient.errors import HttpError
from googleapiclient.http import BatchHttpRequest, MediaIoBaseUpload

from devtools.fakes import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    FakeGmail,
    FakeSecretManager,
    FakeTokenEndpoint,
    crc32c,
)
from devtools.fakes.gmail import DEFAULT_TOKEN, discovery_document

REFRESH_A = "1//refresh-a"

# ---- helpers -----------------------------------------------------------------------------------


def _gmail_service(fake: FakeGmail, token: str = DEFAULT_TOKEN) -> Any:
    """googleapiclient's Gmail service pointed at the fake for plain calls, uploads and batches."""
    return build_from_document(discovery_document(fake.url), credentials=Credentials(token=token))


def _raw(
    subject: str = "hello",
    *,
    to: str = "you@example.com",
    sender: str = "Alice <alice@example.com>",
    body: str = "Hi there, it's me.",
    message_id: str | None = None,
    html: str | None = None,
    attachment: tuple[str, bytes] | None = None,
) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = "Tue, 25 Nov 2025 10:00:00 +0000"
    if message_id:
        msg["Message-ID"] = message_id
    msg.set_content(body)
    if html:
        msg.add_alternative(html, subtype="html")
    if attachment:
        name, data = attachment
        msg.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    return msg.as_bytes(policy=email.policy.SMTP)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii")


@pytest.fixture
def gmail() -> Iterator[FakeGmail]:
    with FakeGmail() as fake:
        yield fake


@pytest.fixture
def oauth() -> Iterator[FakeTokenEndpoint]:
    with FakeTokenEndpoint(refresh_tokens={REFRESH_A: DEFAULT_CLIENT_ID}) as fake:
        yield fake


@pytest.fixture
def secrets() -> Iterator[FakeSecretManager]:
    with FakeSecretManager() as fake:
        yield fake


# ---- what googleapiclient does with an overridden endpoint -------------------------------------


def test_api_endpoint_moves_plain_calls_but_not_batch_or_upload_scheme(gmail: FakeGmail) -> None:
    service = build(
        "gmail",
        "v1",
        credentials=Credentials(token=DEFAULT_TOKEN),
        static_discovery=True,
        client_options={"api_endpoint": gmail.url},
    )
    assert service.users().getProfile(userId="me").execute()["emailAddress"] == "me@example.com"
    # The batch URI comes from the discovery document's rootUrl, not from api_endpoint.
    assert service.new_batch_http_request()._batch_uri == "https://gmail.googleapis.com/batch"
    # Uploads keep the document's https scheme; only the host:port is swapped in.
    media = MediaIoBaseUpload(io.BytesIO(_raw()), mimetype="message/rfc822", resumable=False)
    upload = service.users().messages().send(userId="me", body={}, media_body=media)
    assert upload.uri.startswith("https://127.0.0.1:")
    # An explicit BatchHttpRequest does reach the fake.
    batch = BatchHttpRequest(batch_uri=gmail.url + "/batch/gmail/v1")
    batch.add(service.users().getProfile(userId="me"))
    batch.execute()
    assert gmail.batch_sizes == [1]


def test_patched_root_url_moves_everything(gmail: FakeGmail) -> None:
    service = _gmail_service(gmail)
    assert service.new_batch_http_request()._batch_uri == gmail.url + "/batch"
    media = MediaIoBaseUpload(io.BytesIO(_raw()), mimetype="message/rfc822", resumable=False)
    assert service.users().messages().send(userId="me", media_body=media).uri.startswith(gmail.url + "/")


# ---- Gmail -------------------------------------------------------------------------------------


def test_profile_counts_messages_and_threads(gmail: FakeGmail) -> None:
    first = gmail.add_message(_raw("a"))
    gmail.add_message(_raw("b"), thread_id=first)
    gmail.add_message(_raw("c"))
    profile = _gmail_service(gmail).users().getProfile(userId="me").execute()
    assert profile["emailAddress"] == "me@example.com"
    assert profile["messagesTotal"] == 3
    assert profile["threadsTotal"] == 2
    assert profile["historyId"].isdigit()


def test_missing_or_unknown_token_is_401_in_googles_shape(gmail: FakeGmail) -> None:
    response = requests.get(gmail.url + "/gmail/v1/users/me/profile", timeout=5)
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["status"] == "UNAUTHENTICATED"
    assert error["errors"][0]["reason"] == "authError"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    bad = requests.get(
        gmail.url + "/gmail/v1/users/me/profile", headers={"Authorization": "Bearer nope"}, timeout=5
    )
    assert bad.status_code == 401


def test_unknown_token_with_token_only_credentials_surfaces_as_refresh_error(gmail: FakeGmail) -> None:
    # google-auth-httplib2 answers a 401 by refreshing; token-only credentials cannot, so RefreshError.
    with pytest.raises(RefreshError):
        _gmail_service(gmail, token="not-allowed").users().getProfile(userId="me").execute()


def test_other_user_id_is_forbidden(gmail: FakeGmail) -> None:
    with pytest.raises(HttpError) as info:
        _gmail_service(gmail).users().getProfile(userId="someone@else.com").execute()
    assert info.value.resp.status == 403


def test_list_pages_filters_labels_and_omits_messages_when_empty(gmail: FakeGmail) -> None:
    ids = [gmail.add_message(_raw(f"m{i}"), internal_date_ms=1_700_000_000_000 + i) for i in range(5)]
    gmail.add_message(_raw("read one"), labels=["INBOX"])
    gmail.add_message(_raw("spam"), labels=["SPAM", "UNREAD"])
    messages = _gmail_service(gmail).users().messages()

    first = messages.list(userId="me", labelIds=["INBOX", "UNREAD"], maxResults=3).execute()
    assert [m["id"] for m in first["messages"]] == ids[::-1][:3]  # newest first
    assert first["resultSizeEstimate"] == 5
    second = messages.list(
        userId="me", labelIds=["INBOX", "UNREAD"], maxResults=3, pageToken=first["nextPageToken"]
    ).execute()
    assert [m["id"] for m in second["messages"]] == ids[::-1][3:]
    assert "nextPageToken" not in second
    assert all(m["threadId"] == m["id"] for m in second["messages"])

    empty = messages.list(userId="me", labelIds=["STARRED"]).execute()
    assert empty == {"resultSizeEstimate": 0}
    # The repeated parameter really travels as labelIds=INBOX&labelIds=UNREAD.
    assert gmail.find("GET", r"/messages$")[0].query["labelIds"] == ["INBOX", "UNREAD"]


def test_list_spam_and_trash_only_with_include_spam_trash(gmail: FakeGmail) -> None:
    gmail.add_message(_raw("spam"), labels=["SPAM"])
    messages = _gmail_service(gmail).users().messages()
    assert messages.list(userId="me").execute()["resultSizeEstimate"] == 0
    assert messages.list(userId="me", includeSpamTrash=True).execute()["resultSizeEstimate"] == 1
    assert messages.list(userId="me", q="in:spam").execute()["resultSizeEstimate"] == 1


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("rfc822msgid:<abc@mail.example.com>", ["target"]),
        ("rfc822msgid:abc@mail.example.com", ["target"]),
        ("from:bob@example.com", ["target"]),
        ("is:unread", ["target"]),
        ("is:read", ["other", "sent"]),
        ("in:sent", ["sent"]),
        ("subject:안녕", ["target"]),
        ("from:bob is:unread", ["target"]),
        ("-from:bob in:inbox", ["other"]),
        ("has:attachment", ["other"]),
        ("lunch", ["target"]),
        ("older_than:2d", []),
    ],
)
def test_list_query_subset(gmail: FakeGmail, query: str, expected: list[str]) -> None:
    names = {
        gmail.add_message(
            _raw("안녕 lunch?", sender="Bob <bob@example.com>", message_id="<abc@mail.example.com>")
        ): "target",
        gmail.add_message(_raw("other", attachment=("a.bin", b"x")), labels=["INBOX"]): "other",
        gmail.add_message(_raw("sent"), labels=["SENT"]): "sent",
    }
    result = _gmail_service(gmail).users().messages().list(userId="me", q=query).execute()
    assert sorted(names[m["id"]] for m in result.get("messages", [])) == sorted(expected)
    if query == "older_than:2d":
        assert gmail.unsupported_query_terms == ["older_than:2d"] * 3


def test_get_metadata_returns_only_requested_headers(gmail: FakeGmail) -> None:
    message_id = gmail.add_message(_raw("=?utf-8?b?7JWI64WV?=", body='Tom & Jerry\'s "show"'))
    message = (
        _gmail_service(gmail)
        .users()
        .messages()
        .get(userId="me", id=message_id, format="metadata", metadataHeaders=["Subject", "from"])
        .execute()
    )
    assert message["id"] == message_id
    assert message["labelIds"] == ["INBOX", "UNREAD"]
    assert message["internalDate"] == str(1764064800000)  # the Date header
    assert message["snippet"] == "Tom &amp; Jerry&#39;s &quot;show&quot;"
    assert message["sizeEstimate"] > 0
    headers = {h["name"]: h["value"] for h in message["payload"]["headers"]}
    assert set(headers) == {"From", "Subject"}
    assert headers["From"] == "Alice <alice@example.com>"
    assert "parts" not in message["payload"]


def test_get_metadata_keeps_encoded_words_like_gmail(gmail: FakeGmail) -> None:
    message_id = gmail.add_message(_raw("안녕하세요 회의 일정"))
    message = (
        _gmail_service(gmail)
        .users()
        .messages()
        .get(userId="me", id=message_id, format="metadata", metadataHeaders=["Subject"])
        .execute()
    )
    subject = message["payload"]["headers"][0]["value"]
    assert subject.startswith("=?utf-8?")
    assert "\n" not in subject  # unfolded
    assert str(email.header.make_header(email.header.decode_header(subject))) == "안녕하세요 회의 일정"


def test_get_full_has_parts_data_and_attachment_ids(gmail: FakeGmail) -> None:
    raw = _raw(
        "report", body="plain text 한글", html="<p>html</p>", attachment=("보고서.pdf", b"%PDF-1.4 data")
    )
    message_id = gmail.add_message(raw)
    service = _gmail_service(gmail)
    message = service.users().messages().get(userId="me", id=message_id, format="full").execute()
    payload = message["payload"]
    assert payload["partId"] == ""
    assert payload["mimeType"] == "multipart/mixed"
    alternative, attachment = payload["parts"]
    plain, html_part = alternative["parts"]
    assert (alternative["partId"], plain["partId"], html_part["partId"]) == ("0", "0.0", "0.1")
    # Decoded bodies keep the message's CRLF line endings, as Gmail's do.
    assert base64.urlsafe_b64decode(plain["body"]["data"]).decode() == "plain text 한글\r\n"
    assert base64.urlsafe_b64decode(html_part["body"]["data"]) == b"<p>html</p>\r\n"
    assert attachment["filename"] == "보고서.pdf"
    assert attachment["mimeType"] == "application/octet-stream"
    assert "data" not in attachment["body"]
    assert attachment["body"]["size"] == len(b"%PDF-1.4 data")
    fetched = (
        service.users()
        .messages()
        .attachments()
        .get(userId="me", messageId=message_id, id=attachment["body"]["attachmentId"])
        .execute()
    )
    assert base64.urlsafe_b64decode(fetched["data"]) == b"%PDF-1.4 data"


def test_small_attachment_comes_inline_without_an_attachment_id_when_asked(gmail: FakeGmail) -> None:
    gmail.inline_data_max_bytes = 100
    message_id = gmail.add_message(_raw("tiny", attachment=("tiny.bin", b"\x00\x01tiny")))
    message = (
        _gmail_service(gmail).users().messages().get(userId="me", id=message_id, format="full").execute()
    )
    _, attachment = message["payload"]["parts"]
    assert attachment["filename"] == "tiny.bin"
    assert "attachmentId" not in attachment["body"]
    assert base64.urlsafe_b64decode(attachment["body"]["data"]) == b"\x00\x01tiny"


def test_threads_get_returns_the_thread_oldest_first_with_full_payloads(gmail: FakeGmail) -> None:
    later = gmail.add_message(_raw("second"), thread_id="t-1", internal_date_ms=2_000)
    earlier = gmail.add_message(_raw("first"), thread_id="t-1", internal_date_ms=1_000)
    gmail.add_message(_raw("elsewhere"), thread_id="t-2")
    threads = _gmail_service(gmail).users().threads()

    thread = threads.get(userId="me", id="t-1", format="full").execute()

    assert thread["id"] == "t-1"
    assert [m["id"] for m in thread["messages"]] == [earlier, later]
    assert all(m["threadId"] == "t-1" for m in thread["messages"])
    assert thread["messages"][0]["payload"]["mimeType"] == "text/plain"
    assert int(thread["historyId"]) == max(int(m["historyId"]) for m in thread["messages"])
    metadata = threads.get(userId="me", id="t-1", format="metadata", metadataHeaders=["Subject"]).execute()
    assert [h["name"] for h in metadata["messages"][0]["payload"]["headers"]] == ["Subject"]
    with pytest.raises(HttpError) as info:
        threads.get(userId="me", id="no-such-thread").execute()
    assert info.value.resp.status == 404


def test_attachments_get_of_an_unknown_id_is_404(gmail: FakeGmail) -> None:
    message_id = gmail.add_message(_raw("with file", attachment=("a.bin", b"abc")))
    attachments = _gmail_service(gmail).users().messages().attachments()
    with pytest.raises(HttpError) as info:
        attachments.get(userId="me", messageId=message_id, id="ANGjdJ8-nonsense").execute()
    assert info.value.resp.status == 404


def test_get_minimal_and_raw(gmail: FakeGmail) -> None:
    raw = _raw("raw one")
    message_id = gmail.add_message(raw)
    messages = _gmail_service(gmail).users().messages()
    minimal = messages.get(userId="me", id=message_id, format="minimal").execute()
    assert "payload" not in minimal
    assert minimal["threadId"] == message_id
    raw_resource = messages.get(userId="me", id=message_id, format="raw").execute()
    assert base64.urlsafe_b64decode(raw_resource["raw"]) == raw


def test_get_unknown_or_deleted_is_404(gmail: FakeGmail) -> None:
    message_id = gmail.add_message(_raw())
    gmail.delete_message(message_id)
    with pytest.raises(HttpError) as info:
        _gmail_service(gmail).users().messages().get(userId="me", id=message_id).execute()
    assert info.value.resp.status == 404
    assert info.value.error_details[0]["reason"] == "notFound"


def test_send_json_stores_message_and_thread(gmail: FakeGmail) -> None:
    parent = gmail.add_message(_raw("question"))
    messages = _gmail_service(gmail).users().messages()
    raw = _raw("Re: question")
    sent = messages.send(userId="me", body={"raw": _b64url(raw), "threadId": parent}).execute()
    assert sent["labelIds"] == ["SENT"]
    assert sent["threadId"] == parent
    assert gmail.sent_messages() == [raw]
    fresh = messages.send(userId="me", body={"raw": _b64url(_raw("new"))}).execute()
    assert fresh["threadId"] == fresh["id"]
    assert gmail.message(fresh["id"]).labels == ["SENT"]


@pytest.mark.parametrize(
    "body",
    [
        {"raw": base64.b64encode(b"\xfb\xff" + _raw()).decode()},  # standard alphabet: '+' and '/'
        {"raw": "!!!"},
        {"raw": _b64url(b"Subject: nobody\r\n\r\nno recipients\r\n")},
        {},
    ],
)
def test_send_rejects_invalid_raw_with_400(gmail: FakeGmail, body: dict[str, str]) -> None:
    with pytest.raises(HttpError) as info:
        _gmail_service(gmail).users().messages().send(userId="me", body=body).execute()
    assert info.value.resp.status == 400
    assert gmail.sent_messages() == []


def test_send_to_unknown_thread_is_404(gmail: FakeGmail) -> None:
    with pytest.raises(HttpError) as info:
        body = {"raw": _b64url(_raw()), "threadId": "deadbeef"}
        _gmail_service(gmail).users().messages().send(userId="me", body=body).execute()
    assert info.value.resp.status == 404


@pytest.mark.parametrize(
    ("body", "resumable", "upload_type"),
    [(None, False, "media"), ({}, False, "multipart"), ({}, True, "resumable")],
)
def test_send_via_media_upload(
    gmail: FakeGmail, body: dict[str, str] | None, resumable: bool, upload_type: str
) -> None:
    raw = _raw("uploaded", attachment=("big.bin", bytes(range(256)) * 10))
    media = MediaIoBaseUpload(io.BytesIO(raw), mimetype="message/rfc822", resumable=resumable)
    sent = _gmail_service(gmail).users().messages().send(userId="me", body=body, media_body=media).execute()
    assert sent["labelIds"] == ["SENT"]
    assert gmail.sent_messages() == [raw]
    assert gmail.upload_types == [upload_type]


def test_multipart_upload_carries_thread_id(gmail: FakeGmail) -> None:
    parent = gmail.add_message(_raw("question"))
    media = MediaIoBaseUpload(io.BytesIO(_raw("Re: question")), mimetype="message/rfc822", resumable=False)
    send = (
        _gmail_service(gmail)
        .users()
        .messages()
        .send(userId="me", body={"threadId": parent}, media_body=media)
    )
    assert send.execute()["threadId"] == parent
    assert gmail.find("POST", "^/upload/")[0].param("uploadType") == "multipart"


def test_batch_of_gets_dispatches_each_inner_request(gmail: FakeGmail) -> None:
    ids = [gmail.add_message(_raw(f"m{i}")) for i in range(50)]
    service = _gmail_service(gmail)
    listed = service.users().messages().list(userId="me", maxResults=50).execute()
    results: dict[str, Any] = {}

    def collect(request_id: str, response: Any, exception: Exception | None) -> None:
        results[request_id] = exception or response

    batch = service.new_batch_http_request(callback=collect)
    for m in listed["messages"]:
        batch.add(
            service.users()
            .messages()
            .get(userId="me", id=m["id"], format="metadata", metadataHeaders=["Subject"]),
            request_id=m["id"],
        )
    batch.execute()
    assert sorted(results) == sorted(ids)
    assert results[ids[7]]["payload"]["headers"] == [{"name": "Subject", "value": "m7"}]
    # "A list of 50 costs one list call and one batch call."
    assert gmail.count("GET", r"/messages$") == 1
    assert gmail.count("POST", r"^/batch") == 1
    assert gmail.batch_sizes == [50]
    assert gmail.count_inner("GET", r"/messages/[^/]+$") == 50
    assert len(gmail.requests) == 2


def test_batch_inner_failures_and_missing_messages(gmail: FakeGmail) -> None:
    ids = [gmail.add_message(_raw(f"m{i}")) for i in range(3)]
    gmail.delete_message(ids[1])
    gmail.fail_next(rf"/messages/{ids[2]}$", 429, reason="rateLimitExceeded")
    service = _gmail_service(gmail)
    results: dict[str, Any] = {}
    batch = service.new_batch_http_request(
        callback=lambda rid, resp, exc: results.__setitem__(rid, exc or resp)
    )
    for message_id in ids:
        batch.add(service.users().messages().get(userId="me", id=message_id), request_id=message_id)
    batch.execute()
    assert results[ids[0]]["id"] == ids[0]
    assert isinstance(results[ids[1]], HttpError)
    assert results[ids[1]].resp.status == 404
    assert results[ids[2]].resp.status == 429
    assert results[ids[2]].error_details[0]["reason"] == "rateLimitExceeded"


def test_batch_over_100_parts_is_400(gmail: FakeGmail) -> None:
    boundary = "b0undary"
    part = (
        f"--{boundary}\r\nContent-Type: application/http\r\nContent-ID: <x+{{n}}>\r\n\r\n"
        "GET /gmail/v1/users/me/profile HTTP/1.1\r\n\r\n"
    )
    body = "".join(part.format(n=n) for n in range(101)) + f"--{boundary}--\r\n"
    response = requests.post(
        gmail.url + "/batch/gmail/v1",
        data=body.encode(),
        headers={
            "Content-Type": f"multipart/mixed; boundary={boundary}",
            "Authorization": "Bearer " + DEFAULT_TOKEN,
        },
        timeout=5,
    )
    assert response.status_code == 400
    assert gmail.batch_sizes == []


def test_fail_next_by_path_then_recovers(gmail: FakeGmail) -> None:
    gmail.fail_next(r"/profile$", 403, reason="userRateLimitExceeded", count=2, headers={"Retry-After": "1"})
    profile = _gmail_service(gmail).users().getProfile(userId="me")
    for _ in range(2):
        with pytest.raises(HttpError) as info:
            profile.execute()
        assert info.value.resp.status == 403
        assert info.value.error_details[0]["reason"] == "userRateLimitExceeded"
        assert info.value.resp["retry-after"] == "1"
    assert profile.execute()["emailAddress"] == "me@example.com"


def test_fail_next_with_custom_body(gmail: FakeGmail) -> None:
    gmail.fail_next("/profile", 500, body={"weird": True})
    response = requests.get(
        gmail.url + "/gmail/v1/users/me/profile",
        headers={"Authorization": "Bearer " + DEFAULT_TOKEN},
        timeout=5,
    )
    assert (response.status_code, response.json()) == (500, {"weird": True})


def test_send_stored_then_500_means_gmail_may_have_sent_it(gmail: FakeGmail) -> None:
    gmail.fail_after_send(500)
    with pytest.raises(HttpError) as info:
        _gmail_service(gmail).users().messages().send(userId="me", body={"raw": _b64url(_raw())}).execute()
    assert info.value.resp.status == 500
    assert len(gmail.sent_messages()) == 1


def test_dropped_send_is_resent_once_by_httplib2_itself(gmail: FakeGmail) -> None:
    # Surprise worth knowing: httplib2 retries a request whose connection closed without a status line,
    # POST included. So one dropped answer becomes a silent second send...
    gmail.fail_after_send(None, count=1)
    service = _gmail_service(gmail)
    sent = service.users().messages().send(userId="me", body={"raw": _b64url(_raw())}).execute()
    assert sent["labelIds"] == ["SENT"]
    assert len(gmail.sent_messages()) == 2
    # ...and when both attempts are dropped the caller sees a connection error, with two messages sent.
    gmail.fail_after_send(None, count=2)
    with pytest.raises((http.client.HTTPException, ConnectionError, httplib2.HttpLib2Error)):
        service.users().messages().send(userId="me", body={"raw": _b64url(_raw())}).execute()
    assert len(gmail.sent_messages()) == 4


def test_trusting_the_token_endpoint_accepts_refreshed_tokens(
    gmail: FakeGmail, oauth: FakeTokenEndpoint
) -> None:
    gmail.trust(oauth, "alice@example.com")
    gmail.add_message(_raw("for alice"), email_address="alice@example.com")
    credentials = Credentials(
        token=None,
        refresh_token=REFRESH_A,
        client_id=DEFAULT_CLIENT_ID,
        client_secret=DEFAULT_CLIENT_SECRET,
        token_uri=oauth.url + "/token",
    )
    service = build_from_document(discovery_document(gmail.url), credentials=credentials)
    profile = service.users().getProfile(userId="me").execute()  # refreshes first: no token yet
    assert profile == {
        "emailAddress": "alice@example.com",
        "messagesTotal": 1,
        "threadsTotal": 1,
        "historyId": profile["historyId"],
    }
    assert oauth.calls(REFRESH_A) == 1


def test_latency_is_added_and_requests_run_concurrently(gmail: FakeGmail) -> None:
    gmail.latency = 0.2
    url = gmail.url + "/gmail/v1/users/me/profile"
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        statuses = list(
            pool.map(
                lambda _: (
                    requests.get(
                        url, headers={"Authorization": "Bearer " + DEFAULT_TOKEN}, timeout=5
                    ).status_code
                ),
                range(20),
            )
        )
    elapsed = time.monotonic() - started
    assert statuses == [200] * 20
    assert 0.2 <= elapsed < 1.5


def test_close_is_prompt_even_with_idle_keep_alive_connections() -> None:
    fake = FakeGmail().start()
    session = requests.Session()
    session.get(fake.url + "/gmail/v1/users/me/profile", timeout=5)  # leaves a keep-alive connection open
    started = time.monotonic()
    fake.close()
    assert time.monotonic() - started < 2
    with pytest.raises(requests.ConnectionError):
        session.get(fake.url + "/gmail/v1/users/me/profile", timeout=2)


# ---- OAuth token endpoint ----------------------------------------------------------------------


def _credentials(oauth: FakeTokenEndpoint, refresh_token: str | None = None, **kwargs: Any) -> Credentials:
    return Credentials(
        token=None,
        refresh_token=refresh_token or REFRESH_A,
        client_id=kwargs.get("client_id", DEFAULT_CLIENT_ID),
        client_secret=kwargs.get("client_secret", DEFAULT_CLIENT_SECRET),
        token_uri=oauth.url + "/token",
    )


def test_refresh_issues_a_new_access_token(oauth: FakeTokenEndpoint) -> None:
    credentials = _credentials(oauth)
    credentials.refresh(google.auth.transport.requests.Request())
    assert credentials.token in oauth.issued_access_tokens
    assert credentials.refresh_token == REFRESH_A  # kept: no rotation
    assert credentials.expiry is not None
    assert oauth.calls(REFRESH_A) == 1
    form = oauth.requests[0].form()
    assert form["grant_type"] == "refresh_token"
    assert form["client_secret"] == DEFAULT_CLIENT_SECRET
    credentials.refresh(google.auth.transport.requests.Request())
    assert len(oauth.issued_access_tokens) == 2


def test_refresh_with_string_expires_in_and_rotation(oauth: FakeTokenEndpoint) -> None:
    oauth.expires_in = "3599"
    oauth.rotate_refresh_tokens = True
    credentials = _credentials(oauth)
    credentials.refresh(google.auth.transport.requests.Request())
    assert credentials.refresh_token == oauth.rotated[REFRESH_A]
    assert oauth.requests[0].method == "POST"


def test_revoked_refresh_token_is_invalid_grant(oauth: FakeTokenEndpoint) -> None:
    oauth.revoke(REFRESH_A)
    with pytest.raises(RefreshError) as info:
        _credentials(oauth).refresh(google.auth.transport.requests.Request())
    assert "invalid_grant" in str(info.value)
    assert info.value.retryable is False


@pytest.mark.parametrize(
    ("kwargs", "status", "error"),
    [
        ({"client_secret": "wrong"}, 401, "invalid_client"),
        ({"client_id": "unknown"}, 401, "invalid_client"),
    ],
)
def test_wrong_client_is_401(
    oauth: FakeTokenEndpoint, kwargs: dict[str, str], status: int, error: str
) -> None:
    with pytest.raises(RefreshError):
        _credentials(oauth, **kwargs).refresh(google.auth.transport.requests.Request())
    response = requests.post(
        oauth.url + "/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": REFRESH_A,
            "client_id": kwargs.get("client_id", DEFAULT_CLIENT_ID),
            "client_secret": kwargs.get("client_secret", DEFAULT_CLIENT_SECRET),
        },
        timeout=5,
    )
    assert (response.status_code, response.json()["error"]) == (status, error)


def test_token_of_another_client_is_unauthorized_client(oauth: FakeTokenEndpoint) -> None:
    oauth.clients["other-client"] = "other-secret"
    oauth.add_refresh_token("1//refresh-b", "other-client")
    with pytest.raises(RefreshError) as info:
        _credentials(oauth, "1//refresh-b").refresh(google.auth.transport.requests.Request())
    assert "unauthorized_client" in str(info.value)


def test_fail_next_503_is_retried_by_google_auth(oauth: FakeTokenEndpoint) -> None:
    # google-auth retries 5xx from the token endpoint itself (after a ~1 s backoff).
    oauth.fail_next(503, count=1)
    credentials = _credentials(oauth)
    credentials.refresh(google.auth.transport.requests.Request())
    assert credentials.token in oauth.issued_access_tokens
    assert oauth.calls(REFRESH_A) == 2


def test_many_concurrent_refreshes_with_latency() -> None:
    tokens = {f"1//user-{i}": DEFAULT_CLIENT_ID for i in range(200)}
    with FakeTokenEndpoint(refresh_tokens=tokens, latency=0.1) as oauth:
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(200) as pool:
            list(
                pool.map(
                    lambda rt: _credentials(oauth, rt).refresh(google.auth.transport.requests.Request()),
                    tokens,
                )
            )
        elapsed = time.monotonic() - started
        assert all(oauth.calls(rt) == 1 for rt in tokens)
        assert len(oauth.issued_access_tokens) == 200
        assert elapsed < 5


# ---- Secret Manager ----------------------------------------------------------------------------


def _secret_client(fake: FakeSecretManager) -> secretmanager.SecretManagerServiceClient:
    return secretmanager.SecretManagerServiceClient(
        credentials=AnonymousCredentials(),
        transport="rest",
        client_options=ClientOptions(api_endpoint=fake.url),
    )


def test_real_client_reads_latest_and_numbered_versions(secrets: FakeSecretManager) -> None:
    secrets.set_secret("proj", "db-url", "postgresql://old")
    secrets.set_secret("proj", "db-url", "postgresql://u:p@host/db")
    client = _secret_client(secrets)
    latest = client.access_secret_version(name="projects/proj/secrets/db-url/versions/latest")
    assert latest.name == "projects/proj/secrets/db-url/versions/2"
    assert latest.payload.data == b"postgresql://u:p@host/db"
    assert latest.payload.data_crc32c == crc32c(b"postgresql://u:p@host/db")
    first = client.access_secret_version(name="projects/proj/secrets/db-url/versions/1")
    assert first.payload.data == b"postgresql://old"
    assert secrets.accesses["projects/proj/secrets/db-url"] == 2
    assert secrets.requests[0].path == "/v1/projects/proj/secrets/db-url/versions/latest:access"


def test_crc32c_matches_the_standard_check_value() -> None:
    assert crc32c(b"123456789") == 0xE3069283


def test_missing_secret_is_not_found(secrets: FakeSecretManager) -> None:
    with pytest.raises(core_exceptions.NotFound):
        _secret_client(secrets).access_secret_version(name="projects/proj/secrets/nope/versions/latest")


def test_down_then_recovering(secrets: FakeSecretManager) -> None:
    secrets.set_secret("proj", "s", "v")
    secrets.down = True
    client = _secret_client(secrets)
    name = "projects/proj/secrets/s/versions/latest"
    # retry=None: the client's default retries UNAVAILABLE for up to 60 s.
    with pytest.raises(core_exceptions.ServiceUnavailable):
        client.access_secret_version(name=name, retry=None)
    secrets.down = False
    assert client.access_secret_version(name=name, retry=None).payload.data == b"v"
    assert secrets.access_count == 2


def test_fail_next_then_recovers(secrets: FakeSecretManager) -> None:
    secrets.set_secret("proj", "s", "v")
    secrets.fail_next(503)
    client = _secret_client(secrets)
    name = "projects/proj/secrets/s/versions/latest"
    with pytest.raises(core_exceptions.ServiceUnavailable):
        client.access_secret_version(name=name, retry=None)
    assert client.access_secret_version(name=name, retry=None).payload.data == b"v"


def test_recorded_request_parsing() -> None:
    from devtools.fakes import RecordedRequest

    request = RecordedRequest("POST", "/token", {"a": ["1", "2"]}, {}, b"x=1&y=%C3%A9")
    assert request.param("a") == "1"
    assert request.form() == {"x": "1", "y": "é"}
    assert email.message_from_bytes(b"Subject: x\n\nbody").get_payload() == "body"


# ---- drafts, modify, trash, labels: the same calls through the real googleapiclient ------------


def test_every_new_route_is_a_method_of_the_discovery_document(gmail: FakeGmail) -> None:
    # Each call below is built by googleapiclient from Gmail's own discovery document, so a method name
    # or path the fake invented would fail to build; the fake answering each proves the paths agree.
    users = _gmail_service(gmail).users()
    parent = gmail.add_message(_raw("a"))
    label_id = gmail.add_label("Work")
    draft = users.drafts().create(userId="me", body={"message": {"raw": _b64url(_raw("d"))}}).execute()
    calls = [
        users.drafts().list(userId="me", q="subject:d", maxResults=5),
        users.drafts().get(userId="me", id=draft["id"], format="metadata"),
        users.messages().modify(userId="me", id=parent, body={"addLabelIds": [label_id]}),
        users.messages().trash(userId="me", id=parent),
        users.messages().untrash(userId="me", id=parent),
        users.threads().modify(userId="me", id=parent, body={"removeLabelIds": ["UNREAD"]}),
        users.threads().trash(userId="me", id=parent),
        users.threads().untrash(userId="me", id=parent),
        users.labels().list(userId="me"),
        users.labels().get(userId="me", id="INBOX"),
        users.drafts().send(userId="me", body={"id": draft["id"]}),
    ]
    for call in calls:
        call.execute()  # an unknown route would be a 404 HttpError
    assert len(gmail.requests) == len(calls) + 1


def test_drafts_create_get_list_and_send(gmail: FakeGmail) -> None:
    drafts = _gmail_service(gmail).users().drafts()
    parent = gmail.add_message(_raw("original"))
    raw = _raw("초안 subject", message_id="<draft-1@example.com>")
    created = drafts.create(
        userId="me", body={"message": {"raw": _b64url(raw), "threadId": parent}}
    ).execute()
    assert created["id"].startswith("r")
    assert created["message"]["threadId"] == parent
    assert created["message"]["labelIds"] == ["DRAFT"]
    got = drafts.get(userId="me", id=created["id"], format="metadata").execute()
    headers = {h["name"]: h["value"] for h in got["message"]["payload"]["headers"]}
    assert headers["Message-ID"] == "<draft-1@example.com>"
    found = drafts.list(userId="me", q="rfc822msgid:draft-1@example.com").execute()
    assert [d["id"] for d in found["drafts"]] == [created["id"]]
    assert drafts.list(userId="me", q="rfc822msgid:other@example.com").execute() == {"resultSizeEstimate": 0}

    sent = drafts.send(userId="me", body={"id": created["id"]}).execute()
    assert sent == {"id": created["message"]["id"], "threadId": parent, "labelIds": ["SENT"]}
    assert gmail.sent_messages() == [raw]
    assert gmail.drafts() == {}
    with pytest.raises(HttpError) as info:
        drafts.send(userId="me", body={"id": created["id"]}).execute()
    assert info.value.resp.status == 404


def test_draft_via_multipart_upload_and_draft_without_recipient_cannot_be_sent(gmail: FakeGmail) -> None:
    drafts = _gmail_service(gmail).users().drafts()
    media = MediaIoBaseUpload(io.BytesIO(_raw("big", to="")), mimetype="message/rfc822", resumable=False)
    created = drafts.create(userId="me", body={"message": {}}, media_body=media).execute()
    assert gmail.upload_types == ["multipart"]
    with pytest.raises(HttpError) as info:
        drafts.send(userId="me", body={"id": created["id"]}).execute()
    assert info.value.resp.status == 400
    assert gmail.sent_messages() == []


def test_draft_send_failure_after_sending_is_configurable(gmail: FakeGmail) -> None:
    drafts = _gmail_service(gmail).users().drafts()
    created = drafts.create(userId="me", body={"message": {"raw": _b64url(_raw("x"))}}).execute()
    gmail.fail_after_send(503)
    with pytest.raises(HttpError) as info:
        drafts.send(userId="me", body={"id": created["id"]}).execute()
    assert info.value.resp.status == 503
    assert len(gmail.sent_messages()) == 1  # Gmail did send it


def test_modify_trash_untrash_message_and_thread(gmail: FakeGmail) -> None:
    users = _gmail_service(gmail).users()
    first = gmail.add_message(_raw("one"), internal_date_ms=1)
    second = gmail.add_message(_raw("two"), thread_id=first, internal_date_ms=2)
    work = gmail.add_label("Work")

    changed = (
        users.messages()
        .modify(userId="me", id=first, body={"addLabelIds": [work], "removeLabelIds": ["UNREAD"]})
        .execute()
    )
    assert changed == {"id": first, "threadId": first, "labelIds": ["INBOX", work]}
    with pytest.raises(HttpError) as info:
        users.messages().modify(userId="me", id=first, body={"addLabelIds": ["Work"]}).execute()
    assert info.value.resp.status == 400
    assert "Invalid label" in info.value.content.decode()

    trashed = users.threads().trash(userId="me", id=first).execute()
    assert [m["id"] for m in trashed["messages"]] == [first, second]
    assert all("TRASH" in m["labelIds"] for m in trashed["messages"])
    assert users.messages().list(userId="me").execute() == {"resultSizeEstimate": 0}
    restored = users.threads().untrash(userId="me", id=first).execute()
    assert [m["labelIds"] for m in restored["messages"]] == [["INBOX", work], ["INBOX", "UNREAD"]]
    one = users.messages().trash(userId="me", id=second).execute()
    assert one["labelIds"] == ["INBOX", "UNREAD", "TRASH"]
    assert users.messages().untrash(userId="me", id=second).execute()["labelIds"] == ["INBOX", "UNREAD"]
    thread = users.threads().modify(userId="me", id=first, body={"removeLabelIds": ["INBOX"]}).execute()
    assert [m["labelIds"] for m in thread["messages"]] == [[work], ["UNREAD"]]
    for kind in (users.messages(), users.threads()):
        with pytest.raises(HttpError) as info:
            kind.trash(userId="me", id="18c0000000000000").execute()
        assert info.value.resp.status == 404


def test_labels_list_has_no_counts_and_get_and_batches_count(gmail: FakeGmail) -> None:
    service = _gmail_service(gmail)
    labels = service.users().labels()
    gmail.add_message(_raw("a"))
    gmail.add_message(_raw("b"), labels=["INBOX"])
    created = labels.create(userId="me", body={"name": "고객/VIP"}).execute()
    assert (created["name"], created["type"]) == ("고객/VIP", "user")
    with pytest.raises(HttpError) as info:
        labels.create(userId="me", body={"name": "고객/vip"}).execute()
    assert info.value.resp.status == 409

    listed = labels.list(userId="me").execute()["labels"]
    by_id = {label["id"]: label for label in listed}
    assert by_id["INBOX"] == {"id": "INBOX", "name": "INBOX", "type": "system"}
    assert by_id[created["id"]]["name"] == "고객/VIP"
    assert not any("messagesTotal" in label for label in listed)

    counts: dict[str, Any] = {}
    batch = BatchHttpRequest(
        callback=lambda rid, response, exc: counts.__setitem__(rid, exc or response),
        batch_uri=gmail.url + "/batch/gmail/v1",
    )
    for label_id in ("INBOX", "UNREAD", created["id"], "Label_404"):
        batch.add(labels.get(userId="me", id=label_id), request_id=label_id)
    batch.execute()
    assert gmail.batch_sizes == [4]
    assert (counts["INBOX"]["messagesTotal"], counts["INBOX"]["messagesUnread"]) == (2, 1)
    assert counts["UNREAD"]["threadsTotal"] == 1
    assert counts[created["id"]]["messagesTotal"] == 0
    assert isinstance(counts["Label_404"], HttpError) and counts["Label_404"].resp.status == 404
