"""The token provider every function uses: the database store, or the file store (``TOKEN_PROVIDER``).

One place decides which store serves an invocation and owns its database connection, opened per
invocation and always closed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from shared import config, db, tokens
from shared.file_tokens import FileTokenStore
from shared.tokens import RefreshSummary, TokenRecord


class TokenStore(Protocol):
    """What the functions need of a token store."""

    def find(self, user_id: str, robeing_id: str | None = None) -> TokenRecord: ...

    def usable(self, user_id: str, robeing_id: str | None = None) -> TokenRecord: ...

    def refresh_record(self, record: TokenRecord, stale_access_token: str | None) -> TokenRecord: ...

    def refresh_user(self, user_id: str, robeing_id: str | None = None) -> RefreshSummary: ...


@dataclass
class Session:
    """One invocation's token store and database connection (None: file tokens and no database)."""

    store: TokenStore
    conn: db.Connection | None


@contextmanager
def open_session() -> Iterator[Session]:
    """The configured store, and the database connection it (or audit and idempotency) uses."""
    settings = config.load_settings()
    if settings.token_provider == "file":
        files = FileTokenStore(settings.token_dir)
        if not (settings.database_url or settings.db_url_secret):
            yield Session(files, None)
            return
        with db.connection() as conn:
            yield Session(files, conn)
        return
    cipher = tokens.token_cipher(settings)
    with db.connection() as conn:
        yield Session(tokens.DatabaseTokenStore(conn, cipher), conn)


def token_status(user_id: str, robeing_id: str | None) -> dict[str, Any]:
    """``token_status``: whether the user has a usable token; never a token value."""
    with open_session() as session:
        return session.store.find(user_id, robeing_id).status()


def refresh_user(user_id: str, robeing_id: str | None) -> dict[str, Any]:
    """``refresh_tokens`` with a user: refresh that token now."""
    with open_session() as session:
        return session.store.refresh_user(user_id, robeing_id).as_dict()


def refresh_due(window_seconds: int) -> dict[str, Any]:
    """``refresh_tokens`` without a user: the scheduled run over every equipped token."""
    settings = config.load_settings()
    if settings.token_provider == "file":
        return FileTokenStore(settings.token_dir).refresh_due(window_seconds).as_dict()
    cipher = tokens.token_cipher(settings)
    params = db.current_params()
    summary = tokens.refresh_due(
        lambda: db.connection(params), window_seconds, settings.refresh_concurrency, cipher
    )
    return summary.as_dict()
