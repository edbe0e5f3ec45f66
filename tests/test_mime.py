"""Tests for shared.mime: validating send requests, composing messages, and reading Gmail resources."""

from __future__ import annotations

import base64
import datetime as dt
import email
import re
from email import policy
from email.header import decode_header, make_header
from email.message import EmailMessage

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared import errors
from shared.mime import compose, decode, request
from shared.mime import text as mime_text

SENDER = "me@gmail.com"
MESSAGE_ID = "<0123456789abcdef.1700000000000@gmail.com>"
DATE = dt.datetime(2024, 3, 1, 9, 30, tzinfo=dt.UTC)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64url(data: bytes, *, padding: bool = False) -> str:
    text = base64.urlsafe_b64encode(data).decode("ascii")
    return text if padding else text.rstrip("=")


def build_and_parse(fields: dict[str, object], **kwargs: object) -> tuple[bytes, EmailMessage]:
    mail = request.parse_outgoing(fields)
    message = compose.build_message(mail, SENDER, message_id=MESSAGE_ID, date=DATE, **kwargs)  # type: ignore[arg-type]
    raw = compose.to_raw(message)
    parsed = email.message_from_bytes(raw, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return raw, parsed


def raw_header(parsed: email.message.Message, name: str) -> str:
    """A header exactly as folded on the wire, unfolded."""
    for key, value in parsed.raw_items():
        if key.lower() == name.lower():
            return re.sub(r"\r?\n", "", str(value))
    raise KeyError(name)


def display_name(parsed: EmailMessage, name: str) -> str:
    """The display name of a one-address header, decoded by the RFC 2047 rules.

    policy.default's phrase parser (CPython 3.11.7 and 3.12.1) keeps the whitespace between adjacent
    encoded words (RFC 2047 section 6.2 says to drop it), so encoded names are decoded with email.header.
    """
    value = raw_header(parsed, name)
    if "=?" in value:
        phrase = value.rsplit("<", 1)[0].strip()
        return str(make_header(decode_header(phrase)))
    return parsed[name].addresses[0].display_name


def gmail_part(
    mime_type: str,
    *,
    data: bytes | None = None,
    charset: str | None = None,
    filename: str = "",
    disposition: str | None = None,
    attachment_id: str | None = None,
    parts: list[dict[str, object]] | None = None,
) -> dict[str, object]:
    content_type = mime_type + (f"; charset={charset}" if charset else "")
    headers = [{"name": "Content-Type", "value": content_type}]
    if disposition:
        headers.append({"name": "Content-Disposition", "value": disposition})
    body: dict[str, object] = {"size": len(data) if data is not None else 0}
    if data is not None and attachment_id is None:
        body["data"] = b64url(data)
    if attachment_id is not None:
        body["attachmentId"] = attachment_id
    part: dict[str, object] = {"mimeType": mime_type, "filename": filename, "headers": headers, "body": body}
    if parts is not None:
        part["parts"] = parts
    return part


def gmail_resource(headers: dict[str, str], payload: dict[str, object] | None = None) -> dict[str, object]:
    payload = dict(payload or {"mimeType": "text/plain", "body": {"size": 0}})
    extra = payload.get("headers")
    payload["headers"] = [{"name": name, "value": value} for name, value in headers.items()] + (
        extra if isinstance(extra, list) else []
    )
    return {
        "id": "18c0ffee",
        "threadId": "18c0ffe0",
        "labelIds": ["INBOX", "UNREAD"],
        "snippet": "I&#39;m here &amp; there",
        "sizeEstimate": 4321,
        "internalDate": "1700000000123",
        "payload": payload,
    }


# --------------------------------------------------------------------------------------------------
# Building: Korean end to end


def test_korean_subject_body_name_and_filename_round_trip() -> None:
    raw, parsed = build_and_parse(
        {
            "to": ["홍길동 <hong@example.kr>", "plain@example.com"],
            "cc": "김철수 <kim@example.kr>",
            "bcc": ["hidden@example.com"],
            "subject": "회의 일정 안내 (3월)",
            "body": "안녕하세요,\n회의는 3시입니다.",
            "from_name": "로빙 비서",
            "reply_to": "답장 <reply@example.com>",
            "attachments": [{"filename": "보고서 최종.pdf", "content": b64(b"%PDF-1.4 data")}],
        }
    )
    assert raw.isascii()
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")
    assert str(parsed["Subject"]) == "회의 일정 안내 (3월)"
    assert parsed["From"].addresses[0].addr_spec == SENDER
    assert display_name(parsed, "From") == "로빙 비서"
    assert [(a.display_name, a.addr_spec) for a in parsed["To"].addresses] == [
        ("홍길동", "hong@example.kr"),
        ("", "plain@example.com"),
    ]
    assert [(a.display_name, a.addr_spec) for a in parsed["Cc"].addresses] == [("김철수", "kim@example.kr")]
    assert [a.addr_spec for a in parsed["Bcc"].addresses] == ["hidden@example.com"]
    assert [(a.display_name, a.addr_spec) for a in parsed["Reply-To"].addresses] == [
        ("답장", "reply@example.com")
    ]
    assert parsed["Message-ID"] == MESSAGE_ID
    assert parsed["MIME-Version"] == "1.0"
    assert parsed["Date"].datetime == DATE
    assert parsed.get_content_type() == "multipart/mixed"
    body, attachment = parsed.iter_parts()
    assert body.get_content_type() == "text/plain"
    assert body.get_content_charset() == "utf-8"
    assert body["Content-Transfer-Encoding"] == "base64"
    assert body.get_content().replace("\r\n", "\n") == "안녕하세요,\n회의는 3시입니다."
    assert attachment.get_content_disposition() == "attachment"
    assert attachment.get_filename() == "보고서 최종.pdf"
    assert "filename*=utf-8''" in raw_header(attachment, "Content-Disposition")
    assert attachment.get_content_type() == "application/pdf"
    assert attachment.get_content() == b"%PDF-1.4 data"
    # Only the top of the message says MIME-Version.
    assert [part for part in parsed.walk() if part is not parsed and "MIME-Version" in part] == []


def test_non_ascii_headers_are_rfc2047_encoded() -> None:
    _, parsed = build_and_parse({"to": "홍길동 <hong@example.kr>", "subject": "안녕", "from_name": "로빙"})
    assert raw_header(parsed, "Subject").startswith("=?utf-8?")
    assert raw_header(parsed, "From").startswith("=?utf-8?")
    assert raw_header(parsed, "To").startswith("=?utf-8?")


def test_ascii_body_is_sent_as_7bit() -> None:
    _, parsed = build_and_parse({"to": "a@example.com", "subject": "Hi", "body": "Hello\nworld"})
    assert parsed.get_content_type() == "text/plain"
    assert parsed["Content-Transfer-Encoding"] == "7bit"
    assert parsed.get_content().replace("\r\n", "\n") == "Hello\nworld"


def test_from_is_bare_sender_without_from_name() -> None:
    _, parsed = build_and_parse({"to": "a@example.com"})
    assert raw_header(parsed, "From") == SENDER


def test_empty_from_name_means_none() -> None:
    mail = request.parse_outgoing({"to": "a@example.com", "from_name": "  "})
    assert mail.from_name is None


def test_bcc_is_kept_in_the_message() -> None:
    _, parsed = build_and_parse({"to": "a@example.com", "bcc": ["b@example.com", "c@example.com"]})
    assert [a.addr_spec for a in parsed["Bcc"].addresses] == ["b@example.com", "c@example.com"]


def test_display_name_with_comma_stays_one_address() -> None:
    _, parsed = build_and_parse({"to": ['"Doe, John" <j@example.com>', '"홍, 길동" <h@example.kr>']})
    assert [a.addr_spec for a in parsed["To"].addresses] == ["j@example.com", "h@example.kr"]
    assert parsed["To"].addresses[0].display_name == "Doe, John"


@pytest.mark.parametrize(
    "name",
    [
        "Smith, John (Sales Department, Seoul Office, Korea Division; Regional HQ)",
        ";" + "x" * 80,
        "홍길동 (영업부, 서울 사무소, 한국 지사; 지역 본부) 홍길동 홍길동 홍길동",
        "=?utf-8?q?looks_encoded?=",
        'a "quoted" \\ name',
    ],
)
def test_awkward_from_name_round_trips(name: str) -> None:
    raw, parsed = build_and_parse({"to": "a@example.com", "from_name": name})
    assert raw.isascii()
    assert display_name(parsed, "From") == name
    assert parsed["From"].addresses[0].addr_spec == SENDER


@pytest.mark.parametrize(
    "subject",
    [
        "가" * 30 + "  " + "가" * 30,
        "=?utf-8?q?not_encoded?= really",
        "plain ASCII with  two spaces and a " + "verylongword" * 10,
        "2024년 3월 정기 회의 일정 안내 및 참석 여부 확인 요청드립니다 회신 부탁드립니다",
    ],
)
def test_awkward_subject_round_trips(subject: str) -> None:
    raw, parsed = build_and_parse({"to": "a@example.com", "subject": subject})
    assert raw.isascii()
    assert str(parsed["Subject"]) == subject


def test_recipient_with_malformed_encoded_word_is_rejected() -> None:
    with pytest.raises(errors.InvalidArgument, match=r"^to: malformed RFC 2047"):
        request.parse_outgoing({"to": '"=?bogus" <a@example.com>'})


# --------------------------------------------------------------------------------------------------
# Building: body structure


def test_body_and_html_make_multipart_alternative_plain_first() -> None:
    _, parsed = build_and_parse({"to": "a@example.com", "body": "plain 본문", "html": "<p>html 본문</p>"})
    assert parsed.get_content_type() == "multipart/alternative"
    plain, html_part = parsed.iter_parts()
    assert plain.get_content_type() == "text/plain"
    assert html_part.get_content_type() == "text/html"
    assert plain.get_content() == "plain 본문"
    assert html_part.get_content() == "<p>html 본문</p>"
    assert html_part.get_content_charset() == "utf-8"


def test_only_html_is_text_html() -> None:
    _, parsed = build_and_parse({"to": "a@example.com", "html": "<b>hi</b>"})
    assert parsed.get_content_type() == "text/html"
    assert parsed.get_content() == "<b>hi</b>"


def test_no_body_is_empty_text_plain() -> None:
    _, parsed = build_and_parse({"to": "a@example.com"})
    assert parsed.get_content_type() == "text/plain"
    assert parsed.get_content() == ""


def test_attachments_wrap_alternative_in_mixed() -> None:
    _, parsed = build_and_parse(
        {
            "to": "a@example.com",
            "body": "plain",
            "html": "<p>html</p>",
            "attachments": [
                {"filename": "a.png", "content": b64(b"\x89PNG")},
                {"filename": "b.bin", "content": b64(b"\x00\x01"), "mime_type": "Application/X-Custom"},
            ],
        }
    )
    assert parsed.get_content_type() == "multipart/mixed"
    alternative, png, custom = parsed.iter_parts()
    assert alternative.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in alternative.iter_parts()] == ["text/plain", "text/html"]
    assert (png.get_content_type(), png.get_filename(), png.get_content()) == (
        "image/png",
        "a.png",
        b"\x89PNG",
    )
    assert (custom.get_content_type(), custom.get_content()) == ("application/x-custom", b"\x00\x01")
    assert [a.get_filename() for a in parsed.iter_attachments()] == ["a.png", "b.bin"]


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("report.pdf", "application/pdf"),
        ("REPORT.PDF", "application/pdf"),
        ("photo.jpg", "image/jpeg"),
        ("notes.txt", "text/plain"),
        ("sheet.xlsx", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
        ("문서.hwp", "application/x-hwp"),
        ("archive.tar.gz", "application/gzip"),
        ("forwarded.eml", "application/octet-stream"),
        ("noextension", "application/octet-stream"),
        ("weird.zzzz", "application/octet-stream"),
    ],
)
def test_attachment_type_is_guessed_from_filename(filename: str, expected: str) -> None:
    mail = request.parse_outgoing(
        {"to": "a@example.com", "attachments": [{"filename": filename, "content": ""}]}
    )
    assert mail.attachments[0].mime_type == expected


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("dir/sub/a.txt", "a.txt"),
        ("C:\\Users\\me\\보고서.pdf", "보고서.pdf"),
        ("  spaced.txt  ", "spaced.txt"),
    ],
)
def test_attachment_filename_is_cut_to_basename(filename: str, expected: str) -> None:
    mail = request.parse_outgoing(
        {"to": "a@example.com", "attachments": [{"filename": filename, "content": "aGk="}]}
    )
    assert mail.attachments[0].filename == expected


