"""``create_draft`` and ``send_draft``: drafts built like ``send_email``, sent with its promises.

Invariants:

- a draft is composed by the send path's code (same validation, headers, attachments, threading, From);
- neither ``drafts.create`` nor ``drafts.send`` is ever re-posted unless Gmail provably did not take it
  (``GmailClient.execute_once``); after a 5xx or a broken connection the draft's Message-ID is searched
  for (``rfc822msgid:``) before anything is created or sent again, and when it is not found the answer
  is 503 with ``error.message_id``;
- ``Idempotency-Key`` works as for sends: a repeat returns the first answer and creates or sends
  nothing; keys are scoped per user and fingerprinted with the target's name, so one key can never
  replay a draft as a send or the other way round;
- every call writes an audit row naming its action.
"""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Callable
from typing import Any

from googleapiclient.http import MediaIoBaseUpload

from shared import audit, clock, idempotency, mime, provider, scopes
from shared.errors import NotFound, PayloadTooLarge, SkillEmailError, Unavailable
from shared.gmail import MAX_MESSAGE_BYTES, SIMPLE_SEND_MAX_BYTES, GmailClient, SendOutcomeUnknown
from shared.mail import REPLY_HEADERS, UNKNOWN_OUTCOME_WAIT_S
from shared.mailbox.session import gmail_client, record_audit
from shared.request_types import CreateDraftRequest, SendDraftRequest
from shared.web import Call

logger = logging.getLogger(__name__)

_RETRY_HINT = "Retry with the same Idempotency-Key to have this checked again before anything is repeated"


# -- create_draft ----------------------------------------------------------------------------------


def create_draft(args: CreateDraftRequest, call: Call) -> dict[str, Any]:
    """Creates a draft in the user's mailbox; see the README, create_draft."""
    mail = mime.parse_outgoing(args.mail_fields())
    key = idempotency.validate_key(args.idempotency_key)

    def perform(client: GmailClient, resume_message_id: str | None, note: Callable[[str], None]) -> Any:
        if resume_message_id:
            found = _find_draft(client, resume_message_id)
            if found is not None:
                return found
        sender = client.email_address()
        message_id = resume_message_id or mime.new_message_id(
            sender.rpartition("@")[2] or "skill-email.local"
        )
        note(message_id)
        return _create(client, mail, sender, message_id, args)

    def shape(draft: dict[str, Any]) -> dict[str, Any]:
        message = draft.get("message") or {}
        return {
            "draft_id": draft.get("id"),
            "message_id": message.get("id"),
            "thread_id": message.get("threadId"),
        }

    return _once(args, call, key, "create_draft", perform, shape)


def _create(
    client: GmailClient, mail: mime.OutgoingMail, sender: str, message_id: str, args: CreateDraftRequest
) -> dict[str, Any]:
    reply = None
    if args.reply_to_message_id:
        original = client.get_message(args.reply_to_message_id, fmt="metadata", headers=REPLY_HEADERS)
        reply = mime.reply_context_from_gmail(original)
    thread_id = args.thread_id or (reply.thread_id if reply else None)
    raw = mime.to_raw(mime.build_message(mail, sender, message_id=message_id, reply=reply))
    if len(raw) > MAX_MESSAGE_BYTES:
        raise PayloadTooLarge("the message is over Gmail's 35 MB limit")
    message: dict[str, Any] = {"threadId": thread_id} if thread_id else {}

    def make() -> Any:
        drafts = client.service.users().drafts()
        if len(raw) <= SIMPLE_SEND_MAX_BYTES:
            encoded = base64.urlsafe_b64encode(raw).decode()
            return drafts.create(userId="me", body={"message": {**message, "raw": encoded}})
        media = MediaIoBaseUpload(io.BytesIO(raw), mimetype="message/rfc822", resumable=False)
        return drafts.create(userId="me", body={"message": message}, media_body=media)

    try:
        return client.execute_once(make)
    except SendOutcomeUnknown as exc:
        clock.sleep(UNKNOWN_OUTCOME_WAIT_S)
        found = _find_draft(client, message_id)
        if found is not None:
            logger.info("draft creation confirmed by Message-ID search after: %s", exc)
            return found
        logger.warning("draft creation outcome unknown: %s; not re-posted", exc)
        raise Unavailable(
            f"Gmail did not confirm the draft and it is not in the mailbox yet. {_RETRY_HINT}",
            message_id=message_id,
            maybe_sent=True,
        ) from exc


