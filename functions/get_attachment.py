"""get_attachment: the bytes of one attachment, streamed."""

from typing import Any

from shared import web
from shared.request_types import GetAttachmentRequest


@web.http_function("get_attachment")
def get_attachment(args: GetAttachmentRequest, call: web.Call) -> Any:
    from shared.mailbox import reading  # imported on first use, as in send_email

    return reading.get_attachment(args, call)
