"""The scheduled run's fan-out: one Cloud Task per slice of due tokens, each calling ``refresh_tokens``.

One authenticated REST call per task (``POST v2/{queue}/tasks``) through google-auth, as Secret Manager
is read: the Cloud Tasks client library would cost its import on the scheduled instance for one call.
Each task POSTs ``{"row_ids": [...], "window_seconds": N}`` to ``REFRESH_TASKS_URL`` with an OIDC token of
``REFRESH_TASKS_SERVICE_ACCOUNT`` (the scheduler's identity, so the caller rules admit it); the queue's
rate limit (deploy.sh) keeps the token endpoint and the database within budget, and its retries are
safe because a slice refreshes only rows that are still due.
"""

from __future__ import annotations

import base64
import json
import logging
from typing import TYPE_CHECKING, Any

from shared.errors import Unavailable
from shared.transport import google_api_session

if TYPE_CHECKING:
    from shared.config import Settings

logger = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://cloudtasks.googleapis.com"
# Creating a task is one small request; a queue that does not answer within this is down.
CREATE_TIMEOUT_S = (3.05, 10.0)


def task_body(url: str, service_account: str, row_ids: list[int], window_seconds: int) -> dict[str, Any]:
    """The Cloud Tasks ``Task`` for one slice: an HTTP POST to ``refresh_tokens`` with an OIDC token."""
    payload = json.dumps({"row_ids": row_ids, "window_seconds": window_seconds}, separators=(",", ":"))
    return {
        "task": {
            "httpRequest": {
                "httpMethod": "POST",
                "url": url,
                "headers": {"Content-Type": "application/json"},
                "body": base64.b64encode(payload.encode()).decode(),
                "oidcToken": {"serviceAccountEmail": service_account, "audience": url},
            }
        }
    }


def enqueue_slices(settings: Settings, slices: list[list[int]], window_seconds: int) -> int:
    """Creates one task per slice on ``REFRESH_TASKS_QUEUE``; returns how many were created.

    Raises:
        Unavailable: Cloud Tasks refused or could not be reached; the slices not queued are left to the
            next scheduled run (they are still due), so nothing is lost.
    """
    import requests

    assert (
        settings.refresh_tasks_queue and settings.refresh_tasks_url and settings.refresh_tasks_service_account
    )
    endpoint = (settings.cloud_tasks_endpoint or DEFAULT_ENDPOINT).rstrip("/")
    url = f"{endpoint}/v2/{settings.refresh_tasks_queue}/tasks"
    session = google_api_session(settings.cloud_tasks_endpoint)
    created = 0
    for row_ids in slices:
        body = task_body(
            settings.refresh_tasks_url, settings.refresh_tasks_service_account, row_ids, window_seconds
        )
        try:
            response = session.post(url, json=body, timeout=CREATE_TIMEOUT_S)
        except requests.RequestException as exc:
            logger.error(
                "Cloud Tasks unreachable after %d of %d slices: %s", created, len(slices), type(exc).__name__
            )
            raise Unavailable("Cloud Tasks could not be reached") from None
        if response.status_code != 200:
            logger.error(
                "Cloud Tasks answered %d after %d of %d slices", response.status_code, created, len(slices)
            )
            raise Unavailable("Cloud Tasks refused a task")
        created += 1
    return created
