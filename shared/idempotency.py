"""Idempotency-Key for send_email: a repeat of a finished send returns its first response, sends nothing.

One row of ``gmail_idempotency`` per ``(user_id, idempotency_key)``; the primary key is the lock. The
send path calls, in order::

    key = validate_key(request.headers.get(KEY_HEADER))
    claimed = claim(conn, user_id, key, fingerprint(body), message_id=new_message_id)
    if claimed.replay is not None:          # a repeat of a finished request: answer it, send nothing
        return claimed.replay_status, claimed.replay
    if claimed.resume_message_id:           # a takeover: the dead attempt may have reached Gmail
        found = search Gmail for rfc822msgid:<claimed.resume_message_id>
        ... if found: complete() with that message and return it; else send with that same Message-ID
    send ...; complete(conn, user_id, key, status=200, body=response)   # or release(...) on failure

Rows and states:

- ``in_progress``: one attempt holds the key; a concurrent repeat gets 409 ``idempotency_conflict``
  ("still running"), as the contract says. ``message_id`` is the RFC 5322 Message-ID that attempt put
  (or will put) on the message, so a later attempt can ask Gmail whether it was sent.
- ``succeeded``: ``response_status`` and ``response_body`` hold the 200 answer; a repeat with the same
  request (same ``fingerprint``) gets it back, a repeat with a different request gets 409.
- A failed first attempt is ``release``d (the row is deleted), so the key may be retried, as the
  contract promises. Only ``succeeded`` responses are ever replayed: errors are not remembered.
- Every row lives ``TTL`` (24 h) from its last write; after ``expires_at`` the key is forgotten and a
  request with it starts afresh (``claim`` replaces the row; ``purge_expired`` deletes old rows).

An instance that dies between ``claim`` and ``complete`` (killed at the function timeout, OOM, a crash
after Gmail accepted the message but before the response was stored) leaves its row ``in_progress``.
Waiting for ``expires_at`` would answer 409 for a whole day, so a row ``in_progress`` whose
``updated_at`` is older than ``STALE_AFTER`` (10 minutes: far above send_email's 120 s timeout, so its
owner is certainly gone) may be *taken over* by a retry with the same fingerprint. The dead attempt may
or may not have reached Gmail, so the taker gets ``Claim.resume_message_id`` (the Message-ID that
attempt used) and must search Gmail for ``rfc822msgid:<id>`` before sending; if it does send, it reuses
that Message-ID, so a further takeover searches for the same message. A retry with a *different*
request still gets 409 until the row expires: the first message may have gone out under this key.

``release(..., maybe_sent=True)`` is the same mechanism for a failure the live attempt could observe
but not judge (a timeout or connection reset after the message was uploaded): instead of deleting the
row, it marks it stale at once, so the next retry with the same request takes it over immediately and
checks Gmail first, rather than sending a second copy.

Every step is one SQL statement that is atomic on the row: ``INSERT ... ON CONFLICT DO NOTHING`` lets
exactly one of two concurrent claims insert, and the conditional ``UPDATE``s (replace when expired,
take over when stale) re-check their ``WHERE`` after waiting on the row lock, so exactly one of two
concurrent replacers or takers wins. No read-then-write race is left to chance. Timestamps are naive
UTC from ``clock.utcnow()``, like every ``TIMESTAMP`` column of this project.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from shared import clock
from shared.db import Connection
from shared.errors import IdempotencyConflict, InvalidArgument

logger = logging.getLogger(__name__)

KEY_HEADER = "Idempotency-Key"
# The column is VARCHAR(255); the contract promises keys up to this length.
MAX_KEY_LENGTH = 255
# How long a key is remembered after its last write: long enough for any caller's retry policy
# (Stripe and the IETF draft use 24 h), short enough that the table stays small.
TTL = timedelta(hours=24)
# An in_progress row older than this has lost its owner: send_email times out at 120 s, so after
# 10 minutes no live invocation can still hold it.
STALE_AFTER = timedelta(minutes=10)

IN_PROGRESS = "in_progress"
SUCCEEDED = "succeeded"

# A row can vanish between our failed INSERT and our SELECT (released or purged meanwhile); the
# claim is then simply tried again. Three rounds cover any realistic interleaving without looping.
_CLAIM_ATTEMPTS = 3
# A point safely before any "stale" threshold; release(maybe_sent=True) backdates updated_at to it.
_EPOCH = datetime(2000, 1, 1)


@dataclass(frozen=True)
class Claim:
    """The outcome of ``claim``: either this invocation holds the key, or it must replay a response.

    Attributes:
        key: the Idempotency-Key claimed.
        replay: the stored 200 body when this request repeats a finished one; send nothing then.
        replay_status: the stored HTTP status to answer with ``replay``.
        resume_message_id: set when this invocation took over a dead attempt's row: the Message-ID that
            attempt used. Search Gmail for ``rfc822msgid:<it>`` before sending, and reuse it if sending.
    """

    key: str
    replay: dict[str, Any] | None = None
    replay_status: int | None = None
    resume_message_id: str | None = None

    @property
    def is_replay(self) -> bool:
        """True when the caller must answer ``replay`` and send nothing."""
        return self.replay is not None


def validate_key(value: str | None) -> str | None:
    """The Idempotency-Key header's value, checked; None when the header is absent.

    Surrounding spaces and tabs are optional whitespace in HTTP (RFC 9110) and are dropped; what
    remains must be 1-255 printable ASCII characters (space included), so that it is stored and
    compared exactly as the caller sent it, with no encoding ambiguity.

    Raises:
        InvalidArgument: the value is empty, too long or holds a non-printable or non-ASCII character.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidArgument(f"{KEY_HEADER} must be a string")
    key = value.strip(" \t")
    if not key:
        raise InvalidArgument(f"{KEY_HEADER} must not be empty")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidArgument(f"{KEY_HEADER} must be at most {MAX_KEY_LENGTH} characters")
    if not all(" " <= char <= "~" for char in key):
        raise InvalidArgument(f"{KEY_HEADER} must hold printable ASCII characters only")
    return key


