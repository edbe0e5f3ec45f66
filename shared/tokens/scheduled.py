"""The database store's scheduled refresh: the due set, found through one index, refreshed in slices.

A row is due when ``check_at`` (else its expiry) is NULL or before the deadline (now + window). A
refresh sets ``check_at`` to the new expiry for a token used in the last ``ACTIVE_DAYS``, and to a day
later for an idle one; so tokens in use are refreshed before they expire, idle ones once a day (a
refresh is the only way to learn that a grant was revoked), and an idle token that a call needs is
refreshed by that call. The due set is one range of the expression index ``gmail_token_equipped_due_idx``,
so a run's cost follows the due set, not the table (bench/scale.py).

Only the row each ``(user_id, equipped_to)`` lookup would pick is refreshed (``sql.beats``: one index
probe per due row): refreshing a shadowed older duplicate would bump its ``updated_at`` and make it win
over the token the person stored last. Shadowed rows and rows Google refused are passed over and looked
at again a day later.

The due ids are cut into slices of ``SLICE_SIZE``. A run that can finish them itself refreshes them
here, slice after slice; a larger due set, when a Cloud Tasks queue is configured, becomes one task per
slice (``tasks``) and each task calls ``refresh_tokens`` with its ``row_ids``. Either way every slice goes
through ``refresh_slice``, which takes each row with ``FOR UPDATE SKIP LOCKED`` and re-checks that it is
still due: a retried slice, or two runs at once, never refresh a token twice (a row another run holds
counts as skipped).
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from shared import clock, config
from shared.errors import ReauthRequired, SkillEmailError
from shared.tokens import sql
from shared.tokens.base import RefreshSummary

if TYPE_CHECKING:
    from shared.tokens.store import DatabaseTokenStore

logger = logging.getLogger(__name__)

# How often the scheduled run looks at a token nobody uses (a refresh: the only way to learn that a
# grant was revoked), and at a row it must pass over (a shadowed duplicate, a refused token).
IDLE_CHECK_EVERY = timedelta(days=1)
# One slice is one Cloud Task: 1,000 tokens take ~7 s with 16 workers at 100 ms per grant (measured,
# docs/performance.md), well inside a task's deadline, and a retry repeats little.
SLICE_SIZE = 1000
# What one run refreshes itself before it fans out: ~150 tokens/s measured with 16 workers, so 20,000
# take ~135 s, a quarter of refresh_tokens' 540 s timeout, leaving room for a slow token endpoint.
INLINE_MAX_TOKENS = 20_000


def due_rows(store: DatabaseTokenStore, deadline: datetime) -> list[int]:
    """The ids to refresh now, soonest first; shadowed and refused due rows are put off a day.

    Args:
        store: the invocation's store.
        deadline: naive UTC; a row due before it is taken.
    """
    rows = store.conn.run(
        f"SELECT t.id, {sql.NEEDS_REAUTH} AS needs_reauth, NOT EXISTS (SELECT 1 FROM gmail_token w "
        "WHERE w.is_equipped AND w.user_id = t.user_id AND w.equipped_to IS NOT DISTINCT FROM t.equipped_to "
        f"AND w.id <> t.id AND {sql.beats('w', 't')}) AS wins "
        f"FROM gmail_token t WHERE t.is_equipped AND {sql.IS_DUE} "
        f"ORDER BY {sql.DUE_AT}, t.id",
        deadline=deadline,
    )
    passed_over = [row["id"] for row in rows if row["needs_reauth"] or not row["wins"]]
    if passed_over:
        store.conn.run(
            "UPDATE gmail_token SET check_at = :later WHERE id = ANY(CAST(:ids AS INTEGER[]))",
            later=clock.to_naive_utc(clock.utcnow()) + IDLE_CHECK_EVERY,
            ids=passed_over,
        )
    return [row["id"] for row in rows if row["wins"] and not row["needs_reauth"]]


def refresh_due(store: DatabaseTokenStore, window_seconds: int) -> RefreshSummary:
    """Refreshes every due token, here or (a large due set, a queue configured) through Cloud Tasks.

    A failure is counted under its user and never stops the run. When the run fans out, it refreshes
    nothing itself and answers with zero counts; the tasks' own answers and log lines carry theirs.
    """
    deadline = _deadline(window_seconds)
    ids = due_rows(store, deadline)
    summary = RefreshSummary()
    slices = [ids[start : start + SLICE_SIZE] for start in range(0, len(ids), SLICE_SIZE)]
    settings = config.load_settings()
    if len(ids) > INLINE_MAX_TOKENS and settings.refresh_tasks_queue:
        from shared.tokens import tasks

        tasks.enqueue_slices(settings, slices, window_seconds)
        logger.info(
            "scheduled refresh fanned out",
            extra={"fields": {"queued_tokens": len(ids), "queued_slices": len(slices)}},
        )
        return summary
    for row_ids in slices:
        _refresh_rows(store, row_ids, deadline, summary)
    return summary


def refresh_slice(store: DatabaseTokenStore, row_ids: list[int], window_seconds: int) -> RefreshSummary:
    """Refreshes the rows of one slice that are still due (a Cloud Task's ``refresh_tokens`` call)."""
    summary = RefreshSummary()
    _refresh_rows(store, list(dict.fromkeys(row_ids)), _deadline(window_seconds), summary)
    return summary


def _deadline(window_seconds: int) -> datetime:
    return clock.to_naive_utc(clock.utcnow() + timedelta(seconds=window_seconds))


def _refresh_rows(
    store: DatabaseTokenStore, ids: list[int], deadline: datetime, summary: RefreshSummary
) -> None:
    """Up to ``store.concurrency`` workers, each with its own connection (the first reuses the
    invocation's), take one row at a time until ``ids`` is exhausted."""
    if not ids:
        return
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


def _refresh_one(store: DatabaseTokenStore, row_id: int, deadline: datetime, summary: RefreshSummary) -> None:
    failure: SkillEmailError | None = None
    user_id: str | None = None
    with store.conn.transaction():
        row = store.conn.one(
            f"SELECT {sql.COLUMNS} FROM gmail_token WHERE id = :id AND is_equipped "
            f"AND {sql.IS_DUE} AND NOT {sql.NEEDS_REAUTH} FOR UPDATE SKIP LOCKED",
            id=row_id,
            deadline=deadline,
        )
        if row is None:
            summary.add("skipped")
            return
        user_id = str(row["user_id"])
        record = store.decode(row)
        try:
            record.check_usable()
            store.refresh_locked(record)
        except ReauthRequired as exc:
            if record.refused is None:  # Google refused it: remember until the credentials change
                store.mark_reauth(row_id, str(exc.details.get("reason") or "invalid_grant"))
            failure = exc
        except SkillEmailError as exc:
            failure = exc
    if failure is not None:
        summary.add("failed", user_id, failure.code)
    else:
        summary.add("refreshed")
