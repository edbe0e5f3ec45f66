"""list_emails through functions-framework, the real googleapiclient and google-auth, against FakeGmail and
the fake token endpoint on loopback: what we answered, and which requests Gmail received."""

from __future__ import annotations

import base64
import email.utils
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import pytest

from devtools.fakes.gmail import FakeGmail
from shared import audit
from shared import gmail as gmail_module
from tests.conftest import MAILBOX, row

LIST_PATH = r"/messages$"
# 2024-01-02T03:04:05Z, the base of every seeded message's internalDate.
BASE_MS = 1_704_164_645_000


# -- fixtures and helpers -----------------------------------------------------------------------------


def plain(
    index: int = 0,
    *,
    subject: str | None = None,
    sender: str = "Sender <sender@example.org>",
    to: str = MAILBOX,
    body: str = "hello",
) -> bytes:
    """A simple text message; header text outside ASCII is written as raw UTF-8."""
    return (
        f"From: {sender}\r\n"
        f"To: {to}\r\n"
        f"Subject: {subject if subject is not None else f'message {index}'}\r\n"
        "Date: Tue, 02 Jan 2024 12:04:05 +0900\r\n"
        f"Message-ID: <m{index}@example.org>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n"
        "\r\n"
        f"{body}\r\n"
    ).encode()


def seed(gmail: FakeGmail, count: int, **kwargs: Any) -> list[str]:
    """``count`` messages, newest first in the returned ids (Gmail's list order)."""
    ids = [gmail.add_message(plain(i), internal_date_ms=BASE_MS + i * 1000, **kwargs) for i in range(count)]
    return ids[::-1]


def list_get(client: Callable[[str], Any], **params: Any) -> Any:
    params.setdefault("user_id", "alice")
    return client("list_emails").get("/?" + urlencode(params))


def list_post(client: Callable[[str], Any], **body: Any) -> Any:
    body.setdefault("user_id", "alice")
    return client("list_emails").post("/", json=body)


