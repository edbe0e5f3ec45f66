"""The audit log: one ``gmail_audit_logs`` row per call (send, list, read, draft, modify).

A row says who (user, robeing, and the verified caller that asked), what (action), how it ended
(status, HTTP status, error code), what Gmail returned (message and thread ids, result count) and
what it cost (duration, Gmail calls). It never holds message content (subject, body, addresses,
search query) nor any token: the row is read by operators who must not see a person's mail.

Rows are kept ``AUDIT_RETENTION_DAYS`` (default 400); the scheduled run purges older ones
(``purge_older_than``, called by ``shared.retention``).

Auditing is best effort: a failed audit write is logged and never fails the request it describes (the
message is already sent by then; an error now would only provoke a duplicate).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from shared import callers, clock
from shared.db import Connection
from shared.errors import SkillEmailError

logger = logging.getLogger(__name__)

SEND = "send"
LIST = "list"
# A repeat answered from the Idempotency-Key record: nothing was sent.
SEND_REPLAY = "send_replay"
READ = "read"
READ_THREAD = "read_thread"
ATTACHMENT = "attachment"
CREATE_DRAFT = "create_draft"
CREATE_DRAFT_REPLAY = "create_draft_replay"
SEND_DRAFT = "send_draft"
SEND_DRAFT_REPLAY = "send_draft_replay"
MODIFY = "modify_email"
LIST_LABELS = "list_labels"
OK = "ok"
ERROR = "error"

# Column sizes of migration 4; VARCHAR(n) counts characters, so strings are cut to n characters
# rather than letting PostgreSQL reject the whole row (SQLSTATE 22001).
_SIZES = {
    "user_id": 100,
    "robeing_id": 50,
    "action": 32,
    "status": 16,
    "gmail_message_id": 64,
    "gmail_thread_id": 64,
    "error_code": 64,
    "trace_id": 128,
    "caller_email": 320,
}
# INTEGER columns: a value outside PostgreSQL's int4 range would reject the row (22003).
_INT_MAX = 2**31 - 1
_RECENT_MAX = 1000

_INSERT_COLUMNS = (
    "created_at, user_id, robeing_id, action, status, http_status, gmail_message_id, "
    "gmail_thread_id, error_code, duration_ms, gmail_calls, result_count, trace_id, caller_email"
)
_COLUMNS = "id, " + _INSERT_COLUMNS


class _Current:
    """The default of ``record(caller_email=...)``: the caller of the request being served."""


_CURRENT = _Current()


def _text(name: str, value: str | None) -> str | None:
    """``value`` fit for column ``name``: at most its size, without NUL (which PostgreSQL refuses)."""
    if value is None:
        return None
    return str(value).replace("\x00", "")[: _SIZES[name]]


def _count(value: int | None) -> int | None:
    """An INTEGER column's value, clamped to 0..int4 max."""
    if value is None:
        return None
    return max(0, min(int(value), _INT_MAX))


def record(
    conn: Connection,
    *,
    user_id: str | None,
    robeing_id: str | None,
    action: str,
    status: str,
    http_status: int,
    duration_ms: int,
    gmail_calls: int = 0,
    gmail_message_id: str | None = None,
    gmail_thread_id: str | None = None,
    error_code: str | None = None,
    result_count: int | None = None,
    trace_id: str | None = None,
    caller_email: str | _Current | None = _CURRENT,
) -> None:
    """Writes one audit row; never raises.

    Call it outside any transaction of the caller's: a failed insert would abort that transaction.

    Args:
        conn: the invocation's connection.
        user_id: whose mailbox, as the request named it (None when the request was too bad to say).
        robeing_id: the robeing that asked, if any.
        action: ``SEND`` or ``LIST`` (any short name; cut to 32 characters).
        status: ``OK`` or ``ERROR``.
        http_status: the status the caller was answered with.
        duration_ms: the request's wall time.
        gmail_calls: Gmail API requests made (a batch counts once).
        gmail_message_id: the sent message's Gmail id.
        gmail_thread_id: its thread id.
        error_code: the contract error code when the request failed.
        result_count: messages returned by a list.
        trace_id: the Cloud Trace id, to join the row with the request's log lines.
        caller_email: who asked (the verified ID token's email); by default the current request's
            caller, so every row records it without each operation passing it along (None under
            ``CALLER_POLICY=off``).
    """
    if isinstance(caller_email, _Current):
        caller_email = callers.current_email()
    try:
        conn.run(
            f"INSERT INTO gmail_audit_logs ({_INSERT_COLUMNS}) VALUES (:created_at, "
            ":user_id, :robeing_id, :action, :status, :http_status, :gmail_message_id, :gmail_thread_id, "
            ":error_code, :duration_ms, :gmail_calls, :result_count, :trace_id, :caller_email)",
            # Our clock, not the server's: tests move time in one place and rows sort with other tables.
            created_at=clock.to_naive_utc(clock.utcnow()),
            user_id=_text("user_id", user_id),
            robeing_id=_text("robeing_id", robeing_id),
            action=_text("action", action),
            status=_text("status", status),
            http_status=int(http_status),
            gmail_message_id=_text("gmail_message_id", gmail_message_id),
            gmail_thread_id=_text("gmail_thread_id", gmail_thread_id),
            error_code=_text("error_code", error_code),
            duration_ms=_count(duration_ms),
            gmail_calls=_count(gmail_calls),
            result_count=_count(result_count),
            trace_id=_text("trace_id", trace_id),
            caller_email=_text("caller_email", caller_email),
        )
    except SkillEmailError as exc:
        # The database is down or the schema is missing (db.py has logged the cause): expected
        # operational failures, so a warning without a traceback.
        logger.warning(
            "audit row not written",
            extra={"fields": {"action": action, "audit_status": status, "error_code": exc.code}},
        )
    except Exception:
        # A bug (a wrong argument type, say): still not the user's problem, but loud, with a traceback.
        logger.exception(
            "audit row not written because of a bug",
            extra={"fields": {"action": action, "audit_status": status}},
        )


def recent(conn: Connection, user_id: str, limit: int = 50) -> list[dict[str, Any]]:
    """The user's latest audit rows, newest first, for the operator CLI.

    Raises:
        Unavailable, Internal: the database failed (the CLI should say so, unlike a request).
    """
    return conn.run(
        f"SELECT {_COLUMNS} FROM gmail_audit_logs WHERE user_id = :user_id "
        "ORDER BY created_at DESC, id DESC LIMIT :limit",
        user_id=user_id,
        limit=max(1, min(int(limit), _RECENT_MAX)),
    )


def purge_older_than(conn: Connection, cutoff: datetime, limit: int = 1000) -> int:
    """Deletes at most ``limit`` rows created before ``cutoff`` (naive UTC); returns how many.

    Bounded, oldest first, and SKIP LOCKED, so that one batch is a short statement that never waits
    for another purge running at the same time (two scheduled runs).
    """
    if limit <= 0:
        return 0
    deleted = conn.run(
        "DELETE FROM gmail_audit_logs WHERE id IN (SELECT id FROM gmail_audit_logs "
        "WHERE created_at < :cutoff ORDER BY created_at LIMIT :limit FOR UPDATE SKIP LOCKED) "
        "RETURNING 1 AS deleted",
        cutoff=clock.to_naive_utc(cutoff),
        limit=limit,
    )
    return len(deleted)
