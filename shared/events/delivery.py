"""Webhook delivery: events POSTed to robeings' URLs, signed per Standard Webhooks, retried with backoff.

- Signed with the ``standardwebhooks`` package: headers ``webhook-id`` (the event id, the same on every
  attempt), ``webhook-timestamp`` and ``webhook-signature`` (``v1,<base64 HMAC-SHA256>`` of
  ``id.timestamp.body``). The body is the event object exactly as ``list_events`` shows it.
- A 2xx marks the event delivered. Anything else, a redirect included, or no answer within
  ``DELIVERY_TIMEOUT_S``, is a failure: attempt n is followed by a wait of ``WEBHOOK_RETRY_BASE_SECONDS`` x
  2^(n-1), +/-20 % jitter, capped at an hour; the scheduled run re-drives every event whose wait has passed.
  After ``RETRY_PERIOD`` (24 h) of failures the event is given up (``failed_at``); it stays readable.
- Events are claimed before they are sent (``next_attempt_at`` moved ``LEASE`` ahead, ``SKIP LOCKED``), so
  ``gmail_push`` and the scheduled run never POST one event at the same moment.
- Robeings are delivered in parallel (``MAX_PARALLEL``), each robeing's events in queued order; after one
  failure a robeing's remaining events wait for its retry, so a slow or broken robeing costs one timeout
  per run and never holds up the others. A pass starts no robeing after ``PASS_BUDGET_S``, so it ends
  inside the function's timeout however many robeings are down; the rest stay due for the next run.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import requests
from standardwebhooks import Webhook as Signer

from shared import clock, config
from shared.db import Connection
from shared.errors import SkillEmailError
from shared.events import outbox, webhooks

logger = logging.getLogger(__name__)

# CONTRACT.md: "no answer within 10 s" is a failure. Connecting gets less: a host that does not accept a
# connection in 5 s is down.
DELIVERY_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 5.0
# A robeing's deliveries in one run stop after this long (the rest wait for the retry), so one push
# answers within the function's timeout even when a robeing answers each POST in just under 10 s.
ROBEING_BUDGET_S = 20.0
# No robeing's deliveries start after this long into a pass: with MAX_PARALLEL robeings at a time, 1,000
# due events of 100 unreachable robeings would otherwise take 100 / 16 x 10 s, past the 60 s timeout of
# the scheduled run. Robeings not reached wait for the next run, 10 minutes later.
PASS_BUDGET_S = 25.0
MAX_WAIT_S = 3600.0
JITTER = 0.2
RETRY_PERIOD = timedelta(hours=24)
# While claimed, an event is invisible to other runs; longer than a robeing's budget, so a run still
# sending is never overtaken, and short enough that a crashed run's events are retried soon.
LEASE = timedelta(minutes=5)
MAX_PARALLEL = 16
USER_AGENT = "skill-email-webhooks/1"


@dataclass
class Claimed:
    """One event claimed for a delivery attempt, with its robeing's webhook (secret still as stored)."""

    seq: int
    body: dict[str, Any]
    robeing_id: str
    created_at: datetime
    attempts: int
    url: str
    stored_secret: str = field(repr=False)


@dataclass
class Outcome:
    """What one event's attempt gave: ``status`` (None: no answer), or not attempted at all."""

    event: Claimed
    delivered: bool
    attempted: bool
    status: int | None = None


@dataclass
class Summary:
    """Counts of one delivery pass, for the log line."""

    delivered: int = 0
    failed: int = 0
    deferred: int = 0
    given_up: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "delivered": self.delivered,
            "failed": self.failed,
            "deferred": self.deferred,
            "given_up": self.given_up,
        }


def backoff_seconds(attempt: int, base: float, rand: Callable[[], float] = random.random) -> float:
    """The wait after failed attempt ``attempt`` (1-based): base x 2^(attempt-1), +/-20 %, at most an hour."""
    wait = min(MAX_WAIT_S, base * 2 ** min(attempt - 1, 40))
    return min(MAX_WAIT_S, wait * (1 - JITTER + 2 * JITTER * rand()))


