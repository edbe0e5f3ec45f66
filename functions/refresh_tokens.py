"""refresh_tokens: refresh one user's token now, or every equipped token close to expiry (Scheduler)."""

from typing import Any

from shared import scheduled_run, web
from shared.errors import InvalidArgument
from shared.request_types import RefreshTokensRequest
from shared.tokens import provider


@web.http_function("refresh_tokens")
def refresh_tokens(args: RefreshTokensRequest, call: web.Call) -> Any:
    if args.user_id is not None:
        if args.row_ids is not None:
            raise InvalidArgument("row_ids: not with user_id")
        return provider.refresh_user(args.user_id, args.robeing_id)
    if args.robeing_id is not None:
        raise InvalidArgument("robeing_id: only with user_id")
    if args.row_ids is not None:
        return scheduled_run.run_slice(args.row_ids, args.window_seconds, call.log)
    return scheduled_run.run(args.window_seconds, call.log)
