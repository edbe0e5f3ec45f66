"""Retention: the scheduled run forgets expired idempotency records and audit rows past their keep time.

Called by ``refresh_tokens`` without a user (Cloud Scheduler, every 10 minutes) after the token refresh.
Each table is purged in bounded batches (``BATCH_ROWS`` per statement, at most ``MAX_BATCHES`` per run
and ``BUDGET_S`` of wall time), each batch its own short statement, so a large backlog drains over a few
runs without a long lock or a long request. Purging is upkeep: a failure is logged, never fails the run,
and the next run tries again. The counts go to the log, not to the response (whose body the contract
fixes).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from shared import audit, clock, config, db, idempotency
from shared.errors import SkillEmailError

logger = logging.getLogger(__name__)

# 1,000 rows per DELETE keeps each statement well under a second on a small Cloud SQL instance; ten
# batches a run drain 10,000 rows per table every 10 minutes (1.4 M a day), far above the rate at
# which either table grows, so a backlog (a first run on an old table) is gone within hours.
BATCH_ROWS = 1000
MAX_BATCHES = 10
# The scheduled run's whole budget is the function's timeout; upkeep takes at most this much of it.
BUDGET_S = 10.0


@dataclass
class Purged:
    """Rows deleted by one run, per table."""

    idempotency: int = 0
    audit: int = 0

    def as_log_fields(self) -> dict[str, int]:
        """The counts under the names the request's log line carries."""
        return {"purged_idempotency": self.idempotency, "purged_audit": self.audit}


def purge(conn: db.Connection, settings: config.Settings | None = None) -> Purged:
    """Purges expired idempotency records and audit rows older than ``AUDIT_RETENTION_DAYS``.

    Never raises for a database failure: what was purged before it is returned, and the failure logged.
    """
    settings = settings or config.load_settings()
    cutoff = clock.utcnow() - timedelta(days=settings.audit_retention_days)
    deadline = clock.monotonic() + BUDGET_S
    purged = Purged()
    try:
        purged.idempotency = _drain(lambda: idempotency.purge_expired(conn, BATCH_ROWS), deadline)
        purged.audit = _drain(lambda: audit.purge_older_than(conn, cutoff, BATCH_ROWS), deadline)
    except SkillEmailError as exc:
        logger.warning("retention purge stopped: %s", exc.code, extra={"fields": purged.as_log_fields()})
    return purged


def purge_configured() -> Purged:
    """``purge`` over a connection of its own, when a database is configured (file tokens may have none)."""
    settings = config.load_settings()
    if not (settings.database_url or settings.db_url_secret):
        return Purged()
    try:
        with db.connection() as conn:
            return purge(conn, settings)
    except SkillEmailError as exc:
        logger.warning("retention purge skipped: %s", exc.code)
        return Purged()


def _drain(batch: Callable[[], int], deadline: float) -> int:
    total = 0
    for _ in range(MAX_BATCHES):
        deleted = batch()
        total += deleted
        if deleted < BATCH_ROWS or clock.monotonic() >= deadline:
            break
    return total
