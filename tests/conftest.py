"""Fixtures: a real PostgreSQL (embedded, or ``TEST_DATABASE_URL``), fake Google servers on loopback,
functions served through functions-framework, and a guard that no secret ever reaches a log line."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from flask.testing import FlaskClient

from devtools.embedded_pg import DEFAULT_PASSWORD, EmbeddedPostgres
from devtools.fakes._server import FakeServer
from devtools.fakes.google_certs import FakeGoogleCerts
from devtools.fakes.oauth import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, FakeTokenEndpoint
from shared import callers, clock, config, db, logs, schema, secret_manager
from shared.tokens.cipher import forget_ciphers

ROOT = Path(__file__).resolve().parent.parent
# The client package (client/) is tested from this checkout, importable on a fresh clone without
# installing it; an installed copy elsewhere in the venv never shadows the code under test.
sys.path.insert(0, str(ROOT / "client"))


# Fixtures of the new-mail tests (watchers' tokens, the Pub/Sub topic, a webhook receiver).
pytest_plugins = ("tests.push_support",)
TEST_DATABASE = "skill_email_test"

# Every secret value a test creates is registered here, and every fake reports what it issued
# (``FakeServer.issued_secrets``); the guard fails a test whose log lines or answers hold any of them.
SECRET_VALUES: set[str] = {DEFAULT_PASSWORD, DEFAULT_CLIENT_SECRET}
# Shorter values are test placeholders ("tok"), not secrets, and would match ordinary words.
MIN_SECRET_CHARS = 8
# The bodies and headers the functions answered with in this test (the ``client`` fixture records them).
ANSWERS: list[str] = []


def secret(prefix: str) -> str:
    """A unique secret-looking value, registered with the log guard."""
    value = f"{prefix}-{uuid.uuid4().hex}"
    SECRET_VALUES.add(value)
    return value


# -- PostgreSQL ------------------------------------------------------------------------------------


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """A URL with the right to create databases: TEST_DATABASE_URL, or an embedded server's."""
    external = os.environ.get("TEST_DATABASE_URL")
    if external:
        yield external
        return
    work_dir = Path(tempfile.mkdtemp(prefix="skill-email-test-"))
    server = EmbeddedPostgres(work_dir / "pgdata", durable=False).start()
    try:
        yield server.tcp_url()
    finally:
        server.destroy()
        shutil.rmtree(work_dir, ignore_errors=True)  # destroy() removes pgdata, not the folder around it


def create_database(admin_url: str, name: str) -> str:
    """Drops and creates database ``name``; returns its URL."""
    with db.connection(db.parse_database_url(admin_url)) as conn:
        conn.run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.run(f'CREATE DATABASE "{name}"')
    return _with_database(admin_url, name)


@pytest.fixture(scope="session")
def migrated_url(pg_admin_url: str) -> str:
    """The suite's database, migrated once."""
    url = create_database(pg_admin_url, TEST_DATABASE)
    with db.connection(db.parse_database_url(url)) as conn:
        schema.migrate(conn)
    return url


@pytest.fixture
def database_url(migrated_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """An empty, migrated database for this test, set as DATABASE_URL."""
    with db.connection(db.parse_database_url(migrated_url)) as conn:
        conn.run(
            "TRUNCATE gmail_token, gmail_audit_logs, gmail_idempotency, gmail_mailbox_watch, gmail_watchers, "
            "gmail_events, gmail_webhooks, skill_email_callers RESTART IDENTITY"
        )
    monkeypatch.setenv("DATABASE_URL", migrated_url)
    return migrated_url


@pytest.fixture
def conn(database_url: str) -> Iterator[db.Connection]:
    """A connection to this test's database, for seeding and checking rows."""
    with db.connection(db.parse_database_url(database_url)) as connection:
        yield connection


def insert_row(
    conn: db.Connection,
    user_id: str,
    *,
    token_data: Any = None,
    oauth_config: Any = "default",
    scopes: list[str] | None = None,
    expiry: datetime | None = None,
    is_equipped: bool | None = True,
    equipped_to: str | None = None,
    updated_at: datetime | None = None,
    metadata: Any = None,
) -> int:
    """Inserts a ``gmail_token`` row exactly as given (messy shapes included); returns its id."""
    if oauth_config == "default":
        oauth_config = {"client_id": DEFAULT_CLIENT_ID, "client_secret": DEFAULT_CLIENT_SECRET}
    row = conn.one(
        "INSERT INTO gmail_token (user_id, robeing_id, token_data, oauth_config, scopes, metadata, expiry, "
        "is_equipped, equipped_to, updated_at) VALUES (:user_id, :equipped_to, CAST(:token_data AS JSONB), "
        "CAST(:oauth_config AS JSONB), CAST(:scopes AS TEXT[]), CAST(:metadata AS JSONB), :expiry, "
        ":is_equipped, :equipped_to, COALESCE(:updated_at, now() AT TIME ZONE 'UTC')) RETURNING id",
        user_id=user_id,
        token_data=json.dumps(token_data) if token_data is not None else None,
        oauth_config=json.dumps(oauth_config) if oauth_config is not None else None,
        scopes=scopes,
        metadata=json.dumps(metadata) if metadata is not None else None,
        expiry=expiry,
        is_equipped=is_equipped,
        equipped_to=equipped_to,
        updated_at=updated_at,
    )
    assert row is not None
    return int(row["id"])


def row(conn: db.Connection, row_id: int) -> dict[str, Any]:
    """One ``gmail_token`` row as stored."""
    found = conn.one("SELECT * FROM gmail_token WHERE id = :id", id=row_id)
    assert found is not None
    return found


def utc_in(seconds: float) -> datetime:
    """Naive UTC ``seconds`` from now, as the ``expiry`` column holds it."""
    return datetime.now(UTC).replace(tzinfo=None) + timedelta(seconds=seconds)


# -- Google fakes ------------------------------------------------------------------------------------


@pytest.fixture
def token_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeTokenEndpoint]:
    """Google's token endpoint on loopback, listed in ALLOWED_TOKEN_URIS so rows may name it."""
    with FakeTokenEndpoint() as fake:
        monkeypatch.setenv(config.ALLOWED_TOKEN_URIS, f"{fake.url}/token")
        yield fake
        SECRET_VALUES.update(fake.issued_access_tokens)
        SECRET_VALUES.update(fake.refresh_tokens)


