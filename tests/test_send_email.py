"""send_email through functions-framework, the real googleapiclient and google-auth, against FakeGmail and
the fake token endpoint on loopback: what we answered, and what Gmail received."""

from __future__ import annotations

import base64
import email
import email.policy
import threading
import uuid
from collections.abc import Callable
from email.message import EmailMessage
from typing import Any

import pytest

from devtools.fakes.gmail import FakeGmail
from shared import audit
from tests.conftest import MAILBOX, row, utc_in

SEND_PATH = r"/messages/send$"
MiB = 1024 * 1024


# -- fixtures and helpers -----------------------------------------------------------------------------


def send(client: Callable[[str], Any], headers: dict[str, str] | None = None, **body: Any) -> Any:
    body.setdefault("user_id", "alice")
    return client("send_email").post("/", json=body, headers=headers or {})


def only_sent(gmail: FakeGmail) -> EmailMessage:
    """The one message Gmail received, parsed as a mail client would."""
    sent = gmail.sent_messages()
    assert len(sent) == 1, f"{len(sent)} messages reached Gmail"
    parsed = email.message_from_bytes(sent[0], policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def send_requests(gmail: FakeGmail) -> list[Any]:
    return gmail.find("POST", SEND_PATH)


def text_of(part: EmailMessage) -> str:
    return str(part.get_content()).replace("\r\n", "\n")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def error_of(response: Any) -> dict[str, Any]:
    body = response.get_json()
    assert set(body) == {"error"}, body
    return dict(body["error"])


# -- what Gmail receives ------------------------------------------------------------------------------


def test_korean_subject_body_names_and_attachment_arrive_intact(client, alice, gmail):
    subject = "안녕하세요,  3월 회의 일정 안내 (수정본) — 꼭 확인해 주세요 🙏"
    body = "김철수 님께,\n\n회의는 3월 4일 오후 2시입니다.\n감사합니다."
    pdf = b"%PDF-1.4\n" + bytes(range(256)) * 40
    response = send(
        client,
        to=["김철수 <chulsoo@example.com>", "bob@example.org"],
        cc="이영희 <younghee@example.net>",
        subject=subject,
        body=body,
        from_name="홍길동 (로빙 비서)",
        attachments=[{"filename": "회의 자료 2024.pdf", "content": b64(pdf)}],
    )

    assert response.status_code == 200, response.get_json()
    message = only_sent(gmail)
    stored = gmail.message(response.get_json()["id"])
    assert stored is not None
    assert response.get_json() == {"id": stored.id, "thread_id": stored.thread_id, "label_ids": ["SENT"]}
    assert sorted(message.keys()) == sorted(
        ["From", "To", "Cc", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type"]
    )
    assert message["Subject"] == subject
    (sender,) = message["From"].addresses
    assert (sender.display_name, sender.addr_spec) == ("홍길동 (로빙 비서)", MAILBOX)
    assert [(a.display_name, a.addr_spec) for a in message["To"].addresses] == [
        ("김철수", "chulsoo@example.com"),
        ("", "bob@example.org"),
    ]
    assert [(a.display_name, a.addr_spec) for a in message["Cc"].addresses] == [
        ("이영희", "younghee@example.net")
    ]
    assert message["Message-ID"].endswith("@example.com>")
    assert message["Date"].datetime.utcoffset().total_seconds() == 0
    assert message.get_content_type() == "multipart/mixed"
    text, attachment = message.iter_parts()
    assert text.get_content_type() == "text/plain"
    assert text.get_content_charset() == "utf-8"
    assert text_of(text) == body
    assert attachment.get_content_disposition() == "attachment"
    assert attachment.get_filename() == "회의 자료 2024.pdf"
    assert attachment.get_content_type() == "application/pdf"
    assert attachment.get_content() == pdf
    # Every byte on the wire is ASCII: the encodings carried the Korean, not 8-bit bytes.
    assert gmail.sent_messages()[0].isascii()


@pytest.mark.parametrize(
    ("from_name", "display_name"),
    [
        ("홍길동", "홍길동"),
        ("Kim, Chul-soo", "Kim, Chul-soo"),
        ('The "Robeing" Assistant', 'The "Robeing" Assistant'),
        (None, ""),
        ("   ", ""),
    ],
)
def test_from_is_the_mailbox_address_with_from_name_as_its_display_name(
    client, alice, gmail, from_name, display_name
):
    fields = {"from_name": from_name} if from_name is not None else {}
    response = send(client, to="a@example.com", subject="hi", body="x", **fields)

    assert response.status_code == 200, response.get_json()
    (sender,) = only_sent(gmail)["From"].addresses
    assert (sender.display_name, sender.addr_spec) == (display_name, MAILBOX)
    # Only a display name needs the address from the profile; without one Gmail sets From itself.
    assert gmail.count("GET", r"/profile$") == (1 if display_name else 0)


def test_a_first_send_without_from_name_is_one_gmail_round_trip(client, alice, gmail):
    response = send(client, to="a@example.com", subject="hi", body="x")

    assert response.status_code == 200, response.get_json()
    assert [request.path for request in gmail.requests] == ["/gmail/v1/users/me/messages/send"]
    (posted,) = send_requests(gmail)
    raw = base64.urlsafe_b64decode(posted.json()["raw"])
    assert "From" not in email.message_from_bytes(raw)  # what we sent; Gmail added the From above
    assert only_sent(gmail)["Message-ID"].endswith("@skill-email.local>")


def test_sender_address_is_cached_between_sends(client, alice, gmail):
    for _ in range(2):
        response = send(client, to="a@example.com", subject="hi", body="x", from_name="Robeing")
        assert response.status_code == 200
    assert gmail.count("GET", r"/profile$") == 1
    assert len(gmail.sent_messages()) == 2


def test_body_and_html_make_multipart_alternative(client, alice, gmail):
    response = send(client, to="a@example.com", subject="s", body="평문 본문", html="<p>HTML <b>본문</b></p>")

    assert response.status_code == 200
    message = only_sent(gmail)
    assert message.get_content_type() == "multipart/alternative"
    plain, rich = message.iter_parts()
    assert (plain.get_content_type(), text_of(plain)) == ("text/plain", "평문 본문")
    assert (rich.get_content_type(), text_of(rich)) == ("text/html", "<p>HTML <b>본문</b></p>")
    assert plain.get_content_charset() == rich.get_content_charset() == "utf-8"


def test_html_only_is_a_single_html_part(client, alice, gmail):
    response = send(client, to="a@example.com", subject="s", html="<p>안녕</p>")

    assert response.status_code == 200
    message = only_sent(gmail)
    assert message.get_content_type() == "text/html"
    assert text_of(message) == "<p>안녕</p>"


def test_body_html_and_attachment_nest_alternative_inside_mixed(client, alice, gmail):
    response = send(
        client,
        to="a@example.com",
        body="text",
        html="<p>html</p>",
        attachments=[{"filename": "a.txt", "content": b64(b"attached")}],
    )

    assert response.status_code == 200
    message = only_sent(gmail)
    assert message.get_content_type() == "multipart/mixed"
    alternative, attachment = message.iter_parts()
    assert alternative.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in alternative.iter_parts()] == ["text/plain", "text/html"]
    assert (attachment.get_filename(), attachment.get_content()) == ("a.txt", "attached")


def test_attachments_get_guessed_or_given_types(client, alice, gmail):
    cases = [
        ("사진.JPG", None, "image/jpeg"),
        ("보고서.docx", None, "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
        ("공문.hwp", None, "application/x-hwp"),
        ("data.csv", None, "text/csv"),
        ("archive.tar.gz", None, "application/gzip"),
        ("no_extension", None, "application/octet-stream"),
        ("weird.zzzunknown", None, "application/octet-stream"),
        ("forwarded.eml", None, "application/octet-stream"),
        ("explicit.bin", "image/png", "image/png"),
    ]
    attachments = []
    contents = []
    for index, (filename, mime_type, _) in enumerate(cases):
        content = f"attachment {index} ".encode() + bytes([index]) * 100
        contents.append(content)
        item = {"filename": filename, "content": b64(content)}
        if mime_type:
            item["mime_type"] = mime_type
        attachments.append(item)

    response = send(client, to="a@example.com", subject="files", body="see attached", attachments=attachments)

    assert response.status_code == 200, response.get_json()
    parts = list(only_sent(gmail).iter_attachments())
    assert [(p.get_filename(), p.get_content_type()) for p in parts] == [
        (filename, expected) for filename, _, expected in cases
    ]
    assert [p.get_payload(decode=True) for p in parts] == contents


def test_attachment_filename_keeps_only_the_last_path_component(client, alice, gmail):
    attachments = [{"filename": "C:\\Users\\홍길동\\문서\\계약서.pdf", "content": b64(b"%PDF")}]
    assert send(client, to="a@example.com", body="x", attachments=attachments).status_code == 200
    (part,) = only_sent(gmail).iter_attachments()
    assert part.get_filename() == "계약서.pdf"


def test_bcc_reaches_gmail_in_the_raw_message(client, alice, gmail):
    response = send(
        client,
        to="a@example.com",
        bcc=["숨은 참조 <hidden@example.com>", "second@example.org"],
        subject="s",
        body="b",
    )

    assert response.status_code == 200
    assert [a.addr_spec for a in only_sent(gmail)["Bcc"].addresses] == [
        "hidden@example.com",
        "second@example.org",
    ]


def test_reply_to_address_is_set(client, alice, gmail):
    assert send(client, to="a@example.com", body="b", reply_to="비서 <desk@example.org>").status_code == 200
    (address,) = only_sent(gmail)["Reply-To"].addresses
    assert (address.display_name, address.addr_spec) == ("비서", "desk@example.org")


def original_message(subject_header: str = "=?UTF-8?B?7ZqM7J2YIOydvOyglQ==?=") -> bytes:
    """A received message in a thread; the subject decodes to "회의 일정"."""
    return (
        "From: Kim <kim@example.org>\r\n"
        f"To: {MAILBOX}\r\n"
        f"Subject: {subject_header}\r\n"
        "Date: Mon, 04 Mar 2024 09:00:00 +0900\r\n"
        "Message-ID: <orig-2@mail.example.org>\r\n"
        "References: <root-1@mail.example.org>\r\n"
        "In-Reply-To: <root-1@mail.example.org>\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n"
        "original\r\n"
    ).encode("ascii")


@pytest.mark.parametrize(
    ("subject_header", "given_subject", "expected_subject"),
    [
        ("=?UTF-8?B?7ZqM7J2YIOydvOyglQ==?=", None, "Re: 회의 일정"),
        ("RE: already a reply", None, "RE: already a reply"),
        ("=?UTF-8?B?7ZqM7J2YIOydvOyglQ==?=", "다른 제목", "다른 제목"),
    ],
)
def test_reply_sets_thread_in_reply_to_references_and_re_subject(
    client, alice, gmail, subject_header, given_subject, expected_subject
):
    original_id = gmail.add_message(original_message(subject_header), thread_id="thread-7")
    fields = {"subject": given_subject} if given_subject else {}

    response = send(
        client, to="kim@example.org", body="답장입니다", reply_to_message_id=original_id, **fields
    )

    assert response.status_code == 200, response.get_json()
    assert response.get_json()["thread_id"] == "thread-7"
    (request,) = send_requests(gmail)
    assert request.json()["threadId"] == "thread-7"
    message = only_sent(gmail)
    assert message["In-Reply-To"] == "<orig-2@mail.example.org>"
    assert message["References"] == "<root-1@mail.example.org> <orig-2@mail.example.org>"
    assert message["Subject"] == expected_subject
    # The original was read once, for its headers only.
    (get,) = gmail.find("GET", rf"/messages/{original_id}$")
    assert get.param("format") == "metadata"


@pytest.mark.parametrize(
    "decoded",
    ["Hi\r\nBcc: victim@example.org", "Hi\x00there", "Hi\x1b[31mred", "Hi\x85next\u2028line", "tab\there"],
)
def test_reply_to_a_subject_that_decodes_to_control_characters_is_200_with_spaces(
    client, alice, gmail, decoded
):
    encoded = base64.b64encode(decoded.encode()).decode("ascii")
    original_id = gmail.add_message(original_message(f"=?utf-8?b?{encoded}?="), thread_id="thread-c")

    response = send(client, to="kim@example.org", body="x", reply_to_message_id=original_id)

    assert response.status_code == 200, response.get_json()
    message = only_sent(gmail)
    expected = "Re: " + "".join(
        " " if ord(c) < 32 or 0x7F <= ord(c) <= 0x9F or c == "\u2028" else c for c in decoded
    )
    assert message["Subject"] == expected
    assert message["Bcc"] is None


def test_reply_to_unknown_message_is_404_and_nothing_is_sent(client, alice, gmail):
    response = send(client, to="kim@example.org", body="x", reply_to_message_id="18cdeadbeef")
    assert response.status_code == 404
    assert error_of(response)["code"] == "not_found"
    assert gmail.count("POST", SEND_PATH) == 0


def test_explicit_thread_id_is_sent_to_gmail(client, alice, gmail):
    gmail.add_message(original_message(), thread_id="thread-explicit")

    response = send(client, to="kim@example.org", subject="follow-up", body="x", thread_id="thread-explicit")

    assert response.status_code == 200
    assert response.get_json()["thread_id"] == "thread-explicit"
    (request,) = send_requests(gmail)
    assert request.json()["threadId"] == "thread-explicit"
    message = only_sent(gmail)
    assert message["Subject"] == "follow-up"
    assert "In-Reply-To" not in message


def test_send_without_thread_sends_no_thread_id(client, alice, gmail):
    assert send(client, to="a@example.com", body="x").status_code == 200
    (request,) = send_requests(gmail)
    assert "threadId" not in request.json()


# -- refusals before Gmail ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"subject": "hello\r\nBcc: victim@example.com"}, "subject"),
        ({"subject": "hello\nX-Injected: 1"}, "subject"),
        ({"subject": "hello\rworld"}, "subject"),
        ({"from_name": "Boss\r\nBcc: victim@example.com"}, "from_name"),
        ({"to": "a@example.com\r\nBcc: victim@example.com"}, "to"),
        ({"to": ["ok@example.com", "Eve\n <b@example.com>"]}, "to[1]"),
        ({"cc": "c@example.com\nBcc: victim@example.com"}, "cc"),
        ({"reply_to": "r@example.com\r\nBcc: victim@example.com"}, "reply_to"),
        ({"attachments": [{"filename": "a\r\n.txt", "content": "AAAA"}]}, "attachments[0].filename"),
    ],
)
def test_cr_or_lf_in_a_header_value_is_400_and_nothing_reaches_gmail(client, alice, gmail, fields, named):
    body = {"to": "a@example.com", "subject": "s", "body": "b", **fields}

    response = send(client, **body)

    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "invalid_argument"
    assert error["message"].startswith(named)
    assert gmail.requests == []


