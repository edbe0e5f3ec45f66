"""The scheduled run (``refresh_tokens`` without a user, every 10 minutes from Cloud Scheduler): every
upkeep job the deployment needs, in one place, each one's failure contained.

Order: tokens first (the job people notice when it is late), then retention, then new mail (watch
renewal, webhook retries, events retention; shared/events/scheduled.py). The answer is the token
summary the contract fixes; the other jobs' counts go to the request's log line.
"""

from __future__ import annotations

from typing import Any

from shared import retention
from shared.tokens import provider


def run(window_seconds: int, log: dict[str, Any]) -> dict[str, Any]:
    """Refreshes the due tokens (or fans them out), then purges what retention allows."""
    summary = provider.refresh_due(window_seconds)
    log.update(checked=summary["checked"], refreshed=summary["refreshed"], failed=len(summary["failed"]))
    log.update(retention.purge_configured().as_log_fields())
    from shared.events import scheduled as new_mail  # first use only: Gmail's client is costly to import

    log.update(new_mail.run())  # renew watches, re-drive webhook deliveries, purge old events
    return summary


def run_slice(row_ids: list[int], window_seconds: int, log: dict[str, Any]) -> dict[str, Any]:
    """One slice of a fanned-out run, sent by the run's own Cloud Task."""
    summary = provider.refresh_slice(row_ids, window_seconds)
    log.update(slice_rows=len(row_ids), refreshed=summary["refreshed"], failed=len(summary["failed"]))
    return summary
