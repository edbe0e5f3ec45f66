"""create_draft and send_draft through functions-framework, the real googleapiclient and google-auth, against
FakeGmail on loopback: what we answered, what Gmail holds, and that nothing is ever created or sent twice."""

from __future__ import annotations

import base64
import email
import email.policy
from collections.abc import Callable
from email.message import EmailMessage
from typing import Any

import pytest

from devtools.fakes.gmail import FakeGmail
from shared import audit, scopes
from tests.conftest import MAILBOX, row

CREATE_PATH = r"/drafts$"
SEND_PATH = r"/drafts/send$"
MiB = 1024 * 1024


# -- fixtures and helpers -----------------------------------------------------------------------------


@pytest.fixture
def drafter(user_token: Callable[..., int], conn: Any, gmail: FakeGmail) -> int:
    """ "alice", whose token was granted gmail.compose (drafts) besides the defaults; its row id."""
    row_id = user_token("alice", expires_in=3600, scopes=(scopes.SEND, scopes.READONLY, scopes.COMPOSE))
    gmail.allow_token(row(conn, row_id)["token_data"]["access_token"])
    return row_id


def create(client: Callable[[str], Any], headers: dict[str, str] | None = None, **body: Any) -> Any:
    body.setdefault("user_id", "alice")
    return client("create_draft").post("/", json=body, headers=headers or {})


def send(client: Callable[[str], Any], draft_id: str, headers: dict[str, str] | None = None) -> Any:
    return client("send_draft").post(
        "/", json={"user_id": "alice", "draft_id": draft_id}, headers=headers or {}
    )


def error_of(response: Any) -> dict[str, Any]:
    body = response.get_json()
    assert set(body) == {"error"}, body
    return dict(body["error"])


def stored_draft(gmail: FakeGmail, draft_id: str) -> EmailMessage:
    """The draft's message as a mail client would parse it."""
    stored = gmail.message(gmail.drafts()[draft_id])
    assert stored is not None
    parsed = email.message_from_bytes(stored.raw, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def audit_actions(conn: Any) -> list[str]:
    return [r["action"] for r in conn.run("SELECT action FROM gmail_audit_logs ORDER BY id")]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


ORIGINAL = (
    b"From: =?UTF-8?B?6rmA7LKg7IiY?= <kim@example.org>\r\n"
    b"To: hong.gildong@example.com\r\n"
    b"Subject: =?UTF-8?B?7ZqM7J2YIOydvOyglQ==?=\r\n"
    b"Message-ID: <orig-2@mail.example.org>\r\n"
    b"References: <root-1@mail.example.org>\r\n"
    b"Content-Type: text/plain\r\n\r\nhello\r\n"
)


# -- create_draft ---------------------------------------------------------------------------------------


def test_draft_takes_every_send_email_field_and_composes_it_like_a_send(client, drafter, gmail, conn):
    original = gmail.add_message(ORIGINAL, thread_id="thread-7")
    pdf = b"%PDF-1.4\n" + bytes(range(256)) * 8
    response = create(
        client,
        to=["김철수 <chulsoo@example.com>", "bob@example.org"],
        cc="이영희 <younghee@example.net>",
        bcc=["secret@example.com"],
        body="김철수 님께,\n검토 부탁드립니다.",
        html="<p>검토 부탁드립니다.</p>",
        attachments=[{"filename": "회의 자료.pdf", "content": b64(pdf)}],
        from_name="홍길동 (로빙 비서)",
        reply_to="답장 <reply@example.com>",
        reply_to_message_id=original,
    )

    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    (draft_id,) = gmail.drafts()
    assert body == {"draft_id": draft_id, "message_id": gmail.drafts()[draft_id], "thread_id": "thread-7"}
    assert gmail.sent_messages() == [], "a draft is never sent"
    assert gmail.message(body["message_id"]).labels == ["DRAFT"]
    (posted,) = gmail.find("POST", CREATE_PATH)
    assert posted.json()["message"]["threadId"] == "thread-7"
    message = stored_draft(gmail, draft_id)
    assert message["Subject"] == "Re: 회의 일정"
    assert message["In-Reply-To"] == "<orig-2@mail.example.org>"
    assert message["References"] == "<root-1@mail.example.org> <orig-2@mail.example.org>"
    (sender,) = message["From"].addresses
    assert (sender.display_name, sender.addr_spec) == ("홍길동 (로빙 비서)", MAILBOX)
    assert [a.display_name for a in message["To"].addresses] == ["김철수", ""]
    assert message["Cc"].addresses[0].display_name == "이영희"
    assert message["Bcc"].addresses[0].addr_spec == "secret@example.com"
    assert message["Reply-To"].addresses[0].display_name == "답장"
    assert message["Message-ID"].endswith("@example.com>")
    alternative, attachment = message.iter_parts()
    assert [p.get_content_type() for p in alternative.iter_parts()] == ["text/plain", "text/html"]
    assert (attachment.get_filename(), attachment.get_content()) == ("회의 자료.pdf", pdf)
    assert gmail.message(body["message_id"]).raw.isascii()
    assert audit_actions(conn) == [audit.CREATE_DRAFT]


def test_draft_with_explicit_thread_and_subject(client, drafter, gmail):
    parent = gmail.add_message(ORIGINAL)
    response = create(client, to="a@example.com", subject="제목", body="b", thread_id=parent)

    assert response.status_code == 200, response.get_json()
    assert response.get_json()["thread_id"] == parent
    assert stored_draft(gmail, response.get_json()["draft_id"])["Subject"] == "제목"


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"to": "not-an-address"}, "to"),
        ({"to": "a@example.com", "subject": "a\r\nBcc: x@example.com"}, "subject"),
        ({"to": "a@example.com", "draft": True}, "draft"),
        ({"subject": "no recipient"}, "to"),
    ],
)
def test_bad_draft_is_400_naming_the_field_and_nothing_reaches_gmail(client, drafter, gmail, body, named):
    response = create(client, **body)

    assert response.status_code == 400
    assert named in error_of(response)["message"]
    assert gmail.requests == []


