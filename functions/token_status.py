"""token_status: whether a user has a usable Gmail token (never the token itself)."""

from typing import Any

import flask

from shared import params, provider, web


@web.http_function("token_status", ("GET", "POST"))
def token_status(request: flask.Request, log: dict[str, Any]) -> Any:
    args = params.parse(request, params.USER_FIELDS)
    log.update(user_id=args["user_id"], robeing_id=args["robeing_id"])
    return provider.token_status(args["user_id"], args["robeing_id"])