@pytest.mark.parametrize(
    "to",
    [
        "a@example.com, b@example.com",
        "A <a@example.com>, B <b@example.com>",
        ["ok@example.com", "a@example.com,b@example.com"],
        "team: a@example.com, b@example.com;",
    ],
)
def test_one_to_string_hiding_two_addresses_is_400(client, alice, gmail, to):
    response = send(client, to=to, subject="s", body="b")

    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_argument"
    assert gmail.requests == []


@pytest.mark.parametrize(
    ("to", "fragment"),
    [
        ("not-an-address", "not an email address"),
        ("a@localhost", "invalid domain"),
        ([], "at least one address"),
        (42, "must be a string"),
        ("", "is empty"),
    ],
)
def test_bad_recipient_is_400(client, alice, gmail, to, fragment):
    response = send(client, to=to, body="b")
    assert response.status_code == 400
    assert fragment in error_of(response)["message"]
    assert gmail.requests == []


def test_missing_to_is_400(client, alice, gmail):
    response = send(client, subject="s", body="b")
    assert response.status_code == 400
    assert error_of(response) == {"code": "invalid_argument", "message": "to: required"}


def zeros_base64(decoded_bytes: int) -> str:
    """Base64 of ``decoded_bytes`` zero bytes, built without allocating the bytes first."""
    assert decoded_bytes % 3 == 0
    return "A" * (decoded_bytes // 3 * 4)


@pytest.mark.parametrize(
    "sizes",
    [
        [24 * MiB + 3],  # one attachment just over the limit
        [12 * MiB, 12 * MiB + 3],  # the limit is on the sum
    ],
)
def test_attachments_over_24_mib_decoded_are_413_and_nothing_reaches_gmail(client, alice, gmail, sizes):
    attachments = [{"filename": f"big{i}.bin", "content": zeros_base64(size)} for i, size in enumerate(sizes)]

    response = send(client, to="a@example.com", body="b", attachments=attachments)

    assert response.status_code == 413
    error = error_of(response)
    assert error["code"] == "payload_too_large"
    assert "24 MiB" in error["message"]
    assert gmail.requests == []


def test_message_over_5_mb_goes_through_the_upload_endpoint(client, alice, gmail):
    content = bytes(range(256)) * (4 * MiB // 256)  # 4 MiB, about 5.5 MB once base64'd in the message

    response = send(client, to="a@example.com", subject="큰 파일", body="b", attachments=[
        {"filename": "큰 파일.bin", "content": b64(content)}
    ])  # fmt: skip

    assert response.status_code == 200, response.get_json()
    assert gmail.upload_types == ["multipart"]
    assert gmail.count("POST", r"^/gmail/v1/users/me/messages/send$") == 0
    assert len(gmail.sent_messages()[0]) > 5 * 1024 * 1024
    message = only_sent(gmail)
    assert message["Subject"] == "큰 파일"
    (part,) = message.iter_attachments()
    assert part.get_content() == content


def test_small_message_goes_through_the_plain_send_endpoint(client, alice, gmail):
    assert send(client, to="a@example.com", body="b").status_code == 200
    assert gmail.upload_types == []
    assert gmail.count("POST", r"^/gmail/v1/users/me/messages/send$") == 1


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"to": "a@example.com", "subjet": "typo"}, "subjet"),
        ({"to": "a@example.com", "Subject": "case"}, "Subject"),
        ({"to": "a@example.com", "attachments": [{"filename": "a", "content": "", "type": "x"}]}, "type"),
    ],
)
def test_unknown_field_is_400_naming_it(client, alice, gmail, body, named):
    response = send(client, **body)
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "invalid_argument"
    assert named in error["message"]
    assert gmail.requests == []


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_methods_other_than_post_are_405_json(client, alice, gmail, method):
    response = client("send_email").open("/?user_id=alice&to=a@example.com", method=method)

    assert response.status_code == 405
    assert response.mimetype == "application/json"
    assert error_of(response)["code"] == "method_not_allowed"
    assert response.headers["Allow"] == "POST"
    assert gmail.requests == []