def test_draft_over_5_mb_goes_through_the_upload_endpoint(client, drafter, gmail):
    big = bytes(range(256)) * (6 * MiB // 256)
    response = create(client, to="a@example.com", attachments=[{"filename": "big.bin", "content": b64(big)}])

    assert response.status_code == 200, response.get_json()
    assert gmail.upload_types == ["multipart"]
    (attachment,) = [p for p in stored_draft(gmail, response.get_json()["draft_id"]).iter_attachments()]
    assert attachment.get_content() == big


def test_repeat_with_same_key_returns_the_same_draft_and_creates_no_second(client, drafter, gmail, conn):
    headers = {"Idempotency-Key": "draft-42"}
    first = create(client, headers, to="a@example.com", subject="한 번만", body="b")
    second = create(client, headers, to="a@example.com", subject="한 번만", body="b")

    assert first.status_code == second.status_code == 200
    assert second.get_json() == first.get_json()
    assert len(gmail.drafts()) == 1
    assert gmail.count("POST", CREATE_PATH) == 1
    assert audit_actions(conn) == [audit.CREATE_DRAFT, audit.CREATE_DRAFT_REPLAY]
    other = create(client, headers, to="a@example.com", subject="다른 내용", body="b")
    assert other.status_code == 409
    assert error_of(other)["code"] == "idempotency_conflict"


def test_a_key_used_for_a_send_never_replays_it_as_a_draft(client, drafter, gmail):
    headers = {"Idempotency-Key": "shared-key"}
    fields = {"user_id": "alice", "to": "a@example.com", "body": "b"}
    sent = client("send_email").post("/", json=fields, headers=headers)
    assert sent.status_code == 200

    drafted = create(client, headers, **fields)

    assert drafted.status_code == 409
    assert gmail.drafts() == {}


def test_draft_5xx_after_gmail_stored_it_is_found_by_message_id_and_not_created_twice(client, drafter, gmail):
    gmail.fail_after_draft(500)

    response = create(client, to="a@example.com", body="b")

    assert response.status_code == 200, response.get_json()
    (draft_id,) = gmail.drafts()
    assert response.get_json()["draft_id"] == draft_id
    assert gmail.count("POST", CREATE_PATH) == 1
    (search,) = gmail.find("GET", CREATE_PATH)
    assert search.param("q") == f"rfc822msgid:{stored_draft(gmail, draft_id)['Message-ID'].strip('<>')}"


def test_draft_5xx_without_the_draft_is_503_then_the_same_key_creates_it_once(client, drafter, gmail):
    headers = {"Idempotency-Key": "draft-unknown"}
    gmail.fail_next(CREATE_PATH, 500, method="POST")

    first = create(client, headers, to="a@example.com", body="b")

    assert first.status_code == 503
    message_id = error_of(first)["message_id"]
    assert gmail.drafts() == {}
    assert gmail.count("POST", CREATE_PATH) == 1, "re-posted blindly"
    second = create(client, headers, to="a@example.com", body="b")
    assert second.status_code == 200, second.get_json()
    (draft_id,) = gmail.drafts()
    assert stored_draft(gmail, draft_id)["Message-ID"] == message_id


# -- send_draft -----------------------------------------------------------------------------------------


def a_draft(client: Callable[[str], Any], **fields: Any) -> dict[str, Any]:
    response = create(client, **{"to": "a@example.com", "subject": "보고서", "body": "b", **fields})
    assert response.status_code == 200, response.get_json()
    return dict(response.get_json())


def draft_message_id(gmail: FakeGmail, draft_id: str) -> str:
    return str(stored_draft(gmail, draft_id)["Message-ID"])


def test_send_draft_sends_it_and_answers_like_send_email(client, drafter, gmail, conn):
    draft = a_draft(client)
    raw = gmail.message(draft["message_id"]).raw

    response = send(client, draft["draft_id"])

    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {
        "id": draft["message_id"],
        "thread_id": draft["thread_id"],
        "label_ids": ["SENT"],
    }
    # The draft went out as it was written; Gmail put the mailbox's address in the From it left open.
    assert gmail.sent_messages() == [f"From: {MAILBOX}\r\n".encode() + raw]
    assert b"\r\nFrom:" not in raw and not raw.startswith(b"From:")
    assert gmail.count("GET", r"/profile$") == 0, "no display name: no profile lookup"
    assert gmail.drafts() == {}
    assert audit_actions(conn) == [audit.CREATE_DRAFT, audit.SEND_DRAFT]


def test_unknown_draft_is_404_and_nothing_is_sent(client, drafter, gmail, conn):
    response = send(client, "r1234567890")

    assert response.status_code == 404
    assert error_of(response)["code"] == "not_found"
    assert gmail.count("POST", SEND_PATH) == 0
    assert audit_actions(conn) == [audit.SEND_DRAFT]


def test_send_draft_5xx_after_gmail_sent_it_is_200_found_by_message_id_and_sent_once(client, drafter, gmail):
    draft = a_draft(client)
    message_id = draft_message_id(gmail, draft["draft_id"])
    gmail.clear_requests()
    gmail.fail_after_send(500)

    response = send(client, draft["draft_id"])

    assert response.status_code == 200, response.get_json()
    assert response.get_json()["id"] == draft["message_id"]
    assert response.get_json()["label_ids"] == ["SENT"]
    assert gmail.count("POST", SEND_PATH) == 1
    assert len(gmail.sent_messages()) == 1
    (search,) = gmail.find("GET", r"/messages$")
    assert search.param("q") == f"rfc822msgid:{message_id.strip('<>')} in:sent"


def test_send_draft_5xx_not_sent_is_503_with_message_id_and_never_resent(client, drafter, gmail):
    draft = a_draft(client)
    gmail.fail_next(SEND_PATH, 503)

    response = send(client, draft["draft_id"])

    assert response.status_code == 503
    assert error_of(response)["message_id"] == draft_message_id(gmail, draft["draft_id"])
    assert gmail.count("POST", SEND_PATH) == 1, "re-posted blindly"
    assert gmail.sent_messages() == []


def test_dropped_connection_during_draft_send_is_not_resent(client, drafter, gmail):
    draft = a_draft(client)
    gmail.fail_after_send(None)

    response = send(client, draft["draft_id"])

    assert response.status_code == 200, response.get_json()
    assert gmail.count("POST", SEND_PATH) == 1
    assert len(gmail.sent_messages()) == 1


def test_429_proves_nothing_was_sent_so_the_draft_is_sent_on_retry(client, drafter, gmail, monkeypatch):
    from shared import gmail as gmail_module

    monkeypatch.setattr(gmail_module, "BACKOFF_BASE_S", 0.001)
    draft = a_draft(client)
    gmail.fail_next(SEND_PATH, 429)

    response = send(client, draft["draft_id"])

    assert response.status_code == 200, response.get_json()
    assert gmail.count("POST", SEND_PATH) == 2
    assert len(gmail.sent_messages()) == 1


def test_sent_but_unconfirmed_then_same_key_finds_it_and_sends_nothing(client, drafter, gmail):
    draft = a_draft(client)
    headers = {"Idempotency-Key": "send-draft-late"}
    gmail.fail_after_send(500)  # Gmail sent it, but answered 500
    gmail.fail_next(r"/messages$", 503, count=4)  # and every search right after fails

    first = send(client, draft["draft_id"], headers)

    assert first.status_code == 503
    assert error_of(first)["message_id"] == str(
        email.message_from_bytes(gmail.sent_messages()[0])["Message-ID"]
    )
    second = send(client, draft["draft_id"], headers)
    assert second.status_code == 200, second.get_json()
    assert second.get_json()["id"] == draft["message_id"]
    assert len(gmail.sent_messages()) == 1, "a second copy was sent"
    assert gmail.count("POST", SEND_PATH) == 1


def test_unknown_outcome_not_sent_then_same_key_sends_once(client, drafter, gmail):
    draft = a_draft(client)
    headers = {"Idempotency-Key": "send-draft-retry"}
    gmail.fail_next(SEND_PATH, 500)
    first = send(client, draft["draft_id"], headers)
    assert first.status_code == 503

    second = send(client, draft["draft_id"], headers)

    assert second.status_code == 200, second.get_json()
    assert len(gmail.sent_messages()) == 1
    searches = [r.param("q") for r in gmail.find("GET", r"/messages$")]
    assert len(searches) == 2 and len(set(searches)) == 1  # after the 5xx, and again before the resend


def test_repeat_send_draft_with_same_key_returns_first_answer_and_sends_once(client, drafter, gmail, conn):
    draft = a_draft(client)
    headers = {"Idempotency-Key": "send-draft-42"}
    first = send(client, draft["draft_id"], headers)
    second = send(client, draft["draft_id"], headers)

    assert first.status_code == second.status_code == 200
    assert second.get_json() == first.get_json()
    assert len(gmail.sent_messages()) == 1
    assert audit_actions(conn) == [audit.CREATE_DRAFT, audit.SEND_DRAFT, audit.SEND_DRAFT_REPLAY]


# -- scopes -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["create_draft", "send_draft"])
def test_token_without_a_drafts_scope_is_403_with_required_scopes_before_gmail(
    client, user_token, conn, gmail, target
):
    row_id = user_token("alice", expires_in=3600)  # gmail.send and gmail.readonly only
    gmail.allow_token(row(conn, row_id)["token_data"]["access_token"])
    body = (
        {"user_id": "alice", "to": "a@example.com"}
        if target == "create_draft"
        else {"user_id": "alice", "draft_id": "r1"}
    )

    response = client(target).post("/", json=body)

    assert response.status_code == 403
    error = error_of(response)
    assert error["code"] == "permission_denied"
    assert error["required_scopes"] == [scopes.COMPOSE, scopes.MODIFY, scopes.FULL]
    assert gmail.requests == []


def test_gmail_403_for_scopes_is_403_with_required_scopes(client, user_token, conn, gmail):
    row_id = user_token("alice", expires_in=3600, scopes=())  # nothing stored: Gmail decides
    gmail.allow_token(row(conn, row_id)["token_data"]["access_token"])
    gmail.fail_next(CREATE_PATH, 403, reason="insufficientPermissions", method="POST")

    response = create(client, to="a@example.com")

    assert response.status_code == 403
    assert error_of(response)["required_scopes"] == list(scopes.DRAFTS)
    assert gmail.drafts() == {}


@pytest.mark.parametrize("target", ["create_draft", "send_draft"])
def test_repeat_of_a_finished_request_is_answered_before_any_token_or_gmail_work(
    client, drafter, gmail, conn, target
):
    headers = {"Idempotency-Key": f"early-{target}"}
    if target == "create_draft":
        body = {"user_id": "alice", "to": "a@example.com", "body": "b"}
    else:
        body = {"user_id": "alice", "draft_id": a_draft(client)["draft_id"]}
    first = client(target).post("/", json=body, headers=headers)
    assert first.status_code == 200, first.get_json()
    conn.run("DELETE FROM gmail_token")  # no token left to read
    gmail.clear_requests()

    again = client(target).post("/", json=body, headers=headers)

    assert again.status_code == 200, again.get_json()
    assert again.get_json() == first.get_json()
    assert gmail.requests == []


def test_robeing_id_picks_the_token_equipped_to_that_robeing(client, user_token, conn, gmail):
    granted = (scopes.SEND, scopes.READONLY, scopes.COMPOSE)
    for robeing, mailbox in (("robeing-a", MAILBOX), ("robeing-b", "work@example.com")):
        row_id = user_token("alice", expires_in=3600, equipped_to=robeing, scopes=granted)
        gmail.allow_token(row(conn, row_id)["token_data"]["access_token"], mailbox)
    body = {"user_id": "alice", "robeing_id": "robeing-b", "to": "a@example.com", "body": "b"}

    created = client("create_draft").post("/", json=body)
    assert created.status_code == 200, created.get_json()
    assert gmail.drafts() == {}
    assert list(gmail.drafts("work@example.com")) == [created.get_json()["draft_id"]]
    sent = client("send_draft").post(
        "/", json={"user_id": "alice", "robeing_id": "robeing-b", "draft_id": created.get_json()["draft_id"]}
    )
    assert sent.status_code == 200, sent.get_json()
    assert len(gmail.sent_messages("work@example.com")) == 1
    elsewhere = client("send_draft").post(
        "/", json={"user_id": "alice", "robeing_id": "robeing-c", "draft_id": created.get_json()["draft_id"]}
    )
    assert elsewhere.status_code == 404