@pytest.mark.parametrize("content", ["aGk=", "aGk", "aG\nk=", " aGk= \r\n"])
def test_attachment_base64_tolerates_missing_padding_and_line_breaks(content: str) -> None:
    mail = request.parse_outgoing(
        {"to": "a@example.com", "attachments": [{"filename": "a", "content": content}]}
    )
    assert mail.attachments[0].content == b"hi"


def test_attachments_up_to_24_mib_are_accepted() -> None:
    size = request.MAX_ATTACHMENT_BYTES // 2
    content = b64(b"\0" * size)
    mail = request.parse_outgoing(
        {
            "to": "a@example.com",
            "attachments": [{"filename": "a", "content": content}, {"filename": "b", "content": content}],
        }
    )
    assert sum(len(a.content) for a in mail.attachments) == request.MAX_ATTACHMENT_BYTES


@pytest.mark.parametrize(
    "sizes", [[request.MAX_ATTACHMENT_BYTES + 1], [request.MAX_ATTACHMENT_BYTES // 2, 2**23, 2**23]]
)
def test_attachments_over_24_mib_are_payload_too_large(sizes: list[int]) -> None:
    attachments = [{"filename": f"f{i}", "content": b64(b"\0" * size)} for i, size in enumerate(sizes)]
    with pytest.raises(errors.PayloadTooLarge) as caught:
        request.parse_outgoing({"to": "a@example.com", "attachments": attachments})
    assert caught.value.status == 413


# --------------------------------------------------------------------------------------------------
# Building: replies


LONG_ID = "<DM6PR12MB1234ABCDEF0123456789ABCDEF0123456789@DM6PR12MB1234.namprd12.prod.outlook.com>"


def test_reply_sets_threading_headers_and_re_subject() -> None:
    reply = compose.ReplyContext(
        message_id="<orig@mail.gmail.com>",
        references="<first@x.com> <second@y.com>",
        subject="회의",
        thread_id="t1",
    )
    _, parsed = build_and_parse({"to": "a@example.com", "body": "ok"}, reply=reply)
    assert parsed["In-Reply-To"] == "<orig@mail.gmail.com>"
    assert str(parsed["References"]).split() == ["<first@x.com>", "<second@y.com>", "<orig@mail.gmail.com>"]
    assert str(parsed["Subject"]) == "Re: 회의"


def test_reply_without_references_refers_to_original_only() -> None:
    reply = compose.ReplyContext(message_id="<orig@x.com>", references=None, subject="Hi", thread_id=None)
    _, parsed = build_and_parse({"to": "a@example.com"}, reply=reply)
    assert parsed["References"] == "<orig@x.com>"


def test_reply_keeps_long_message_ids_unencoded() -> None:
    reply = compose.ReplyContext(
        message_id=LONG_ID, references=f"{LONG_ID} {LONG_ID}", subject="x", thread_id=None
    )
    raw, parsed = build_and_parse({"to": "a@example.com"}, reply=reply)
    assert b"=?" not in raw.split(b"\r\n\r\n", 1)[0].replace(b"=?utf-8?", b"")  # no encoded ids
    assert raw_header(parsed, "In-Reply-To").strip() == LONG_ID
    assert raw_header(parsed, "References").split() == [LONG_ID, LONG_ID]


def test_reply_keeps_callers_subject() -> None:
    reply = compose.ReplyContext(message_id="<o@x.com>", references=None, subject="Original", thread_id=None)
    _, parsed = build_and_parse({"to": "a@example.com", "subject": "My own"}, reply=reply)
    assert str(parsed["Subject"]) == "My own"


@pytest.mark.parametrize(
    ("original", "expected"),
    [
        ("Hello", "Re: Hello"),
        ("Re: Hello", "Re: Hello"),
        ("RE: Hello", "RE: Hello"),
        ("re:Hello", "re:Hello"),
        ("Re : Hello", "Re : Hello"),
        ("Reply later", "Re: Reply later"),
        ("Fwd: Hello", "Re: Fwd: Hello"),
        ("", "Re:"),
        (None, "Re:"),
    ],
)
def test_reply_subject_adds_re_once(original: str | None, expected: str) -> None:
    assert compose.reply_subject(original) == expected


def test_reply_context_from_gmail_reads_headers_case_insensitively() -> None:
    resource = gmail_resource(
        {
            "Message-Id": "<m@x.com>",
            "REFERENCES": "<a@x.com>\r\n <b@x.com>",
            "subject": "=?utf-8?b?7ZqM7J2Y?=",
        }
    )
    context = decode.reply_context_from_gmail(resource)
    assert context == compose.ReplyContext(
        message_id="<m@x.com>", references="<a@x.com> <b@x.com>", subject="회의", thread_id="18c0ffe0"
    )


def test_reply_context_from_gmail_without_headers() -> None:
    assert decode.reply_context_from_gmail({"threadId": "t"}) == compose.ReplyContext(None, None, None, "t")


def test_reply_to_message_without_message_id_sets_no_threading_headers() -> None:
    reply = compose.ReplyContext(message_id=None, references=None, subject="Hi", thread_id="t")
    _, parsed = build_and_parse({"to": "a@example.com"}, reply=reply)
    assert "In-Reply-To" not in parsed and "References" not in parsed
    assert str(parsed["Subject"]) == "Re: Hi"


def test_new_message_id_is_unique_and_well_formed() -> None:
    ids = {compose.new_message_id("gmail.com") for _ in range(100)}
    assert len(ids) == 100
    assert all(re.fullmatch(r"<[0-9a-f]{32}\.\d+@gmail\.com>", value) for value in ids)


@pytest.mark.parametrize("domain", ["", "bad domain", "a..b", "홍.com", "x@y.com"])
def test_new_message_id_rejects_bad_domain(domain: str) -> None:
    with pytest.raises(ValueError):
        compose.new_message_id(domain)


def test_build_message_rejects_bad_message_id() -> None:
    mail = request.parse_outgoing({"to": "a@example.com"})
    with pytest.raises(ValueError):
        compose.build_message(mail, SENDER, message_id="no-brackets@x.com")


def test_naive_date_is_taken_as_utc() -> None:
    mail = request.parse_outgoing({"to": "a@example.com"})
    message = compose.build_message(
        mail, SENDER, message_id=MESSAGE_ID, date=dt.datetime(2024, 1, 2, 3, 4, 5)
    )
    assert message["Date"].datetime == dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


# --------------------------------------------------------------------------------------------------
# Rejections


@pytest.mark.parametrize("field", ["subject", "from_name", "reply_to"])
@pytest.mark.parametrize("bad", ["a\rb", "a\nb", "a\r\nBcc: x@evil.com", "a\u2028b", "a\x00b", "a\x85b"])
def test_line_breaks_and_controls_in_header_fields_are_rejected(field: str, bad: str) -> None:
    value = bad if field != "reply_to" else bad.replace("a", "x@example.com", 1)
    with pytest.raises(errors.InvalidArgument) as caught:
        request.parse_outgoing({"to": "a@example.com", field: value})
    assert caught.value.message.startswith(f"{field}:")


@pytest.mark.parametrize("field", ["to", "cc", "bcc"])
@pytest.mark.parametrize(
    "bad", ["a@example.com\r\nBcc: x@evil.com", "Name\n <a@example.com>", "a@example.com\r"]
)
def test_line_breaks_in_addresses_are_rejected(field: str, bad: str) -> None:
    fields: dict[str, object] = {"to": "ok@example.com", field: ["ok2@example.com", bad]}
    with pytest.raises(errors.InvalidArgument) as caught:
        request.parse_outgoing(fields)
    assert caught.value.message.startswith(f"{field}[1]: must not contain CR or LF")


@pytest.mark.parametrize(
    "bad",
    [
        "a@x.com, b@y.com",
        "a@x.com; b@y.com",
        "Doe, John <j@example.com>",
        "a@x.com b@y.com",
        "group: a@x.com, b@y.com;",
    ],
)
def test_hidden_second_address_is_rejected(bad: str) -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        request.parse_outgoing({"to": ["ok@example.com", bad]})
    assert caught.value.message.startswith("to[1]:")


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "   ",
        "plainword",
        "a@",
        "@example.com",
        "a@localhost",
        "a@b..com",
        "a@-b.com",
        "a@[127.0.0.1]",
        "<a@example.com",
        "Name <a@example.com> trailing",
        "x <>",
        "a..b@example.com",
        "홍@example.kr",
        "a@홍길동.kr",
        "a" * 65 + "@example.com",
        "a@" + "b" * 250 + ".com",
        "group:;",
    ],
)
def test_bad_address_is_rejected(bad: str) -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        request.parse_outgoing({"to": bad})
    assert caught.value.message.startswith("to:")


