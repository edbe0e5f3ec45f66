"""Quick fault tests: PostgreSQL stopped and restarted under the functions, the token endpoint flaky.

The long versions, with traffic, live in bench/faults.py.
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

import pytest

from devtools.fakes.oauth import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET
from shared import db, schema
from shared.tokens import provider
from tests.conftest import insert_row, row, secret, utc_in


@pytest.fixture
def own_server(monkeypatch):
    """A PostgreSQL of this test's own, which it may stop and start."""
    from devtools.embedded_pg import EmbeddedPostgres

    server = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="skill-email-fault-")) / "pgdata", durable=False)
    server.start()
    with db.connection(db.parse_database_url(server.tcp_url())) as conn:
        schema.migrate(conn)
    monkeypatch.setenv("DATABASE_URL", server.tcp_url())
    try:
        yield server
    finally:
        server.destroy()


def seed(server, token_endpoint, user_id: str, expires_in: float) -> int:
    refresh = secret("1//fault")
    token_endpoint.add_refresh_token(refresh)
    with db.connection(db.parse_database_url(server.tcp_url())) as conn:
        return insert_row(
            conn,
            user_id,
            token_data={
                "access_token": secret("ya29.fault"),
                "refresh_token": refresh,
                "token_type": "Bearer",
            },
            oauth_config={
                "client_id": DEFAULT_CLIENT_ID,
                "client_secret": DEFAULT_CLIENT_SECRET,
                "token_uri": f"{token_endpoint.url}/token",
            },
            expiry=utc_in(expires_in),
        )


def test_database_stopped_then_restarted_answers_503_then_recovers(client, own_server, token_endpoint):
    seed(own_server, token_endpoint, "alice", 3600)
    status = client("token_status")
    assert status.get("/?user_id=alice").status_code == 200
    own_server.stop()
    down = status.get("/?user_id=alice")
    assert down.status_code == 503
    assert down.get_json()["error"]["code"] == "unavailable"
    own_server.start()
    assert status.get("/?user_id=alice").status_code == 200


def test_database_killed_during_a_refresh_leaves_the_row_whole(client, own_server, token_endpoint):
    """The server dies while a refresh waits on Google: the transaction never commits half a row."""
    row_id = seed(own_server, token_endpoint, "bob", -60)
    with db.connection(db.parse_database_url(own_server.tcp_url())) as conn:
        before = row(conn, row_id)
    token_endpoint.latency = 1.0
    killer = threading.Timer(0.4, own_server.stop, kwargs={"mode": "immediate"})
    killer.start()
    response = client("refresh_tokens").post("/", json={"user_id": "bob"})
    killer.join()
    assert response.status_code == 503
    own_server.start()
    with db.connection(db.parse_database_url(own_server.tcp_url())) as conn:
        after = row(conn, row_id)
    assert after["token_data"] == before["token_data"]
    assert after["expiry"] == before["expiry"]
    # and the next refresh, with the database back, works
    token_endpoint.latency = 0
    assert client("refresh_tokens").post("/", json={"user_id": "bob"}).status_code == 200


def test_flaky_token_endpoint_during_the_scheduled_run_is_caught_up_next_run(
    database_url, conn, user_token, token_endpoint, monkeypatch
):
    monkeypatch.setenv("REFRESH_CONCURRENCY", "1")  # sequential, so the failures land on known rows
    for index in range(6):
        user_token(f"flaky-{index}")
    token_endpoint.fail_next(500, count=3)  # google-auth's three attempts for the first row all fail
    first = provider.refresh_due(900)
    assert first["refreshed"] == 5
    assert [item["code"] for item in first["failed"]] == ["unavailable"]
    second = provider.refresh_due(900)
    assert second == {"checked": 1, "refreshed": 1, "skipped": 0, "failed": []}
    assert all(count <= 4 for count in token_endpoint.calls_by_refresh_token.values())
    assert conn.one("SELECT count(*) AS n FROM gmail_token WHERE expiry < :t", t=utc_in(900)) == {"n": 0}


def test_database_lost_after_gmail_took_the_message_still_answers_200_and_never_resends(
    client, own_server, token_endpoint, monkeypatch
):
    """The send succeeded but its Idempotency-Key record could not be completed: the caller is told
    the truth (200), and a retry with the key does not send a second copy."""
    from devtools.fakes.gmail import FakeGmail

    seed(own_server, token_endpoint, "carol", 3600)
    with FakeGmail() as gmail:
        gmail.trust(token_endpoint)
        monkeypatch.setenv("GMAIL_API_ENDPOINT", gmail.url)
        body = {"user_id": "carol", "to": "dave@example.com", "subject": "once", "body": "only once"}
        headers = {"Idempotency-Key": "once-only"}
        send = client("send_email")
        assert send.post("/", json={**body, "subject": "warm-up"}).status_code == 200  # profile cached
        gmail.latency = 1.0
        killer = threading.Timer(0.5, own_server.stop, kwargs={"mode": "immediate"})
        killer.start()
        first = send.post("/", json=body, headers=headers)
        killer.join()
        assert first.status_code == 200
        assert first.get_json()["id"]
        gmail.latency = 0
        own_server.start()
        retry = send.post("/", json=body, headers=headers)
        assert retry.status_code == 409  # the record is still "in progress": never a second send
        copies = [message for message in gmail.sent_messages() if b"\r\nSubject: once\r\n" in message]
        assert len(copies) == 1
