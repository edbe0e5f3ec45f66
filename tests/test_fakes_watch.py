"""Self-tests of the Gmail fake's push endpoints (users.watch, users.stop, users.history.list), driven by
the REAL googleapiclient over loopback HTTP, as tests/test_fakes.py does for the rest of the fake."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from google.oauth2.credentials import Credentials
from googleapiclient.discovery import build_from_document
from googleapiclient.errors import HttpError

from devtools.fakes.gmail import DEFAULT_EMAIL, DEFAULT_TOKEN, FakeGmail, discovery_document

TOPIC = "projects/p/topics/gmail"
RAW = b"From: a@example.com\r\nTo: me@example.com\r\nSubject: hi\r\n\r\nbody\r\n"


@pytest.fixture
def gmail() -> Iterator[FakeGmail]:
    with FakeGmail() as fake:
        yield fake


def service(fake: FakeGmail) -> Any:
    return build_from_document(discovery_document(fake.url), credentials=Credentials(token=DEFAULT_TOKEN))


def test_watch_answers_history_id_and_an_expiration_a_week_ahead(gmail: FakeGmail) -> None:
    users = service(gmail).users()
    answer = users.watch(userId="me", body={"topicName": TOPIC, "labelIds": ["INBOX"]}).execute()
    assert answer["historyId"] == str(gmail.notification()["historyId"])
    week_ms = 7 * 24 * 3600 * 1000
    assert abs(int(answer["expiration"]) - (time.time() * 1000 + week_ms)) < 60_000
    assert gmail.watches[DEFAULT_EMAIL]["labelIds"] == ["INBOX"]
    request = gmail.find("POST", r"/watch$")[0]
    assert request.path == "/gmail/v1/users/me/watch" and request.json()["topicName"] == TOPIC


def test_watch_needs_a_topic_of_the_right_shape(gmail: FakeGmail) -> None:
    users = service(gmail).users()
    for body in ({}, {"topicName": "gmail"}, {"topicName": TOPIC, "labelIds": "INBOX"}):
        with pytest.raises(HttpError) as caught:
            users.watch(userId="me", body=body).execute()
        assert caught.value.resp.status == 400


def test_stop_is_204_and_forgets_the_watch(gmail: FakeGmail) -> None:
    users = service(gmail).users()
    users.watch(userId="me", body={"topicName": TOPIC}).execute()
    assert users.stop(userId="me").execute() == ""  # googleapiclient's answer to an empty 204
    assert gmail.watches == {} and gmail.stop_calls == [DEFAULT_EMAIL]


def test_history_lists_added_messages_after_the_start_every_page(gmail: FakeGmail) -> None:
    history = service(gmail).users().history()
    start = gmail.notification()["historyId"]
    ids = [gmail.add_message(RAW) for _ in range(5)]
    gmail.add_message(RAW, labels=["SENT"])
    seen: list[str] = []
    token = None
    pages = 0
    while True:
        page = history.list(
            userId="me",
            startHistoryId=str(start),
            historyTypes=["messageAdded"],
            maxResults=2,
            pageToken=token,
        ).execute()
        pages += 1
        for record in page.get("history", []):
            for added in record["messagesAdded"]:
                seen.append(added["message"]["id"])
                assert "labelIds" in added["message"]
        assert page["historyId"] == str(gmail.notification()["historyId"])
        token = page.get("nextPageToken")
        if not token:
            break
    assert pages == 3 and seen[:5] == ids and len(seen) == 6
    assert history.list(userId="me", startHistoryId=str(start), labelId="SENT").execute()["history"][0][
        "messagesAdded"
    ][0]["message"]["labelIds"] == ["SENT"]
    current = history.list(userId="me", startHistoryId=page["historyId"]).execute()
    assert "history" not in current  # nothing new: no "history" key, like Gmail
    only_labels = history.list(userId="me", startHistoryId=str(start), historyTypes=["labelAdded"]).execute()
    assert "history" not in only_labels


def test_history_older_than_the_floor_is_404_and_bad_starts_400(gmail: FakeGmail) -> None:
    history = service(gmail).users().history()
    start = gmail.notification()["historyId"]
    gmail.add_message(RAW)
    gmail.expire_history()
    with pytest.raises(HttpError) as caught:
        history.list(userId="me", startHistoryId=str(start)).execute()
    assert caught.value.resp.status == 404
    after = gmail.notification()["historyId"]
    gmail.add_message(RAW)
    assert len(history.list(userId="me", startHistoryId=str(after)).execute()["history"]) == 1
    with pytest.raises(HttpError) as bad:
        history.list(userId="me", startHistoryId="soon").execute()
    assert bad.value.resp.status == 400


def test_after_and_before_search_by_internal_date(gmail: FakeGmail) -> None:
    messages = service(gmail).users().messages()
    old = gmail.add_message(RAW, internal_date_ms=1_700_000_000_000)
    new = gmail.add_message(RAW, internal_date_ms=1_800_000_000_000)
    listed = messages.list(userId="me", q="after:1750000000").execute()
    assert [item["id"] for item in listed["messages"]] == [new]
    listed = messages.list(userId="me", q="before:1750000000").execute()
    assert [item["id"] for item in listed["messages"]] == [old]
    assert gmail.unsupported_query_terms == []
