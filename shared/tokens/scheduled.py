"""The database store's scheduled refresh: every equipped token whose expiry is NULL or within a window.

Candidates are read once; then up to ``concurrency`` workers, each with its own connection (the first
reuses the invocation's), take one row at a time with ``FOR UPDATE SKIP LOCKED`` and re-check that it is
still due. Two runs at once therefore never refresh the same token twice: a row another run holds, or
has just refreshed, counts as skipped. Only the row each ``(user_id, equipped_to)`` lookup would pick is
a candidate: refreshing a shadowed older duplicate would bump its ``updated_at`` and make it win over
the token the person stored last.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from shared import clock
from shared.errors import ReauthRequired, SkillEmailError
from shared.tokens import sql
from shared.tokens.base import RefreshSummary

if TYPE_CHECKING:
    from shared.tokens.store import DatabaseTokenStore

logger = logging.getLogger(__name__)


def refresh_due(store: DatabaseTokenStore, window_seconds: int) -> RefreshSummary:
    """Refreshes every due token; a failure is counted under its user, never stops the run.

    Args:
        store: the invocation's store; its ``connect`` and ``concurrency`` size the workers.
        window_seconds: how close to expiry a token must be.
    """
    deadline = clock.to_naive_utc(clock.utcnow() + timedelta(seconds=window_seconds))
    summary = RefreshSummary()
    candidates = store.conn.run(
        "SELECT id FROM (SELECT DISTINCT ON (user_id, equipped_to) id, expiry, "
        f"{sql.NEEDS_REAUTH} AS needs_reauth FROM gmail_token WHERE is_equipped "
        f"ORDER BY user_id, equipped_to, {sql.WINNER_ORDER}) AS winners "
        "WHERE NOT needs_reauth AND (expiry IS NULL OR expiry < :deadline) "
        "ORDER BY expiry NULLS FIRST, id",
        deadline=deadline,
    )
    ids = [row["id"] for row in candidates]
    if not ids:
        return summary
    queue = iter(ids)
    queue_lock = threading.Lock()

    def next_id() -> int | None:
        with queue_lock:
            return next(queue, None)

    def drain(worker_store: DatabaseTokenStore) -> None:
        while (row_id := next_id()) is not None:
            try:
                _refresh_one(worker_store, row_id, deadline, summary)
            except SkillEmailError as exc:  # the database failed under this row: count it, go on
                summary.add("failed", None, exc.code)
            except Exception:
                logger.exception("scheduled refresh of row %d failed", row_id)
                summary.add("failed", None, "internal")

    def worker(first: bool) -> None:
        if first or store.connect is None:
            drain(store)
            return
        with store.connect() as conn:
            drain(store.on(conn))

    workers = max(1, min(store.concurrency, len(ids)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="refresh") as pool:
        futures = [pool.submit(worker, index == 0) for index in range(workers)]
        for future in futures:
            future.result()
    return summary


def _refresh_one(store: DatabaseTokenStore, row_id: int, deadline: datetime, summary: RefreshSummary) -> None:
    failure: SkillEmailError | None = None
    user_id: str | None = None
    with store.conn.transaction():
        row = store.conn.one(
            f"SELECT {sql.COLUMNS} FROM gmail_token WHERE id = :id AND is_equipped "
            f"AND (expiry IS NULL OR expiry < :deadline) AND NOT {sql.NEEDS_REAUTH} "
            "FOR UPDATE SKIP LOCKED",
            id=row_id,
            deadline=deadline,
        )
        if row is None:
            summary.add("skipped")
            return
        user_id = str(row["user_id"])
        try:
            store.refresh_locked(store.decode(row))
        except ReauthRequired as exc:
            store.mark_reauth(row_id, str(exc.details.get("reason") or "invalid_grant"))
            failure = exc
        except SkillEmailError as exc:
            failure = exc
    if failure is not None:
        summary.add("failed", user_id, failure.code)
    else:
        summary.add("refreshed")