# What `python -m shared.cli authorize` asks for by default: sending and reading.
DEFAULT_SCOPES = (
    "https://www.googleapis.com/auth/gmail.send",
    "https://www.googleapis.com/auth/gmail.readonly",
)


@pytest.fixture
def user_token(conn: db.Connection, token_endpoint: FakeTokenEndpoint) -> Callable[..., int]:
    """Stores an equipped token for a user whose refresh token the fake endpoint accepts."""

    def make(
        user_id: str,
        *,
        expires_in: float = -60,
        equipped_to: str | None = None,
        legacy_key: bool = False,
        refresh_token: str | None = None,
        scopes: tuple[str, ...] = DEFAULT_SCOPES,
        **extra: Any,
    ) -> int:
        refresh = refresh_token or secret("1//refresh")
        token_endpoint.add_refresh_token(refresh)
        access = secret("ya29.access")
        token_data = {
            "token" if legacy_key else "access_token": access,
            "refresh_token": refresh,
            "token_type": "Bearer",
        }
        oauth_config = {
            "client_id": DEFAULT_CLIENT_ID,
            "client_secret": DEFAULT_CLIENT_SECRET,
            "token_uri": f"{token_endpoint.url}/token",
        }
        return insert_row(
            conn,
            user_id,
            token_data=token_data,
            oauth_config=oauth_config,
            expiry=utc_in(expires_in),
            equipped_to=equipped_to,
            scopes=list(scopes),
            **extra,
        )

    return make


MAILBOX = "hong.gildong@example.com"


class FakeClock:
    """``clock.sleep`` and ``clock.monotonic`` for tests: sleeping advances the clock instead of waiting.

    Monotonic time is the real one plus everything slept so far, so durations still measure real work,
    while backoff, Retry-After and the send path's unknown-outcome wait cost no wall time. ``slept``
    lists every wait asked for, so a test can check the waits themselves.
    """

    def __init__(self) -> None:
        self.offset = 0.0
        self.slept: list[float] = []
        self._real_monotonic = clock.monotonic

    def monotonic(self) -> float:
        return self._real_monotonic() + self.offset

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.offset += max(0.0, seconds)


@pytest.fixture
def fake_clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """Replaces ``clock.sleep`` and ``clock.monotonic`` with a clock that advances instead of waiting."""
    fake = FakeClock()
    monkeypatch.setattr(clock, "monotonic", fake.monotonic)
    monkeypatch.setattr(clock, "sleep", fake.sleep)
    return fake


@pytest.fixture
def gmail(
    token_endpoint: FakeTokenEndpoint, monkeypatch: pytest.MonkeyPatch, fake_clock: FakeClock
) -> Iterator[Any]:
    """FakeGmail for MAILBOX, trusting every token the fake endpoint issues; the functions point at it.

    With ``fake_clock``: Gmail backoff and the unknown-outcome wait advance a fake clock, never wait.
    """
    from devtools.fakes.gmail import FakeGmail

    with FakeGmail(email_address=MAILBOX) as fake:
        fake.trust(token_endpoint)
        monkeypatch.setenv("GMAIL_API_ENDPOINT", fake.url)
        yield fake


@pytest.fixture
def alice(user_token: Callable[..., int], conn: db.Connection, gmail: Any) -> int:
    """An equipped, unexpired token for "alice" whose access token Gmail accepts; its row id."""
    row_id = user_token("alice", expires_in=3600)
    gmail.allow_token(row(conn, row_id)["token_data"]["access_token"])
    return row_id