def fingerprint(payload: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the request's canonical JSON: what tells "the same request" from another.

    The caller passes the whole parsed body (``robeing_id`` and attachments included), so two requests
    that would send different messages never share a fingerprint. Key order and JSON whitespace do not
    matter; values are compared exactly (``"a@b"`` and ``["a@b"]`` differ).

    Raises:
        TypeError: the payload holds a value JSON cannot represent (a bug in the caller).
    """
    canonical = json.dumps(
        payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_bytes_digest
    )
    # surrogatepass: a lone surrogate from a JSON "\ud800" escape must fingerprint, not crash.
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def _bytes_digest(value: Any) -> str:
    """Stands for a multipart file's bytes in the fingerprint: their SHA-256, not a base64 copy."""
    if isinstance(value, bytes):
        return "sha256:" + hashlib.sha256(value).hexdigest()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _now() -> datetime:
    return clock.to_naive_utc(clock.utcnow())


def claim(conn: Connection, user_id: str, key: str, fingerprint: str, *, message_id: str | None) -> Claim:
    """Claims ``key`` for this request, or says what to answer instead.

    Args:
        conn: the invocation's connection, not inside a transaction (each statement commits at once,
            so a concurrent claim sees this one immediately).
        user_id: the key's scope: keys of different users never collide.
        key: a value from ``validate_key``.
        fingerprint: ``fingerprint(body)`` of this request.
        message_id: the Message-ID this attempt will put on the message, stored so that a later
            takeover can look for it in Gmail; None when it is learnt later (``note_message_id``).

    Returns:
        ``Claim(key)`` when this invocation now holds the key (new key, or an expired row replaced);
        ``Claim(key, resume_message_id=...)`` when it took over a stale attempt of the same request;
        ``Claim(key, replay=..., replay_status=...)`` when the same request already succeeded.

    Raises:
        IdempotencyConflict: the key was used with a different request, or the same request is still
            running.
    """
    for _ in range(_CLAIM_ATTEMPTS):
        now = _now()
        params: dict[str, Any] = {
            "user_id": user_id,
            "key": key,
            "fingerprint": fingerprint,
            "message_id": message_id,
            "now": now,
            "expires_at": now + TTL,
        }
        # The primary key decides between concurrent claims: the loser's INSERT waits for the winner's
        # commit and then inserts nothing.
        inserted = conn.one(
            "INSERT INTO gmail_idempotency (user_id, idempotency_key, fingerprint, state, message_id, "
            "created_at, updated_at, expires_at) VALUES (:user_id, :key, :fingerprint, 'in_progress', "
            ":message_id, :now, :now, :expires_at) "
            "ON CONFLICT (user_id, idempotency_key) DO NOTHING RETURNING 1 AS claimed",
            **params,
        )
        if inserted is not None:
            return Claim(key=key)

        # An expired row is forgotten: replace it whatever it held. The WHERE is re-checked after
        # waiting on a concurrent replacer's row lock, so only one of them wins.
        replaced = conn.one(
            "UPDATE gmail_idempotency SET fingerprint = :fingerprint, state = 'in_progress', "
            "response_status = NULL, response_body = NULL, message_id = :message_id, created_at = :now, "
            "updated_at = :now, expires_at = :expires_at "
            "WHERE user_id = :user_id AND idempotency_key = :key AND expires_at <= :now "
            "RETURNING 1 AS claimed",
            **params,
        )
        if replaced is not None:
            return Claim(key=key)

        # Same request, owner gone: take the row over, keeping the dead attempt's Message-ID so the
        # taker can find (or reuse) it. Bumping updated_at makes a second taker's WHERE fail.
        taken = conn.one(
            "UPDATE gmail_idempotency SET updated_at = :now, expires_at = :expires_at, "
            "message_id = COALESCE(message_id, :message_id) "
            "WHERE user_id = :user_id AND idempotency_key = :key AND state = 'in_progress' "
            "AND fingerprint = :fingerprint AND updated_at <= :stale_before RETURNING message_id",
            stale_before=now - STALE_AFTER,
            **params,
        )
        if taken is not None:
            logger.warning(
                "idempotency key taken over from an attempt that never finished",
                extra={"fields": {"user_id": user_id}},
            )
            return Claim(key=key, resume_message_id=taken["message_id"])

        existing = conn.one(
            "SELECT fingerprint, state, response_status, response_body FROM gmail_idempotency "
            "WHERE user_id = :user_id AND idempotency_key = :key",
            user_id=user_id,
            key=key,
        )
        if existing is None:
            continue  # released or purged since our INSERT: claim again
        if existing["fingerprint"] != fingerprint:
            raise IdempotencyConflict(f"this {KEY_HEADER} was already used with a different request")
        if existing["state"] == SUCCEEDED:
            return Claim(
                key=key,
                replay=_json_object(existing["response_body"]),
                replay_status=int(existing["response_status"] or 200),
            )
        raise IdempotencyConflict(
            f"a request with this {KEY_HEADER} is still running; retry after it has finished"
        )
    # Only a row that keeps appearing and vanishing between our statements gets here.
    raise IdempotencyConflict(
        f"a request with this {KEY_HEADER} is still running; retry after it has finished"
    )


def finished(conn: Connection, user_id: str, key: str, fingerprint: str) -> Claim | None:
    """The stored answer when this request repeats a finished one: one SELECT, nothing claimed.

    Lets the send path answer a repeat before it reads or refreshes any token or calls Gmail (the
    contract's "returns the stored answer before anything else is done"). Anything else (no row, a row
    still in progress, an expired one) is left to ``claim``, which decides it atomically.

    Returns:
        ``Claim(key, replay=..., replay_status=...)`` for a repeat of a finished request; else None.

    Raises:
        IdempotencyConflict: the key already finished a different request.
    """
    existing = conn.one(
        "SELECT fingerprint, response_status, response_body FROM gmail_idempotency "
        "WHERE user_id = :user_id AND idempotency_key = :key AND state = 'succeeded' AND expires_at > :now",
        user_id=user_id,
        key=key,
        now=_now(),
    )
    if existing is None:
        return None
    if existing["fingerprint"] != fingerprint:
        raise IdempotencyConflict(f"this {KEY_HEADER} was already used with a different request")
    return Claim(
        key=key,
        replay=_json_object(existing["response_body"]),
        replay_status=int(existing["response_status"] or 200),
    )


def complete(conn: Connection, user_id: str, key: str, *, status: int, body: dict[str, Any]) -> None:
    """Stores the response of the attempt that holds ``key``; repeats now replay it for ``TTL``.

    Never raises for a row that is gone or already finished (the message is sent; failing the request
    now would only provoke a duplicate): that is logged instead.

    Raises:
        Unavailable, Internal: the database failed.
    """
    now = _now()
    stored = conn.one(
        "UPDATE gmail_idempotency SET state = 'succeeded', response_status = :status, "
        "response_body = CAST(:body AS JSONB), updated_at = :now, expires_at = :expires_at "
        "WHERE user_id = :user_id AND idempotency_key = :key AND state = 'in_progress' RETURNING 1 AS stored",
        status=status,
        body=json.dumps(body, ensure_ascii=False),
        now=now,
        expires_at=now + TTL,
        user_id=user_id,
        key=key,
    )
    if stored is None:
        logger.warning(
            "idempotency record was gone or finished when its send completed; "
            "a repeat of that request will not be recognised",
            extra={"fields": {"user_id": user_id}},
        )


def release(conn: Connection, user_id: str, key: str, *, maybe_sent: bool = False) -> None:
    """Gives ``key`` back after a failed attempt, so that the request may be retried.

    Args:
        conn: the invocation's connection.
        user_id: the key's scope.
        key: the key this invocation claimed.
        maybe_sent: the failure left it unknown whether Gmail accepted the message (a timeout or a
            broken connection after the upload). The row is then kept and marked stale, so the next
            retry of the same request takes it over at once and searches Gmail for the Message-ID
            before sending. Otherwise (nothing can have been sent) the row is deleted.
    """
    if maybe_sent:
        conn.run(
            "UPDATE gmail_idempotency SET updated_at = :epoch "
            "WHERE user_id = :user_id AND idempotency_key = :key AND state = 'in_progress'",
            epoch=_EPOCH,
            user_id=user_id,
            key=key,
        )
        return
    # Never a succeeded row: its response must keep being replayed.
    conn.run(
        "DELETE FROM gmail_idempotency "
        "WHERE user_id = :user_id AND idempotency_key = :key AND state = 'in_progress'",
        user_id=user_id,
        key=key,
    )


def note_message_id(conn: Connection, user_id: str, key: str, message_id: str) -> None:
    """Records the Message-ID the attempt holding ``key`` is about to send (when it learns it only
    after claiming, as ``send_draft`` does from the draft), so a takeover can search for it."""
    conn.run(
        "UPDATE gmail_idempotency SET message_id = :message_id "
        "WHERE user_id = :user_id AND idempotency_key = :key AND state = 'in_progress'",
        message_id=message_id,
        user_id=user_id,
        key=key,
    )


def stored_message_id(conn: Connection, user_id: str, key: str) -> str | None:
    """The Message-ID stored with ``key`` (the one an attempt put on its message), or None."""
    found = conn.one(
        "SELECT message_id FROM gmail_idempotency WHERE user_id = :user_id AND idempotency_key = :key",
        user_id=user_id,
        key=key,
    )
    return found["message_id"] if found else None


def purge_expired(conn: Connection, limit: int = 1000) -> int:
    """Deletes at most ``limit`` expired rows; returns how many.

    Bounded so that an opportunistic call from a request never holds it for long; SKIP LOCKED so that
    two purges at once, or a purge and a replacing claim, never wait for each other.
    """
    if limit <= 0:
        return 0
    deleted = conn.run(
        "DELETE FROM gmail_idempotency WHERE (user_id, idempotency_key) IN ("
        "SELECT user_id, idempotency_key FROM gmail_idempotency WHERE expires_at <= :now "
        "LIMIT :limit FOR UPDATE SKIP LOCKED) AND expires_at <= :now RETURNING 1 AS deleted",
        now=_now(),
        limit=limit,
    )
    return len(deleted)


def _json_object(value: Any) -> dict[str, Any]:
    """A stored JSONB body as a dict (pg8000 decodes JSONB; a string is decoded once more)."""
    if isinstance(value, str):
        value = json.loads(value)
    return dict(value) if isinstance(value, Mapping) else {}
