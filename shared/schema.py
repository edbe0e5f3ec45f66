"""Schema migrations, applied by ``python -m shared.cli migrate``.

``gmail_token`` is shared with other services: it is created only when absent, exactly as production
has it, and only ever gains columns and indexes. Every statement is idempotent, so ``migrate`` is safe
to run again, concurrently (an advisory lock serialises runs), and on a database that already has rows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from shared.db import Connection

logger = logging.getLogger(__name__)

# pg_advisory_lock key: any constant unique to this project; two migrate runs wait for each other.
MIGRATION_LOCK_KEY = 0x5E_11_E3_A1

GMAIL_TOKEN_DDL = """
CREATE TABLE IF NOT EXISTS gmail_token (
    id SERIAL PRIMARY KEY,
    user_id VARCHAR(100),
    robeing_id VARCHAR(50),
    token_data JSONB,
    oauth_config JSONB,
    scopes TEXT[],
    metadata JSONB,
    expiry TIMESTAMP,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    is_equipped BOOLEAN DEFAULT FALSE,
    equipped_to VARCHAR(50)
)
"""


@dataclass(frozen=True)
class Migration:
    """One numbered step; ``transactional`` is False for statements PostgreSQL forbids in a transaction."""

    version: int
    name: str
    statements: tuple[str, ...]
    transactional: bool = True


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "gmail_token as production has it", (GMAIL_TOKEN_DDL,)),
    Migration(
        2,
        "re-authorisation marker columns on gmail_token",
        (
            # Set when Google answers invalid_grant; the fingerprint of the credentials refused lets a
            # row that someone has since rewritten with a new token count as usable again.
            "ALTER TABLE gmail_token ADD COLUMN IF NOT EXISTS reauth_required_at TIMESTAMP",
            "ALTER TABLE gmail_token ADD COLUMN IF NOT EXISTS reauth_reason VARCHAR(64)",
            "ALTER TABLE gmail_token ADD COLUMN IF NOT EXISTS reauth_fingerprint CHAR(64)",
        ),
    ),
    Migration(
        3,
        "indexes for the per-call lookup and the scheduled refresh",
        (
            # CONCURRENTLY: the table is live and shared; a plain CREATE INDEX would block its writers.
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS gmail_token_equipped_user_idx "
            "ON gmail_token (user_id, updated_at DESC) WHERE is_equipped",
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS gmail_token_equipped_expiry_idx "
            "ON gmail_token (expiry) WHERE is_equipped",
        ),
        transactional=False,
    ),
    Migration(
        4,
        "audit log",
        (
            """
            CREATE TABLE IF NOT EXISTS gmail_audit_logs (
                id BIGSERIAL PRIMARY KEY,
                created_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
                user_id VARCHAR(100),
                robeing_id VARCHAR(50),
                action VARCHAR(32) NOT NULL,
                status VARCHAR(16) NOT NULL,
                http_status INTEGER NOT NULL,
                gmail_message_id VARCHAR(64),
                gmail_thread_id VARCHAR(64),
                error_code VARCHAR(64),
                duration_ms INTEGER NOT NULL,
                gmail_calls INTEGER NOT NULL DEFAULT 0,
                result_count INTEGER,
                trace_id VARCHAR(128)
            )
            """,
            "CREATE INDEX IF NOT EXISTS gmail_audit_logs_user_created_idx "
            "ON gmail_audit_logs (user_id, created_at DESC)",
        ),
    ),
    Migration(
        5,
        "idempotency records",
        (
            """
            CREATE TABLE IF NOT EXISTS gmail_idempotency (
                user_id VARCHAR(100) NOT NULL,
                idempotency_key VARCHAR(255) NOT NULL,
                fingerprint CHAR(64) NOT NULL,
                state VARCHAR(16) NOT NULL,
                response_status INTEGER,
                response_body JSONB,
                message_id VARCHAR(255),
                created_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
                updated_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
                expires_at TIMESTAMP NOT NULL,
                PRIMARY KEY (user_id, idempotency_key)
            )
            """,
            "CREATE INDEX IF NOT EXISTS gmail_idempotency_expires_idx ON gmail_idempotency (expires_at)",
        ),
    ),
    Migration(
        6,
        "index for the audit log's retention purge",
        (
            # The scheduled run deletes the oldest rows in batches; without this index each batch would
            # scan the whole table (the other index leads with user_id). CONCURRENTLY: the table is live.
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS gmail_audit_logs_created_idx "
            "ON gmail_audit_logs (created_at)",
        ),
        transactional=False,
    ),
    Migration(
        7,
        "new-mail watches, the events outbox and robeings' webhooks",
        (
            # One row per watched Gmail mailbox (lower-case address): how far its history is processed.
            # history_id is Gmail's uint64, hence NUMERIC(20); last_message_ms is the newest message's
            # internalDate, from where a mailbox whose history expired is listed again.
            """
            CREATE TABLE IF NOT EXISTS gmail_mailbox_watch (
                email_address VARCHAR(320) PRIMARY KEY,
                history_id NUMERIC(20) NOT NULL,
                last_message_ms BIGINT NOT NULL,
                watched_labels TEXT[] NOT NULL,
                watch_expiration TIMESTAMP,
                created_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
                updated_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC')
            )
            """,
            # One row per robeing watching a user's mailbox; a stopped watch stays, inactive.
            """
            CREATE TABLE IF NOT EXISTS gmail_watchers (
                user_id VARCHAR(100) NOT NULL,
                robeing_id VARCHAR(50) NOT NULL,
                email_address VARCHAR(320) NOT NULL,
                label_ids TEXT[] NOT NULL,
                active BOOLEAN NOT NULL,
                started_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
                updated_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
                PRIMARY KEY (user_id, robeing_id)
            )
            """,
            "CREATE INDEX IF NOT EXISTS gmail_watchers_mailbox_idx ON gmail_watchers (email_address) "
            "WHERE active",
            # The outbox. seq is the queued order (list_events' cursor); the unique key makes a second
            # event for one (robeing, user, message) impossible, whatever the notifications do.
            """
            CREATE TABLE IF NOT EXISTS gmail_events (
                seq BIGSERIAL PRIMARY KEY,
                event_id VARCHAR(40) NOT NULL UNIQUE,
                event_type VARCHAR(32) NOT NULL,
                robeing_id VARCHAR(50) NOT NULL,
                user_id VARCHAR(100) NOT NULL,
                gmail_message_id VARCHAR(64) NOT NULL,
                message JSONB NOT NULL,
                created_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
                attempts INTEGER NOT NULL DEFAULT 0,
                next_attempt_at TIMESTAMP,
                delivered_at TIMESTAMP,
                failed_at TIMESTAMP,
                last_status INTEGER,
                UNIQUE (robeing_id, user_id, gmail_message_id)
            )
            """,
            "CREATE INDEX IF NOT EXISTS gmail_events_robeing_seq_idx ON gmail_events (robeing_id, seq)",
            "CREATE INDEX IF NOT EXISTS gmail_events_due_idx ON gmail_events (next_attempt_at) "
            "WHERE next_attempt_at IS NOT NULL",
            "CREATE INDEX IF NOT EXISTS gmail_events_created_idx ON gmail_events (created_at)",
            # A robeing's webhook; secret is the whsec_ text, or enc:v1:... under the token keyring.
            """
            CREATE TABLE IF NOT EXISTS gmail_webhooks (
                robeing_id VARCHAR(50) PRIMARY KEY,
                url TEXT NOT NULL,
                secret TEXT NOT NULL,
                created_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
                updated_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC')
            )
            """,
        ),
    ),
    Migration(
        8,
        "when each token was last used, and when the scheduled run should next look at it",
        (
            # Ours, additive, NULL for rows others write: the refresh rule treats NULL as "unknown"
            # (last_used_at: idle; check_at: look at the expiry), so no backfill of a live table.
            "ALTER TABLE gmail_token ADD COLUMN IF NOT EXISTS last_used_at TIMESTAMP",
            "ALTER TABLE gmail_token ADD COLUMN IF NOT EXISTS check_at TIMESTAMP",
        ),
    ),
    Migration(
        9,
        "the scheduled run's due-set index",
        (
            # The scheduled run reads the due rows as one range of this expression, so its cost
            # follows the due set, not the table (bench/scale.py: 1,000 due rows among 1,000,000).
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS gmail_token_equipped_due_idx "
            "ON gmail_token ((COALESCE(check_at, expiry, TIMESTAMP '-infinity'))) WHERE is_equipped",
        ),
        transactional=False,
    ),
    Migration(
        10,
        "callers allow-list, and the caller of each audit row",
        (
            # One role per caller email (CONTRACT.md, Callers); robeing_ids only for the robeing role.
            """
            CREATE TABLE IF NOT EXISTS skill_email_callers (
                email VARCHAR(320) PRIMARY KEY,
                role VARCHAR(16) NOT NULL CHECK (role IN ('robeing', 'scheduler', 'operator')),
                robeing_ids TEXT[] NOT NULL DEFAULT '{}',
                created_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
                updated_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC')
            )
            """,
            "ALTER TABLE gmail_audit_logs ADD COLUMN IF NOT EXISTS caller_email VARCHAR(320)",
        ),
    ),
)

_LEDGER_DDL = """
CREATE TABLE IF NOT EXISTS skill_email_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC')
)
"""


def migrate(conn: Connection) -> list[int]:
    """Applies every migration not yet recorded; returns the versions applied now.

    Each statement is idempotent on its own, so a migration interrupted half way is simply run again.
    """
    applied_now: list[int] = []
    conn.run("SELECT pg_advisory_lock(:key)", key=MIGRATION_LOCK_KEY)
    try:
        conn.run(_LEDGER_DDL)
        done = {row["version"] for row in conn.run("SELECT version FROM skill_email_migrations")}
        for migration in MIGRATIONS:
            if migration.version in done:
                continue
            logger.info("applying migration %d: %s", migration.version, migration.name)
            if migration.transactional:
                with conn.transaction():
                    for statement in migration.statements:
                        conn.run(statement)
                    _record(conn, migration)
            else:
                for statement in migration.statements:
                    conn.run(statement)
                _record(conn, migration)
            applied_now.append(migration.version)
    finally:
        conn.run("SELECT pg_advisory_unlock(:key)", key=MIGRATION_LOCK_KEY)
    return applied_now


def _record(conn: Connection, migration: Migration) -> None:
    conn.run(
        "INSERT INTO skill_email_migrations (version, name) VALUES (:version, :name) ON CONFLICT DO NOTHING",
        version=migration.version,
        name=migration.name,
    )
