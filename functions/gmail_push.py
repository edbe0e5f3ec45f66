"""gmail_push: Gmail's Pub/Sub notification (a CloudEvent): queue and deliver the new messages' events."""

from typing import Any

import functions_framework


@functions_framework.cloud_event
def gmail_push(event: Any) -> None:
    # Returning acknowledges the message; raising makes functions-framework answer 500 and Pub/Sub
    # redeliver it (see shared/events/push.py for which is which).
    from shared.events import push

    push.handle(event)