def sign(secret: str, event_id: str, body: str, now: datetime) -> dict[str, str]:
    """The Standard Webhooks headers for one attempt (``now`` whole seconds, aware or naive UTC)."""
    now = now.replace(microsecond=0)
    if now.tzinfo is None:
        now = now.replace(tzinfo=clock.UTC)
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(math.floor(now.timestamp())),
        "webhook-signature": Signer(secret).sign(event_id, now, body),
    }


_CLAIM = f"""
    UPDATE gmail_events e SET next_attempt_at = :lease_until
    FROM gmail_webhooks w
    WHERE w.robeing_id = e.robeing_id AND e.seq IN (
        SELECT seq FROM gmail_events
        WHERE {{where}} AND delivered_at IS NULL AND next_attempt_at <= :now
        ORDER BY seq LIMIT :limit FOR UPDATE SKIP LOCKED)
    RETURNING {", ".join("e." + name.strip() for name in outbox.EVENT_COLUMNS.split(","))},
              e.attempts, w.url, w.secret
"""


def _claim(conn: Connection, where: str, now: datetime, limit: int, **params: Any) -> list[Claimed]:
    rows = conn.run(_CLAIM.format(where=where), now=now, lease_until=now + LEASE, limit=limit, **params)
    return [
        Claimed(
            seq=int(row["seq"]),
            body=outbox.event_body(row),
            robeing_id=row["robeing_id"],
            created_at=row["created_at"],
            attempts=int(row["attempts"]),
            url=row["url"],
            stored_secret=row["secret"],
        )
        for row in sorted(rows, key=lambda item: int(item["seq"]))
    ]


def deliver_new(conn: Connection, seqs: Sequence[int]) -> Summary:
    """The first attempt of events just queued (``gmail_push``): those whose robeing has a webhook."""
    if not seqs:
        return Summary()
    now = clock.to_naive_utc(clock.utcnow())
    claimed = _claim(conn, "seq = ANY(CAST(:seqs AS BIGINT[]))", now, len(seqs), seqs=list(seqs))
    return _send_and_record(conn, claimed)


def redrive(conn: Connection, limit: int = 1000) -> Summary:
    """The scheduled run: every event whose retry wait has passed (at most ``limit``), oldest first."""
    now = clock.to_naive_utc(clock.utcnow())
    # A robeing whose webhook was removed has nothing left to deliver.
    conn.run(
        "UPDATE gmail_events e SET next_attempt_at = NULL WHERE next_attempt_at <= :now "
        "AND NOT EXISTS (SELECT 1 FROM gmail_webhooks w WHERE w.robeing_id = e.robeing_id)",
        now=now,
    )
    return _send_and_record(conn, _claim(conn, "TRUE", now, limit))


def _send_and_record(conn: Connection, claimed: list[Claimed]) -> Summary:
    if not claimed:
        return Summary()
    by_robeing: dict[str, list[Claimed]] = defaultdict(list)
    for event in claimed:
        by_robeing[event.robeing_id].append(event)
    deadline = clock.monotonic() + PASS_BUDGET_S
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(by_robeing))) as pool:
        results = list(pool.map(lambda events: _deliver_robeing(events, deadline), by_robeing.values()))
    return _record(conn, [outcome for outcomes in results for outcome in outcomes])


