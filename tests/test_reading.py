"""get_email, get_thread and get_attachment through functions-framework, the real googleapiclient and
google-auth, against FakeGmail and the fake token endpoint on loopback: what we answered, and which
requests Gmail received."""

from __future__ import annotations

import base64
import email
import email.policy
import hashlib
import os
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlencode

import pytest

from devtools.fakes.gmail import FakeGmail
from shared import audit, scopes
from tests.conftest import MAILBOX, row

EML = Path(__file__).parent / "data" / "eml"
GET_PATH = r"/messages/[^/]+$"
THREAD_PATH = r"/threads/[^/]+$"
ATTACHMENT_PATH = r"/attachments/[^/]+$"
MiB = 1024 * 1024


# -- helpers ------------------------------------------------------------------------------------------


def get(client: Callable[[str], Any], target: str, **params: Any) -> Any:
    params.setdefault("user_id", "alice")
    return client(target).get("/?" + urlencode(params))


def post(client: Callable[[str], Any], target: str, **body: Any) -> Any:
    body.setdefault("user_id", "alice")
    return client(target).post("/", json=body)


def ok(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert isinstance(body, dict)
    return body


def error_of(response: Any) -> dict[str, Any]:
    body = response.get_json()
    assert set(body) == {"error"}, body
    return dict(body["error"])


def message(
    *,
    subject: str = "Hello",
    sender: str = "Kim <kim@example.org>",
    to: str = MAILBOX,
    extra_headers: str = "",
    content_type: str = "text/plain; charset=utf-8",
    body: bytes = b"Hi there",
    cte: str = "8bit",
    index: int = 0,
) -> bytes:
    """One single-part message exactly as a mailer wrote it (header text as given)."""
    head = (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: Tue, 02 Jan 2024 12:04:05 +0900\r\n"
        f"Message-ID: <m{index}@example.org>\r\n{extra_headers}MIME-Version: 1.0\r\n"
        f"Content-Type: {content_type}\r\nContent-Transfer-Encoding: {cte}\r\n\r\n"
    )
    return head.encode("utf-8") + body + b"\r\n"


def with_parts(*parts: EmailMessage, subject: str = "With parts") -> bytes:
    outer = EmailMessage()
    outer["From"] = "Kim <kim@example.org>"
    outer["To"] = MAILBOX
    outer["Subject"] = subject
    outer["Message-ID"] = "<parts@example.org>"
    outer.set_content("See the files.")
    outer.make_mixed()
    for part in parts:
        outer.attach(part)
    return outer.as_bytes(policy=email.policy.SMTP)


def file_part(
    data: bytes, filename: str | None, mime_type: str, *, disposition: str = "attachment", cid: str = ""
):
    part = EmailMessage()
    maintype, subtype = mime_type.split("/")
    part.set_content(data, maintype, subtype, disposition=disposition, filename=filename, cid=cid or None)
    return part


# -- get_email --------------------------------------------------------------------------------------


def test_get_email_answers_every_field_of_a_message_with_reply_headers(client, alice, gmail):
    raw = message(
        subject="=?utf-8?b?7ZqM7J2YIOydvOyglQ==?=",
        sender="=?utf-8?b?6rmA7LKg7IiY?= <chulsoo@example.kr>",
        to='"Lee, Young" <lee@example.org>, b@example.org',
        extra_headers=(
            "Cc: c@example.org\r\nReply-To: Desk <desk@example.org>\r\nIn-Reply-To: <root@example.org>\r\n"
            "References: <root@example.org>\r\n"
        ),
        body="안녕하세요\r\n회의는 3시".encode(),
    )
    message_id = gmail.add_message(raw, thread_id="t-9", labels=("INBOX",))

    body = ok(get(client, "get_email", message_id=message_id))

    assert body["id"] == message_id and body["thread_id"] == "t-9" and body["label_ids"] == ["INBOX"]
    assert body["subject"] == "회의 일정"
    assert body["from"] == "김철수 <chulsoo@example.kr>"
    assert body["from_address"] == {"name": "김철수", "email": "chulsoo@example.kr"}
    assert body["to_addresses"] == [
        {"name": "Lee, Young", "email": "lee@example.org"},
        {"name": None, "email": "b@example.org"},
    ]
    assert body["cc_addresses"] == [{"name": None, "email": "c@example.org"}]
    assert body["body_text"] == "안녕하세요\n회의는 3시\n"
    assert body["body_html"] is None
    assert body["body_truncated"] is False
    assert body["headers"] == {
        "message_id": "<m0@example.org>",
        "in_reply_to": "<root@example.org>",
        "references": "<root@example.org>",
        "reply_to": "Desk <desk@example.org>",
    }
    assert body["date"] == "2024-01-02T03:04:05Z"
    assert body["attachments"] == []
    # One Gmail request, format=full.
    (request,) = gmail.requests
    assert request.param("format") == "full"


def test_get_email_takes_post_too(client, alice, gmail):
    message_id = gmail.add_message(message())
    assert ok(post(client, "get_email", message_id=message_id))["id"] == message_id


def test_get_email_of_an_unknown_message_is_404(client, alice, gmail):
    response = get(client, "get_email", message_id="18cdeadbeef")
    assert response.status_code == 404
    assert error_of(response)["code"] == "not_found"


def test_get_email_without_message_id_is_400(client, alice, gmail):
    response = get(client, "get_email")
    assert response.status_code == 400
    assert error_of(response)["message"].startswith("message_id")
    assert gmail.requests == []


@pytest.mark.parametrize(
    ("charset", "text"),
    [
        ("euc-kr", "똠방각하 회의"),  # 똠 is CP949-only: senders label it euc-kr anyway
        ("ks_c_5601-1987", "안녕하세요"),
        ("iso-2022-jp", "日本語のメール"),
        ("windows-1252", "“quoted” café – naïve"),
        ("iso-8859-1", "“smart quotes” from Outlook"),
        ("gb2312", "中文邮件"),
        ("utf-8", "emoji 🎉 and 한글"),
    ],
)
def test_get_email_decodes_bodies_and_subjects_in_every_charset(client, alice, gmail, charset, text):
    codec = {"euc-kr": "cp949", "ks_c_5601-1987": "cp949", "iso-8859-1": "cp1252"}.get(charset, charset)
    data = text.encode(codec)
    encoded_subject = f"=?{charset}?b?{base64.b64encode(data).decode()}?="
    raw = message(subject=encoded_subject, content_type=f"text/plain; charset={charset}", body=data)
    message_id = gmail.add_message(raw)

    body = ok(get(client, "get_email", message_id=message_id))

    assert body["subject"] == text
    assert body["body_text"] == text + "\n"


def test_html_only_body_text_is_a_readable_rendering(client, alice, gmail):
    markup = (
        "<html><head><style>p { color: red }</style><script>alert(1)</script></head><body>"
        "<p>Hello <b>Kim</b>,</p><p>See <a href='https://example.org/r?a=1&amp;b=2'>the report</a>"
        " and<br>the list:</p><ul><li>one</li><li>two</li></ul>"
        "<p>Write to <a href='mailto:desk@example.org'>desk@example.org</a>.</p></body></html>"
    )
    message_id = gmail.add_message(message(content_type="text/html; charset=utf-8", body=markup.encode()))

    body = ok(get(client, "get_email", message_id=message_id))

    assert body["body_html"].startswith("<html>")
    text = body["body_text"]
    assert "color" not in text and "alert" not in text and "<" not in text
    assert "Hello Kim," in text
    assert "See the report (https://example.org/r?a=1&b=2) and\nthe list:" in text
    assert "* one\n" in text and "* two" in text
    assert "Write to desk@example.org." in text  # a link that is its own address is written once
    assert "\n\n\n" not in text


def test_max_body_chars_cuts_each_body_and_says_so(client, alice, gmail):
    alternative = EmailMessage()
    alternative["From"] = "a@example.org"
    alternative["To"] = MAILBOX
    alternative["Subject"] = "long"
    alternative.set_content("가" * 50)
    alternative.add_alternative("<p>" + "x" * 50 + "</p>", subtype="html")
    message_id = gmail.add_message(alternative.as_bytes(policy=email.policy.SMTP))

    cut = ok(get(client, "get_email", message_id=message_id, max_body_chars=10))
    whole = ok(get(client, "get_email", message_id=message_id, max_body_chars=1000))

    assert cut["body_text"] == "가" * 10 and cut["body_html"] == "<p>" + "x" * 7
    assert cut["body_truncated"] is True
    assert whole["body_text"] == "가" * 50 + "\n" and whole["body_truncated"] is False


@pytest.mark.parametrize("value", ["0", "-1", "ten"])
def test_max_body_chars_must_be_a_positive_whole_number(client, alice, gmail, value):
    response = get(client, "get_email", message_id="x", max_body_chars=value)
    assert response.status_code == 400
    assert error_of(response)["message"].startswith("max_body_chars")


def test_a_body_gmail_left_behind_an_attachment_id_is_fetched(client, alice, gmail):
    gmail.body_attachment_over_bytes = 1000
    text = "긴 본문 " * 300
    message_id = gmail.add_message(message(body=text.encode()))

    body = ok(get(client, "get_email", message_id=message_id))

    assert body["body_text"] == text + "\n"
    assert body["attachments"] == []  # a body is not an attachment, wherever Gmail keeps it
    assert [r.path.rsplit("/", 2)[-2] for r in gmail.requests] == ["messages", "attachments"]


# -- addresses as data ------------------------------------------------------------------------------


def test_repeated_to_and_cc_headers_count_in_full(client, alice, gmail):
    raw = message(
        to="a@example.org",
        extra_headers=(
            "To: B <b@example.org>\r\nCc: c@example.org\r\nCc: =?utf-8?b?65SU?= <d@example.org>\r\n"
        ),
    )
    message_id = gmail.add_message(raw)

    body = ok(get(client, "get_email", message_id=message_id))
    listed = ok(get(client, "list_emails"))["messages"][0]

    for answer in (body, listed):
        assert [a["email"] for a in answer["to_addresses"]] == ["a@example.org", "b@example.org"]
        assert [a["email"] for a in answer["cc_addresses"]] == ["c@example.org", "d@example.org"]
        assert answer["cc_addresses"][1]["name"] == "디"
        assert answer["to"] == "a@example.org, B <b@example.org>"


def test_a_display_name_holding_a_comma_stays_one_address(client, alice, gmail):
    name = base64.b64encode("김, 철수".encode()).decode()
    raw = message(
        sender=f"=?utf-8?b?{name}?= <kim@example.kr>", to=f"=?utf-8?b?{name}?= <kim@example.kr>, b@x.org"
    )
    message_id = gmail.add_message(raw)

    body = ok(get(client, "get_email", message_id=message_id))

    assert body["from_address"] == {"name": "김, 철수", "email": "kim@example.kr"}
    assert body["to_addresses"] == [
        {"name": "김, 철수", "email": "kim@example.kr"},
        {"name": None, "email": "b@x.org"},
    ]


def test_list_emails_messages_carry_the_addresses_as_data(client, alice, gmail):
    gmail.add_message(message(sender="Kim <kim@example.org>", to="Me <me@example.org>"))

    (listed,) = ok(get(client, "list_emails"))["messages"]

    assert listed["from_address"] == {"name": "Kim", "email": "kim@example.org"}
    assert listed["to_addresses"] == [{"name": "Me", "email": "me@example.org"}]
    assert listed["cc_addresses"] == []


@pytest.mark.parametrize(
    "control", ["\r\n", "\n", "\r", "\x00", "\x07", "\x1b", "\x7f", "\x85", "\x9b", "\t"]
)
def test_control_characters_decoded_out_of_any_header_become_spaces(client, alice, gmail, control):
    def word(text: str) -> str:
        return f"=?utf-8?b?{base64.b64encode(text.encode()).decode()}?="

    raw = message(
        subject=word(f"Hi{control}Bcc: x@y.org"),
        sender=f"{word(f'Kim{control}Lee')} <kim@example.org>",
        extra_headers=f"Reply-To: {word(f'Desk{control}')} <desk@example.org>\r\n",
    )
    message_id = gmail.add_message(raw)

    body = ok(get(client, "get_email", message_id=message_id))
    listed = ok(get(client, "list_emails"))["messages"][0]

    for answer in (body, listed):
        assert answer["subject"] == "Hi" + " " * len(control) + "Bcc: x@y.org"
        assert answer["from_address"]["name"] == "Kim" + " " * len(control) + "Lee"
        texts = [answer["subject"], answer["from"], answer["to"], *map(str, answer["from_address"].values())]
        assert not any(ord(c) < 32 or 0x7F <= ord(c) <= 0x9F for text in texts for c in text)
    assert "\n" not in body["headers"]["reply_to"] and "\x00" not in body["headers"]["reply_to"]


# -- get_thread -------------------------------------------------------------------------------------


def test_get_thread_answers_the_conversation_oldest_first_in_one_request(client, alice, gmail):
    ids = [
        gmail.add_message(
            message(subject=f"part {i}", index=i), thread_id="conv-1", internal_date_ms=10_000 - i
        )
        for i in range(10)
    ]
    gmail.add_message(message(subject="other"), thread_id="conv-2")
    gmail.clear_requests()

    body = ok(get(client, "get_thread", thread_id="conv-1", max_body_chars=3))

    assert body["id"] == "conv-1"
    assert isinstance(body["history_id"], str)
    assert [m["id"] for m in body["messages"]] == ids[::-1]  # oldest (smallest internalDate) first
    first = body["messages"][0]
    assert first["subject"] == "part 9" and first["body_text"] == "Hi " and first["body_truncated"] is True
    assert first["headers"]["message_id"] == "<m9@example.org>"
    assert set(first) >= {"from_address", "to_addresses", "cc_addresses", "attachments", "body_html"}
    (request,) = gmail.requests
    assert request.path.endswith("/threads/conv-1") and request.param("format") == "full"


def test_get_thread_of_an_unknown_thread_is_404(client, alice, gmail):
    response = post(client, "get_thread", thread_id="no-such-thread")
    assert response.status_code == 404
    assert error_of(response)["code"] == "not_found"


# -- attachments ------------------------------------------------------------------------------------


def test_attachments_are_listed_with_ids_that_get_attachment_accepts(client, alice, gmail):
    gmail.inline_data_max_bytes = 64  # small parts come inline, with no attachmentId of Gmail's own
    raw = with_parts(
        file_part(b"%PDF-1.4 report", "보고서 2024.pdf", "application/pdf"),
        file_part(b"tiny", "note.txt", "text/plain"),
        file_part(b"\x89PNG logo bytes", None, "image/png", disposition="inline", cid="<logo@example.org>"),
    )
    message_id = gmail.add_message(raw)

    attachments = ok(get(client, "get_email", message_id=message_id))["attachments"]

    assert [
        (a["filename"], a["mime_type"], a["size"], a["inline"], a["content_id"]) for a in attachments
    ] == [
        ("보고서 2024.pdf", "application/pdf", 15, False, None),
        ("note.txt", "text/plain", 4, False, None),
        ("", "image/png", 15, True, "logo@example.org"),
    ]
    expected = [b"%PDF-1.4 report", b"tiny", b"\x89PNG logo bytes"]
    for listed, data in zip(attachments, expected, strict=True):
        gmail.clear_requests()
        response = get(client, "get_attachment", message_id=message_id, attachment_id=listed["attachment_id"])
        assert response.status_code == 200, response.get_data()[:200]
        assert response.get_data() == data
        assert response.headers["Content-Type"].startswith(listed["mime_type"])
        assert response.headers["Content-Length"] == str(len(data))
        # Inline parts need only the message; the others one attachments.get more.
        assert len(gmail.requests) == (2 if len(data) > 64 else 1)
    pdf = get(client, "get_attachment", message_id=message_id, attachment_id=attachments[0]["attachment_id"])
    disposition = pdf.headers["Content-Disposition"]
    assert disposition.startswith('attachment; filename="')
    assert disposition.endswith("filename*=UTF-8''" + "%EB%B3%B4%EA%B3%A0%EC%84%9C%202024.pdf")
    assert unquote(disposition.rsplit("''", 1)[1]) == "보고서 2024.pdf"


def test_a_gmail_attachment_id_is_accepted_too(client, alice, gmail):
    message_id = gmail.add_message(with_parts(file_part(b"x" * 100, "a.bin", "application/octet-stream")))
    resource = gmail.message(message_id)
    assert resource is not None
    token = gmail_attachment_id(client, gmail, message_id)

    response = get(client, "get_attachment", message_id=message_id, attachment_id=token)

    assert response.status_code == 200
    assert response.get_data() == b"x" * 100
    assert 'filename="a.bin"' in response.headers["Content-Disposition"]


def gmail_attachment_id(client: Any, gmail: FakeGmail, message_id: str) -> str:
    """Gmail's own attachmentId of the message's first attachment, as the real client reads it."""
    from google.oauth2.credentials import Credentials
    from googleapiclient.discovery import build_from_document

    from devtools.fakes.gmail import DEFAULT_TOKEN, discovery_document

    service = build_from_document(discovery_document(gmail.url), credentials=Credentials(token=DEFAULT_TOKEN))
    full = service.users().messages().get(userId="me", id=message_id, format="full").execute()
    return str(full["payload"]["parts"][1]["body"]["attachmentId"])


@pytest.mark.parametrize("attachment_id", ["part-9", "part-0", "ANGjdJ8bm9uc2Vuc2U"])
def test_unknown_attachment_is_404(client, alice, gmail, attachment_id):
    message_id = gmail.add_message(with_parts(file_part(b"abc", "a.bin", "application/octet-stream")))
    response = get(client, "get_attachment", message_id=message_id, attachment_id=attachment_id)
    assert response.status_code == 404, response.get_json()
    assert error_of(response)["code"] == "not_found"


def test_attachment_of_an_unknown_message_is_404(client, alice, gmail):
    response = get(client, "get_attachment", message_id="18cdeadbeef", attachment_id="part-1")
    assert response.status_code == 404


def test_get_attachment_takes_get_only(client, alice, gmail):
    response = post(client, "get_attachment", message_id="x", attachment_id="part-1")
    assert response.status_code == 405
    assert response.headers["Allow"] == "GET"


def test_a_30_mb_attachment_arrives_byte_for_byte_streamed_in_two_requests(client, alice, gmail):
    data = os.urandom(30 * 1000 * 1000)
    message_id = gmail.add_message(with_parts(file_part(data, "big.bin", "application/octet-stream")))
    gmail.clear_requests()

    response = client("get_attachment").get(
        "/?" + urlencode({"user_id": "alice", "message_id": message_id, "attachment_id": "part-1"}),
        buffered=False,
    )

    assert response.status_code == 200
    assert response.is_streamed
    assert response.headers["Content-Length"] == str(len(data))
    digest = hashlib.sha256()
    received = 0
    for chunk in response.response:
        assert len(chunk) <= 64 * 1024  # never the whole file at once
        digest.update(chunk)
        received += len(chunk)
    assert received == len(data)
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
    assert len(gmail.requests) == 2


def test_a_401_on_the_attachment_refreshes_the_token_once_through_the_store(
    client, user_token, conn, gmail, token_endpoint
):
    row_id = user_token("alice", expires_in=3600)
    stale = row(conn, row_id)["token_data"]["access_token"]
    gmail.allow_token(stale)
    message_id = gmail.add_message(with_parts(file_part(b"abc" * 100, "a.bin", "application/octet-stream")))
    gmail.fail_next(ATTACHMENT_PATH, 401, count=1)

    response = get(client, "get_attachment", message_id=message_id, attachment_id="part-1")

    assert response.status_code == 200
    assert response.get_data() == b"abc" * 100
    assert len(token_endpoint.requests) == 1
    (new_token,) = token_endpoint.issued_access_tokens
    assert row(conn, row_id)["token_data"]["access_token"] == new_token
    last = gmail.find("GET", ATTACHMENT_PATH)[-1]
    assert last.headers["authorization"] == f"Bearer {new_token}"


@pytest.mark.parametrize("style", ["compact", "pretty", "data_first"])
def test_the_attachment_answer_is_read_whatever_its_json_layout(client, alice, gmail, style):
    gmail.attachment_json_style = style
    data = os.urandom(200_003)  # not a multiple of 3: the base64 ends in a partial group
    message_id = gmail.add_message(with_parts(file_part(data, "a.bin", "application/octet-stream")))

    response = get(client, "get_attachment", message_id=message_id, attachment_id="part-1")

    assert response.status_code == 200
    assert response.get_data() == data
    # Without a size before the data, the part's own size (from the message) is the Content-Length.
    assert response.headers["Content-Length"] == str(len(data))


def test_gmail_error_before_the_attachment_streams_is_mapped(client, alice, gmail):
    message_id = gmail.add_message(with_parts(file_part(b"abc" * 100, "a.bin", "application/octet-stream")))
    gmail.fail_next(ATTACHMENT_PATH, 503, count=1)

    response = get(client, "get_attachment", message_id=message_id, attachment_id="part-1")

    assert response.status_code == 200  # retried once, as any read
    assert response.get_data() == b"abc" * 100
    gmail.fail_next(ATTACHMENT_PATH, 429, count=10)
    limited = get(client, "get_attachment", message_id=message_id, attachment_id="part-1")
    assert limited.status_code == 429 and error_of(limited)["code"] == "rate_limited"


# -- messages written by other mail software -----------------------------------------------------------


@pytest.mark.parametrize("name", sorted(p.name for p in EML.glob("*.eml")))
def test_messages_from_other_mailers_decode_as_pythons_parser_reads_them(client, alice, gmail, name):
    raw = (EML / name).read_bytes()
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    message_id = gmail.add_message(raw)

    body = ok(get(client, "get_email", message_id=message_id))

    assert body["subject"] == (str(parsed["Subject"]) if parsed["Subject"] is not None else None)
    sender = parsed["From"].addresses[0] if parsed["From"] else None
    assert (body["from_address"] or {}).get("email") == (sender.addr_spec if sender else None)
    plain = parsed.get_body(("plain",))
    if plain is not None and not plain.is_attachment():
        assert body["body_text"].strip() == plain.get_content().replace("\r\n", "\n").strip()
    files = [part for part in parsed.iter_attachments() if part.get_content_maintype() != "multipart"]
    named = {a["filename"]: a for a in body["attachments"] if a["filename"]}
    for part in files:
        filename = part.get_filename()
        if not filename or part.get_content_type() == "message/rfc822":
            continue
        listed = named[filename]
        response = get(client, "get_attachment", message_id=message_id, attachment_id=listed["attachment_id"])
        assert response.status_code == 200
        assert response.get_data() == part.get_payload(decode=True)


def test_the_cpython_fixtures_cover_attachments_and_a_group_address(client, alice, gmail):
    fish = ok(
        get(client, "get_email", message_id=gmail.add_message((EML / "cpython_msg_07.eml").read_bytes()))
    )
    assert [a["filename"] for a in fish["attachments"]] == ["dingusfish.gif"]
    assert fish["body_text"].startswith("Hi there,\n\nThis is the dingus fish.")
    ietf = ok(
        get(client, "get_email", message_id=gmail.add_message((EML / "cpython_msg_36.eml").read_bytes()))
    )
    assert ietf["to_addresses"] == []  # "IETF-Announce:;" is an empty group
    assert ietf["to"] == "IETF-Announce:;"


# -- scopes and errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["get_email", "get_thread", "get_attachment", "list_emails"])
def test_a_token_without_a_read_scope_is_403_before_gmail_is_called(client, user_token, conn, gmail, target):
    row_id = user_token("alice", expires_in=3600, scopes=(scopes.SEND,))
    gmail.allow_token(row(conn, row_id)["token_data"]["access_token"])
    params = {"message_id": "m", "thread_id": "t", "attachment_id": "part-1"}
    wanted = {name: value for name, value in params.items() if name in target_fields(target)}

    response = get(client, target, **wanted)

    assert response.status_code == 403
    error = error_of(response)
    assert error["code"] == "permission_denied"
    assert error["required_scopes"] == [
        "https://www.googleapis.com/auth/gmail.readonly",
        "https://www.googleapis.com/auth/gmail.modify",
        "https://mail.google.com/",
    ]
    assert gmail.requests == []


def target_fields(target: str) -> set[str]:
    from shared import targets

    return set(targets.get(target).request.FIELDS)


def test_gmail_403_for_scopes_is_403_with_required_scopes(client, alice, gmail):
    message_id = gmail.add_message(message())
    gmail.fail_next(GET_PATH, 403, reason="insufficientPermissions")

    response = get(client, "get_email", message_id=message_id)

    assert response.status_code == 403
    assert error_of(response)["required_scopes"][0] == "https://www.googleapis.com/auth/gmail.readonly"


def test_a_token_with_no_stored_scopes_is_tried(client, user_token, conn, gmail):
    row_id = user_token("alice", expires_in=3600, scopes=())
    gmail.allow_token(row(conn, row_id)["token_data"]["access_token"])
    message_id = gmail.add_message(message())

    assert ok(get(client, "get_email", message_id=message_id))["id"] == message_id


def test_reads_write_audit_rows_without_content(client, alice, gmail, conn):
    message_id = gmail.add_message(message(subject="secret subject"))
    ok(get(client, "get_email", message_id=message_id))
    get(client, "get_email", message_id="missing")

    rows = conn.run(
        "SELECT action, status, http_status, gmail_message_id, gmail_calls FROM gmail_audit_logs ORDER BY id"
    )

    assert [(r["action"], r["http_status"]) for r in rows] == [(audit.READ, 200), (audit.READ, 404)]
    assert rows[0]["gmail_message_id"] == message_id and rows[0]["gmail_calls"] == 1
    ok(get(client, "get_thread", thread_id=message_id))
    thread_row = conn.one("SELECT * FROM gmail_audit_logs WHERE action = :action", action=audit.READ_THREAD)
    assert thread_row is not None and thread_row["gmail_thread_id"] == message_id
    assert "secret subject" not in str(thread_row)
