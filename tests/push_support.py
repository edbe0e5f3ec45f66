"""Helpers for the new-mail tests: watchers with tokens Gmail accepts, Pub/Sub CloudEvents, messages."""

from __future__ import annotations

import base64
import email.utils
import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from devtools.fakes.gmail import FakeGmail
from devtools.fakes.webhook import FakeWebhook
from shared import db
from tests.conftest import MAILBOX, row

TOPIC = "projects/robeing-test/topics/gmail-push"
PUBLISHED = "google.cloud.pubsub.topic.v1.messagePublished"


def raw_message(subject: str, *, sender: str = "Kim <chulsoo@example.com>", body: str = "hi") -> bytes:
    return (
        f"From: {sender}\r\nTo: {MAILBOX}\r\nSubject: {subject}\r\n"
        f"Date: {email.utils.formatdate()}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        f"{body}\r\n"
    ).encode()


def cloud_event(notification: Any, *, raw_data: str | None = None) -> tuple[dict[str, str], bytes]:
    """Headers and body of a binary-mode CloudEvent as Eventarc delivers a Pub/Sub message."""
    message_id = uuid.uuid4().hex[:16]
    data = raw_data if raw_data is not None else base64.b64encode(json.dumps(notification).encode()).decode()
    headers = {
        "ce-id": message_id,
        "ce-source": f"//pubsub.googleapis.com/{TOPIC}",
        "ce-type": PUBLISHED,
        "ce-specversion": "1.0",
        "Content-Type": "application/json",
    }
    body = {
        "message": {"data": data, "messageId": message_id, "publishTime": "2026-01-01T00:00:00Z"},
        "subscription": "projects/robeing-test/subscriptions/gmail-push",
    }
    return headers, json.dumps(body).encode()


def push(client: Callable[[str], Any], notification: Any) -> Any:
    """Posts one notification to gmail_push through functions-framework; returns the response."""
    headers, body = cloud_event(notification)
    return client("gmail_push").post("/", headers=headers, data=body)


def events_of(conn: db.Connection, robeing_id: str) -> list[dict[str, Any]]:
    return conn.run(
        "SELECT seq, event_id, user_id, gmail_message_id, attempts, next_attempt_at, delivered_at, "
        "failed_at, last_status, created_at FROM gmail_events WHERE robeing_id = :r ORDER BY seq",
        r=robeing_id,
    )


@pytest.fixture
def topic(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("PUBSUB_TOPIC", TOPIC)
    return TOPIC


@pytest.fixture
def robeing_token(
    user_token: Callable[..., int], conn: db.Connection, gmail: FakeGmail
) -> Callable[..., int]:
    """``robeing_token("alice", "robeing-1")``: a token of that user equipped to that robeing, Gmail-valid."""

    def make(user_id: str, robeing_id: str) -> int:
        row_id = user_token(user_id, expires_in=3600, equipped_to=robeing_id)
        gmail.allow_token(row(conn, row_id)["token_data"]["access_token"])
        return row_id

    return make


@pytest.fixture
def webhook() -> Iterator[FakeWebhook]:
    with FakeWebhook() as fake:
        yield fake