@pytest.mark.parametrize(
    ("data", "content_type", "fragment"),
    [
        ('{"user_id": "alice", "to": ', "application/json", "not valid JSON"),
        ("[1, 2]", "application/json", "JSON object"),
        ('"alice"', "application/json", "JSON object"),
        ("user_id=alice&to=a@example.com", "application/x-www-form-urlencoded", "Content-Type"),
        (b'{"user_id": "alice", "to": "\xff"}', "application/json", "not valid JSON"),
    ],
)
def test_invalid_json_is_400(client, alice, gmail, data, content_type, fragment):
    response = client("send_email").post("/", data=data, content_type=content_type)

    assert response.status_code == 400
    assert response.mimetype == "application/json"
    error = error_of(response)
    assert error["code"] == "invalid_argument"
    assert fragment in error["message"]
    assert gmail.requests == []


def test_unknown_user_is_404_and_gmail_is_not_called(client, gmail, database_url, token_endpoint):
    response = send(client, user_id="nobody", to="a@example.com", body="b")

    assert response.status_code == 404
    assert error_of(response) == {"code": "not_found", "message": "no Gmail token is stored for this user"}
    assert gmail.requests == []
    assert token_endpoint.requests == []


def test_robeing_id_selects_the_token_equipped_to_it(client, user_token, conn, gmail):
    user_token("alice", expires_in=3600, equipped_to="robeing-a")
    response = send(client, robeing_id="robeing-b", to="a@example.com", body="b")
    assert response.status_code == 404
    assert gmail.requests == []