def _find_draft(client: GmailClient, message_id: str) -> dict[str, Any] | None:
    """The draft whose message carries our Message-ID, if Gmail has one (``drafts.list`` with ``q``)."""
    query = f"rfc822msgid:{message_id.strip('<>')}"
    try:
        listed = client.execute(
            lambda: client.service.users().drafts().list(userId="me", q=query, maxResults=1)
        )
    except SkillEmailError as exc:
        raise Unavailable(
            f"Gmail could not be searched for the draft, which may exist. {_RETRY_HINT}",
            message_id=message_id,
            maybe_sent=True,
        ) from exc
    drafts = listed.get("drafts") if isinstance(listed, dict) else None
    return drafts[0] if drafts else None


# -- send_draft ------------------------------------------------------------------------------------


def send_draft(args: SendDraftRequest, call: Call) -> dict[str, Any]:
    """Sends one of the user's drafts; see the README, send_draft."""
    key = idempotency.validate_key(args.idempotency_key)

    def perform(client: GmailClient, resume_message_id: str | None, note: Callable[[str], None]) -> Any:
        if resume_message_id:
            found = _search_sent(client, resume_message_id)
            if found is not None:
                return found
        try:
            draft = client.execute(
                lambda: client.service.users().drafts().get(userId="me", id=args.draft_id, format="metadata")
            )
        except NotFound as exc:
            if resume_message_id:
                # An earlier attempt sent (or someone deleted) the draft, and its message is not found
                # yet: what happened is unknown, so nothing is sent.
                raise Unavailable(
                    f"the draft is gone and its message is not in the mailbox yet. {_RETRY_HINT}",
                    message_id=resume_message_id,
                    maybe_sent=True,
                ) from exc
            raise NotFound("no such draft in this mailbox") from exc
        message_id = _message_id_header(draft)
        if message_id:
            note(message_id)
        return _send(client, args.draft_id, message_id)

    def shape(sent: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": sent.get("id"),
            "thread_id": sent.get("threadId"),
            "label_ids": list(sent.get("labelIds") or []),
        }

    return _once(args, call, key, "send_draft", perform, shape)


def _message_id_header(draft: Any) -> str | None:
    message = draft.get("message") if isinstance(draft, dict) else None
    payload = message.get("payload") if isinstance(message, dict) else None
    for header in (payload or {}).get("headers") or []:
        if isinstance(header, dict) and str(header.get("name", "")).lower() == "message-id":
            value = " ".join(str(header.get("value") or "").split())
            return value or None
    return None


def _send(client: GmailClient, draft_id: str, message_id: str | None) -> dict[str, Any]:
    try:
        return client.execute_once(
            lambda: client.service.users().drafts().send(userId="me", body={"id": draft_id})
        )
    except SendOutcomeUnknown as exc:
        if message_id is None:
            raise Unavailable(
                "Gmail did not confirm the send and the draft has no Message-ID to look for; it may "
                "have been sent. Check the Sent folder before sending it again",
                maybe_sent=True,
            ) from exc
        clock.sleep(UNKNOWN_OUTCOME_WAIT_S)
        found = _search_sent(client, message_id)
        if found is not None:
            logger.info("draft send confirmed by Message-ID search after: %s", exc)
            return found
        logger.warning("draft send outcome unknown: %s; not re-sent", exc)
        raise Unavailable(
            f"Gmail did not confirm the send and the message is not in the mailbox yet; it may still "
            f"arrive. {_RETRY_HINT}",
            message_id=message_id,
            maybe_sent=True,
        ) from exc