# The audiences the functions accept in the caller tests: the function's URL, as deploy.sh sets it.
AUDIENCE = "https://send-email-abc123-uc.a.run.app"
OTHER_AUDIENCE = "https://list-emails-abc123-uc.a.run.app"


@pytest.fixture
def google_certs() -> Iterator[FakeGoogleCerts]:
    """Google's ID-token certificates on loopback, and a minter of ID tokens signed by them."""
    with FakeGoogleCerts() as fake:
        yield fake


@pytest.fixture
def enforce(
    google_certs: FakeGoogleCerts, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> FakeGoogleCerts:
    """CALLER_POLICY=enforce against the fake certificates; returns the fake, to mint tokens with."""
    monkeypatch.setenv(config.CALLER_POLICY, "enforce")
    monkeypatch.setenv(config.CALLER_AUDIENCES, f"{AUDIENCE}, {OTHER_AUDIENCE}")
    monkeypatch.setenv(config.ID_TOKEN_CERTS_URL, google_certs.certs_url)
    return google_certs


# -- functions through functions-framework -----------------------------------------------------------


@pytest.fixture
def client() -> Callable[[str], Any]:
    """``client("token_status")``: a Flask test client of that target, built by functions-framework."""
    import functions_framework

    def make(target: str) -> Any:
        app = functions_framework.create_app(target=target, source=str(ROOT / "main.py"))
        app.test_client_class = _RecordingClient
        return app.test_client()

    return make


class _RecordingClient(FlaskClient):
    """A Flask test client that keeps every answer's headers and body for the secret guard."""

    def open(self, *args: Any, **kwargs: Any) -> Any:
        response = super().open(*args, **kwargs)
        headers = "\n".join(f"{name}: {value}" for name, value in response.headers.items())
        # Our answers are JSON. Any other body (an attachment's bytes, streamed) is left unread: reading
        # it here would buffer the stream the test checks; it is a mailbox's content, not a credential.
        json_body = response.mimetype == "application/json"
        body = response.get_data().decode("utf-8", "replace") if json_body else ""
        ANSWERS.append(headers + "\n" + body)
        return response


# -- isolation and the log guard -----------------------------------------------------------------------


class _CaptureHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.setFormatter(logs.JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[_CaptureHandler]:
    """Restores the environment and per-instance caches; fails the test if a secret reached a log line."""
    for name in (
        config.DATABASE_URL,
        config.DB_URL_SECRET,
        config.SECRET_MANAGER_ENDPOINT,
        config.TOKEN_PROVIDER,
        config.TOKEN_DIR,
        config.TOKEN_KEY_SECRET,
        config.TOKEN_KEYS,
        config.GMAIL_API_ENDPOINT,
        config.GOOGLE_CLOUD_PROJECT,
        config.PUBSUB_TOPIC,
        config.WEBHOOK_RETRY_BASE_SECONDS,
        config.AUDIT_RETENTION_DAYS,
        config.CALLER_POLICY,
        config.CALLER_AUDIENCES,
        config.ID_TOKEN_CERTS_URL,
        config.ALLOWED_TOKEN_URIS,
        config.REQUIRE_ENCRYPTED_TOKENS,
    ):
        monkeypatch.delenv(name, raising=False)
    secret_manager.secrets.clear()
    callers.clear_caches()
    FakeServer.instances.clear()
    ANSWERS.clear()
    forget_ciphers()
    if "shared.mailbox.send" in sys.modules:  # the per-instance sender cache: each test starts without it
        sys.modules["shared.mailbox.send"]._senders.clear()
    handler = _CaptureHandler()
    root = logging.getLogger()
    root.addHandler(handler)
    previous_level = root.level
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(previous_level)
        secret_manager.secrets.clear()
        callers.clear_caches()
    issued = set(SECRET_VALUES)
    for fake in FakeServer.instances:
        issued |= fake.issued_secrets()
    FakeServer.instances.clear()
    issued = {value for value in issued if len(value) >= MIN_SECRET_CHARS}
    for kind, texts in (("a log line", handler.lines), ("an answer", ANSWERS)):
        leaked = [(value, text) for text in texts for value in issued if value in text]
        assert not leaked, f"a secret reached {kind}: {leaked[0][1][:300]}"


@pytest.fixture
def log_lines(isolated: _CaptureHandler) -> list[str]:
    """The JSON log lines this test produced so far."""
    return isolated.lines


# -- the sandbox server ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Any]:
    """``python -m devtools.serve --sandbox`` in a subprocess, shared by the session's tests (the client's
    among them). GMAIL_API_ENDPOINT points at a dead port in its environment: the sandbox must override
    it, or every Gmail call fails."""
    from tests.serving import sandbox_server

    with sandbox_server(GMAIL_API_ENDPOINT="http://127.0.0.1:9") as served:
        yield served