# -- tokens -----------------------------------------------------------------------------------------


def test_expired_token_is_refreshed_before_the_send_and_saved(
    client, user_token, conn, gmail, token_endpoint
):
    row_id = user_token("alice", expires_in=-60)
    before = row(conn, row_id)

    response = send(client, to="a@example.com", subject="s", body="b")

    assert response.status_code == 200, response.get_json()
    assert len(token_endpoint.requests) == 1
    after = row(conn, row_id)
    (new_token,) = token_endpoint.issued_access_tokens
    assert after["token_data"]["access_token"] == new_token
    assert after["token_data"]["refresh_token"] == before["token_data"]["refresh_token"]
    assert after["expiry"] > before["expiry"]
    assert after["updated_at"] > before["updated_at"]
    # Gmail never saw the expired token: the refresh came first.
    assert {r.headers["authorization"] for r in gmail.requests} == {f"Bearer {new_token}"}
    assert len(gmail.sent_messages()) == 1


def test_gmail_401_on_first_call_refreshes_once_through_the_store_then_sends(
    client, user_token, conn, gmail, token_endpoint
):
    # Unexpired by its expiry, but Gmail does not know the token (revoked by the user, say).
    row_id = user_token("alice", expires_in=3600)
    stale = row(conn, row_id)["token_data"]["access_token"]

    response = send(client, to="a@example.com", subject="s", body="b")

    assert response.status_code == 200, response.get_json()
    assert len(token_endpoint.requests) == 1
    (new_token,) = token_endpoint.issued_access_tokens
    assert row(conn, row_id)["token_data"]["access_token"] == new_token
    authorizations = [r.headers["authorization"] for r in gmail.requests]
    assert authorizations[0] == f"Bearer {stale}"
    assert set(authorizations[1:]) == {f"Bearer {new_token}"}
    # The first call is the send itself: refused with 401 (so not sent), then posted again once.
    assert len(gmail.sent_messages()) == 1
    assert gmail.count("POST", SEND_PATH) == 2