@pytest.mark.parametrize(
    "good",
    [
        "a@example.com",
        "Name <a@example.com>",
        "<a@example.com>",
        "홍길동 <hong@example.kr>",
        '"Doe, John" <j@example.com>',
        "John Q. Public <jq@example.com>",
        "first.last+tag@sub.example.co.kr",
        "a@example.com (comment)",
    ],
)
def test_good_address_is_accepted(good: str) -> None:
    assert len(request.parse_outgoing({"to": good}).to) == 1


def test_reply_to_is_one_address() -> None:
    with pytest.raises(errors.InvalidArgument, match=r"^reply_to:"):
        request.parse_outgoing({"to": "a@example.com", "reply_to": "a@x.com, b@y.com"})
    assert (
        request.parse_outgoing({"to": "a@example.com", "reply_to": "R <r@x.com>"}).reply_to == "R <r@x.com>"
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "to: is required"),
        ({"to": []}, "to: at least one address"),
        ({"to": None}, "to: must be a string or a list"),
        ({"to": 42}, "to: must be a string or a list"),
        ({"to": {"a": "b"}}, "to: must be a string or a list"),
        ({"to": ["a@example.com", 7]}, "to[1]: must be a string"),
        ({"to": ["a@example.com", None]}, "to[1]: must be a string"),
        ({"to": "a@example.com", "cc": None}, "cc: must be a string or a list"),
        ({"to": "a@example.com", "bcc": True}, "bcc: must be a string or a list"),
        ({"to": "a@example.com", "subject": 1}, "subject: must be a string"),
        ({"to": "a@example.com", "subject": None}, "subject: must be a string"),
        ({"to": "a@example.com", "body": ["x"]}, "body: must be a string"),
        ({"to": "a@example.com", "html": {"x": 1}}, "html: must be a string"),
        ({"to": "a@example.com", "from_name": 1.5}, "from_name: must be a string"),
        ({"to": "a@example.com", "reply_to": ["a@example.com"]}, "reply_to: must be a string"),
        ({"to": "a@example.com", "attachments": {"filename": "a"}}, "attachments: must be a list"),
        ({"to": "a@example.com", "attachments": None}, "attachments: must be a list"),
        ({"to": "a@example.com", "attachments": ["x"]}, "attachments[0]: must be an object"),
        (
            {"to": "a@example.com", "attachments": [{"content": "aGk="}]},
            "attachments[0].filename: is required",
        ),
        ({"to": "a@example.com", "attachments": [{"filename": "a"}]}, "attachments[0].content: is required"),
        (
            {"to": "a@example.com", "attachments": [{"filename": 3, "content": "aGk="}]},
            "attachments[0].filename: must be a string",
        ),
        (
            {"to": "a@example.com", "attachments": [{"filename": "a", "content": 3}]},
            "attachments[0].content: must be a string",
        ),
        (
            {"to": "a@example.com", "attachments": [{"filename": "a", "content": "aGk=", "mime_type": None}]},
            "attachments[0].mime_type: must be a string",
        ),
        (
            {"to": "a@example.com", "attachments": [{"filename": "a", "content": "aGk=", "name": "x"}]},
            "attachments[0]: unknown field 'name'",
        ),
        ({"to": "a@example.com", "subjet": "typo"}, "unknown field 'subjet'"),
        ({"to": "a@example.com", "body": "\ud800"}, "body: contains an unpaired UTF-16 surrogate"),
        ({"to": "a@example.com", "subject": "\udfff"}, "subject: contains an unpaired UTF-16 surrogate"),
    ],
)
def test_wrong_types_and_shapes_are_invalid_argument(fields: dict[str, object], message: str) -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        request.parse_outgoing(fields)
    assert caught.value.message.startswith(message)
    assert caught.value.status == 400


