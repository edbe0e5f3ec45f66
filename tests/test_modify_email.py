"""modify_email and list_labels through functions-framework, the real googleapiclient and google-auth, against
FakeGmail on loopback: the labels Gmail ends up with, and how many requests it took to get there."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from devtools.fakes.gmail import SYSTEM_LABELS, FakeGmail
from shared import audit, scopes
from tests.conftest import row

LABELS_LIST = r"/labels$"


@pytest.fixture
def keeper(user_token: Callable[..., int], conn: Any, gmail: FakeGmail) -> int:
    """ "alice", whose token was granted gmail.modify; its row id."""
    row_id = user_token("alice", expires_in=3600, scopes=(scopes.MODIFY,))
    gmail.allow_token(row(conn, row_id)["token_data"]["access_token"])
    return row_id


def modify(client: Callable[[str], Any], **body: Any) -> Any:
    body.setdefault("user_id", "alice")
    return client("modify_email").post("/", json=body)


def error_of(response: Any) -> dict[str, Any]:
    body = response.get_json()
    assert set(body) == {"error"}, body
    return dict(body["error"])


def raw(subject: str) -> bytes:
    return f"From: a@example.com\r\nTo: b@example.com\r\nSubject: {subject}\r\n\r\nhi\r\n".encode()


def labels_of(gmail: FakeGmail, message_id: str) -> list[str]:
    stored = gmail.message(message_id)
    assert stored is not None
    return stored.labels


# -- modify_email: one message ----------------------------------------------------------------------------


def test_labels_by_name_and_id_mark_read_and_archive_in_one_request(client, keeper, gmail, conn):
    message = gmail.add_message(raw("one"), labels=["INBOX", "UNREAD", "IMPORTANT"])
    vip = gmail.add_label("고객/VIP")
    work = gmail.add_label("Work")
    done = gmail.add_label("Done")

    response = modify(
        client,
        message_id=message,
        add_labels=["고객/VIP", "work", done],
        remove_labels=["IMPORTANT"],
        mark_read=True,
        archive=True,
    )

    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {"id": message, "thread_id": message, "label_ids": [vip, work, done]}
    assert labels_of(gmail, message) == [vip, work, done]
    assert gmail.count("GET", LABELS_LIST) == 1, "names are resolved with one labels.list per call"
    (request,) = gmail.find("POST", rf"/messages/{message}/modify$")
    assert request.json() == {
        "addLabelIds": [vip, work, done],
        "removeLabelIds": ["IMPORTANT", "UNREAD", "INBOX"],
    }
    (audit_row,) = conn.run("SELECT action, status, gmail_message_id FROM gmail_audit_logs")
    assert audit_row == {"action": audit.MODIFY, "status": audit.OK, "gmail_message_id": message}


def test_system_label_ids_alone_need_no_labels_list(client, keeper, gmail):
    message = gmail.add_message(raw("one"), labels=["INBOX"])

    response = modify(client, message_id=message, add_labels=["STARRED"], mark_read=False, archive=False)

    assert response.status_code == 200, response.get_json()
    assert labels_of(gmail, message) == ["INBOX", "STARRED", "UNREAD"]
    assert gmail.count("GET", LABELS_LIST) == 0


def test_unknown_label_name_is_400_naming_it_and_nothing_changes(client, keeper, gmail, conn):
    message = gmail.add_message(raw("one"))
    gmail.add_label("Work")

    response = modify(client, message_id=message, add_labels=["Work", "Wrok"])

    assert response.status_code == 400
    assert "'Wrok'" in error_of(response)["message"]
    assert "add_labels" in error_of(response)["message"]
    assert labels_of(gmail, message) == ["INBOX", "UNREAD"]
    assert gmail.count("POST") == 0
    assert [r["action"] for r in conn.run("SELECT action FROM gmail_audit_logs")] == [audit.MODIFY]


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"add_labels": ["STARRED"]}, "exactly one of message_id and thread_id"),
        ({"message_id": "m", "thread_id": "t", "trash": True}, "exactly one of message_id and thread_id"),
        ({"message_id": "m"}, "nothing to change"),
        ({"message_id": "m", "add_labels": []}, "nothing to change"),
        ({"message_id": "m", "add_labels": ["UNREAD"], "mark_read": True}, "both added and removed"),
        ({"message_id": "m", "mark_read": "yes"}, "mark_read"),
        ({"message_id": "m", "labels": ["X"]}, "labels"),
    ],
)
def test_malformed_requests_are_400(client, keeper, gmail, body, says):
    response = modify(client, **body)

    assert response.status_code == 400
    assert says in error_of(response)["message"]
    assert gmail.count("POST") == 0


def test_trash_and_untrash_a_message(client, keeper, gmail):
    message = gmail.add_message(raw("one"))

    trashed = modify(client, message_id=message, trash=True)

    assert trashed.status_code == 200, trashed.get_json()
    assert "TRASH" in trashed.get_json()["label_ids"]
    assert gmail.count("POST", rf"/messages/{message}/trash$") == 1
    restored = modify(client, message_id=message, trash=False, mark_read=True)
    assert restored.status_code == 200, restored.get_json()
    assert restored.get_json()["label_ids"] == ["INBOX"]
    assert gmail.count("POST", rf"/messages/{message}/untrash$") == 1


def test_unknown_message_is_404(client, keeper, gmail):
    response = modify(client, message_id="18c0000000000000", mark_read=True)

    assert response.status_code == 404
    assert error_of(response)["code"] == "not_found"


# -- modify_email: a whole thread -------------------------------------------------------------------------


def test_thread_form_changes_every_message_in_one_request(client, keeper, gmail):
    first = gmail.add_message(raw("one"), internal_date_ms=1)
    second = gmail.add_message(raw("two"), thread_id=first, internal_date_ms=2)
    third = gmail.add_message(raw("three"), thread_id=first, internal_date_ms=3, labels=["SENT"])
    other = gmail.add_message(raw("other"))
    work = gmail.add_label("Work")

    response = modify(client, thread_id=first, add_labels=["Work"], mark_read=True, archive=True)

    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {
        "thread_id": first,
        "messages": [
            {"id": first, "label_ids": [work]},
            {"id": second, "label_ids": [work]},
            {"id": third, "label_ids": ["SENT", work]},
        ],
    }
    assert gmail.count("POST") == 1
    assert gmail.count("POST", rf"/threads/{first}/modify$") == 1
    assert labels_of(gmail, other) == ["INBOX", "UNREAD"]


def test_thread_trash_and_untrash_in_one_request_each(client, keeper, gmail):
    first = gmail.add_message(raw("one"), internal_date_ms=1)
    second = gmail.add_message(raw("two"), thread_id=first, internal_date_ms=2)

    trashed = modify(client, thread_id=first, trash=True)

    assert trashed.status_code == 200, trashed.get_json()
    assert all("TRASH" in m["label_ids"] for m in trashed.get_json()["messages"])
    assert [m["id"] for m in trashed.get_json()["messages"]] == [first, second]
    untrashed = modify(client, thread_id=first, trash=False)
    assert untrashed.status_code == 200
    assert all("TRASH" not in labels_of(gmail, m) for m in (first, second))
    assert (
        gmail.count("POST", rf"/threads/{first}/trash$")
        == gmail.count("POST", rf"/threads/{first}/untrash$")
        == 1
    )
    assert gmail.count("POST", r"/messages/") == 0


def test_unknown_thread_is_404(client, keeper, gmail):
    response = modify(client, thread_id="18c0000000000000", trash=True)

    assert response.status_code == 404


# -- list_labels ------------------------------------------------------------------------------------------


def test_list_labels_without_counts_is_one_request(client, keeper, gmail, conn):
    vip = gmail.add_label("고객/VIP")

    response = client("list_labels").get("/?user_id=alice")

    assert response.status_code == 200, response.get_json()
    labels = response.get_json()["labels"]
    assert labels[0] == {"id": "INBOX", "name": "INBOX", "type": "system"}
    assert {"id": vip, "name": "고객/VIP", "type": "user"} in labels
    assert len(labels) == len(SYSTEM_LABELS) + 1
    assert len(gmail.requests) == 1
    assert [r["action"] for r in conn.run("SELECT action FROM gmail_audit_logs")] == [audit.LIST_LABELS]


def test_counts_come_from_batched_label_gets(client, keeper, gmail):
    work = gmail.add_label("Work")
    gmail.add_message(raw("a"), labels=["INBOX", "UNREAD", work])
    gmail.add_message(raw("b"), labels=["INBOX", work])
    for index in range(60):  # more labels than one batch of 50 holds
        gmail.add_label(f"label {index}")

    response = client("list_labels").post("/", json={"user_id": "alice", "include_counts": True})

    assert response.status_code == 200, response.get_json()
    by_id = {label["id"]: label for label in response.get_json()["labels"]}
    assert by_id[work] == {
        "id": work,
        "name": "Work",
        "type": "user",
        "messages_total": 2,
        "messages_unread": 1,
    }
    assert (by_id["INBOX"]["messages_total"], by_id["INBOX"]["messages_unread"]) == (2, 1)
    assert by_id["TRASH"]["messages_total"] == 0
    total = len(SYSTEM_LABELS) + 61
    assert len(by_id) == total
    assert gmail.batch_sizes == [50, total - 50]
    assert gmail.count_inner("GET", r"/labels/") == total
    assert gmail.count("GET", r"/labels/") == 0, "no label was counted outside a batch"


def test_counts_retry_a_rate_limited_label_inside_the_batch(client, keeper, gmail, monkeypatch):
    from shared import gmail as gmail_module

    monkeypatch.setattr(gmail_module, "BACKOFF_BASE_S", 0.001)
    gmail.fail_next(r"/labels/INBOX$", 429)

    response = client("list_labels").get("/?user_id=alice&include_counts=true")

    assert response.status_code == 200, response.get_json()
    assert len(gmail.batch_sizes) == 2 and gmail.batch_sizes[1] == 1


# -- scopes -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "granted", "body", "required"),
    [
        (
            "modify_email",
            (scopes.SEND, scopes.READONLY),
            {"message_id": "m", "trash": True},
            scopes.LABELS_AND_TRASH,
        ),
        ("list_labels", (scopes.SEND,), {}, scopes.LISTING_LABELS),
    ],
)
def test_token_without_the_scope_is_403_with_required_scopes_before_gmail(
    client, user_token, conn, gmail, target, granted, body, required
):
    row_id = user_token("alice", expires_in=3600, scopes=granted)
    gmail.allow_token(row(conn, row_id)["token_data"]["access_token"])

    response = client(target).post("/", json={"user_id": "alice", **body})

    assert response.status_code == 403
    assert error_of(response)["code"] == "permission_denied"
    assert error_of(response)["required_scopes"] == list(required)
    assert gmail.requests == []


def test_gmail_403_insufficient_permissions_is_403_with_required_scopes(client, user_token, conn, gmail):
    # The row says gmail.modify, but Google's grant says otherwise: Gmail's answer decides.
    row_id = user_token("alice", expires_in=3600, scopes=(scopes.MODIFY,))
    gmail.allow_token(row(conn, row_id)["token_data"]["access_token"])
    message = gmail.add_message(raw("one"))
    gmail.fail_next(r"/modify$", 403, reason="insufficientPermissions")

    response = modify(client, message_id=message, mark_read=True)

    assert response.status_code == 403
    assert error_of(response)["required_scopes"] == [scopes.MODIFY, scopes.FULL]
    assert labels_of(gmail, message) == ["INBOX", "UNREAD"]


def test_gmail_403_for_delegation_names_no_scopes(client, keeper, gmail):
    gmail.fail_next(r"/labels$", 403, reason="forbidden")

    response = client("list_labels").get("/?user_id=alice")

    assert response.status_code == 403
    assert "required_scopes" not in error_of(response)


def test_robeing_id_picks_the_mailbox_of_the_token_equipped_to_it(client, user_token, conn, gmail):
    for robeing, mailbox in (("robeing-a", "home@example.com"), ("robeing-b", "work@example.com")):
        row_id = user_token("alice", expires_in=3600, equipped_to=robeing, scopes=(scopes.MODIFY,))
        gmail.allow_token(row(conn, row_id)["token_data"]["access_token"], mailbox)
    work = gmail.add_label("업무", "work@example.com")
    message = gmail.add_message(raw("one"), email_address="work@example.com")

    listed = client("list_labels").get("/?user_id=alice&robeing_id=robeing-b")
    changed = modify(client, robeing_id="robeing-b", message_id=message, add_labels=["업무"])

    assert {"id": work, "name": "업무", "type": "user"} in listed.get_json()["labels"]
    assert changed.status_code == 200, changed.get_json()
    assert labels_of(gmail, message) == ["INBOX", "UNREAD", work]
    other = client("list_labels").get("/?user_id=alice&robeing_id=robeing-a")
    assert all(label["type"] == "system" for label in other.get_json()["labels"])


def test_thread_answer_without_messages_is_read_back_in_one_threads_get(client, keeper, gmail):
    first = gmail.add_message(raw("one"), internal_date_ms=1)
    second = gmail.add_message(raw("two"), thread_id=first, internal_date_ms=2)
    gmail.fail_next(r"/threads/[^/]+/modify$", 200, body={"id": first, "historyId": "1"})

    response = modify(client, thread_id=first, mark_read=True)

    assert response.status_code == 200, response.get_json()
    assert response.get_json()["messages"] == [
        {"id": first, "label_ids": ["INBOX", "UNREAD"]},
        {"id": second, "label_ids": ["INBOX", "UNREAD"]},
    ]
    (read_back,) = gmail.find("GET", rf"/threads/{first}$")
    assert read_back.param("format") == "minimal"
