"""Which token store serves an invocation (``TOKEN_PROVIDER``), and the token targets built on it.

One place decides between the database store and the file store and owns the invocation's database
connection, opened per invocation and always closed. Everything after that goes through the store's
protocol (``base.TokenStore``), the scheduled run included: nothing here branches on the store's type.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from shared import config, db
from shared.tokens.base import TokenStore
from shared.tokens.cipher import token_cipher
from shared.tokens.files import FileTokenStore
from shared.tokens.record import TokenRecord
from shared.tokens.store import DatabaseTokenStore

__all__ = [
    "Session",
    "TokenRecord",
    "TokenStore",
    "open_session",
    "refresh_due",
    "refresh_slice",
    "refresh_user",
    "token_status",
]


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
        files = FileTokenStore(settings.token_dir, require_encrypted=settings.require_encrypted_tokens)
        if not (settings.database_url or settings.db_url_secret):
            yield Session(files, None)
            return
        with db.connection() as conn:
            yield Session(files, conn)
        return
    cipher = token_cipher(settings)
    params = db.current_params()
    with db.connection(params) as conn:
        store = DatabaseTokenStore(
            conn,
            cipher,
            connect=lambda: db.connection(params),
            concurrency=settings.refresh_concurrency,
            require_encrypted=settings.require_encrypted_tokens,
            active_days=settings.active_days,
        )
        yield Session(store, conn)


def token_status(user_id: str, robeing_id: str | None) -> dict[str, Any]:
    """``token_status``: whether the user has a usable token; never a token value."""
    with open_session() as session:
        return session.store.find(user_id, robeing_id).status()


def refresh_user(user_id: str, robeing_id: str | None) -> dict[str, Any]:
    """``refresh_tokens`` with a user: refresh that token now."""
    with open_session() as session:
        return session.store.refresh_user(user_id, robeing_id).as_dict()


def refresh_due(window_seconds: int) -> dict[str, Any]:
    """``refresh_tokens`` without a user: the scheduled run over every token the store holds."""
    with open_session() as session:
        return session.store.refresh_due(window_seconds).as_dict()


def refresh_slice(row_ids: list[int], window_seconds: int) -> dict[str, Any]:
    """``refresh_tokens`` with ``row_ids``: one slice of a fanned-out scheduled run (a Cloud Task)."""
    with open_session() as session:
        return session.store.refresh_slice(row_ids, window_seconds).as_dict()