def ok(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert isinstance(body, dict)
    return body


def only_list_request(gmail: FakeGmail) -> Any:
    (request,) = gmail.find("GET", LIST_PATH)
    return request


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# -- batching -----------------------------------------------------------------------------------------


def test_fifty_messages_cost_one_list_call_and_one_batch_call(client, alice, gmail):
    ids = seed(gmail, 50)

    body = ok(list_post(client, max_results=50))

    assert [m["id"] for m in body["messages"]] == ids
    assert gmail.count("GET", LIST_PATH) == 1
    assert gmail.batch_sizes == [50]
    assert gmail.count("POST", r"^/batch") == 1
    assert gmail.count("GET", r"/messages/[^/]+$") == 0  # no message fetched on its own
    assert len(gmail.requests) == 2
    # Every inner request is a get of one listed message.
    assert sorted(r.path.rsplit("/", 1)[1] for r in gmail.batch_requests) == sorted(ids)
    assert {r.method for r in gmail.batch_requests} == {"GET"}


def test_hundred_twenty_messages_are_fetched_in_batches_of_50_50_20(client, alice, gmail):
    ids = seed(gmail, 120)

    body = ok(list_post(client, max_results=120))

    assert [m["id"] for m in body["messages"]] == ids
    assert gmail.batch_sizes == [50, 50, 20]
    assert gmail.count("GET", LIST_PATH) == 1
    assert body["next_page_token"] is None
    assert body["result_size_estimate"] == 120


def test_default_page_is_twenty_messages(client, alice, gmail):
    seed(gmail, 25)

    body = ok(list_get(client))

    assert len(body["messages"]) == 20
    assert only_list_request(gmail).param("maxResults") == "20"
    assert gmail.batch_sizes == [20]
    assert body["next_page_token"] is not None


def test_empty_mailbox_is_empty_list_and_null_page_token_without_a_batch(client, alice, gmail):
    body = ok(list_get(client))

    assert body == {"messages": [], "next_page_token": None, "result_size_estimate": 0}
    assert gmail.batch_sizes == []
    assert gmail.count("GET", LIST_PATH) == 1


def test_message_deleted_between_list_and_get_is_left_out(client, alice, gmail):
    ids = seed(gmail, 5)
    gone = ids[2]
    gmail.fail_next(rf"/messages/{gone}$", 404)

    body = ok(list_get(client))

    assert [m["id"] for m in body["messages"]] == [i for i in ids if i != gone]
    assert gmail.batch_sizes == [5]  # the 404 is not retried


def test_message_deleted_for_real_between_list_and_get_is_left_out(client, alice, gmail, monkeypatch):
    ids = seed(gmail, 3)
    from shared.gmail import GmailClient

    list_messages = GmailClient.list_messages

    def list_then_delete(self: GmailClient, **kwargs: Any) -> dict[str, Any]:
        listed = list_messages(self, **kwargs)
        gmail.delete_message(ids[0])
        return listed

    monkeypatch.setattr(GmailClient, "list_messages", list_then_delete)

    body = ok(list_get(client))

    assert [m["id"] for m in body["messages"]] == ids[1:]


def test_rate_limited_items_inside_the_batch_are_retried_and_present(client, alice, gmail):
    ids = seed(gmail, 10)
    limited = ids[3], ids[7]
    gmail.fail_next(rf"/messages/({limited[0]}|{limited[1]})$", 429, count=2)

    body = ok(list_get(client))

    assert [m["id"] for m in body["messages"]] == ids
    assert gmail.batch_sizes == [10, 2]
    retried = [r.path.rsplit("/", 1)[1] for r in gmail.batch_requests[10:]]
    assert sorted(retried) == sorted(limited)


def test_server_error_inside_the_batch_is_retried(client, alice, gmail):
    ids = seed(gmail, 4)
    gmail.fail_next(rf"/messages/{ids[1]}$", 503)

    body = ok(list_get(client))

    assert [m["id"] for m in body["messages"]] == ids
    assert gmail.batch_sizes == [4, 1]


def test_batch_items_still_rate_limited_after_the_retries_are_429(client, alice, gmail):
    ids = seed(gmail, 3)
    gmail.fail_next(rf"/messages/{ids[0]}$", 429, count=10)

    response = list_get(client)

    assert response.status_code == 429
    assert response.get_json()["error"]["code"] == "rate_limited"
    assert int(response.headers["Retry-After"]) >= 1
    assert gmail.batch_sizes == [3, 1, 1, 1]  # shared.gmail.ATTEMPTS rounds


def test_backoff_waits_on_the_clock_within_the_budget_and_honours_retry_after(
    client, alice, gmail, fake_clock
):
    seed(gmail, 1)
    gmail.fail_next(LIST_PATH, 429, count=2, headers={"Retry-After": "3"})

    ok(list_get(client))

    # Two waits, each at least Gmail's Retry-After, taken from the clock (no test waits 6 s for real).
    assert len(fake_clock.slept) == 2
    assert all(3 <= wait <= gmail_module.RETRY_BUDGET_S for wait in fake_clock.slept)


def test_backoff_stops_when_the_next_wait_would_pass_the_budget(client, alice, gmail, fake_clock):
    seed(gmail, 1)
    gmail.fail_next(LIST_PATH, 503, count=10, headers={"Retry-After": "15"})

    response = list_get(client)

    assert response.status_code == 503
    # One 15 s wait fits in the 20 s budget; a second would not, so Gmail was asked twice, not four times.
    assert fake_clock.slept == [15.0]
    assert gmail.count("GET", LIST_PATH) == 2


def test_whole_batch_429_is_retried(client, alice, gmail):
    ids = seed(gmail, 3)
    gmail.fail_next(r"^/batch", 429)

    body = ok(list_get(client))

    assert [m["id"] for m in body["messages"]] == ids
    assert gmail.count("POST", r"^/batch") == 2


def test_list_call_429_then_success(client, alice, gmail):
    seed(gmail, 2)
    gmail.fail_next(LIST_PATH, 429)

    assert len(ok(list_get(client))["messages"]) == 2
    assert gmail.count("GET", LIST_PATH) == 2


# -- decoding -------------------------------------------------------------------------------------------


def korean_euckr_message() -> bytes:
    """EUC-KR text/plain with an ISO-2022-JP subject and an EUC-KR display name."""
    text = "안녕하세요.\n이번 주 회의는 목요일입니다.\n똠방각하"  # 똠: CP949-only, usual in "EUC-KR" mail
    subject = "=?ISO-2022-JP?B?" + b64("会議のお知らせ".encode("iso-2022-jp")) + "?="
    sender = "=?EUC-KR?B?" + b64("김철수".encode("cp949")) + "?= <chulsoo@example.kr>"
    head = (
        f"From: {sender}\r\n"
        f"To: {MAILBOX}\r\n"
        f"Subject: {subject}\r\n"
        "Date: Wed, 03 Jan 2024 09:30:00 +0900\r\n"
        "Message-ID: <euckr@example.kr>\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: text/plain; charset="euc-kr"\r\n'
        "Content-Transfer-Encoding: base64\r\n"
        "\r\n"
    )
    return head.encode("ascii") + b64(text.replace("\n", "\r\n").encode("cp949")).encode("ascii") + b"\r\n"


def test_include_body_decodes_euc_kr_text_and_iso_2022_jp_subject(client, alice, gmail):
    message_id = gmail.add_message(korean_euckr_message())

    (message,) = ok(list_post(client, include_body=True))["messages"]

    assert message["id"] == message_id
    assert message["subject"] == "会議のお知らせ"
    assert message["from"] == "김철수 <chulsoo@example.kr>"
    assert message["body_text"] == "안녕하세요.\n이번 주 회의는 목요일입니다.\n똠방각하"
    assert message["body_html"] is None
    assert message["snippet"].startswith("안녕하세요.")


@pytest.mark.parametrize(
    ("header", "decoded"),
    [
        ("=?UTF-8?B?7ZqM7J2YIOydvOyglQ==?=", "회의 일정"),
        ("=?utf-8?q?=ED=9A=8C=EC=9D=98_=EC=9D=BC=EC=A0=95?=", "회의 일정"),
        # One character split across two encoded words; the space between them is not text.
        ("=?UTF-8?B?7ZqM?= =?UTF-8?B?7J2Y?=", "회의"),
        ("[공지] =?UTF-8?B?7ZqM7J2Y?= 안내", "[공지] 회의 안내"),
        ("=?ks_c_5601-1987?B?" + b64("공지사항".encode("cp949")) + "?=", "공지사항"),
        ("=?iso-8859-1?q?caf=E9?=", "café"),
        ("plain ascii", "plain ascii"),
        ("=?bogus-charset?B?7ZqM?=", "회"),  # unknown charset: UTF-8 is tried
        ("=?UTF-8?B?7ZqM7J2Y?=xyz", "회의xyz"),
    ],
)
def test_rfc2047_subjects_are_decoded(client, alice, gmail, header, decoded):
    gmail.add_message(plain(subject=header))
    (message,) = ok(list_get(client))["messages"]
    assert message["subject"] == decoded


def test_address_headers_are_decoded_with_names(client, alice, gmail):
    raw = (
        "From: =?UTF-8?B?6rmA7LKg7IiY?= <chulsoo@example.kr>\r\n"
        "To: =?UTF-8?Q?=ED=99=8D=EA=B8=B8=EB=8F=99?= <hong.gildong@example.com>, bob@example.org\r\n"
        "Cc: =?EUC-KR?B?" + b64("이영희".encode("cp949")) + "?= <younghee@example.net>\r\n"
        "Subject: s\r\n"
        "Date: Tue, 02 Jan 2024 12:04:05 +0900\r\n"
        "\r\n"
        "x\r\n"
    ).encode("ascii")
    gmail.add_message(raw)

    (message,) = ok(list_get(client))["messages"]

    assert message["from"] == "김철수 <chulsoo@example.kr>"
    assert message["to"] == "홍길동 <hong.gildong@example.com>, bob@example.org"
    assert message["cc"] == "이영희 <younghee@example.net>"


def test_message_fields_and_dates_are_rfc3339_utc(client, alice, gmail):
    message_id = gmail.add_message(
        plain(7, body="It's <fine> & done"),
        labels=["INBOX", "UNREAD", "IMPORTANT"],
        thread_id="thread-9",
        internal_date_ms=1_704_164_645_123,
    )

    (message,) = ok(list_get(client))["messages"]

    stored = gmail.message(message_id)
    assert stored is not None
    assert message == {
        "id": message_id,
        "thread_id": "thread-9",
        "label_ids": ["INBOX", "UNREAD", "IMPORTANT"],
        "snippet": "It's <fine> & done",  # Gmail's &#39; and &lt; unescaped
        "from": "Sender <sender@example.org>",
        "to": MAILBOX,
        "cc": None,
        "subject": "message 7",
        "date": "2024-01-02T03:04:05Z",  # 12:04:05 +0900
        "internal_date": "2024-01-02T03:04:05.123000Z",
        "size_estimate": len(stored.raw),
        "attachments": [],
        "from_address": {"name": "Sender", "email": "sender@example.org"},
        "to_addresses": [{"name": None, "email": MAILBOX}],
        "cc_addresses": [],
    }
    for value in (message["date"], message["internal_date"]):
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        assert parsed.utcoffset().total_seconds() == 0


@pytest.mark.parametrize(
    ("date_header", "expected"),
    [
        ("Tue, 02 Jan 2024 12:04:05 +0900", "2024-01-02T03:04:05Z"),
        ("Mon, 01 Jan 2024 22:04:05 -0500", "2024-01-02T03:04:05Z"),
        ("Tue, 2 Jan 2024 03:04:05 GMT", "2024-01-02T03:04:05Z"),
        ("Tue, 02 Jan 2024 03:04:05 -0000", "2024-01-02T03:04:05Z"),
        ("not a date", None),
    ],
)
def test_date_header_is_converted_to_utc(client, alice, gmail, date_header, expected):
    raw = plain().replace(b"Tue, 02 Jan 2024 12:04:05 +0900", date_header.encode("ascii"))
    gmail.add_message(raw, internal_date_ms=BASE_MS)
    (message,) = ok(list_get(client))["messages"]
    assert message["date"] == expected
    assert message["internal_date"] == "2024-01-02T03:04:05Z"


def message_with_attachments() -> bytes:
    pdf = b"%PDF-1.4 " + bytes(range(256)) * 4
    return (
        "From: a@example.org\r\n"
        f"To: {MAILBOX}\r\n"
        "Subject: files\r\n"
        "Date: Tue, 02 Jan 2024 12:04:05 +0900\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="outer"\r\n'
        "\r\n"
        "--outer\r\n"
        'Content-Type: multipart/alternative; boundary="inner"\r\n'
        "\r\n"
        "--inner\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: base64\r\n"
        "\r\n"
        f"{b64('첨부 확인 부탁드립니다.'.encode())}\r\n"
        "--inner\r\n"
        "Content-Type: text/html; charset=utf-8\r\n"
        "Content-Transfer-Encoding: base64\r\n"
        "\r\n"
        f"{b64('<p>첨부 확인 부탁드립니다.</p>'.encode())}\r\n"
        "--inner--\r\n"
        "--outer\r\n"
        "Content-Type: application/pdf\r\n"
        "Content-Disposition: attachment; filename*=utf-8''%EB%B3%B4%EA%B3%A0%EC%84%9C.pdf\r\n"
        "Content-Transfer-Encoding: base64\r\n"
        "\r\n"
        f"{b64(pdf)}\r\n"
        "--outer\r\n"
        'Content-Type: image/png; name="=?UTF-8?B?7IKs7KeELnBuZw==?="\r\n'
        'Content-Disposition: attachment; filename="=?UTF-8?B?7IKs7KeELnBuZw==?="\r\n'
        "Content-Transfer-Encoding: base64\r\n"
        "\r\n"
        f"{b64(b'PNGDATA')}\r\n"
        "--outer--\r\n"
    ).encode("ascii")


@pytest.mark.parametrize("include_body", [False, True])
def test_attachments_are_listed_with_attachment_id(client, alice, conn, gmail, include_body):
    message_id = gmail.add_message(message_with_attachments())

    (message,) = ok(list_post(client, include_body=include_body))["messages"]

    assert [(a["filename"], a["mime_type"], a["size"]) for a in message["attachments"]] == [
        ("보고서.pdf", "application/pdf", 9 + 1024),
        ("사진.png", "image/png", 7),
    ]
    for attachment, content in zip(message["attachments"], (b"%PDF-1.4 ", b"PNGDATA"), strict=True):
        # The id is one get_attachment takes for the same message.
        query = urlencode(
            {"user_id": "alice", "message_id": message_id, "attachment_id": attachment["attachment_id"]}
        )
        fetched = client("get_attachment").get("/?" + query)
        assert fetched.status_code == 200
        assert fetched.get_data().startswith(content)
    if include_body:
        assert message["body_text"] == "첨부 확인 부탁드립니다."
        assert message["body_html"] == "<p>첨부 확인 부탁드립니다.</p>"
    else:
        assert "body_text" not in message
        assert "body_html" not in message


# -- parameters passed to Gmail ------------------------------------------------------------------------


def test_paging_with_next_page_token(client, alice, gmail):
    ids = seed(gmail, 25)

    first = ok(list_get(client, max_results=10))
    second = ok(list_get(client, max_results=10, page_token=first["next_page_token"]))
    third = ok(list_post(client, max_results=10, page_token=second["next_page_token"]))

    pages = [first, second, third]
    assert [[m["id"] for m in page["messages"]] for page in pages] == [ids[:10], ids[10:20], ids[20:]]
    assert first["next_page_token"] and second["next_page_token"]
    assert third["next_page_token"] is None
    assert {page["result_size_estimate"] for page in pages} == {25}
    requests = gmail.find("GET", LIST_PATH)
    assert [r.param("pageToken") for r in requests] == [
        None,
        first["next_page_token"],
        second["next_page_token"],
    ]
    assert {r.param("maxResults") for r in requests} == {"10"}


def test_label_ids_by_get_comma_separated(client, alice, gmail):
    starred = gmail.add_message(plain(1), labels=["INBOX", "STARRED"])
    gmail.add_message(plain(2), labels=["INBOX"])

    body = ok(list_get(client, label_ids="INBOX, STARRED"))

    assert [m["id"] for m in body["messages"]] == [starred]
    assert only_list_request(gmail).query["labelIds"] == ["INBOX", "STARRED"]


def test_label_ids_by_post_list(client, alice, gmail):
    starred = gmail.add_message(plain(1), labels=["INBOX", "STARRED"])
    gmail.add_message(plain(2), labels=["INBOX"])

    body = ok(list_post(client, label_ids=["INBOX", "STARRED"]))

    assert [m["id"] for m in body["messages"]] == [starred]
    assert only_list_request(gmail).query["labelIds"] == ["INBOX", "STARRED"]


@pytest.mark.parametrize(
    ("q", "matching"),
    [
        ("from:boss@example.com is:unread", {"boss-unread"}),
        ("subject:회의", {"korean"}),
        ("-from:boss@example.com", {"korean"}),
    ],
)
def test_q_is_passed_through_to_gmail(client, alice, gmail, q, matching):
    ids = {
        "boss-unread": gmail.add_message(plain(1, sender="boss@example.com"), labels=["INBOX", "UNREAD"]),
        "boss-read": gmail.add_message(plain(2, sender="boss@example.com"), labels=["INBOX"]),
        "korean": gmail.add_message(plain(3, subject="=?UTF-8?B?7ZqM7J2YIOydvOyglQ==?=")),
    }

    body = ok(list_get(client, q=q))

    assert only_list_request(gmail).param("q") == q
    assert {m["id"] for m in body["messages"]} == {ids[name] for name in matching}
    assert gmail.unsupported_query_terms == []


@pytest.mark.parametrize(("value", "sent"), [(None, "false"), ("true", "true"), ("0", "false")])
def test_include_spam_trash_is_passed_through(client, alice, gmail, value, sent):
    spam = gmail.add_message(plain(1), labels=["SPAM"])
    params = {"include_spam_trash": value} if value is not None else {}

    body = ok(list_get(client, **params))

    assert only_list_request(gmail).param("includeSpamTrash") == sent
    assert [m["id"] for m in body["messages"]] == ([spam] if sent == "true" else [])


@pytest.mark.parametrize("word", ["yes", "true", "1", "TRUE", "Yes"])
def test_include_body_accepts_yes_true_1_by_get(client, alice, gmail, word):
    gmail.add_message(plain(body="body"))

    (message,) = ok(list_get(client, include_body=word))["messages"]

    assert message["body_text"] == "body\n"
    assert message["body_html"] is None


@pytest.mark.parametrize("word", ["no", "false", "0"])
def test_include_body_false_words_leave_bodies_out(client, alice, gmail, word):
    gmail.add_message(plain())
    (message,) = ok(list_get(client, include_body=word))["messages"]
    assert "body_text" not in message
    assert "body_html" not in message


@pytest.mark.parametrize("word", ["maybe", "", "2"])
def test_include_body_other_words_are_400(client, alice, gmail, word):
    response = list_get(client, include_body=word)
    assert response.status_code == 400
    assert "include_body" in response.get_json()["error"]["message"]
    assert gmail.requests == []


@pytest.mark.parametrize("value", [0, -1, 501, 10_000])
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_max_results_out_of_range_is_400(client, alice, gmail, value, method):
    response = (
        list_get(client, max_results=value) if method == "GET" else list_post(client, max_results=value)
    )

    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == "invalid_argument"
    assert error["message"].startswith("max_results")
    assert gmail.requests == []


@pytest.mark.parametrize("value", ["abc", "1.5", ""])
def test_max_results_not_a_number_is_400(client, alice, gmail, value):
    response = list_get(client, max_results=value)
    assert response.status_code == 400
    assert "max_results" in response.get_json()["error"]["message"]


@pytest.mark.parametrize("value", [1.5, "20", True])
def test_max_results_of_wrong_json_type_is_400(client, alice, gmail, value):
    response = list_post(client, max_results=value)
    assert response.status_code == 400
    assert "max_results" in response.get_json()["error"]["message"]


@pytest.mark.parametrize("value", [1, 500])
def test_max_results_bounds_are_accepted_and_passed(client, alice, gmail, value):
    ok(list_post(client, max_results=value))
    assert only_list_request(gmail).param("maxResults") == str(value)


def test_unknown_field_is_400_naming_it(client, alice, gmail):
    response = list_get(client, labelIds="INBOX")
    assert response.status_code == 400
    assert response.get_json()["error"] == {"code": "invalid_argument", "message": "unknown field: labelIds"}
    assert gmail.requests == []


def test_unknown_user_is_404_and_gmail_is_not_called(client, gmail, database_url):
    response = list_get(client, user_id="nobody")
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"
    assert gmail.requests == []


def test_expired_token_is_refreshed_before_listing(client, user_token, conn, gmail, token_endpoint):
    row_id = user_token("alice", expires_in=-60)
    seed(gmail, 2)

    assert len(ok(list_get(client))["messages"]) == 2

    (new_token,) = token_endpoint.issued_access_tokens
    assert row(conn, row_id)["token_data"]["access_token"] == new_token
    assert {r.headers["authorization"] for r in gmail.requests} == {f"Bearer {new_token}"}
    assert {r.headers["authorization"] for r in gmail.batch_requests} == {f"Bearer {new_token}"}


def test_gmail_403_on_list_is_403_permission_denied(client, alice, gmail):
    gmail.fail_next(LIST_PATH, 403, reason="insufficientPermissions")
    response = list_get(client)
    assert response.status_code == 403
    assert response.get_json()["error"]["code"] == "permission_denied"


# -- audit ------------------------------------------------------------------------------------------


def test_audit_row_has_result_count_and_no_query_or_content(client, alice, gmail, conn):
    seed(gmail, 3)
    q = "subject:기밀프로젝트 from:secret-boss@example.com"
    # Encoded: FakeGmail's search cannot read 8-bit header text (compat32 hands it a Header object).
    gmail.add_message(
        plain(9, subject="=?UTF-8?B?6riw67CA7ZSE66Gc7KCd7Yq4?=", sender="secret-boss@example.com")
    )

    assert len(ok(list_get(client))["messages"]) == 4
    assert len(ok(list_get(client, q=q))["messages"]) == 1
    gmail.fail_next(LIST_PATH, 403)
    assert list_get(client, q=q).status_code == 403

    rows = conn.run("SELECT * FROM gmail_audit_logs ORDER BY id")

    assert [
        (r["action"], r["status"], r["http_status"], r["result_count"], r["error_code"]) for r in rows
    ] == [
        (audit.LIST, audit.OK, 200, 4, None),
        (audit.LIST, audit.OK, 200, 1, None),
        (audit.LIST, audit.ERROR, 403, None, "permission_denied"),
    ]
    assert [r["gmail_calls"] for r in rows[:2]] == [2, 2]  # one list, one batch
    token_row = row(conn, alice)["token_data"]
    for audit_row in rows:
        for column, value in audit_row.items():
            for needle in ("기밀", "secret-boss", token_row["access_token"], token_row["refresh_token"]):
                assert needle not in str(value), f"{column} holds {needle!r}"


def test_date_helper_matches_base():
    # Guards the constants above: BASE_MS is the instant the seeded Date headers name.
    assert datetime.fromtimestamp(BASE_MS / 1000, UTC) == email.utils.parsedate_to_datetime(
        "Tue, 02 Jan 2024 12:04:05 +0900"
    )
