"""The scheduled run's share of new mail (``refresh_tokens {}``): renew watches, re-drive, purge.

One call, ``run()``, from the scheduled path. Without a database (file tokens only) there is nothing here.
Like the retention purges beside it, a step that fails is logged and done by the next run (every 10
minutes, well inside the 24 h renewal window and the retries' waits); it never fails the token refresh.
"""

from __future__ import annotations

import logging
from typing import Any

from shared import config, db
from shared.config import ConfigError
from shared.errors import SkillEmailError
from shared.events import delivery, outbox, watch

logger = logging.getLogger(__name__)


def run() -> dict[str, Any]:
    """Renews watches expiring within 24 h, re-drives due webhook deliveries, purges events past retention.

    Returns:
        Counts for the run's log line (``events_failed_steps`` names steps that failed and were logged).
    """
    settings = config.load_settings()
    if not (settings.database_url or settings.db_url_secret):
        return {}
    counts: dict[str, Any] = {}
    failed: list[str] = []
    try:
        counts.update(watch.renew_expiring())
    except ConfigError as exc:  # no PUBSUB_TOPIC: nothing can be watched, so nothing to renew
        logger.info("watch renewal skipped: %s", exc.message)
    except SkillEmailError as exc:
        failed.append("renew")
        logger.error("watch renewal failed: %s: %s", exc.code, exc.message)
    try:
        with db.connection() as conn:
            summary = delivery.redrive(conn).as_dict()
        counts.update({f"webhook_{name}": value for name, value in summary.items()})
    except SkillEmailError as exc:
        failed.append("redrive")
        logger.error("webhook re-drive failed: %s: %s", exc.code, exc.message)
    try:
        with db.connection() as conn:
            counts["events_purged"] = outbox.purge(conn)
    except SkillEmailError as exc:
        failed.append("purge")
        logger.error("events purge failed: %s: %s", exc.code, exc.message)
    if failed:
        counts["events_failed_steps"] = failed
    return counts
