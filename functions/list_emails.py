"""list_emails: list and search the user's messages, with decoded headers and optionally bodies."""

from typing import Any

from shared import web
from shared.request_types import ListEmailsRequest


@web.http_function("list_emails")
def list_emails(args: ListEmailsRequest, call: web.Call) -> Any:
    from shared.mailbox import listing  # imported on first use, as in send_email

    return listing.list_emails(args, call)
