"""create_draft: a draft for a person to review, built like send_email."""

from typing import Any

from shared import web
from shared.request_types import CreateDraftRequest


@web.http_function("create_draft")
def create_draft(args: CreateDraftRequest, call: web.Call) -> Any:
    from shared.mailbox import drafts  # imported on first use, as in send_email

    return drafts.create_draft(args, call)