@pytest.mark.parametrize("content", ["not base64!", "aGk=aGk=", "a", "aGk-", "aGk_", "é", "aGk==="])
def test_bad_base64_is_rejected(content: str) -> None:
    with pytest.raises(errors.InvalidArgument, match=r"^attachments\[0\]\.content: not valid base64"):
        request.parse_outgoing(
            {"to": "a@example.com", "attachments": [{"filename": "a", "content": content}]}
        )


@pytest.mark.parametrize("filename", ["", "   ", "dir/", "..", "a\r\nb.txt", "a\nb", "a\x00b", "x" * 256])
def test_bad_attachment_filename_is_rejected(filename: str) -> None:
    with pytest.raises(errors.InvalidArgument, match=r"^attachments\[0\]\.filename:"):
        request.parse_outgoing(
            {"to": "a@example.com", "attachments": [{"filename": filename, "content": ""}]}
        )


@pytest.mark.parametrize(
    "mime_type", ["pdf", "", "text/", "/plain", "text/plain; charset=x", "multipart/mixed", "message/rfc822"]
)
def test_bad_attachment_mime_type_is_rejected(mime_type: str) -> None:
    with pytest.raises(errors.InvalidArgument, match=r"^attachments\[0\]\.mime_type:"):
        request.parse_outgoing(
            {"to": "a@example.com", "attachments": [{"filename": "a", "content": "", "mime_type": mime_type}]}
        )


