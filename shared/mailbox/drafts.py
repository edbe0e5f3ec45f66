"""``create_draft`` and ``send_draft``: drafts built like ``send_email``, sent with its promises.

Invariants:

- a draft is composed by the send path's code (``send.compose_raw``, ``send.sender``): the same
  validation, headers, attachments, threading and From;
- neither ``drafts.create`` nor ``drafts.send`` is ever re-posted unless Gmail provably did not take it
  (``GmailClient.execute_once``); after a 5xx or a broken connection the send path's
  ``confirm_after_unknown`` searches for the draft's Message-ID (``rfc822msgid:``) before anything is
  created or sent again, and when it is not found the answer is 503 with ``error.message_id``;
- ``Idempotency-Key`` works as for sends: a repeat of a finished request is answered before any token
  or Gmail work and creates or sends nothing; keys are scoped per user and fingerprinted with the
  target's name, so one key can never replay a draft as a send or the other way round;
- every call writes an audit row naming its action.
"""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Callable
from typing import Any

from googleapiclient.http import MediaIoBaseUpload

from shared import audit, idempotency
from shared.errors import NotFound, PayloadTooLarge, SkillEmailError, Unavailable
from shared.gmail import MAX_MESSAGE_BYTES, SIMPLE_SEND_MAX_BYTES, GmailClient, resource
from shared.gmail_errors import SendOutcomeUnknown
from shared.mailbox import send
from shared.mailbox.session import gmail_client, record_audit
from shared.mime import compose, request
from shared.request_types import CreateDraftRequest, SendDraftRequest
from shared.tokens import provider
from shared.web import Call

logger = logging.getLogger(__name__)

# -- create_draft ----------------------------------------------------------------------------------


def create_draft(args: CreateDraftRequest, call: Call) -> dict[str, Any]:
    """Creates a draft in the user's mailbox; see the README, create_draft."""
    mail = request.parse_outgoing(args.mail_fields())
    key = idempotency.validate_key(args.idempotency_key)

    def perform(
        client: GmailClient,
        record: provider.TokenRecord,
        resume_message_id: str | None,
        note: Callable[[str], None],
    ) -> Any:
        if resume_message_id:
            found = send.search(client, resume_message_id, _find_draft)
            if found is not None:
                return found
        # As for a send: the address is looked up only for a display name; else Gmail sets From.
        address = send.sender(client, record) if mail.from_name else None
        domain = address.rpartition("@")[2] if address else ""
        message_id = resume_message_id or compose.new_message_id(domain or send.MESSAGE_ID_DOMAIN)
        note(message_id)
        raw, thread_id = send.compose_raw(client, mail, address, message_id, args)
        try:
            return _create(client, raw, thread_id)
        except SendOutcomeUnknown as exc:
            return send.confirm_after_unknown(client, message_id, exc, _find_draft)

    def shape(draft: dict[str, Any]) -> dict[str, Any]:
        message = draft.get("message") or {}
        return {
            "draft_id": draft.get("id"),
            "message_id": message.get("id"),
            "thread_id": message.get("threadId"),
        }

    return _once(args, call, key, "create_draft", perform, shape)


def _create(client: GmailClient, raw: bytes, thread_id: str | None) -> dict[str, Any]:
    """drafts.create, posted again only when Gmail provably did not take it (as messages.send is).

    Raises:
        SendOutcomeUnknown: a 5xx or a broken connection after the request went out.
    """
    if len(raw) > MAX_MESSAGE_BYTES:
        raise PayloadTooLarge("the message is over Gmail's 35 MB limit")
    message: dict[str, Any] = {"threadId": thread_id} if thread_id else {}

    def make() -> Any:
        drafts = _drafts(client)
        if len(raw) <= SIMPLE_SEND_MAX_BYTES:
            encoded = base64.urlsafe_b64encode(raw).decode()
            return drafts.create(userId="me", body={"message": {**message, "raw": encoded}})
        media = MediaIoBaseUpload(io.BytesIO(raw), mimetype="message/rfc822", resumable=False)
        return drafts.create(userId="me", body={"message": message}, media_body=media)

    return client.execute_once(make)


def _drafts(client: GmailClient) -> Any:
    """The users.drafts Resource, built once per instance (``gmail.resource``)."""
    return resource(client.endpoint, "users", "drafts")


def _find_draft(client: GmailClient, message_id: str) -> dict[str, Any] | None:
    """The draft whose message carries our Message-ID, if Gmail has one (``drafts.list`` with ``q``)."""
    query = f"rfc822msgid:{message_id.strip('<>')}"
    listed = client.execute(lambda: _drafts(client).list(userId="me", q=query, maxResults=1))
    drafts = listed.get("drafts") if isinstance(listed, dict) else None
    return drafts[0] if drafts else None


