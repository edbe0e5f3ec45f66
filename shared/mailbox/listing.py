"""``list_emails``: one page of the user's messages, with decoded headers and optionally bodies.

Invariant: the messages' details are fetched in Gmail batch requests, never one request per message.
"""

from __future__ import annotations

from typing import Any

from shared import audit
from shared.errors import SkillEmailError
from shared.mailbox.session import gmail_client, record_audit
from shared.mime import decode
from shared.request_types import ListEmailsRequest
from shared.tokens import provider
from shared.web import Call


def list_emails(args: ListEmailsRequest, call: Call) -> dict[str, Any]:
    """Lists or searches the user's messages; see the README, list_emails."""
    with provider.open_session() as session:
        try:
            with gmail_client(session, args.user_id, args.robeing_id, call.log, target="list_emails") as (
                client,
                _record,
            ):
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
                decode.parse_gmail_message(resource, include_body=args.include_body) for resource in resources
            ]
        except SkillEmailError as exc:
            record_audit(session, args, audit.LIST, call, http_status=exc.status, error_code=exc.code)
            raise
        call.log["result_count"] = len(messages)
        record_audit(session, args, audit.LIST, call, http_status=200, result_count=len(messages))
        return {
            "messages": messages,
            "next_page_token": listed.get("nextPageToken") or None,
            "result_size_estimate": int(listed.get("resultSizeEstimate") or 0),
        }
