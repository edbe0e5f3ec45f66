"""Webhook delivery, list_events, retention and the scheduled run's share of new mail, end to end: the CLI
sets a webhook, gmail_push queues and POSTs, the Standard Webhooks verifier checks, refresh_tokens {}
retries, renews and purges. Also the database stopping during a push."""

from __future__ import annotations

import datetime as dt
import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks import Webhook as Verifier
from standardwebhooks.webhooks import WebhookVerificationError

from devtools.fakes.gmail import FakeGmail
from devtools.fakes.oauth import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, FakeTokenEndpoint
from devtools.fakes.webhook import FakeWebhook
from shared import cli, clock, db, schema
from shared.events import delivery
from shared.tokens import keyring as token_keyring
from tests.conftest import MAILBOX, SECRET_VALUES, insert_row, secret, utc_in
from tests.push_support import TOPIC, events_of, push, raw_message


def start_watch(client: Any, robeing_id: str = "robeing-1", user_id: str = "alice") -> None:
    response = client("watch_mailbox").post("/", json={"user_id": user_id, "robeing_id": robeing_id})
    assert response.status_code == 200, response.get_json()


def set_webhook(capsys: pytest.CaptureFixture[str], robeing_id: str, url: str) -> str:
    """``python -m shared.cli webhooks set``; returns the secret it printed."""
    assert cli.main(["webhooks", "set", robeing_id, "--url", url]) == 0
    lines = capsys.readouterr().out.splitlines()
    secrets = [line for line in lines if line.startswith("whsec_")]
    assert len(secrets) == 1 and secrets[0] == secrets[0].strip()
    SECRET_VALUES.add(secrets[0])
    SECRET_VALUES.add(secrets[0].removeprefix("whsec_"))
    return secrets[0]


@pytest.fixture
def watched(client: Any, robeing_token: Any, topic: str, gmail: FakeGmail) -> FakeGmail:
    robeing_token("alice", "robeing-1")
    start_watch(client)
    return gmail


@pytest.fixture
def hooked(
    watched: FakeGmail, webhook: FakeWebhook, capsys: pytest.CaptureFixture[str], database_url: str
) -> str:
    """robeing-1 has a webhook at the fake receiver; its secret."""
    return set_webhook(capsys, "robeing-1", webhook.url)


