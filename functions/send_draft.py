"""send_draft: send one of the user's drafts, never twice."""

from typing import Any

from shared import web
from shared.request_types import SendDraftRequest


@web.http_function("send_draft")
def send_draft(args: SendDraftRequest, call: web.Call) -> Any:
    from shared.mailbox import drafts  # imported on first use, as in send_email

    return drafts.send_draft(args, call)