def test_too_many_recipients_are_rejected() -> None:
    many = [f"user{i}@example.com" for i in range(request.MAX_RECIPIENTS)]
    assert len(request.parse_outgoing({"to": many}).to) == request.MAX_RECIPIENTS
    with pytest.raises(errors.InvalidArgument, match=r"^to/cc/bcc: 501 recipients"):
        request.parse_outgoing({"to": many, "cc": "one.more@example.com"})
    with pytest.raises(errors.InvalidArgument, match=r"^bcc: 501 recipients"):
        request.parse_outgoing({"to": "a@example.com", "bcc": [*many, "x@example.com"]})


# --------------------------------------------------------------------------------------------------
# Reading Gmail resources


def test_parse_metadata_resource() -> None:
    resource = gmail_resource(
        {
            "From": "=?UTF-8?B?7ZmN6ri464+Z?= <hong@example.kr>",
            "To": "me@gmail.com, =?utf-8?q?Kim?= <kim@example.kr>",
            "Subject": "=?ISO-2022-JP?B?GyRCRnxLXDhsGyhC?=",
            "Date": "Tue, 14 Nov 2023 22:13:20 +0900",
        }
    )
    message = decode.parse_gmail_message(resource, include_body=False)
    assert message == {
        "id": "18c0ffee",
        "thread_id": "18c0ffe0",
        "label_ids": ["INBOX", "UNREAD"],
        "snippet": "I'm here & there",
        "from": "홍길동 <hong@example.kr>",
        "to": "me@gmail.com, Kim <kim@example.kr>",
        "cc": None,
        "subject": "日本語",
        "date": "2023-11-14T13:13:20Z",
        "internal_date": "2023-11-14T22:13:20.123000Z",
        "size_estimate": 4321,
        "attachments": [],
        "from_address": {"name": "홍길동", "email": "hong@example.kr"},
        "to_addresses": [{"name": None, "email": "me@gmail.com"}, {"name": "Kim", "email": "kim@example.kr"}],
        "cc_addresses": [],
    }