def test_revoked_refresh_token_is_401_reauth_required(client, user_token, conn, gmail, token_endpoint):
    row_id = user_token("alice", expires_in=-60)
    token_endpoint.revoke(row(conn, row_id)["token_data"]["refresh_token"])

    response = send(client, to="a@example.com", body="b")

    assert response.status_code == 401
    assert error_of(response)["code"] == "reauth_required"
    assert gmail.requests == []
    assert row(conn, row_id)["reauth_required_at"] is not None
    # The row is marked: a second attempt does not even ask Google.
    assert send(client, to="a@example.com", body="b").status_code == 401
    assert len(token_endpoint.requests) == 1


# -- Gmail failures ---------------------------------------------------------------------------------


def test_gmail_403_insufficient_permissions_is_403_permission_denied(client, alice, gmail):
    gmail.fail_next(SEND_PATH, 403, reason="insufficientPermissions")

    response = send(client, to="a@example.com", body="b")

    assert response.status_code == 403
    assert error_of(response)["code"] == "permission_denied"
    assert gmail.count("POST", SEND_PATH) == 1  # a permission refusal is not retried
    assert gmail.sent_messages() == []


@pytest.mark.parametrize(("gmail_retry_after", "expected"), [(None, None), ("1", "1")])
def test_persistent_429_is_429_rate_limited_with_retry_after(
    client, alice, gmail, gmail_retry_after, expected
):
    headers = {"Retry-After": gmail_retry_after} if gmail_retry_after else None
    gmail.fail_next(SEND_PATH, 429, count=20, headers=headers)

    response = send(client, to="a@example.com", body="b")

    assert response.status_code == 429
    assert error_of(response)["code"] == "rate_limited"
    retry_after = response.headers["Retry-After"]
    assert int(retry_after) >= 1
    if expected is not None:
        assert retry_after == expected
    assert gmail.count("POST", SEND_PATH) == 4  # shared.gmail.ATTEMPTS
    assert gmail.sent_messages() == []


