"""get_thread: a whole conversation, oldest message first, in one Gmail request."""

from typing import Any

from shared import web
from shared.request_types import GetThreadRequest


@web.http_function("get_thread")
def get_thread(args: GetThreadRequest, call: web.Call) -> Any:
    from shared.mailbox import reading  # imported on first use, as in send_email

    return reading.get_thread(args, call)
