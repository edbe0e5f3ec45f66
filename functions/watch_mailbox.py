"""watch_mailbox: start or stop new-mail notifications of the user's mailbox for a robeing."""

from typing import Any

from shared import web
from shared.request_types import WatchMailboxRequest


@web.http_function("watch_mailbox")
def watch_mailbox(args: WatchMailboxRequest, call: web.Call) -> Any:
    from shared.events import api  # imported on first use: googleapiclient is not needed by every target

    return api.watch_mailbox(args, call)
