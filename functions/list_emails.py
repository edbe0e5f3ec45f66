"""list_emails: list and search the user's messages, with decoded headers and optionally bodies."""

from typing import Any

import flask

from shared import params, web


@web.http_function("list_emails", ("GET", "POST"))
def list_emails(request: flask.Request, log: dict[str, Any]) -> Any:
    from shared import mail  # imported on first use, as in send_email

    args = params.parse(request, mail.LIST_FIELDS)
    log.update(user_id=args["user_id"], robeing_id=args["robeing_id"])
    return mail.list_emails(args, log)
