"""modify_email: labels, read/unread, archive and trash for a message or a thread."""

from typing import Any

from shared import web
from shared.request_types import ModifyEmailRequest


@web.http_function("modify_email")
def modify_email(args: ModifyEmailRequest, call: web.Call) -> Any:
    from shared.mailbox import modify  # imported on first use, as in send_email

    return modify.modify_email(args, call)
