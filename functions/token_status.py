"""token_status: whether a user has a usable Gmail token (never the token itself)."""

from typing import Any

from shared import web
from shared.request_types import TokenStatusRequest
from shared.tokens import provider


@web.http_function("token_status")
def token_status(args: TokenStatusRequest, call: web.Call) -> Any:
    return provider.token_status(args.user_id, args.robeing_id)
