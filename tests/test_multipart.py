"""send_email as multipart/form-data (CONTRACT.md, Limits that hold in production) through
functions-framework: a ``json`` part with the fields and one file part per attachment, the bytes
arriving in Gmail unchanged."""

from __future__ import annotations

import email
import email.policy
import json
from email.message import EmailMessage
from typing import Any

import pytest

from devtools.fakes.gmail import FakeGmail
from shared import targets

MiB = 1024 * 1024
BOUNDARY = "----skill-email-test-7f1c2d9e"
# Cloud Run refuses HTTP/1 request bodies over this.
CLOUD_RUN_REQUEST_CAP = 32 * MiB


def part(name: str, content: bytes, *, filename: str | None = None, content_type: str | None = None) -> bytes:
    """One multipart/form-data part; the filename goes out as raw UTF-8, as RFC 7578 allows."""
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
    head = f"Content-Disposition: {disposition}\r\n"
    if content_type:
        head += f"Content-Type: {content_type}\r\n"
    return f"--{BOUNDARY}\r\n".encode() + head.encode("utf-8") + b"\r\n" + content + b"\r\n"


def nameless(content: bytes) -> bytes:
    """A part whose Content-Disposition names no field."""
    return f"--{BOUNDARY}\r\nContent-Disposition: form-data\r\n\r\n".encode() + content + b"\r\n"


