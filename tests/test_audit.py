"""The audit log on the real PostgreSQL: the row written, strings cut to size, failures never raised."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest

from shared import audit, clock, db

USER = "user-audit@example.com"


@pytest.fixture
def set_now(monkeypatch: pytest.MonkeyPatch) -> Callable[[datetime], None]:
    """Moves the project clock to a naive-UTC instant."""

    def move(naive_utc: datetime) -> None:
        monkeypatch.setattr(clock, "utcnow", lambda: naive_utc.replace(tzinfo=clock.UTC))

    return move


def rows(conn: db.Connection) -> list[dict[str, Any]]:
    return conn.run("SELECT * FROM gmail_audit_logs ORDER BY id")


def test_record_of_a_send_writes_every_column(
    conn: db.Connection, set_now: Callable[[datetime], None]
) -> None:
    now = datetime(2030, 5, 6, 7, 8, 9)
    set_now(now)

    audit.record(
        conn,
        user_id=USER,
        robeing_id="robeing-7",
        action=audit.SEND,
        status=audit.OK,
        http_status=200,
        duration_ms=321,
        gmail_calls=2,
        gmail_message_id="18c0ffee",
        gmail_thread_id="18c0ff00",
        trace_id="0af7651916cd43dd8448eb211c80319c",
    )

    [row] = rows(conn)
    assert row == {
        "id": 1,
        "created_at": now,
        "user_id": USER,
        "robeing_id": "robeing-7",
        "action": "send",
        "status": "ok",
        "http_status": 200,
        "gmail_message_id": "18c0ffee",
        "gmail_thread_id": "18c0ff00",
        "error_code": None,
        "duration_ms": 321,
        "gmail_calls": 2,
        "result_count": None,
        "trace_id": "0af7651916cd43dd8448eb211c80319c",
        "caller_email": None,  # CALLER_POLICY off: no verified caller
    }


def test_record_of_a_failed_list_keeps_error_code_and_count(conn: db.Connection) -> None:
    audit.record(
        conn,
        user_id=USER,
        robeing_id=None,
        action=audit.LIST,
        status=audit.ERROR,
        http_status=429,
        duration_ms=15,
        gmail_calls=1,
        error_code="rate_limited",
        result_count=0,
    )

    [row] = rows(conn)
    assert (row["action"], row["status"], row["http_status"]) == ("list", "error", 429)
    assert (row["error_code"], row["result_count"], row["robeing_id"]) == ("rate_limited", 0, None)


def test_record_without_a_user_is_allowed(conn: db.Connection) -> None:
    audit.record(
        conn,
        user_id=None,
        robeing_id=None,
        action=audit.SEND,
        status=audit.ERROR,
        http_status=400,
        duration_ms=1,
        error_code="invalid_argument",
    )

    [row] = rows(conn)
    assert row["user_id"] is None
    assert row["gmail_calls"] == 0


def test_record_cuts_strings_to_the_column_sizes(conn: db.Connection) -> None:
    audit.record(
        conn,
        user_id="u" * 150,
        robeing_id="r" * 80,
        action="a" * 40,
        status="s" * 20,
        http_status=500,
        duration_ms=1,
        gmail_message_id="m" * 100,
        gmail_thread_id="t" * 100,
        error_code="e" * 100,
        trace_id="x" * 200,
    )

    [row] = rows(conn)
    assert row["user_id"] == "u" * 100
    assert row["robeing_id"] == "r" * 50
    assert row["action"] == "a" * 32
    assert row["status"] == "s" * 16
    assert row["gmail_message_id"] == "m" * 64
    assert row["gmail_thread_id"] == "t" * 64
    assert row["error_code"] == "e" * 64
    assert row["trace_id"] == "x" * 128


def test_record_cuts_non_ascii_by_characters_and_drops_nul(conn: db.Connection) -> None:
    audit.record(
        conn,
        user_id="사" * 120,
        robeing_id="ro\x00being",
        action=audit.SEND,
        status=audit.OK,
        http_status=200,
        duration_ms=1,
    )

    [row] = rows(conn)
    assert row["user_id"] == "사" * 100
    assert row["robeing_id"] == "robeing"


def test_record_clamps_counts_to_the_integer_range(conn: db.Connection) -> None:
    audit.record(
        conn,
        user_id=USER,
        robeing_id=None,
        action=audit.LIST,
        status=audit.OK,
        http_status=200,
        duration_ms=10**12,
        gmail_calls=-3,
        result_count=10**10,
    )

    [row] = rows(conn)
    assert (row["duration_ms"], row["gmail_calls"], row["result_count"]) == (2**31 - 1, 0, 2**31 - 1)


def test_record_on_a_closed_connection_logs_a_warning_and_does_not_raise(
    database_url: str, log_lines: list[str]
) -> None:
    with db.connection() as closed:
        pass

    audit.record(
        closed,
        user_id=USER,
        robeing_id=None,
        action=audit.SEND,
        status=audit.OK,
        http_status=200,
        duration_ms=5,
        gmail_message_id="18c0ffee",
    )

    entries = [json.loads(line) for line in log_lines]
    warnings = [entry for entry in entries if entry["logger"] == "shared.audit"]
    assert [entry["severity"] for entry in warnings] == ["WARNING"]
    assert warnings[0]["error_code"] == "unavailable"
    assert "stack_trace" not in warnings[0]


def test_record_when_the_table_is_missing_does_not_raise(conn: db.Connection, log_lines: list[str]) -> None:
    with pytest.raises(Exception, match="rollback"), conn.transaction():
        conn.run("DROP TABLE gmail_audit_logs")
        audit.record(
            conn,
            user_id=USER,
            robeing_id=None,
            action=audit.SEND,
            status=audit.OK,
            http_status=200,
            duration_ms=5,
        )
        raise RuntimeError("rollback the drop")

    assert any("audit row" in line and '"WARNING"' in line for line in log_lines)
    assert rows(conn) == []


def test_record_with_a_bug_logs_the_traceback_and_does_not_raise(
    conn: db.Connection, log_lines: list[str]
) -> None:
    audit.record(
        conn,
        user_id=USER,
        robeing_id=None,
        action=audit.SEND,
        status=audit.OK,
        http_status="two hundred",  # type: ignore[arg-type]
        duration_ms=5,
    )

    entries = [json.loads(line) for line in log_lines if '"shared.audit"' in line]
    assert [entry["severity"] for entry in entries] == ["ERROR"]
    assert "ValueError" in entries[0]["stack_trace"]
    assert rows(conn) == []


def test_recent_returns_the_users_rows_newest_first(
    conn: db.Connection, set_now: Callable[[datetime], None]
) -> None:
    start = datetime(2030, 1, 1)
    for n in range(5):
        set_now(start + timedelta(minutes=n))
        audit.record(
            conn,
            user_id=USER,
            robeing_id=None,
            action=audit.SEND,
            status=audit.OK,
            http_status=200,
            duration_ms=n,
        )
    audit.record(
        conn,
        user_id="other",
        robeing_id=None,
        action=audit.LIST,
        status=audit.OK,
        http_status=200,
        duration_ms=99,
    )

    latest = audit.recent(conn, USER, limit=3)

    assert [row["duration_ms"] for row in latest] == [4, 3, 2]
    assert {row["user_id"] for row in latest} == {USER}
    assert len(audit.recent(conn, USER)) == 5
    assert audit.recent(conn, "nobody") == []
