"""send_email: send a message from the user's Gmail mailbox."""

from typing import Any

from shared import web
from shared.request_types import SendEmailRequest


@web.http_function("send_email")
def send_email(args: SendEmailRequest, call: web.Call) -> Any:
    # Imported on first use: googleapiclient, httplib2 and the MIME code cost ~100 ms of import that
    # token_status and refresh_tokens instances, which load this same main.py, never need.
    from shared.mailbox import send

    return send.send_email(args, call)