def test_parse_handles_missing_fields() -> None:
    message = decode.parse_gmail_message({"id": "x"}, include_body=True)
    assert message["label_ids"] == [] and message["snippet"] == ""
    assert message["from"] is None and message["subject"] is None and message["date"] is None
    assert message["internal_date"] is None and message["size_estimate"] is None
    assert message["body_text"] is None and message["body_html"] is None
    assert message["attachments"] == []


@pytest.mark.parametrize(
    "date", ["", "not a date", "Tue, 99 Foo 2023 99:99:99 +9999", "Mon, 1 Jan 99999 00:00:00 +0000"]
)
def test_unparsable_date_is_none(date: str) -> None:
    assert decode.parse_gmail_message(gmail_resource({"Date": date}), include_body=False)["date"] is None


def test_date_without_zone_is_utc() -> None:
    resource = gmail_resource({"Date": "Tue, 14 Nov 2023 22:13:20 -0000"})
    assert decode.parse_gmail_message(resource, include_body=False)["date"] == "2023-11-14T22:13:20Z"


def full_resource() -> dict[str, object]:
    korean = "안녕하세요.\r\n회의는 3시입니다. 똠방각하"  # 똠 is CP949-only: senders label it euc-kr anyway
    payload = gmail_part(
        "multipart/mixed",
        parts=[
            gmail_part(
                "multipart/alternative",
                parts=[
                    gmail_part("text/plain", data=korean.encode("cp949"), charset="euc-kr"),
                    gmail_part("text/html", data="<p>안녕</p>".encode(), charset='"UTF-8"'),
                ],
            ),
            gmail_part(
                "application/pdf",
                data=b"x" * 5000,
                filename="보고서.pdf",
                disposition="attachment; filename*=utf-8''%EB%B3%B4%EA%B3%A0%EC%84%9C.pdf",
                attachment_id="ANGjdJ_1",
            ),
            gmail_part(
                "text/plain",
                data=b"notes",
                filename="",
                disposition='attachment; filename="=?utf-8?b?66mU66qo?=.txt"',
                attachment_id="ANGjdJ_2",
            ),
            gmail_part("image/png", data=b"\x89PNG", filename="logo.png", disposition="inline"),
        ],
    )
    return gmail_resource(
        {"From": "a@example.com", "Cc": "b@example.com", "Subject": "=?utf-8?b?7ZqM7J2Y?="}, payload
    )


