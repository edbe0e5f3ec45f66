"""watch_mailbox and gmail_push through functions-framework, over the real PostgreSQL and the Gmail fake:
start/stop, events for exactly the new messages, duplicates, order, concurrency, the race, history 404."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import pytest

from devtools.fakes.gmail import FakeGmail
from shared import db
from tests.conftest import MAILBOX
from tests.conftest import row as token_row
from tests.push_support import TOPIC, cloud_event, events_of, push, raw_message


def start_watch(client: Any, robeing_id: str = "robeing-1", **extra: Any) -> Any:
    response = client("watch_mailbox").post("/", json={"user_id": "alice", "robeing_id": robeing_id, **extra})
    assert response.status_code == 200, response.get_json()
    return response.get_json()


@pytest.fixture
def watched(client: Any, robeing_token: Any, topic: str, gmail: FakeGmail) -> FakeGmail:
    """alice's mailbox watched by robeing-1 (INBOX)."""
    robeing_token("alice", "robeing-1")
    start_watch(client)
    return gmail


def list_events(client: Any, robeing_id: str = "robeing-1", **query: Any) -> dict[str, Any]:
    response = client("list_events").post("/", json={"robeing_id": robeing_id, **query})
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def message_ids(client: Any, robeing_id: str = "robeing-1") -> list[str]:
    """The message ids of every event of the robeing, in queued order (every page)."""
    ids: list[str] = []
    query: dict[str, Any] = {"limit": 500}
    while True:
        page = list_events(client, robeing_id, **query)
        if not page["events"]:
            return ids
        ids.extend(event["message"]["id"] for event in page["events"])
        query["after"] = page["next_cursor"]


# -- watch_mailbox ---------------------------------------------------------------------------------------


def test_start_calls_gmail_watch_and_answers_history_id_and_expiration(
    client: Any, robeing_token: Any, topic: str, gmail: FakeGmail, conn: db.Connection
) -> None:
    robeing_token("alice", "robeing-1")
    body = start_watch(client, label_ids=["INBOX", "Label_7"])
    assert body["history_id"] == str(gmail.notification()["historyId"])
    assert body["expiration"].endswith("Z")
    assert gmail.watches[MAILBOX]["topicName"] == TOPIC
    assert sorted(gmail.watches[MAILBOX]["labelIds"]) == ["INBOX", "Label_7"]
    assert gmail.watches[MAILBOX]["labelFilterBehavior"] == "include"
    stored = conn.one("SELECT email_address, watch_expiration FROM gmail_mailbox_watch")
    assert stored is not None and stored["email_address"] == MAILBOX


def test_stop_stops_gmail_only_when_the_last_robeing_stops(
    client: Any, robeing_token: Any, topic: str, gmail: FakeGmail
) -> None:
    robeing_token("alice", "robeing-1")
    robeing_token("alice", "robeing-2")
    start_watch(client, "robeing-1")
    start_watch(client, "robeing-2", label_ids=["Label_1"])
    assert sorted(gmail.watches[MAILBOX]["labelIds"]) == ["INBOX", "Label_1"]  # the union of both

    watch = client("watch_mailbox")
    stopped = watch.post("/", json={"user_id": "alice", "robeing_id": "robeing-1", "action": "stop"})
    assert (stopped.status_code, stopped.get_json()) == (200, {"stopped": True})
    assert gmail.stop_calls == [] and MAILBOX in gmail.watches

    last = watch.post("/", json={"user_id": "alice", "robeing_id": "robeing-2", "action": "stop"})
    assert last.status_code == 200
    assert gmail.stop_calls == [MAILBOX] and MAILBOX not in gmail.watches
    again = watch.post("/", json={"user_id": "alice", "robeing_id": "robeing-2", "action": "stop"})
    assert (again.status_code, again.get_json()) == (200, {"stopped": True})
    assert gmail.stop_calls == [MAILBOX]  # stopping twice is safe and calls Gmail once


def test_a_stopped_mailbox_is_not_synced_and_a_new_start_begins_from_now(
    client: Any, watched: FakeGmail, conn: db.Connection
) -> None:
    watched.add_message(raw_message("before stop"))
    assert push(client, watched.notification()).status_code == 200
    stop = {"user_id": "alice", "robeing_id": "robeing-1", "action": "stop"}
    stopped = client("watch_mailbox").post("/", json=stop)
    assert stopped.status_code == 200, stopped.get_json()
    watched.add_message(raw_message("while stopped"))
    assert push(client, watched.notification()).status_code == 200  # acknowledged: nobody watches
    start_watch(client)
    watched.add_message(raw_message("after restart"))
    assert push(client, watched.notification()).status_code == 200
    subjects = [e["message"]["subject"] for e in list_events(client)["events"]]
    # The first event is still there (starting again keeps queued events); nothing from the gap.
    assert subjects == ["before stop", "after restart"]