class MovableClock:
    """clock.utcnow, moved by the test (wait times of retries are hours long)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.offset = dt.timedelta()
        real = clock.utcnow
        monkeypatch.setattr(clock, "utcnow", lambda: real() + self.offset)

    def advance(self, seconds: float) -> None:
        self.offset += dt.timedelta(seconds=seconds)


def scheduled_run(client: Any) -> None:
    response = client("refresh_tokens").post("/", json={})
    assert response.status_code == 200, response.get_json()


# -- delivery --------------------------------------------------------------------------------------------


def test_each_event_is_posted_at_once_signed_per_standard_webhooks(
    client: Any, watched: FakeGmail, webhook: FakeWebhook, hooked: str, conn: db.Connection
) -> None:
    watched.add_message(raw_message("안녕하세요"))
    assert push(client, watched.notification()).status_code == 200
    [request] = webhook.deliveries
    listed = client("list_events").get("/?robeing_id=robeing-1").get_json()["events"]
    verified = Verifier(hooked).verify(request.body, request.headers)
    assert verified == listed[0]  # the event object itself, as list_events shows it
    assert request.headers["webhook-id"] == listed[0]["id"]
    assert request.headers["content-type"] == "application/json"
    with pytest.raises(WebhookVerificationError):
        Verifier("whsec_" + "A" * 44).verify(request.body, request.headers)
    with pytest.raises(WebhookVerificationError):
        Verifier(hooked).verify(request.body.replace("안녕".encode(), "잘가".encode()), request.headers)
    [stored] = events_of(conn, "robeing-1")
    assert (
        stored["delivered_at"] is not None and stored["attempts"] == 1 and stored["next_attempt_at"] is None
    )


def test_failed_deliveries_are_retried_by_the_scheduled_run_with_backoff(
    client: Any,
    watched: FakeGmail,
    webhook: FakeWebhook,
    hooked: str,
    conn: db.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WEBHOOK_RETRY_BASE_SECONDS", "10")
    moved = MovableClock(monkeypatch)
    webhook.answer_next(500, 503)
    watched.add_message(raw_message("retry me"))
    assert push(client, watched.notification()).status_code == 200  # the first attempt: 500
    [event] = events_of(conn, "robeing-1")
    assert (event["attempts"], event["last_status"], event["delivered_at"]) == (1, 500, None)
    wait = (event["next_attempt_at"] - clock.to_naive_utc(clock.utcnow())).total_seconds()
    assert 8 - 1 <= wait <= 12  # 10 s x 2^0, +/-20 %

    scheduled_run(client)  # not due yet: nothing sent
    assert len(webhook.deliveries) == 1
    moved.advance(13)
    scheduled_run(client)  # the second attempt: 503, then 20 s x jitter
    [event] = events_of(conn, "robeing-1")
    assert (event["attempts"], event["last_status"]) == (2, 503)
    wait = (event["next_attempt_at"] - clock.to_naive_utc(clock.utcnow())).total_seconds()
    assert 16 - 1 <= wait <= 24
    moved.advance(25)
    scheduled_run(client)  # the third attempt: delivered
    [event] = events_of(conn, "robeing-1")
    assert event["delivered_at"] is not None and event["attempts"] == 3
    ids = {request.headers["webhook-id"] for request in webhook.deliveries}
    assert len(webhook.deliveries) == 3 and ids == {event["event_id"]}  # the same id on every attempt
    scheduled_run(client)
    assert len(webhook.deliveries) == 3  # delivered means done


def test_the_wait_doubles_and_is_capped_at_an_hour() -> None:
    middle = [delivery.backoff_seconds(attempt, 30, rand=lambda: 0.5) for attempt in range(1, 10)]
    assert middle == [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]
    assert delivery.backoff_seconds(1, 30, rand=lambda: 0.0) == pytest.approx(24)
    assert delivery.backoff_seconds(1, 30, rand=lambda: 1.0) == pytest.approx(36)
    assert delivery.backoff_seconds(30, 30, rand=lambda: 1.0) == 3600


def test_retries_go_on_for_a_day_then_the_event_is_given_up_but_kept(
    client: Any, watched: FakeGmail, webhook: FakeWebhook, hooked: str, conn: db.Connection
) -> None:
    webhook.default_status = 500
    watched.add_message(raw_message("never taken"))
    assert push(client, watched.notification()).status_code == 200
    conn.run(
        "UPDATE gmail_events SET created_at = created_at - interval '23 hours', next_attempt_at = :t",
        t=utc_in(-1),
    )
    scheduled_run(client)
    [event] = events_of(conn, "robeing-1")
    assert event["failed_at"] is None and event["next_attempt_at"] is not None  # still retried at 23 h
    conn.run(
        "UPDATE gmail_events SET created_at = created_at - interval '2 hours', next_attempt_at = :t",
        t=utc_in(-1),
    )
    scheduled_run(client)
    [event] = events_of(conn, "robeing-1")
    assert event["failed_at"] is not None and event["next_attempt_at"] is None and event["attempts"] == 3
    assert len(client("list_events").get("/?robeing_id=robeing-1").get_json()["events"]) == 1


def test_one_slow_robeing_does_not_hold_up_the_others(
    client: Any,
    robeing_token: Any,
    topic: str,
    gmail: FakeGmail,
    conn: db.Connection,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(delivery, "DELIVERY_TIMEOUT_S", 0.5)
    robeing_token("alice", "robeing-slow")
    robeing_token("alice", "robeing-fast")
    start_watch(client, "robeing-slow")
    start_watch(client, "robeing-fast")
    with FakeWebhook(latency=2.0) as slow, FakeWebhook() as fast:
        set_webhook(capsys, "robeing-slow", slow.url)
        set_webhook(capsys, "robeing-fast", fast.url)
        gmail.add_message(raw_message("one"))
        gmail.add_message(raw_message("two"))
        assert push(client, gmail.notification()).status_code == 200
        assert len(fast.deliveries) == 2
        # The slow robeing got one attempt, which timed out; its second event waits for the retry.
        assert len(slow.deliveries) == 1
        assert fast.arrivals[0] < slow.arrivals[0] + delivery.DELIVERY_TIMEOUT_S  # in parallel
    slow_events = events_of(conn, "robeing-slow")
    assert [(e["attempts"], e["last_status"], e["delivered_at"]) for e in slow_events] == [
        (1, None, None),
        (0, None, None),
    ]
    assert slow_events[0]["next_attempt_at"] == slow_events[1]["next_attempt_at"]
    assert all(e["delivered_at"] is not None for e in events_of(conn, "robeing-fast"))


def test_a_robeing_without_webhook_only_pulls_and_remove_stops_deliveries(
    client: Any, watched: FakeGmail, webhook: FakeWebhook, hooked: str, conn: db.Connection, capsys: Any
) -> None:
    assert cli.main(["webhooks", "remove", "robeing-1"]) == 0
    assert "removed" in capsys.readouterr().out
    watched.add_message(raw_message("pulled"))
    assert push(client, watched.notification()).status_code == 200
    scheduled_run(client)
    assert webhook.deliveries == []
    assert [e["next_attempt_at"] for e in events_of(conn, "robeing-1")] == [None]
    assert len(client("list_events").get("/?robeing_id=robeing-1").get_json()["events"]) == 1


def test_webhook_secret_is_stored_encrypted_under_the_token_keyring(
    client: Any,
    watched: FakeGmail,
    webhook: FakeWebhook,
    conn: db.Connection,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keyring = json.dumps({"primary": "k1", "keys": {"k1": token_keyring.generate_key()}})
    SECRET_VALUES.add(keyring)
    monkeypatch.setenv("TOKEN_KEYS", keyring)
    signing_secret = set_webhook(capsys, "robeing-1", webhook.url)
    stored = conn.one("SELECT secret FROM gmail_webhooks WHERE robeing_id = 'robeing-1'")
    assert stored is not None and stored["secret"].startswith("enc:v1:k1:")
    assert signing_secret not in stored["secret"]
    watched.add_message(raw_message("sealed"))
    assert push(client, watched.notification()).status_code == 200
    [request] = webhook.deliveries
    Verifier(signing_secret).verify(request.body, request.headers)


def test_webhooks_cli_refuses_a_bad_url(database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["webhooks", "set", "robeing-1", "--url", "ftp://example.com/x"]) == 1
    captured = capsys.readouterr()
    assert "whsec_" not in captured.out and "http" in captured.err


# -- list_events -----------------------------------------------------------------------------------------


def test_list_events_pages_in_queued_order_with_a_cursor(
    client: Any, watched: FakeGmail, conn: db.Connection
) -> None:
    ids = [watched.add_message(raw_message(f"m{index}")) for index in range(5)]
    assert push(client, watched.notification()).status_code == 200
    events = client("list_events")
    seen: list[str] = []
    cursor = None
    pages = []
    while True:
        query = "/?robeing_id=robeing-1&limit=2" + (f"&after={cursor}" if cursor else "")
        page = events.get(query).get_json()
        pages.append(len(page["events"]))
        if not page["events"]:
            assert page["next_cursor"] is None
            break
        seen.extend(event["message"]["id"] for event in page["events"])
        cursor = page["next_cursor"]
    assert pages == [2, 2, 1, 0] and seen == ids
    newer = watched.add_message(raw_message("newer"))
    assert push(client, watched.notification()).status_code == 200
    later = events.post("/", json={"robeing_id": "robeing-1", "after": cursor}).get_json()
    assert [event["message"]["id"] for event in later["events"]] == [newer]
    assert events.get("/?robeing_id=robeing-2").get_json() == {"events": [], "next_cursor": None}


@pytest.mark.parametrize(
    "query",
    [
        "/?limit=5",
        "/?robeing_id=r&limit=0",
        "/?robeing_id=r&limit=501",
        "/?robeing_id=r&after=abc",
        "/?robeing_id=r&x=1",
    ],
)
def test_list_events_rejects_bad_requests(client: Any, database_url: str, query: str) -> None:
    response = client("list_events").get(query)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_argument"


# -- the scheduled run: renewal and retention ------------------------------------------------------------


def test_watches_expiring_within_a_day_are_renewed_by_the_scheduled_run(
    client: Any, watched: FakeGmail, conn: db.Connection
) -> None:
    assert watched.watch_calls == [MAILBOX]
    scheduled_run(client)
    assert watched.watch_calls == [MAILBOX]  # 7 days left: not yet
    conn.run("UPDATE gmail_mailbox_watch SET watch_expiration = :t", t=utc_in(3 * 3600))
    scheduled_run(client)
    assert watched.watch_calls == [MAILBOX, MAILBOX]
    renewed = conn.one("SELECT watch_expiration FROM gmail_mailbox_watch")
    assert renewed is not None and renewed["watch_expiration"] > utc_in(6 * 24 * 3600)
    assert watched.watches[MAILBOX]["labelIds"] == ["INBOX"]


def test_events_are_kept_seven_days_then_purged_by_the_scheduled_run(
    client: Any, watched: FakeGmail, conn: db.Connection
) -> None:
    for index in range(3):
        watched.add_message(raw_message(f"aged {index}"))
    assert push(client, watched.notification()).status_code == 200
    seqs = [row["seq"] for row in events_of(conn, "robeing-1")]
    conn.run("UPDATE gmail_events SET created_at = :t WHERE seq = :s", t=utc_in(-8 * 86400), s=seqs[0])
    conn.run("UPDATE gmail_events SET created_at = :t WHERE seq = :s", t=utc_in(-6 * 86400), s=seqs[1])
    scheduled_run(client)
    assert [row["seq"] for row in events_of(conn, "robeing-1")] == seqs[1:]


# -- the database stopping during a push ------------------------------------------------------------------


@pytest.fixture
def own_server(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A PostgreSQL of this test's own, which it may stop and start."""
    from devtools.embedded_pg import EmbeddedPostgres

    server = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="skill-email-push-")) / "pgdata", durable=False)
    server.start()
    with db.connection(db.parse_database_url(server.tcp_url())) as conn:
        schema.migrate(conn)
    monkeypatch.setenv("DATABASE_URL", server.tcp_url())
    try:
        yield server
    finally:
        server.destroy()