def test_429_then_success_is_200_and_exactly_one_message_is_sent(client, alice, gmail):
    gmail.fail_next(SEND_PATH, 429)

    response = send(client, to="a@example.com", body="b")

    assert response.status_code == 200
    assert gmail.count("POST", SEND_PATH) == 2
    assert len(gmail.sent_messages()) == 1


def test_rate_limit_403_is_retried_like_429(client, alice, gmail):
    gmail.fail_next(SEND_PATH, 403, reason="userRateLimitExceeded")
    response = send(client, to="a@example.com", body="b")
    assert response.status_code == 200
    assert gmail.count("POST", SEND_PATH) == 2
    assert len(gmail.sent_messages()) == 1


def sent_message_id(gmail: FakeGmail, index: int = 0) -> str:
    parsed = email.message_from_bytes(gmail.sent_messages()[index], policy=email.policy.default)
    return str(parsed["Message-ID"])


def test_gmail_500_after_storing_the_message_is_200_found_by_message_id_and_sent_once(client, alice, gmail):
    gmail.fail_after_send(500)

    response = send(client, to="a@example.com", subject="s", body="b")

    assert response.status_code == 200, response.get_json()
    assert gmail.count("POST", SEND_PATH) == 1
    assert len(gmail.sent_messages()) == 1
    message_id = sent_message_id(gmail)
    (search,) = gmail.find("GET", r"/messages$")
    assert search.param("q") == f"rfc822msgid:{message_id.strip('<>')}"
    stored = gmail.message(response.get_json()["id"])
    assert stored is not None
    assert stored.parsed["Message-ID"] == message_id
    assert response.get_json()["thread_id"] == stored.thread_id


def test_gmail_500_without_the_message_is_503_with_message_id_and_nothing_is_resent(client, alice, gmail):
    gmail.fail_next(SEND_PATH, 500)

    response = send(client, to="a@example.com", subject="s", body="b")

    assert response.status_code == 503
    error = error_of(response)
    assert error["code"] == "unavailable"
    assert error["message_id"].startswith("<") and error["message_id"].endswith("@skill-email.local>")
    assert gmail.count("POST", SEND_PATH) == 1
    assert gmail.sent_messages() == []
    (search,) = gmail.find("GET", r"/messages$")
    assert search.param("q") == f"rfc822msgid:{error['message_id'].strip('<>')}"
    # The Message-ID we answer is the one that was on the (lost) message.
    (posted,) = gmail.find("POST", SEND_PATH)
    raw = base64.urlsafe_b64decode(posted.json()["raw"] + "==")
    assert email.message_from_bytes(raw)["Message-ID"] == error["message_id"]


def test_dropped_connection_during_send_is_not_resent(client, alice, gmail):
    # Our transport never repeats a POST on its own (httplib2 would): one stored copy, confirmed by search.
    gmail.fail_after_send(None)

    response = send(client, to="a@example.com", body="b")

    assert response.status_code == 200, response.get_json()
    assert gmail.count("POST", SEND_PATH) == 1
    assert len(gmail.sent_messages()) == 1


def test_unknown_outcome_then_retry_with_same_key_checks_gmail_and_sends_once(client, alice, gmail):
    gmail.fail_next(SEND_PATH, 500)
    headers = {"Idempotency-Key": "retry-after-unknown"}
    first = send(client, headers, to="a@example.com", body="b")
    assert first.status_code == 503
    message_id = error_of(first)["message_id"]

    second = send(client, headers, to="a@example.com", body="b")

    assert second.status_code == 200, second.get_json()
    assert len(gmail.sent_messages()) == 1
    # The retry looked for the first attempt's message, then sent under the same Message-ID.
    assert sent_message_id(gmail) == message_id
    searches = [r.param("q") for r in gmail.find("GET", r"/messages$")]
    assert searches.count(f"rfc822msgid:{message_id.strip('<>')}") == 2


def test_unknown_outcome_then_same_key_finds_the_late_message_and_sends_nothing(client, alice, gmail):
    headers = {"Idempotency-Key": "late-arrival"}
    gmail.fail_after_send(500)
    # The search right after the failure does not see it yet (Gmail's index lags).
    gmail.fail_next(r"/messages$", 200, body={"resultSizeEstimate": 0})
    first = send(client, headers, to="a@example.com", body="b")
    assert first.status_code == 503
    assert len(gmail.sent_messages()) == 1

    second = send(client, headers, to="a@example.com", body="b")

    assert second.status_code == 200, second.get_json()
    assert len(gmail.sent_messages()) == 1
    assert gmail.count("POST", SEND_PATH) == 1
    (stored_id,) = gmail.mailboxes[MAILBOX].messages
    assert second.get_json()["id"] == stored_id


