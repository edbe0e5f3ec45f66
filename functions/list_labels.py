"""list_labels: the mailbox's labels, with counts when asked."""

from typing import Any

from shared import web
from shared.request_types import ListLabelsRequest


@web.http_function("list_labels")
def list_labels(args: ListLabelsRequest, call: web.Call) -> Any:
    from shared.mailbox import labels  # imported on first use, as in send_email

    return labels.list_labels(args, call)