def test_database_down_during_a_push_answers_5xx_and_nothing_is_lost(
    client: Any,
    own_server: Any,
    token_endpoint: FakeTokenEndpoint,
    topic: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    refresh = secret("1//push-fault")
    token_endpoint.add_refresh_token(refresh)
    access = secret("ya29.push-fault")
    with db.connection(db.parse_database_url(own_server.tcp_url())) as conn:
        insert_row(
            conn,
            "alice",
            token_data={"access_token": access, "refresh_token": refresh, "token_type": "Bearer"},
            oauth_config={
                "client_id": DEFAULT_CLIENT_ID,
                "client_secret": DEFAULT_CLIENT_SECRET,
                "token_uri": f"{token_endpoint.url}/token",
            },
            expiry=utc_in(3600),
            equipped_to="robeing-1",
        )
    with FakeGmail(email_address=MAILBOX) as gmail:
        gmail.allow_token(access)
        monkeypatch.setenv("GMAIL_API_ENDPOINT", gmail.url)
        start_watch(client)
        first = gmail.add_message(raw_message("before the outage"))
        own_server.stop()
        assert push(client, gmail.notification()).status_code == 500  # Pub/Sub will redeliver
        second = gmail.add_message(raw_message("during the outage"))
        assert push(client, gmail.notification()).status_code == 500
        own_server.start()
        # Only the second notification is redelivered in time: it still brings both messages.
        assert push(client, gmail.notification()).status_code == 200
        page = client("list_events").get("/?robeing_id=robeing-1").get_json()
        assert [event["message"]["id"] for event in page["events"]] == [first, second]
        assert gmail.watches[MAILBOX]["topicName"] == TOPIC


def test_a_pass_past_its_budget_leaves_the_rest_due_for_the_next_run(
    client: Any,
    watched: FakeGmail,
    webhook: FakeWebhook,
    hooked: str,
    conn: db.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(delivery, "PASS_BUDGET_S", -1.0)  # as if the pass had already run its 25 s
    watched.add_message(raw_message("later, please"))
    assert push(client, watched.notification()).status_code == 200
    assert webhook.deliveries == []
    [event] = events_of(conn, "robeing-1")
    assert (event["attempts"], event["delivered_at"]) == (0, None)
    assert event["next_attempt_at"] <= utc_in(1)  # due at once: the next run takes it
    monkeypatch.setattr(delivery, "PASS_BUDGET_S", 25.0)
    scheduled_run(client)
    assert len(webhook.deliveries) == 1