def test_unknown_outcome_with_search_failing_keeps_message_id_and_blocks_a_blind_resend(client, alice, gmail):
    """A 5xx on the send, then Gmail search failing too: the message may be out there.

    The answer must still carry the Message-ID, and a retry with the same Idempotency-Key must look for it
    rather than send a second copy.
    """
    headers = {"Idempotency-Key": "search-down"}
    gmail.fail_after_send(500)  # stored (it went out) but answered 500
    gmail.fail_next(r"/messages$", 503, count=4)  # every search attempt fails

    first = send(client, headers, to="a@example.com", body="b")

    assert first.status_code == 503
    assert "message_id" in error_of(first)
    second = send(client, headers, to="a@example.com", body="b")
    assert second.status_code == 200, second.get_json()
    assert len(gmail.sent_messages()) == 1, "a second copy was sent"


# -- Idempotency-Key ----------------------------------------------------------------------------------


def test_repeat_with_same_idempotency_key_returns_first_response_and_sends_nothing(client, alice, gmail):
    headers = {"Idempotency-Key": "order-42"}
    first = send(client, headers, to="a@example.com", subject="한 번만", body="b")
    assert first.status_code == 200

    second = send(client, headers, to="a@example.com", subject="한 번만", body="b")

    assert second.status_code == 200
    assert second.get_json() == first.get_json()
    assert len(gmail.sent_messages()) == 1
    assert gmail.count("POST", SEND_PATH) == 1


def test_repeat_of_a_finished_send_is_answered_before_any_token_or_gmail_work(
    client, user_token, conn, gmail, token_endpoint
):
    row_id = user_token("alice", expires_in=-60)  # expired: any token work would ask Google
    headers = {"Idempotency-Key": "order-43"}
    first = send(client, headers, to="a@example.com", subject="s", body="b")
    assert first.status_code == 200, first.get_json()
    token_endpoint.clear_requests()
    gmail.clear_requests()
    # Expired again, and a refresh token Google would now refuse: only an early answer can be a 200.
    conn.run("UPDATE gmail_token SET expiry = :past WHERE id = :id", past=utc_in(-60), id=row_id)
    token_endpoint.revoke(row(conn, row_id)["token_data"]["refresh_token"])

    second = send(client, headers, to="a@example.com", subject="s", body="b")

    assert second.status_code == 200, second.get_json()
    assert second.get_json() == first.get_json()
    assert token_endpoint.requests == []
    assert gmail.requests == []
    assert len(gmail.sent_messages()) == 1


def test_idempotency_key_is_scoped_to_the_user(client, user_token, conn, gmail):
    for user in ("alice", "bob"):
        gmail.allow_token(row(conn, user_token(user, expires_in=3600))["token_data"]["access_token"])
    headers = {"Idempotency-Key": "shared-key"}

    for user in ("alice", "bob"):
        assert send(client, headers, user_id=user, to="a@example.com", body="b").status_code == 200

    assert len(gmail.sent_messages()) == 2


@pytest.mark.parametrize(
    "changed",
    [
        {"subject": "different"},
        {"to": ["a@example.com"]},  # a list is a different request from a string
        {"attachments": [{"filename": "a.txt", "content": "QQ=="}]},
    ],
)
def test_same_idempotency_key_with_different_request_is_409(client, alice, gmail, changed):
    headers = {"Idempotency-Key": "order-43"}
    original = {"to": "a@example.com", "subject": "first", "body": "b"}
    assert send(client, headers, **original).status_code == 200

    response = send(client, headers, **{**original, **changed})

    assert response.status_code == 409
    assert error_of(response)["code"] == "idempotency_conflict"
    assert len(gmail.sent_messages()) == 1


@pytest.mark.parametrize("key", ["", "   ", "k" * 256, "키", "a\tb"])
def test_malformed_idempotency_key_is_400(client, alice, gmail, key):
    response = send(client, {"Idempotency-Key": key}, to="a@example.com", body="b")
    assert response.status_code == 400
    assert "Idempotency-Key" in error_of(response)["message"]
    assert gmail.sent_messages() == []


