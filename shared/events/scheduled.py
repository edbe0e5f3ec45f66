"""The scheduled run's share of new mail (``refresh_tokens {}``): renew watches, re-drive, purge.

One call, ``run()``, from the scheduled path. Without a database (file tokens only) there is nothing here.
"""

from __future__ import annotations

import logging
from typing import Any

from shared import config, db
from shared.config import ConfigError
from shared.events import delivery, outbox, watch

logger = logging.getLogger(__name__)


def run() -> dict[str, Any]:
    """Renews watches expiring within 24 h, re-drives due webhook deliveries, purges events past retention.

    Returns:
        Counts for the run's log line.

    Raises:
        Unavailable: the database could not be reached (the scheduler retries the run).
    """
    settings = config.load_settings()
    if not (settings.database_url or settings.db_url_secret):
        return {}
    counts: dict[str, Any] = {}
    try:
        counts.update(watch.renew_expiring())
    except ConfigError as exc:  # no PUBSUB_TOPIC: nothing can be watched, so nothing to renew
        logger.info("watch renewal skipped: %s", exc.message)
    with db.connection() as conn:
        counts.update({f"webhook_{name}": value for name, value in delivery.redrive(conn).as_dict().items()})
        counts["events_purged"] = outbox.purge(conn)
    return counts