def test_parse_full_resource_with_euc_kr_body_and_attachments() -> None:
    message = decode.parse_gmail_message(full_resource(), include_body=True)
    assert message["subject"] == "회의"
    assert message["cc"] == "b@example.com"
    assert message["body_text"] == "안녕하세요.\n회의는 3시입니다. 똠방각하"
    assert message["body_html"] == "<p>안녕</p>"
    assert message["attachments"] == [
        {
            "filename": "보고서.pdf",
            "mime_type": "application/pdf",
            "size": 5000,
            "attachment_id": "part-1",
            "inline": False,
            "content_id": None,
        },
        {
            "filename": "메모.txt",
            "mime_type": "text/plain",
            "size": 5,
            "attachment_id": "part-2",
            "inline": False,
            "content_id": None,
        },
        {
            "filename": "logo.png",
            "mime_type": "image/png",
            "size": 4,
            "attachment_id": "part-3",
            "inline": True,
            "content_id": None,
        },
    ]


def test_parse_full_resource_without_include_body_has_no_body_keys() -> None:
    message = decode.parse_gmail_message(full_resource(), include_body=False)
    assert "body_text" not in message and "body_html" not in message
    assert len(message["attachments"]) == 3  # type: ignore[arg-type]


def test_single_part_message_body_and_padding() -> None:
    text = "padding test: ab"  # 16 bytes: base64 needs padding, which Gmail leaves out
    payload = gmail_part("text/plain", data=text.encode(), charset="utf-8")
    assert not payload["body"]["data"].endswith("=")  # type: ignore[index]
    message = decode.parse_gmail_message(gmail_resource({}, payload), include_body=True)
    assert message["body_text"] == text
    assert message["body_html"] is None


def test_padded_base64url_body_is_accepted() -> None:
    payload = gmail_part("text/html", data=b"<i>x</i>")
    payload["body"] = {"size": 8, "data": b64url(b"<i>x</i>", padding=True)}
    message = decode.parse_gmail_message(gmail_resource({}, payload), include_body=True)
    assert message["body_text"] is None
    assert message["body_html"] == "<i>x</i>"


def test_text_attachment_is_not_the_body() -> None:
    payload = gmail_part(
        "multipart/mixed",
        parts=[
            gmail_part("text/plain", data=b"a.txt content", filename="a.txt"),
            gmail_part("text/plain", data=b"real body"),
        ],
    )
    message = decode.parse_gmail_message(gmail_resource({}, payload), include_body=True)
    assert message["body_text"] == "real body"
    assert [a["filename"] for a in message["attachments"]] == ["a.txt"]  # type: ignore[attr-defined]


def test_body_behind_attachment_id_is_none() -> None:
    payload = gmail_part("text/plain", data=b"big", attachment_id="ANG_big")
    message = decode.parse_gmail_message(gmail_resource({}, payload), include_body=True)
    assert message["body_text"] is None
    assert message["attachments"] == []


@pytest.mark.parametrize(
    ("data", "charset", "expected"),
    [
        ("한글".encode("euc-kr"), "euc-kr", "한글"),
        ("똠".encode("cp949"), "ks_c_5601-1987", "똠"),
        ("日本語".encode("iso-2022-jp"), "iso-2022-jp", "日本語"),
        ("café".encode("latin-1"), "iso-8859-1", "café"),
        (b"\x93quoted\x94", "iso-8859-1", "\u201cquoted\u201d"),
        ("café".encode(), None, "café"),
        ("café".encode(), "us-ascii", "café"),
        ("café".encode("latin-1"), None, "café"),
        ("café".encode(), "x-no-such-charset", "café"),
        (b"caf\xe9", "x-no-such-charset", "café"),
        (b"abc", "base64", "abc"),
        (b"\\u0041", "unicode_escape", "\\u0041"),
        (b"\xff\xfe", "utf-8", "\ufffd\ufffd"),
        ("한글".encode("euc-kr") + b"\xff", "euc-kr", "한글\ufffd"),
    ],
)
def test_decode_bytes_never_raises(data: bytes, charset: str | None, expected: str) -> None:
    assert mime_text.decode_bytes(data, charset) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain text", "plain text"),
        ("=?utf-8?b?7ZWc6riA?=", "한글"),
        ("=?UTF-8?Q?caf=C3=A9_au_lait?=", "café au lait"),
        ("=?utf-8?b?7ZWc?= =?utf-8?b?6riA?=", "한글"),
        ("=?utf-8?b?7ZU=?= =?utf-8?b?nA==?=", "한"),  # a character split across two words
        ("=?euc-kr?b?x9Gx2w==?= and =?iso-2022-jp?b?GyRCRnxLXBsoQg==?=", "한글 and 日本"),
        ("=?utf-8*ko?b?7ZWc?=", "한"),
        ("=?utf-8?b?7ZWc6riA?=\r\n =?utf-8?b?7ZWc?=", "한글한"),
        ("Re: =?utf-8?b?7ZWc?= test", "Re: 한 test"),
        ("=?utf-8?b?7ZWc6riA", "=?utf-8?b?7ZWc6riA"),  # unterminated
        ("=?utf-8?x?abc?=", "=?utf-8?x?abc?="),  # unknown encoding
        ("=?utf-8?b?a?=", "=?utf-8?b?a?="),  # base64 that cannot be
        ("=?no-such?q?caf=E9?=", "café"),
        ("=?utf-8?b?/w==?=", "\ufffd"),
        ("=?utf-8?q?=ED=95?=", "\ufffd"),
        ("raw 한글 =?utf-8?b?7ZWc?=", "raw 한글 한"),
    ],
)
def test_decode_header_text_never_raises(value: str, expected: str) -> None:
    assert mime_text.decode_header_text(value) == expected