def _search_sent(client: GmailClient, message_id: str) -> dict[str, Any] | None:
    """The SENT message carrying ``message_id`` (the draft itself carries it too, so ``in:sent``)."""
    try:
        listed = client.list_messages(
            q=f"rfc822msgid:{message_id.strip('<>')} in:sent",
            label_ids=None,
            max_results=1,
            page_token=None,
            include_spam_trash=True,
        )
        messages = listed.get("messages") or []
        return client.get_message(str(messages[0]["id"]), fmt="minimal") if messages else None
    except SkillEmailError as exc:
        raise Unavailable(
            f"Gmail could not be searched for the message, which may have been sent. {_RETRY_HINT}",
            message_id=message_id,
            maybe_sent=True,
        ) from exc


# -- what both share: the key, the release, the audit --------------------------------------------------

# target -> (audit action, audit action of a replay)
_ACTIONS = {
    "create_draft": (audit.CREATE_DRAFT, audit.CREATE_DRAFT_REPLAY),
    "send_draft": (audit.SEND_DRAFT, audit.SEND_DRAFT_REPLAY),
}


def _once(
    args: CreateDraftRequest | SendDraftRequest,
    call: Call,
    key: str | None,
    target: str,
    perform: Callable[[GmailClient, str | None, Callable[[str], None]], Any],
    shape: Callable[[dict[str, Any]], dict[str, Any]],
) -> dict[str, Any]:
    """Runs ``perform`` at most once per Idempotency-Key and answers ``shape`` of its result.

    The key is claimed before anything reaches Gmail; a repeat of a finished request answers the stored
    body. ``perform(client, resume_message_id, note)`` does the Gmail work and calls ``note`` with the
    Message-ID it is about to create or send, before it goes out, so that a retry taking over an attempt
    that died (``resume_message_id``) searches for that message before doing anything again.
    """
    action, replay_action = _ACTIONS[target]
    fingerprint = idempotency.fingerprint({"target": target, **args.as_body()})
    with provider.open_session() as session:
        conn = session.conn
        if key is not None and conn is None:
            raise Unavailable("Idempotency-Key needs the database (set DATABASE_URL or DB_URL_SECRET)")
        claimed = False

        def note(message_id: str) -> None:
            if key is not None and conn is not None:
                idempotency.note_message_id(conn, args.user_id, key, message_id)

        try:
            with (
                gmail_client(session, args.user_id, args.robeing_id, call.log) as (client, record),
                scopes.gate(target, record.scopes),
            ):
                resume = None
                if key is not None and conn is not None:
                    claim = idempotency.claim(conn, args.user_id, key, fingerprint, message_id=None)
                    if claim.replay is not None:
                        call.log["idempotent_replay"] = True
                        status = claim.replay_status or 200
                        record_audit(session, args, replay_action, call, http_status=status)
                        return claim.replay
                    claimed = True
                    resume = claim.resume_message_id
                result = perform(client, resume, note)
        except SkillEmailError as exc:
            if claimed and conn is not None and key is not None:
                idempotency.release(conn, args.user_id, key, maybe_sent=bool(exc.details.get("maybe_sent")))
            record_audit(session, args, action, call, http_status=exc.status, error_code=exc.code)
            raise
        except Exception:
            if claimed and conn is not None and key is not None:
                idempotency.release(conn, args.user_id, key, maybe_sent=True)
            raise
        # Outside the try: Gmail has done the work, so nothing below may free the key for a repeat.
        body = shape(result if isinstance(result, dict) else {})
        if key is not None and conn is not None:
            try:
                idempotency.complete(conn, args.user_id, key, status=200, body=body)
            except SkillEmailError as exc:
                # The record stays in progress; a retry takes it over once stale and searches first.
                logger.warning("done, but the Idempotency-Key record was not completed: %s", exc.code)
        message_id = body.get("message_id") if target == "create_draft" else body.get("id")
        call.log["gmail_message_id"] = message_id
        record_audit(
            session,
            args,
            action,
            call,
            http_status=200,
            gmail_message_id=message_id,
            gmail_thread_id=body.get("thread_id"),
        )
        return body
