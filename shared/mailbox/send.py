"""``send_email``: compose and send one message, with the Idempotency-Key and no-blind-resend rules.

Invariants:

- A repeat of a finished send (same key, same request) is answered from the idempotency record before
  any token is read or refreshed and before Gmail is called.
- Once Gmail may have the message, it is never sent again blindly: a 5xx or a broken connection is
  followed by a search for our Message-ID, and an unresolved outcome keeps the key for a checked retry.
- Once Gmail has the message, the answer is 200 and the key stays taken, whatever fails afterwards.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from shared import audit, clock, idempotency
from shared.errors import SkillEmailError, Unavailable
from shared.gmail import GmailClient
from shared.gmail_errors import SendOutcomeUnknown
from shared.mailbox.session import gmail_client, record_audit
from shared.mime import compose, decode, request
from shared.request_types import SendEmailRequest
from shared.tokens import provider
from shared.web import Call

logger = logging.getLogger(__name__)

REPLY_HEADERS = ("Message-ID", "References", "Subject")
# Gmail indexes a just-sent message for search within a second or two; waiting this long before
# the rfc822msgid: check makes "not found" mean something. Waited through clock.sleep.
UNKNOWN_OUTCOME_WAIT_S = 2.0
# The mailbox address changes only when a person reconnects another account; Gmail rewrites a From
# that is not the account's own anyway, so a short cache is safe and saves a round trip per send.
SENDER_CACHE_S = 600.0
# The right side of our Message-IDs when the mailbox's address is not known (a send without from_name
# never asks Gmail for it): any domain-like name keeps the id unique; the random left side does the rest.
MESSAGE_ID_DOMAIN = "skill-email.local"

_senders: dict[tuple[str, int | None], tuple[str, float]] = {}
_senders_lock = threading.Lock()


def sender(client: GmailClient, record: provider.TokenRecord) -> str:
    """The mailbox's own address (users.getProfile), cached per token row for ``SENDER_CACHE_S``."""
    key = (record.user_id, record.row_id)
    now = clock.monotonic()
    with _senders_lock:
        cached = _senders.get(key)
    if cached and cached[1] > now:
        return cached[0]
    address = client.email_address()
    with _senders_lock:
        _senders[key] = (address, now + SENDER_CACHE_S)
    return address


def send_email(args: SendEmailRequest, call: Call) -> dict[str, Any]:
    """Sends a message from the user's mailbox; see the README, send_email."""
    mail = request.parse_outgoing(args.mail_fields())
    key = idempotency.validate_key(args.idempotency_key)
    log = call.log
    with provider.open_session() as session:
        if key is not None and session.conn is None:
            raise Unavailable("Idempotency-Key needs the database (set DATABASE_URL or DB_URL_SECRET)")
        fingerprint = idempotency.fingerprint(args.as_body()) if key is not None else ""
        if key is not None:
            assert session.conn is not None
            done = idempotency.finished(session.conn, args.user_id, key, fingerprint)
            if done is not None and done.replay is not None:
                return _replay(session, args, call, done)
        claimed = False
        sent: dict[str, Any] | None = None
        try:
            with gmail_client(session, args.user_id, args.robeing_id, log, target="send_email") as (
                client,
                record,
            ):
                # Without a display name, From is left to Gmail, which sets the mailbox's own address:
                # no profile lookup (one Gmail round trip) before a first send. A display name needs
                # the address itself, looked up once per user and instance.
                address = sender(client, record) if mail.from_name else None
                domain = address.rpartition("@")[2] if address else ""
                message_id = compose.new_message_id(domain or MESSAGE_ID_DOMAIN)
                if key is not None:
                    assert session.conn is not None
                    claim = idempotency.claim(
                        session.conn, args.user_id, key, fingerprint, message_id=message_id
                    )
                    if claim.replay is not None:  # finished between our look and our claim
                        return _replay(session, args, call, claim)
                    claimed = True
                    if claim.resume_message_id:
                        message_id = claim.resume_message_id
                        sent = search(client, message_id)
                if sent is None:
                    sent = _send(client, mail, address, message_id, args)
        except SkillEmailError as exc:
            if claimed and session.conn is not None and key is not None:
                idempotency.release(
                    session.conn, args.user_id, key, maybe_sent=bool(exc.details.get("maybe_sent"))
                )
            record_audit(session, args, audit.SEND, call, http_status=exc.status, error_code=exc.code)
            raise
        except Exception:
            if claimed and session.conn is not None and key is not None:
                idempotency.release(session.conn, args.user_id, key, maybe_sent=True)
            raise
        # Outside the try: Gmail has the message now, so nothing below may free the key for a resend.
        return _finish_send(session, args, key, call, sent)