# -- send_draft ------------------------------------------------------------------------------------


def send_draft(args: SendDraftRequest, call: Call) -> dict[str, Any]:
    """Sends one of the user's drafts; see the README, send_draft."""
    key = idempotency.validate_key(args.idempotency_key)

    def perform(
        client: GmailClient,
        record: provider.TokenRecord,
        resume_message_id: str | None,
        note: Callable[[str], None],
    ) -> Any:
        if resume_message_id:
            found = send.search(client, resume_message_id, _find_sent)
            if found is not None:
                return found
        try:
            draft = client.execute(
                lambda: _drafts(client).get(userId="me", id=args.draft_id, format="metadata")
            )
        except NotFound as exc:
            if resume_message_id:
                # An earlier attempt sent (or someone deleted) the draft, and its message is not found
                # yet: what happened is unknown, so nothing is sent.
                raise Unavailable(
                    "the draft is gone and its message is not in the mailbox yet. Retry with the same "
                    "Idempotency-Key to have this checked again",
                    message_id=resume_message_id,
                    maybe_sent=True,
                ) from exc
            raise NotFound("no such draft in this mailbox") from exc
        message_id = _message_id_header(draft)
        if message_id:
            note(message_id)
        try:
            return client.execute_once(lambda: _drafts(client).send(userId="me", body={"id": args.draft_id}))
        except SendOutcomeUnknown as exc:
            if message_id is None:
                raise Unavailable(
                    "Gmail did not confirm the send and the draft has no Message-ID to look for; it may "
                    "have been sent. Check the Sent folder before sending it again",
                    maybe_sent=True,
                ) from exc
            return send.confirm_after_unknown(client, message_id, exc, _find_sent)

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


def _find_sent(client: GmailClient, message_id: str) -> dict[str, Any] | None:
    """The SENT message carrying ``message_id`` (the draft itself carries it too, hence ``in:sent``)."""
    listed = client.list_messages(
        q=f"rfc822msgid:{message_id.strip('<>')} in:sent",
        label_ids=None,
        max_results=1,
        page_token=None,
        include_spam_trash=True,
    )
    messages = listed.get("messages") or []
    return client.get_message(str(messages[0]["id"]), fmt="minimal") if messages else None


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
    perform: Callable[[GmailClient, provider.TokenRecord, str | None, Callable[[str], None]], Any],
    shape: Callable[[dict[str, Any]], dict[str, Any]],
) -> dict[str, Any]:
    """Runs ``perform`` at most once per Idempotency-Key and answers ``shape`` of its result.

    A repeat of a finished request answers the stored body before any token is read; otherwise the key
    is claimed before anything reaches Gmail. ``perform(client, record, resume_message_id, note)`` does
    the Gmail work and calls ``note`` with the Message-ID it is about to create or send, before it goes
    out, so that a retry taking over an attempt that died or ended unknown (``resume_message_id``)
    searches for that message before doing anything again.
    """
    action, replay_action = _ACTIONS[target]
    fingerprint = idempotency.fingerprint({"target": target, **args.as_body()})
    with provider.open_session() as session:
        conn = session.conn
        if key is not None and conn is None:
            raise Unavailable("Idempotency-Key needs the database (set DATABASE_URL or DB_URL_SECRET)")
        if key is not None and conn is not None:
            done = idempotency.finished(conn, args.user_id, key, fingerprint)
            if done is not None and done.replay is not None:
                return _replay(session, args, call, replay_action, done)
        claimed = False

        def note(message_id: str) -> None:
            if key is not None and conn is not None:
                idempotency.note_message_id(conn, args.user_id, key, message_id)

        try:
            with gmail_client(session, args.user_id, args.robeing_id, call.log, target=target) as (
                client,
                record,
            ):
                resume = None
                if key is not None and conn is not None:
                    claim = idempotency.claim(conn, args.user_id, key, fingerprint, message_id=None)
                    if claim.replay is not None:  # finished between our look and our claim
                        return _replay(session, args, call, replay_action, claim)
                    claimed = True
                    resume = claim.resume_message_id
                result = perform(client, record, resume, note)
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


def _replay(
    session: provider.Session,
    args: CreateDraftRequest | SendDraftRequest,
    call: Call,
    action: str,
    claim: idempotency.Claim,
) -> dict[str, Any]:
    """The stored answer of a finished request with this key; nothing is created or sent."""
    assert claim.replay is not None
    call.log["idempotent_replay"] = True
    replayed = claim.replay
    message_id = replayed.get("message_id") or replayed.get("id")
    record_audit(
        session, args, action, call, http_status=claim.replay_status or 200, gmail_message_id=message_id
    )
    return replayed