def form(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def post_form(
    client: Any, body: bytes, target: str = "send_email", headers: dict[str, str] | None = None
) -> Any:
    return client(target).post(
        "/", data=body, content_type=f"multipart/form-data; boundary={BOUNDARY}", headers=headers or {}
    )


def fields(**values: Any) -> bytes:
    values.setdefault("user_id", "alice")
    return part(
        "json", json.dumps(values, ensure_ascii=False).encode("utf-8"), content_type="application/json"
    )


def only_sent(gmail: FakeGmail) -> EmailMessage:
    [raw] = gmail.sent_messages()
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def test_a_json_part_and_file_parts_send_the_files_byte_for_byte(client, alice, gmail):
    pdf = b"%PDF-1.4\n" + bytes(range(256)) * 64
    png = b"\x89PNG\r\n\x1a\n" + bytes(reversed(range(256))) * 16
    body = form(
        fields(to="bob@example.com", subject="자료 보내드립니다", body="첨부 확인 부탁드립니다."),
        part("attachments", pdf, filename="회의 자료 (최종).pdf", content_type="application/pdf"),
        part("attachments", png, filename="chart.bin", content_type="image/png"),
    )
    response = post_form(client, body)
    assert response.status_code == 200, response.get_json()
    message = only_sent(gmail)
    assert message["Subject"] == "자료 보내드립니다"
    attached = [(a.get_filename(), a.get_content_type(), a.get_content()) for a in message.iter_attachments()]
    # The filename as sent (UTF-8), the Content-Type as given (not guessed from ".bin"), the bytes exact.
    assert attached == [
        ("회의 자료 (최종).pdf", "application/pdf", pdf),
        ("chart.bin", "image/png", png),
    ]


def test_a_file_part_without_a_content_type_gets_one_from_its_name(client, alice, gmail):
    response = post_form(
        client, form(fields(to="b@example.com"), part("attachments", b"a,b\n", filename="t.csv"))
    )
    assert response.status_code == 200, response.get_json()
    [attachment] = only_sent(gmail).iter_attachments()
    assert attachment.get_content_type() == "text/csv"


def test_24_mib_of_attachments_fit_under_cloud_runs_request_cap(client, alice, gmail):
    files = [bytes([index]) * (8 * MiB) for index in range(3)]
    body = form(
        fields(to="bob@example.com", subject="big"),
        *(part("attachments", data, filename=f"part{i}.bin") for i, data in enumerate(files)),
    )
    assert len(body) < CLOUD_RUN_REQUEST_CAP
    assert len(body) < targets.get("send_email").max_body
    response = post_form(client, body)
    assert response.status_code == 200, response.get_json()
    assert [a.get_content() for a in only_sent(gmail).iter_attachments()] == files


def test_attachments_over_24_mib_as_files_are_413_and_nothing_reaches_gmail(client, alice, gmail):
    body = form(fields(to="b@example.com"), part("attachments", b"\0" * (24 * MiB + 1), filename="big.bin"))
    response = post_form(client, body)
    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "payload_too_large"
    assert gmail.requests == []


def test_a_repeat_with_the_same_idempotency_key_sends_once(client, alice, gmail):
    body = form(
        fields(to="b@example.com", subject="once"), part("attachments", b"\x00\x01", filename="a.bin")
    )
    headers = {"Idempotency-Key": "multipart-1"}
    first = post_form(client, body, headers=headers)
    second = post_form(client, body, headers=headers)
    assert first.status_code == second.status_code == 200
    assert first.get_json() == second.get_json()
    assert len(gmail.sent_messages()) == 1
    other = form(
        fields(to="b@example.com", subject="once"), part("attachments", b"\x00\x02", filename="a.bin")
    )
    assert post_form(client, other, headers=headers).status_code == 409


@pytest.mark.parametrize(
    ("parts", "words"),
    [
        ([part("attachments", b"x", filename="a.txt")], "exactly one part named json"),
        ([fields(to="a@b.c"), fields(to="a@b.c")], "exactly one part named json"),
        (
            [fields(to="a@b.c"), part("attachment", b"x", filename="a.txt")],
            "unknown multipart part: 'attachment'",
        ),
        # A nameless part beside another unknown one (found by the schemathesis fuzz: it was a 500).
        ([fields(to="a@b.c"), nameless(b"x"), part("zz", b"y")], "unknown multipart part: 'zz'"),
        ([fields(to="a@b.c"), part("attachments", b"x")], "must be a file"),
        ([part("json", b"[1]")], "json part must be a JSON object"),
        ([part("json", b"{nope")], "json part is not valid JSON"),
        (
            [
                fields(to="a@b.c", attachments=[{"filename": "a.txt", "content": "eA=="}]),
                part("attachments", b"x", filename="b.txt"),
            ],
            "both in the json part and as file parts",
        ),
        ([fields(to="a@b.c", usr_id="x")], "unknown field: usr_id"),
        (
            [fields(to="a@b.c"), part("attachments", b"x", filename="m.eml", content_type="message/rfc822")],
            "cannot be attached",
        ),
    ],
)
def test_malformed_multipart_is_400_and_nothing_reaches_gmail(client, alice, gmail, parts, words):
    response = post_form(client, form(*parts))
    assert response.status_code == 400, response.get_json()
    assert response.get_json()["error"]["code"] == "invalid_argument"
    assert words in response.get_json()["error"]["message"]
    assert gmail.requests == []


def test_a_target_that_takes_no_files_refuses_multipart(client, database_url):
    response = post_form(client, form(part("json", b'{"user_id": "a"}')), target="token_status")
    assert response.status_code == 400
    assert "Content-Type: application/json" in response.get_json()["error"]["message"]


def test_a_multipart_body_without_a_boundary_is_400(client, alice, gmail):
    response = client("send_email").post("/", data=b"x", content_type="multipart/form-data")
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_argument"


def test_create_draft_takes_the_same_multipart_form(client, alice, gmail, conn):
    compose = "https://www.googleapis.com/auth/gmail.compose"
    conn.run("UPDATE gmail_token SET scopes = ARRAY[:scope] WHERE id = :id", scope=compose, id=alice)
    pdf = b"%PDF-1.4\n" + bytes(range(256)) * 8
    body = form(
        fields(to="bob@example.com", subject="초안"),
        part("attachments", pdf, filename="초안 자료.pdf", content_type="application/pdf"),
    )
    response = post_form(client, body, target="create_draft")
    assert response.status_code == 200, response.get_json()
    assert set(response.get_json()) == {"draft_id", "message_id", "thread_id"}