def test_watch_mailbox_rejects_bad_requests(client: Any, robeing_token: Any, topic: str) -> None:
    watch = client("watch_mailbox")
    cases = [
        ({"user_id": "alice"}, "robeing_id"),
        ({"user_id": "alice", "robeing_id": "r", "action": "pause"}, "action"),
        ({"user_id": "alice", "robeing_id": "r", "label_ids": []}, "label_ids"),
        ({"user_id": "alice", "robeing_id": "r", "action": "stop", "label_ids": ["INBOX"]}, "label_ids"),
    ]
    for body, field in cases:
        response = watch.post("/", json=body)
        assert response.status_code == 400, body
        assert field in response.get_json()["error"]["message"]
    assert watch.get("/?user_id=alice&robeing_id=r").status_code == 405


def test_start_without_a_token_is_404_and_without_a_topic_503(
    client: Any, robeing_token: Any, gmail: FakeGmail, monkeypatch: pytest.MonkeyPatch
) -> None:
    robeing_token("alice", "robeing-1")
    body = {"user_id": "alice", "robeing_id": "robeing-1"}
    missing_topic = client("watch_mailbox").post("/", json=body)
    assert missing_topic.status_code == 503
    assert "PUBSUB_TOPIC" in missing_topic.get_json()["error"]["message"]
    monkeypatch.setenv("PUBSUB_TOPIC", TOPIC)
    other = client("watch_mailbox").post("/", json={**body, "robeing_id": "robeing-9"})
    assert other.status_code == 404


# -- gmail_push: exactly the new messages ----------------------------------------------------------------


def test_a_notification_queues_exactly_the_new_messages(client: Any, watched: FakeGmail) -> None:
    korean_sender = "=?UTF-8?B?6rmA7LKg7IiY?= <chulsoo@example.com>"
    first = watched.add_message(raw_message("회의 안건", sender=korean_sender))
    second = watched.add_message(raw_message("second"))
    watched.add_message(raw_message("sent by alice"), labels=["SENT"])  # not in a watched label
    response = push(client, watched.notification())
    assert response.status_code == 200
    page = list_events(client)
    assert [event["message"]["id"] for event in page["events"]] == [first, second]
    event = page["events"][0]
    assert set(event) == {"id", "type", "created_at", "user_id", "robeing_id", "message"}
    assert event["type"] == "message.received"
    assert (event["user_id"], event["robeing_id"]) == ("alice", "robeing-1")
    assert event["message"]["subject"] == "회의 안건"
    assert event["message"]["from"] == "김철수 <chulsoo@example.com>"
    assert event["message"]["from_address"] == {"name": "김철수", "email": "chulsoo@example.com"}
    assert event["message"]["to_addresses"] == [{"name": None, "email": MAILBOX}]
    assert "body_text" not in event["message"] and "body_html" not in event["message"]
    # Fetched in one Gmail batch, not one request per message.
    assert watched.count("POST", r"^/batch") == 1
    assert watched.count_inner("GET", r"/messages/") == 2


def test_duplicate_and_out_of_order_notifications_give_one_event_per_message(
    client: Any, watched: FakeGmail, conn: db.Connection
) -> None:
    first = watched.add_message(raw_message("one"))
    early = watched.notification()
    second = watched.add_message(raw_message("two"))
    late = watched.notification()
    for notification in (late, early, late, early, late):
        assert push(client, notification).status_code == 200
    assert message_ids(client) == [first, second]
    assert len(events_of(conn, "robeing-1")) == 2
    # A notification the stored history already covers costs no Gmail call.
    calls = watched.count(None, r"/history$")
    assert push(client, early).status_code == 200
    assert watched.count(None, r"/history$") == calls


def test_concurrent_notifications_give_one_event_per_message(
    client: Any, watched: FakeGmail, conn: db.Connection
) -> None:
    ids = [watched.add_message(raw_message(f"burst {index}")) for index in range(6)]
    notification = watched.notification()
    watched.latency = 0.05  # every sync overlaps the others
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(lambda _: push(client, notification).status_code, range(8)))
    assert statuses == [200] * 8
    assert sorted(message_ids(client)) == sorted(ids)
    rows = events_of(conn, "robeing-1")
    assert len(rows) == len({row["gmail_message_id"] for row in rows}) == 6


