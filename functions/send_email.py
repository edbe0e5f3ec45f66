"""send_email: send a message from the user's Gmail mailbox."""

from typing import Any

import flask

from shared import idempotency, params, web


@web.http_function("send_email", ("POST",))
def send_email(request: flask.Request, log: dict[str, Any]) -> Any:
    # Imported on first use: googleapiclient, httplib2 and the MIME code cost ~100 ms of import that
    # token_status and refresh_tokens instances, which load this same main.py, never need.
    from shared import mail

    args = params.parse(request, mail.SEND_FIELDS, max_body=params.MAX_SEND_BODY_BYTES)
    log.update(user_id=args["user_id"], robeing_id=args["robeing_id"])
    return mail.send_email(args, request.headers.get(idempotency.KEY_HEADER), log)
