"""The per-call glue of every mailbox operation: the user's token into a Gmail client, and the audit row.

Invariant: a Gmail client made here refreshes its token only through the token store (so a refresh is
locked, shared and saved), and reports its round trips into the request's log line as ``gmail_calls``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from shared import audit, config, scopes
from shared.errors import PermissionDenied
from shared.gmail import GmailClient, StoreCredentials
from shared.request_types import UserRequest
from shared.tokens import provider
from shared.web import Call


@contextmanager
def gmail_client(
    session: provider.Session,
    user_id: str,
    robeing_id: str | None,
    log: dict[str, Any],
    *,
    target: str | None = None,
) -> Iterator[tuple[GmailClient, provider.TokenRecord]]:
    """A Gmail client for the user's equipped token, and that token's record.

    Args:
        session: The invocation's token store and connection.
        user_id: Whose mailbox.
        robeing_id: Only a token equipped to this robeing, when given.
        log: The request's log fields; ``gmail_calls`` is set there when the block ends.
        target: The target being served, whose scopes (``scopes.BY_TARGET``) the token must hold: checked
            against the stored scopes before any Gmail call, and named in a 403 Gmail answers for scopes.

    Yields:
        The client and the token record it started with.

    Raises:
        NotFound, ReauthRequired, Unavailable: from the token store.
        PermissionDenied: the token lacks the target's scopes (``required_scopes`` names them).
    """
    record = session.store.usable(user_id, robeing_id)
    if target is not None:
        scopes.require(target, record.scopes)

    def refresh(stale: str | None) -> tuple[str | None, datetime | None]:
        nonlocal record
        record = session.store.refresh_record(record, stale)
        return record.access_token, record.expiry

    credentials = StoreCredentials(record.access_token, record.expiry, refresh)
    client = GmailClient(config.load_settings().gmail_api_endpoint, credentials)
    try:
        yield client, record
    except PermissionDenied as exc:
        if target is not None and exc.details.get("scope_insufficient"):
            raise scopes.denied(scopes.BY_TARGET[target], by_gmail=True) from exc
        raise
    finally:
        log["gmail_calls"] = client.calls


def record_audit(
    session: provider.Session,
    args: UserRequest,
    action: str,
    call: Call,
    *,
    http_status: int,
    error_code: str | None = None,
    **extra: Any,
) -> None:
    """Writes the call's audit row (nothing without a database: file tokens and no DATABASE_URL)."""
    if session.conn is None:
        return
    audit.record(
        session.conn,
        user_id=args.user_id,
        robeing_id=args.robeing_id,
        action=action,
        status=audit.OK if http_status < 400 else audit.ERROR,
        http_status=http_status,
        duration_ms=call.duration_ms(),
        gmail_calls=int(call.log.get("gmail_calls", 0)),
        error_code=error_code,
        trace_id=call.trace_id,
        **extra,
    )
