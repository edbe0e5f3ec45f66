"""The token provider every function uses: the database store, or the file store (``TOKEN_PROVIDER``).

One place decides which store serves an invocation and owns its connection, opened per invocation
and always closed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from shared import config, db, tokens
from shared.file_tokens import FileTokenStore
from shared.tokens import RefreshSummary, TokenRecord


class TokenStore(Protocol):
    """What the functions need of a token store."""

    def find(self, user_id: str, robeing_id: str | None = None) -> TokenRecord: ...

    def usable(self, user_id: str, robeing_id: str | None = None) -> TokenRecord: ...

    def refresh_user(self, user_id: str, robeing_id: str | None = None) -> RefreshSummary: ...


@contextmanager
def open_store() -> Iterator[TokenStore]:
    """The configured store for one invocation."""
    settings = config.load_settings()
    if settings.token_provider == "file":
        yield FileTokenStore(settings.token_dir)
        return
    cipher = tokens.token_cipher(settings)
    with db.connection() as conn:
        yield tokens.DatabaseTokenStore(conn, cipher)


def token_status(user_id: str, robeing_id: str | None) -> dict[str, Any]:
    """``token_status``: whether the user has a usable token; never a token value."""
    with open_store() as store:
        return store.find(user_id, robeing_id).status()


def refresh_user(user_id: str, robeing_id: str | None) -> dict[str, Any]:
    """``refresh_tokens`` with a user: refresh that token now."""
    with open_store() as store:
        return store.refresh_user(user_id, robeing_id).as_dict()


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
