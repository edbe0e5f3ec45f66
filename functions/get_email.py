"""get_email: one message, with decoded bodies and every header a reply needs."""

from typing import Any

from shared import web
from shared.request_types import GetEmailRequest


@web.http_function("get_email")
def get_email(args: GetEmailRequest, call: web.Call) -> Any:
    from shared.mailbox import reading  # imported on first use, as in send_email

    return reading.get_email(args, call)
