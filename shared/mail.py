"""send_email and list_emails: the token store, the Gmail client, MIME, idempotency and audit, together."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from shared import audit, clock, config, idempotency, mime
from shared.errors import SkillEmailError, Unavailable
from shared.gmail import GmailClient, SendOutcomeUnknown, StoreCredentials
from shared.request_types import ListEmailsRequest, SendEmailRequest, UserRequest
from shared.tokens import provider
from shared.web import Call

logger = logging.getLogger(__name__)

REPLY_HEADERS = ("Message-ID", "References", "Subject")
# Gmail indexes a just-sent message for search within a second or two; waiting this long before
# the rfc822msgid: check makes "not found" mean something.
UNKNOWN_OUTCOME_WAIT_S = 2.0
# The mailbox address changes only when a person reconnects another account; Gmail rewrites a From
# that is not the account's own anyway, so a short cache is safe and saves a round trip per send.
SENDER_CACHE_S = 600.0

_senders: dict[tuple[str, int | None], tuple[str, float]] = {}
_senders_lock = threading.Lock()


@contextmanager
def _gmail(
    session: provider.Session, user_id: str, robeing_id: str | None, log: dict[str, Any]
) -> Iterator[tuple[GmailClient, provider.TokenRecord]]:
    record = session.store.usable(user_id, robeing_id)

    def refresh(stale: str | None) -> tuple[str | None, datetime | None]:
        nonlocal record
        record = session.store.refresh_record(record, stale)
        return record.access_token, record.expiry

    credentials = StoreCredentials(record.access_token, record.expiry, refresh)
    client = GmailClient(config.load_settings().gmail_api_endpoint, credentials)
    try:
        yield client, record
    finally:
        log["gmail_calls"] = client.calls


def _audit(
    session: provider.Session,
    args: UserRequest,
    action: str,
    call: Call,
    *,
    http_status: int,
    error_code: str | None = None,
    **extra: Any,
) -> None:
    if session.conn is None:
        return
    audit.record(
        session.conn,
        user_id=args.user_id,
        robeing_id=args.robeing_id,
        action=action,
        status=audit.OK if http_status < 400 else audit.ERROR,
        http_status=http_status,
        duration_ms=call.duration_ms(),
        gmail_calls=int(call.log.get("gmail_calls", 0)),
        error_code=error_code,
        trace_id=call.trace_id,
        **extra,
    )


def _sender(client: GmailClient, record: provider.TokenRecord) -> str:
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
    mail = mime.parse_outgoing(args.mail_fields())
    key = idempotency.validate_key(args.idempotency_key)
    log = call.log
    with provider.open_session() as session:
        if key is not None and session.conn is None:
            raise Unavailable("Idempotency-Key needs the database (set DATABASE_URL or DB_URL_SECRET)")
        claimed = False
        sent: dict[str, Any] | None = None
        try:
            with _gmail(session, args.user_id, args.robeing_id, log) as (client, record):
                sender = _sender(client, record)
                message_id = mime.new_message_id(sender.rpartition("@")[2] or "skill-email.local")
                if key is not None:
                    assert session.conn is not None
                    claim = idempotency.claim(
                        session.conn,
                        args.user_id,
                        key,
                        idempotency.fingerprint(args.as_body()),
                        message_id=message_id,
                    )
                    if claim.replay is not None:
                        log["idempotent_replay"] = True
                        _audit(
                            session,
                            args,
                            audit.SEND_REPLAY,
                            call,
                            http_status=claim.replay_status or 200,
                            gmail_message_id=claim.replay.get("id"),
                        )
                        return claim.replay
                    claimed = True
                    if claim.resume_message_id:
                        message_id = claim.resume_message_id
                        sent = _search_sent(client, message_id)
                if sent is None:
                    sent = _send(client, mail, sender, message_id, args)
        except SkillEmailError as exc:
            if claimed and session.conn is not None and key is not None:
                idempotency.release(
                    session.conn, args.user_id, key, maybe_sent=bool(exc.details.get("maybe_sent"))
                )
            _audit(session, args, audit.SEND, call, http_status=exc.status, error_code=exc.code)
            raise
        except Exception:
            if claimed and session.conn is not None and key is not None:
                idempotency.release(session.conn, args.user_id, key, maybe_sent=True)
            raise
        # Outside the try: Gmail has the message now, so nothing below may free the key for a resend.
        return _finish_send(session, args, key, call, sent)


def _send(
    client: GmailClient, mail: mime.OutgoingMail, sender: str, message_id: str, args: SendEmailRequest
) -> dict[str, Any]:
    reply = None
    if args.reply_to_message_id:
        original = client.get_message(args.reply_to_message_id, fmt="metadata", headers=REPLY_HEADERS)
        reply = mime.reply_context_from_gmail(original)
    thread_id = args.thread_id or (reply.thread_id if reply else None)
    raw = mime.to_raw(mime.build_message(mail, sender, message_id=message_id, reply=reply))
    try:
        return client.send(raw, thread_id)
    except SendOutcomeUnknown as exc:
        # Gmail may have sent it. Look for our Message-ID before saying anything; never re-post blindly.
        clock.sleep(UNKNOWN_OUTCOME_WAIT_S)
        found = _search_sent(client, message_id)
        if found is not None:
            logger.info("send outcome confirmed by Message-ID search after: %s", exc)
            return found
        logger.warning("send outcome unknown: %s; not re-sent", exc)
        raise Unavailable(
            "Gmail did not confirm the send and the message is not in the mailbox yet; it may still "
            "arrive. Retry with the same Idempotency-Key to have this checked again before any resend",
            message_id=message_id,
            maybe_sent=True,
        ) from exc


def _search_sent(client: GmailClient, message_id: str) -> dict[str, Any] | None:
    """Looks for our Message-ID; a failed search still leaves the outcome unknown, never "not sent"."""
    try:
        return client.find_by_message_id(message_id)
    except SkillEmailError as exc:
        raise Unavailable(
            "Gmail could not be searched for the message, which may have been sent. Retry with the same "
            "Idempotency-Key to have this checked again before any resend",
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
    _audit(
        session,
        args,
        audit.SEND,
        call,
        http_status=200,
        gmail_message_id=body["id"],
        gmail_thread_id=body["thread_id"],
    )
    return body


def list_emails(args: ListEmailsRequest, call: Call) -> dict[str, Any]:
    """Lists or searches the user's messages; see the README, list_emails."""
    with provider.open_session() as session:
        try:
            with _gmail(session, args.user_id, args.robeing_id, call.log) as (client, _record):
                listed = client.list_messages(
                    q=args.q,
                    label_ids=args.label_ids,
                    max_results=args.max_results,
                    page_token=args.page_token,
                    include_spam_trash=args.include_spam_trash,
                )
                ids = [str(item["id"]) for item in listed.get("messages") or [] if item.get("id")]
                # format=full even without bodies: only it describes the MIME parts, so only it can
                # list attachments; the bodies it carries are dropped unless include_body.
                resources = client.get_messages(ids, fmt="full") if ids else []
            messages = [
                mime.parse_gmail_message(resource, include_body=args.include_body) for resource in resources
            ]
        except SkillEmailError as exc:
            _audit(session, args, audit.LIST, call, http_status=exc.status, error_code=exc.code)
            raise
        call.log["result_count"] = len(messages)
        _audit(session, args, audit.LIST, call, http_status=200, result_count=len(messages))
        return {
            "messages": messages,
            "next_page_token": listed.get("nextPageToken") or None,
            "result_size_estimate": int(listed.get("resultSizeEstimate") or 0),
        }
