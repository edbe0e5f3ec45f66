"""refresh_tokens: refresh one user's token now, or every equipped token close to expiry (Scheduler)."""

from typing import Any

import flask

from shared import params, provider, tokens, web

FIELDS = {
    "user_id": params.ident(100),
    "robeing_id": params.ident(50),
    "window_seconds": params.Field(
        "int", minimum=0, maximum=tokens.MAX_WINDOW_SECONDS, default=tokens.DEFAULT_WINDOW_SECONDS
    ),
}


@web.http_function("refresh_tokens", ("POST",))
def refresh_tokens(request: flask.Request, log: dict[str, Any]) -> Any:
    args = params.parse(request, FIELDS)
    if args["user_id"] is None:
        if args["robeing_id"] is not None:
            raise params.InvalidArgument("robeing_id: only with user_id")
        summary = provider.refresh_due(args["window_seconds"])
        log.update(checked=summary["checked"], refreshed=summary["refreshed"], failed=len(summary["failed"]))
        return summary
    log.update(user_id=args["user_id"], robeing_id=args["robeing_id"])
    return provider.refresh_user(args["user_id"], args["robeing_id"])
