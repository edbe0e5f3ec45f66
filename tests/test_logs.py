"""Structured logs: one JSON object a line for Cloud Logging, and no secret in any of them."""

from __future__ import annotations

import json
import logging

from google.oauth2.credentials import Credentials

from shared import logs


def test_request_log_line_carries_trace_target_user_status_and_duration(
    client, database_url, log_lines, monkeypatch
):
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "proj")
    client("token_status").get(
        "/?user_id=alice&robeing_id=r1",
        headers={"X-Cloud-Trace-Context": "105445aa7843bc8bf206b12000100000/1;o=1"},
    )
    entries = [json.loads(line) for line in log_lines]
    request = next(entry for entry in entries if entry["logger"] == "skill_email.request")
    assert request["severity"] == "INFO"
    assert request["logging.googleapis.com/trace"] == "projects/proj/traces/105445aa7843bc8bf206b12000100000"
    assert request["target"] == "token_status"
    assert request["user_id"] == "alice"
    assert request["robeing_id"] == "r1"
    assert request["status"] == 404
    assert request["error_code"] == "not_found"
    assert isinstance(request["duration_ms"], float)


def test_a_5xx_is_logged_as_error_with_its_cause(client, monkeypatch, log_lines):
    monkeypatch.setenv("DATABASE_URL", "postgresql://a:pw@127.0.0.1:1/d")
    assert client("token_status").get("/?user_id=a").status_code == 503
    severities = {json.loads(line)["severity"] for line in log_lines}
    assert "ERROR" in severities


def test_fields_that_hold_secrets_are_redacted_by_construction():
    credentials = Credentials(token="ya29.secret-value", refresh_token="1//refresh-secret")
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "refreshed", None, None)
    record.fields = {  # type: ignore[attr-defined]
        "credentials": credentials,
        "token_data": {"access_token": "ya29.secret-value"},
        "refresh_token": "1//refresh-secret",
        "client_secret": "shh",
        "user_id": "alice",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    line = logs.JsonFormatter().format(record)
    entry = json.loads(line)
    assert "secret-value" not in line and "refresh-secret" not in line and "shh" not in line
    assert entry["credentials"] == entry["token_data"] == entry["refresh_token"] == "[redacted]"
    assert entry["user_id"] == "alice"
    assert entry["token_uri"] == "https://oauth2.googleapis.com/token"


def test_messages_and_tracebacks_are_scrubbed():
    try:
        raise RuntimeError(
            "connect to postgresql://app:hunter2@db/mail failed; Authorization: Bearer ya29.abc"
        )
    except RuntimeError:
        import sys

        record = logging.LogRecord(
            "t", logging.ERROR, __file__, 1, "refresh_token=%s", ("1//xyz-secret",), sys.exc_info()
        )
    line = logs.JsonFormatter().format(record)
    for secret in ("hunter2", "ya29.abc", "1//xyz-secret"):
        assert secret not in line
    assert json.loads(line)["severity"] == "ERROR"