def test_concurrent_requests_with_one_key_send_exactly_once(client, alice, gmail):
    gmail.latency = 0.3
    headers = {"Idempotency-Key": "concurrent-1"}
    barrier = threading.Barrier(2)
    results: list[tuple[int, Any]] = []
    lock = threading.Lock()

    # Both apps are built here, not in the threads: building one parses code with ast, which CPython
    # 3.11.7 cannot do in two threads at once ("AST constructor recursion depth mismatch", gh-106905).
    test_clients = [client("send_email") for _ in range(2)]

    def attempt(test_client: Any) -> None:
        barrier.wait()
        response = test_client.post(
            "/", json={"user_id": "alice", "to": "a@example.com", "body": "b"}, headers=headers
        )
        with lock:
            results.append((response.status_code, response.get_json()))

    threads = [threading.Thread(target=attempt, args=(c,)) for c in test_clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert len(results) == 2
    assert len(gmail.sent_messages()) == 1
    assert gmail.count("POST", SEND_PATH) == 1
    statuses = sorted(status for status, _ in results)
    winner = next(body for status, body in results if status == 200)
    assert statuses in ([200, 200], [200, 409])
    if statuses == [200, 409]:
        assert next(body for status, body in results if status == 409)["error"]["code"] == (
            "idempotency_conflict"
        )
    else:
        assert results[0][1] == results[1][1] == winner


@pytest.mark.parametrize(
    ("status", "reason"), [(403, "insufficientPermissions"), (400, "invalidArgument"), (404, "notFound")]
)
def test_failed_first_attempt_frees_the_key_and_a_retry_sends(client, alice, gmail, status, reason):
    headers = {"Idempotency-Key": f"retry-{status}"}
    gmail.fail_next(SEND_PATH, status, reason=reason)
    first = send(client, headers, to="a@example.com", body="b")
    assert first.status_code == status

    second = send(client, headers, to="a@example.com", body="b")

    assert second.status_code == 200, second.get_json()
    assert len(gmail.sent_messages()) == 1


def test_validation_failure_does_not_claim_the_key(client, alice, gmail, conn):
    headers = {"Idempotency-Key": "bad-then-good"}
    assert send(client, headers, to="not-an-address", body="b").status_code == 400
    assert conn.run("SELECT * FROM gmail_idempotency") == []
    assert send(client, headers, to="a@example.com", body="b").status_code == 200


# -- audit and logs --------------------------------------------------------------------------------


def all_audit_rows(conn: Any) -> list[dict[str, Any]]:
    return list(conn.run("SELECT * FROM gmail_audit_logs ORDER BY id"))


def test_audit_rows_for_send_and_errors_hold_no_subject_body_address_or_token(
    client, alice, gmail, conn, log_lines
):
    subject = f"기밀 제목 {uuid.uuid4().hex}"
    body = f"기밀 본문 {uuid.uuid4().hex}"
    recipient = f"r{uuid.uuid4().hex[:12]}@example.com"
    fields = {"to": recipient, "subject": subject, "body": body}
    ok = send(client, **fields)
    assert ok.status_code == 200
    gmail.fail_next(SEND_PATH, 403)
    assert send(client, **fields).status_code == 403
    gmail.fail_next(SEND_PATH, 500)
    assert send(client, **fields).status_code == 503

    rows = all_audit_rows(conn)

    assert [(r["action"], r["status"], r["http_status"], r["error_code"]) for r in rows] == [
        (audit.SEND, audit.OK, 200, None),
        (audit.SEND, audit.ERROR, 403, "permission_denied"),
        (audit.SEND, audit.ERROR, 503, "unavailable"),
    ]
    assert rows[0]["gmail_message_id"] == ok.get_json()["id"]
    assert rows[0]["gmail_thread_id"] == ok.get_json()["thread_id"]
    assert all(r["user_id"] == "alice" for r in rows)
    assert all(r["gmail_calls"] >= 1 for r in rows)
    token_row = row(conn, alice)
    forbidden = [
        subject,
        body,
        recipient,
        "기밀",
        token_row["token_data"]["access_token"],
        token_row["token_data"]["refresh_token"],
    ]
    for audit_row in rows:
        for column, value in audit_row.items():
            for needle in forbidden:
                assert needle not in str(value), f"{column} holds {needle!r}"
    # Nor does any log line carry the content.
    for line in log_lines:
        for needle in (subject, body, recipient):
            assert needle not in line


def test_audit_row_for_idempotent_replay(client, alice, gmail, conn):
    headers = {"Idempotency-Key": "audit-replay"}
    first = send(client, headers, to="a@example.com", body="b")
    send(client, headers, to="a@example.com", body="b")

    rows = all_audit_rows(conn)

    assert [r["action"] for r in rows] == [audit.SEND, audit.SEND_REPLAY]
    assert rows[1]["gmail_message_id"] == first.get_json()["id"]


def test_tokens_never_reach_the_response_or_log(client, user_token, conn, gmail, token_endpoint, log_lines):
    row_id = user_token("alice", expires_in=-60)
    response = send(client, to="a@example.com", body="b")
    assert response.status_code == 200
    stored = row(conn, row_id)["token_data"]
    text = response.get_data(as_text=True)
    for value in (stored["access_token"], stored["refresh_token"]):
        assert value not in text
        assert all(value not in line for line in log_lines)


def test_audit_rows_carry_the_requests_trace_id(client, alice, gmail, conn, log_lines):
    trace = "105445aa7843bc8bf206b12000100000"
    headers = {"X-Cloud-Trace-Context": f"{trace}/1;o=1"}
    assert send(client, headers, to="a@example.com", body="b").status_code == 200
    gmail.fail_next(SEND_PATH, 403)
    assert send(client, headers, to="a@example.com", body="b").status_code == 403

    rows = all_audit_rows(conn)

    assert [r["trace_id"] for r in rows] == [trace, trace]
    # The same id joins the row with the request's log line.
    assert any(trace in line and '"target": "send_email"' in line for line in log_lines)
