"""Retention on the real database: the scheduled run purges expired idempotency records and old audit rows."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from shared import config, db, retention
from shared.config import ConfigError

SUMMARY_FIELDS = {"checked", "refreshed", "skipped", "failed"}


def add_idempotency(conn: db.Connection, key: str, expires_in_s: float) -> None:
    conn.run(
        "INSERT INTO gmail_idempotency (user_id, idempotency_key, fingerprint, state, expires_at) "
        "VALUES ('alice', :key, :fingerprint, 'succeeded', :expires_at)",
        key=key,
        fingerprint="0" * 64,
        expires_at=datetime.now(UTC).replace(tzinfo=None) + timedelta(seconds=expires_in_s),
    )


def add_audit(conn: db.Connection, age_days: float) -> int:
    row = conn.one(
        "INSERT INTO gmail_audit_logs (created_at, user_id, action, status, http_status, duration_ms) "
        "VALUES (:created_at, 'alice', 'send', 'ok', 200, 5) RETURNING id",
        created_at=datetime.now(UTC).replace(tzinfo=None) - timedelta(days=age_days),
    )
    assert row is not None
    return int(row["id"])


def idempotency_keys(conn: db.Connection) -> set[str]:
    return {row["idempotency_key"] for row in conn.run("SELECT idempotency_key FROM gmail_idempotency")}


def audit_ids(conn: db.Connection) -> set[int]:
    return {row["id"] for row in conn.run("SELECT id FROM gmail_audit_logs")}


def scheduled_run(client):  # type: ignore[no-untyped-def]
    response = client("refresh_tokens").post("/", json={})
    assert response.status_code == 200
    body = response.get_json()
    assert set(body) == SUMMARY_FIELDS  # the contract's body: the purge adds nothing to it
    return body


def request_log(log_lines: list[str]) -> dict:
    [line] = [json.loads(text) for text in log_lines if "purged_audit" in text]
    return line


def test_scheduled_run_purges_expired_idempotency_records_and_keeps_live_ones(client, conn, log_lines):
    for index in range(3):
        add_idempotency(conn, f"expired-{index}", expires_in_s=-60)
    add_idempotency(conn, "live", expires_in_s=3600)

    scheduled_run(client)

    assert idempotency_keys(conn) == {"live"}
    assert request_log(log_lines)["purged_idempotency"] == 3


def test_scheduled_run_purges_audit_rows_older_than_the_default_400_days(client, conn, log_lines):
    add_audit(conn, age_days=401)
    add_audit(conn, age_days=800)
    kept = {add_audit(conn, age_days=399), add_audit(conn, age_days=0)}

    scheduled_run(client)

    assert audit_ids(conn) == kept
    assert request_log(log_lines)["purged_audit"] == 2


def test_audit_retention_days_setting_is_honoured(client, conn, monkeypatch):
    monkeypatch.setenv("AUDIT_RETENTION_DAYS", "30")
    add_audit(conn, age_days=31)
    kept = {add_audit(conn, age_days=29)}

    scheduled_run(client)

    assert audit_ids(conn) == kept


def test_purge_runs_in_bounded_batches_and_drains_over_runs(conn, database_url, monkeypatch):
    monkeypatch.setattr(retention, "BATCH_ROWS", 2)  # the values, not the code path, are shortened
    monkeypatch.setattr(retention, "MAX_BATCHES", 2)
    for index in range(7):
        add_idempotency(conn, f"old-{index}", expires_in_s=-60)
        add_audit(conn, age_days=500)

    first = retention.purge(conn)
    assert (first.idempotency, first.audit) == (4, 4)
    second = retention.purge(conn)
    assert (second.idempotency, second.audit) == (3, 3)
    assert idempotency_keys(conn) == set() and audit_ids(conn) == set()


def test_refreshing_one_user_purges_nothing(client, conn, user_token):
    user_token("alice", expires_in=3600)
    add_idempotency(conn, "expired", expires_in_s=-60)
    old = add_audit(conn, age_days=500)

    assert client("refresh_tokens").post("/", json={"user_id": "alice"}).status_code == 200

    assert idempotency_keys(conn) == {"expired"} and audit_ids(conn) == {old}


@pytest.mark.parametrize("value", ["0", "-1", "forever", "36501"])
def test_bad_audit_retention_days_is_a_config_error_naming_it(monkeypatch, value):
    monkeypatch.setenv("AUDIT_RETENTION_DAYS", value)
    with pytest.raises(ConfigError, match="AUDIT_RETENTION_DAYS"):
        config.load_settings()