def _deliver_robeing(events: list[Claimed], deadline: float) -> list[Outcome]:
    """One robeing's events in order; after a failure (or the budget) the rest wait for the retry."""
    outcomes: list[Outcome] = []
    started = clock.monotonic()
    if started > deadline:  # this pass has run long: the next run delivers these
        return [Outcome(event, False, False) for event in events]
    try:
        hook = webhooks.open_webhook(events[0].robeing_id, events[0].url, events[0].stored_secret)
    except SkillEmailError as exc:
        logger.error(
            "webhook of robeing %s unusable: %s", events[0].robeing_id, exc.message,
            extra={"fields": {"robeing_id": events[0].robeing_id}},
        )  # fmt: skip
        return [Outcome(events[0], False, True), *(Outcome(event, False, False) for event in events[1:])]
    with requests.Session() as session:
        for index, event in enumerate(events):
            if clock.monotonic() - started > ROBEING_BUDGET_S:
                outcomes.extend(Outcome(rest, False, False) for rest in events[index:])
                break
            status = _post(session, hook, event)
            delivered = status is not None and 200 <= status < 300
            outcomes.append(Outcome(event, delivered, True, status))
            if not delivered:
                outcomes.extend(Outcome(rest, False, False) for rest in events[index + 1 :])
                break
    return outcomes


def _post(session: requests.Session, hook: webhooks.Webhook, event: Claimed) -> int | None:
    body = json.dumps(event.body, ensure_ascii=False, separators=(",", ":"))
    headers = {
        **sign(hook.secret, event.body["id"], body, clock.utcnow()),
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
    }
    fields = {
        "robeing_id": event.robeing_id,
        "event_id": event.body["id"],
        "host": urlsplit(hook.url).hostname,
    }
    try:
        response = session.post(
            hook.url,
            data=body.encode("utf-8"),
            headers=headers,
            timeout=(CONNECT_TIMEOUT_S, DELIVERY_TIMEOUT_S),
            allow_redirects=False,
        )
    except requests.RequestException as exc:
        logger.warning("webhook delivery failed: %s", type(exc).__name__, extra={"fields": fields})
        return None
    if not 200 <= response.status_code < 300:
        logger.warning(
            "webhook answered %d",
            response.status_code,
            extra={"fields": {**fields, "status": response.status_code}},
        )
    return response.status_code


def _record(conn: Connection, outcomes: list[Outcome]) -> Summary:
    summary = Summary()
    now = clock.to_naive_utc(clock.utcnow())
    base = config.webhook_retry_base_seconds()
    retry_at: dict[str, datetime] = {}
    for outcome in sorted(outcomes, key=lambda item: not item.attempted):  # attempts first: they set retry_at
        event = outcome.event
        if outcome.delivered:
            summary.delivered += 1
            conn.run(
                "UPDATE gmail_events SET delivered_at = :now, next_attempt_at = NULL, "
                "attempts = attempts + 1, last_status = :status WHERE seq = :seq",
                now=now,
                status=outcome.status,
                seq=event.seq,
            )
        elif outcome.attempted:
            attempts = event.attempts + 1
            if now - event.created_at >= RETRY_PERIOD:
                summary.given_up += 1
                logger.error(
                    "webhook delivery given up after %d attempts", attempts,
                    extra={"fields": {"robeing_id": event.robeing_id, "event_id": event.body["id"]}},
                )  # fmt: skip
                conn.run(
                    "UPDATE gmail_events SET failed_at = :now, next_attempt_at = NULL, attempts = :attempts, "
                    "last_status = :status WHERE seq = :seq",
                    now=now,
                    attempts=attempts,
                    status=outcome.status,
                    seq=event.seq,
                )
                continue
            summary.failed += 1
            next_at = now + timedelta(seconds=backoff_seconds(attempts, base))
            retry_at.setdefault(event.robeing_id, next_at)
            conn.run(
                "UPDATE gmail_events SET next_attempt_at = :next_at, attempts = :attempts, "
                "last_status = :status WHERE seq = :seq",
                next_at=next_at,
                attempts=attempts,
                status=outcome.status,
                seq=event.seq,
            )
        else:
            summary.deferred += 1
            conn.run(
                "UPDATE gmail_events SET next_attempt_at = :next_at WHERE seq = :seq",
                next_at=retry_at.get(event.robeing_id, now),
                seq=event.seq,
            )
    return summary