def test_a_notification_arriving_during_a_sync_is_not_lost(
    client: Any, watched: FakeGmail, conn: db.Connection
) -> None:
    """The first sync has read the history (without the second message) and is still working when the
    second message arrives and its notification comes in: the second waits for the first, then finds it."""
    first = watched.add_message(raw_message("first"))
    first_notification = watched.notification()
    watched.latency = 0.6  # the first sync is inside its history call for 0.6 s
    results: dict[str, int] = {}
    syncing = threading.Thread(target=lambda: results.update(a=push(client, first_notification).status_code))
    syncing.start()
    deadline = time.monotonic() + 10
    while watched.count("GET", r"/history$") == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    second = watched.add_message(raw_message("second"))  # after the first sync's history was read
    second_notification = watched.notification()
    racing = threading.Thread(target=lambda: results.update(b=push(client, second_notification).status_code))
    racing.start()
    syncing.join(timeout=30)
    racing.join(timeout=30)
    assert results == {"a": 200, "b": 200}
    # The first sync's history answer did not have the second message: it was found by the second.
    assert message_ids(client) == [first, second]
    assert watched.count("GET", r"/history$") == 2


def test_expired_history_is_resynced_by_listing_then_continues(
    client: Any, watched: FakeGmail, conn: db.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.events import sync

    monkeypatch.setattr(sync, "RESYNC_CHUNK", 2)  # the three missed messages are queued in two chunks
    seen = watched.add_message(raw_message("seen"))
    assert push(client, watched.notification()).status_code == 200
    missed = [watched.add_message(raw_message(f"missed {index}")) for index in range(3)]
    watched.expire_history()  # Gmail no longer has the history since the last notification
    assert push(client, watched.notification()).status_code == 200
    listed = watched.find("GET", r"/messages$")
    assert listed and listed[-1].param("labelIds") == "INBOX"
    assert (listed[-1].param("q") or "").startswith("after:")
    assert message_ids(client) == [seen, *missed]  # no second event for the message seen before
    later = watched.add_message(raw_message("later"))
    lists = len(listed)
    assert push(client, watched.notification()).status_code == 200
    assert message_ids(client) == [seen, *missed, later]
    assert len(watched.find("GET", r"/messages$")) == lists  # back on history, no listing


def test_several_robeings_on_one_mailbox_each_get_their_events(
    client: Any, robeing_token: Any, topic: str, gmail: FakeGmail
) -> None:
    robeing_token("alice", "robeing-1")
    robeing_token("alice", "robeing-2")
    start_watch(client, "robeing-1")
    start_watch(client, "robeing-2", label_ids=["INBOX", "Label_9"])
    inbox = gmail.add_message(raw_message("inbox"))
    labelled = gmail.add_message(raw_message("labelled"), labels=["Label_9"])
    assert push(client, gmail.notification()).status_code == 200
    assert message_ids(client, "robeing-1") == [inbox]
    assert message_ids(client, "robeing-2") == [inbox, labelled]
    ones = list_events(client, "robeing-1")["events"] + list_events(client, "robeing-2")["events"]
    assert len({event["id"] for event in ones}) == 3  # each robeing's event is its own


# -- gmail_push: what is acknowledged and what is redelivered ---------------------------------------------


def test_unknown_mailbox_and_unparseable_messages_are_acknowledged_and_logged(
    client: Any, watched: FakeGmail, log_lines: list[str]
) -> None:
    target = client("gmail_push")
    assert push(client, {"emailAddress": "nobody@example.com", "historyId": 5}).status_code == 200
    for raw_data in ("not base64!", "aGVsbG8=", ""):  # junk, base64 of "hello", empty
        headers, body = cloud_event(None, raw_data=raw_data)
        assert target.post("/", headers=headers, data=body).status_code == 200
    for notification in ({"emailAddress": MAILBOX}, {"emailAddress": MAILBOX, "historyId": "soon"}, [1]):
        assert push(client, notification).status_code == 200
    outcomes = [json.loads(line).get("outcome") for line in log_lines if '"gmail_push' in line]
    assert outcomes.count("unwatched") == 1
    assert outcomes.count("unparseable") == 6


def test_gmail_unavailable_answers_5xx_so_pubsub_redelivers(
    client: Any, watched: FakeGmail, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared import gmail as gmail_module

    monkeypatch.setattr(gmail_module, "BACKOFF_BASE_S", 0.001)
    added = watched.add_message(raw_message("later"))
    watched.fail_next(r"/history$", 503, count=4)  # every attempt of one sync (gmail.ATTEMPTS)
    assert push(client, watched.notification()).status_code == 500
    assert push(client, watched.notification()).status_code == 200  # the redelivery
    assert message_ids(client) == [added]


def test_a_robeings_events_commit_in_queued_order_so_a_cursor_never_skips_one(
    database_url: str, conn: db.Connection
) -> None:
    """Two syncs (two mailboxes) queueing for one robeing: the second waits for the first to commit, so
    no event with a smaller seq can appear after a reader has moved its cursor past a larger one."""
    from shared.events import outbox

    watcher = outbox.Watcher("alice", "robeing-1", ("INBOX",))
    other = outbox.Watcher("bob", "robeing-1", ("INBOX",))
    finished = threading.Event()
    with db.connection(db.parse_database_url(database_url)) as first:
        first.run("BEGIN")
        [first_seq] = outbox.queue(first, [(watcher, {"id": "m-alice"})])

        def second_sync() -> None:
            with db.connection(db.parse_database_url(database_url)) as second, second.transaction():
                outbox.queue(second, [(other, {"id": "m-bob"})])
            finished.set()

        thread = threading.Thread(target=second_sync)
        thread.start()
        assert not finished.wait(0.5)  # blocked on the robeing's lock while the first is open
        assert conn.run("SELECT seq FROM gmail_events") == []  # a reader sees neither yet
        first.run("COMMIT")
    thread.join(timeout=10)
    assert finished.is_set()
    rows = conn.run("SELECT seq, user_id FROM gmail_events ORDER BY seq")
    assert [row["user_id"] for row in rows] == ["alice", "bob"] and rows[0]["seq"] == first_seq


def test_starting_again_while_watching_keeps_the_history_so_nothing_is_skipped(
    client: Any, watched: FakeGmail, conn: db.Connection
) -> None:
    before = watched.add_message(raw_message("arrived before the second start"))
    start_watch(client)  # e.g. a robeing that restarts and starts its watch again
    assert watched.watch_calls == [MAILBOX, MAILBOX]
    assert push(client, watched.notification()).status_code == 200
    assert message_ids(client) == [before]


def test_a_mailbox_whose_token_was_revoked_is_acknowledged_and_caught_up_after_reconnecting(
    client: Any,
    user_token: Any,
    token_endpoint: Any,
    topic: str,
    gmail: FakeGmail,
    conn: db.Connection,
    log_lines: list[str],
) -> None:
    row_id = user_token("alice", expires_in=3600, equipped_to="robeing-1")
    gmail.allow_token(token_row(conn, row_id)["token_data"]["access_token"])
    start_watch(client)
    missed = gmail.add_message(raw_message("while disconnected"))
    # The person revokes access: the stored token has expired and Google refuses its refresh token.
    conn.run("UPDATE gmail_token SET expiry = :t WHERE id = :id", t=datetime.utcnow(), id=row_id)
    token_endpoint.revoke(token_row(conn, row_id)["token_data"]["refresh_token"])
    assert push(client, gmail.notification()).status_code == 200  # redelivering would not help
    assert any('"outcome": "acknowledged"' in line and "reauth_required" in line for line in log_lines)
    assert message_ids(client) == []
    # Reconnected (a new token stored): the next notification catches up from the stored history id.
    conn.run("DELETE FROM gmail_token")
    new_row = user_token("alice", expires_in=3600, equipped_to="robeing-1")
    gmail.allow_token(token_row(conn, new_row)["token_data"]["access_token"])
    later = gmail.add_message(raw_message("after reconnecting"))
    assert push(client, gmail.notification()).status_code == 200
    assert message_ids(client) == [missed, later]


def test_two_robeings_starting_at_once_leave_gmail_watching_both_their_labels(
    client: Any, robeing_token: Any, topic: str, gmail: FakeGmail
) -> None:
    for robeing_id in ("robeing-1", "robeing-2", "robeing-3"):
        robeing_token("alice", robeing_id)
    start_watch(client, "robeing-3", label_ids=["Label_9"])  # the mailbox is already watched
    gmail.latency = 0.2  # each start is inside its Gmail calls long enough for the other to arrive
    bodies = [
        {"user_id": "alice", "robeing_id": "robeing-1", "label_ids": ["INBOX"]},
        {"user_id": "alice", "robeing_id": "robeing-2", "label_ids": ["Label_5"]},
    ]
    with ThreadPoolExecutor(max_workers=2) as pool:
        statuses = list(
            pool.map(lambda body: client("watch_mailbox").post("/", json=body).status_code, bodies)
        )
    assert statuses == [200, 200]
    # Whichever called Gmail last saw the other's watch: Gmail watches the union.
    assert sorted(gmail.watches[MAILBOX]["labelIds"]) == ["INBOX", "Label_5", "Label_9"]


def test_a_long_backlog_is_synced_a_history_page_per_transaction(
    client: Any, watched: FakeGmail, conn: db.Connection
) -> None:
    ids = [watched.add_message(raw_message(f"backlog {index}")) for index in range(1100)]
    assert push(client, watched.notification()).status_code == 200
    starts = [int(request.param("startHistoryId") or 0) for request in watched.find("GET", r"/history$")]
    assert len(starts) == 3 and starts == sorted(starts)  # 500 + 500 + 100, each page after the last
    assert message_ids(client) == ids
