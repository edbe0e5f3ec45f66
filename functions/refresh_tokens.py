"""refresh_tokens: refresh one user's token now, or every equipped token close to expiry (Scheduler)."""

from typing import Any

from shared import retention, web
from shared.errors import InvalidArgument
from shared.request_types import RefreshTokensRequest
from shared.tokens import provider


@web.http_function("refresh_tokens")
def refresh_tokens(args: RefreshTokensRequest, call: web.Call) -> Any:
    if args.user_id is None:
        if args.robeing_id is not None:
            raise InvalidArgument("robeing_id: only with user_id")
        summary = provider.refresh_due(args.window_seconds)
        call.log.update(
            checked=summary["checked"], refreshed=summary["refreshed"], failed=len(summary["failed"])
        )
        call.log.update(retention.purge_configured().as_log_fields())
        return summary
    return provider.refresh_user(args.user_id, args.robeing_id)