def test_malformed_encoded_word_in_gmail_subject_is_kept() -> None:
    resource = gmail_resource({"Subject": "=?utf-8?b?broken!?= ok =?bogus?q?x?="})
    assert decode.parse_gmail_message(resource, include_body=False)["subject"] == "=?utf-8?b?broken!?= ok x"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("aGk", b"hi"),
        ("aGk=", b"hi"),
        ("-_8", b"\xfb\xff"),
        ("+/8=", b"\xfb\xff"),
        ("aGk!!", b"hi"),
        ("aGkx2", b"hi1"),
    ],
)
def test_decode_base64url_is_lenient(data: str, expected: bytes) -> None:
    assert mime_text.b64decode_lenient(data) == expected


# --------------------------------------------------------------------------------------------------
# Properties

# Any Unicode but unpaired surrogates (hypothesis's default), which JSON can carry and
# parse_outgoing rejects on their own.
TEXT = st.text(max_size=120)
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _canonical_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


@SETTINGS
@given(subject=TEXT, body=TEXT, from_name=TEXT, filename=TEXT)
def test_any_text_is_rejected_or_round_trips(subject: str, body: str, from_name: str, filename: str) -> None:
    fields: dict[str, object] = {
        "to": "to@example.com",
        "subject": subject,
        "body": body,
        "from_name": from_name,
        "attachments": [{"filename": filename, "content": b64(b"data")}],
    }
    try:
        mail = request.parse_outgoing(fields)
    except errors.InvalidArgument:
        return
    raw = compose.to_raw(compose.build_message(mail, SENDER, message_id=MESSAGE_ID, date=DATE))
    assert raw.isascii()
    parsed = email.message_from_bytes(raw, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    assert str(parsed.get("Subject", "")) == (mail.subject or "")
    assert mail.subject == subject.strip()
    if mail.from_name:
        assert display_name(parsed, "From") == mail.from_name
    else:
        assert raw_header(parsed, "From") == SENDER
    body_part, attachment = parsed.iter_parts()
    assert isinstance(body_part, EmailMessage) and isinstance(attachment, EmailMessage)
    assert _canonical_newlines(body_part.get_content()) == _canonical_newlines(body)
    # The header's own parameters: get_filename() would strip a name like "<x>" of its brackets.
    assert attachment["Content-Disposition"].params["filename"] == mail.attachments[0].filename
    assert attachment.get_payload(decode=True) == b"data"


@SETTINGS
@given(name=TEXT, local=st.from_regex(r"[a-z0-9][a-z0-9._+-]{0,20}[a-z0-9]", fullmatch=True))
def test_any_display_name_is_rejected_or_round_trips(name: str, local: str) -> None:
    address = f'"{name}" <{local}@example.com>'
    try:
        mail = request.parse_outgoing({"to": address})
    except errors.InvalidArgument:
        return
    parsed_to = compose.to_raw(compose.build_message(mail, SENDER, message_id=MESSAGE_ID, date=DATE))
    parsed = email.message_from_bytes(parsed_to, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    assert len(parsed["To"].addresses) == 1
    assert parsed["To"].addresses[0].addr_spec == f"{local}@example.com"


@SETTINGS
@given(value=st.text(max_size=200))
def test_decode_header_text_never_raises_on_anything(value: str) -> None:
    result = mime_text.decode_header_text(value)
    assert isinstance(result, str)
    result.encode("utf-8")  # no lone surrogates reach JSON


@SETTINGS
@given(
    data=st.binary(max_size=200),
    charset=st.one_of(
        st.none(),
        st.sampled_from(
            [
                "utf-8",
                "euc-kr",
                "iso-2022-jp",
                "cp949",
                "latin-1",
                "us-ascii",
                "utf-16",
                "utf-7",
                "bogus",
                "base64",
                "rot13",
            ]
        ),
    ),
)
def test_decode_bytes_never_raises_on_anything(data: bytes, charset: str | None) -> None:
    mime_text.decode_bytes(data, charset).encode("utf-8")


@SETTINGS
@given(
    subject=st.text(st.characters(blacklist_categories=["Cs", "Cc", "Zl", "Zp"]), min_size=1, max_size=200),
    name=st.text(st.characters(blacklist_categories=["Cs", "Cc", "Zl", "Zp"]), min_size=1, max_size=120),
)
def test_no_header_line_with_an_encoded_word_is_over_76_octets(subject: str, name: str) -> None:
    fields: dict[str, object] = {
        "to": [f'"{name}" <to@example.com>', "b@example.com"],
        "cc": "Ｃｃ 사람 <cc@example.com>",
        "subject": "한글 " + subject,
        "from_name": name,
        "reply_to": "긴 이름의 답장 받는 사람 " * 4 + "<reply@example.com>",
    }
    try:
        mail = request.parse_outgoing(fields)
    except errors.InvalidArgument:
        return
    raw = compose.to_raw(compose.build_message(mail, SENDER, message_id=MESSAGE_ID, date=DATE))
    head = raw.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n"):
        if b"=?" in line:
            assert len(line) <= 76, line