def _replay(
    session: provider.Session, args: SendEmailRequest, call: Call, claim: idempotency.Claim
) -> dict[str, Any]:
    assert claim.replay is not None
    call.log["idempotent_replay"] = True
    record_audit(
        session,
        args,
        audit.SEND_REPLAY,
        call,
        http_status=claim.replay_status or 200,
        gmail_message_id=claim.replay.get("id"),
    )
    return claim.replay


def compose_raw(
    client: GmailClient,
    mail: request.OutgoingMail,
    sender_address: str | None,
    message_id: str,
    args: SendEmailRequest,
) -> tuple[bytes, str | None]:
    """The message as the bytes Gmail takes, and the thread it belongs in (send_email, create_draft).

    ``reply_to_message_id`` is read (its headers only) to thread the reply; ``thread_id`` wins when given.
    Without ``sender_address`` the From header is left to Gmail (the mailbox's own address).

    Raises:
        NotFound: ``reply_to_message_id`` names no message of this mailbox.
    """
    reply = None
    if args.reply_to_message_id:
        original = client.get_message(args.reply_to_message_id, fmt="metadata", headers=REPLY_HEADERS)
        reply = decode.reply_context_from_gmail(original)
    thread_id = args.thread_id or (reply.thread_id if reply else None)
    raw = compose.to_raw(compose.build_message(mail, sender_address, message_id=message_id, reply=reply))
    return raw, thread_id


def _send(
    client: GmailClient,
    mail: request.OutgoingMail,
    sender_address: str | None,
    message_id: str,
    args: SendEmailRequest,
) -> dict[str, Any]:
    raw, thread_id = compose_raw(client, mail, sender_address, message_id, args)
    try:
        return client.send(raw, thread_id)
    except SendOutcomeUnknown as exc:
        return confirm_after_unknown(client, message_id, exc)


Finder = Callable[[GmailClient, str], dict[str, Any] | None]


def _find_message(client: GmailClient, message_id: str) -> dict[str, Any] | None:
    return client.find_by_message_id(message_id)


def confirm_after_unknown(
    client: GmailClient, message_id: str, cause: SendOutcomeUnknown, find: Finder = _find_message
) -> dict[str, Any]:
    """After a 5xx or a broken connection Gmail may have done it: wait, then look for our Message-ID.

    Never re-posts. Used by every call that must not happen twice (a send, a draft, a draft's send), each
    with its own ``find`` (the sent message, the draft, the draft's sent message).

    Returns:
        What ``find`` found: the outcome is confirmed.

    Raises:
        Unavailable: not found, or the search failed; carries ``message_id`` and ``maybe_sent`` so a retry
            with the same Idempotency-Key searches again before anything is repeated.
    """
    clock.sleep(UNKNOWN_OUTCOME_WAIT_S)
    found = search(client, message_id, find)
    if found is not None:
        logger.info("outcome confirmed by Message-ID search after: %s", cause)
        return found
    logger.warning("outcome unknown: %s; not re-posted", cause)
    raise Unavailable(
        "Gmail did not confirm it and it is not in the mailbox yet; it may still arrive. Retry with the "
        "same Idempotency-Key to have this checked again before anything is repeated",
        message_id=message_id,
        maybe_sent=True,
    ) from cause


def search(client: GmailClient, message_id: str, find: Finder = _find_message) -> dict[str, Any] | None:
    """Looks for our Message-ID; a failed search still leaves the outcome unknown, never "not done"."""
    try:
        return find(client, message_id)
    except SkillEmailError as exc:
        raise Unavailable(
            "Gmail could not be searched for the message, which may have been sent. Retry with the same "
            "Idempotency-Key to have this checked again before anything is repeated",
            message_id=message_id,
            maybe_sent=True,
        ) from exc


def _finish_send(
    session: provider.Session,
    args: SendEmailRequest,
    key: str | None,
    call: Call,
    result: dict[str, Any],
) -> dict[str, Any]:
    body = {
        "id": result.get("id"),
        "thread_id": result.get("threadId"),
        "label_ids": list(result.get("labelIds") or []),
    }
    if key is not None and session.conn is not None:
        try:
            idempotency.complete(session.conn, args.user_id, key, status=200, body=body)
        except SkillEmailError as exc:
            # The mail is sent: answer so. The record stays in progress, and a retry with this key
            # takes it over once stale and finds the message by its Message-ID instead of resending.
            logger.warning("sent, but the Idempotency-Key record was not completed: %s", exc.code)
    call.log["gmail_message_id"] = body["id"]
    record_audit(
        session,
        args,
        audit.SEND,
        call,
        http_status=200,
        gmail_message_id=body["id"],
        gmail_thread_id=body["thread_id"],
    )
    return body
