"""A robeing's webhook (``gmail_webhooks``): its URL and its Standard Webhooks signing secret.

The secret is ``whsec_`` + base64 of 32 random bytes, shown once when it is made. With a token keyring
configured (``TOKEN_KEYS`` / ``TOKEN_KEY_SECRET``) it is stored encrypted under it, bound to the robeing, so a
database reader cannot forge deliveries; without one it is stored as is (like tokens then).
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from shared import clock
from shared.config import ConfigError
from shared.db import Connection
from shared.errors import InvalidArgument
from shared.tokens.cipher import token_cipher
from shared.tokens.crypto import TokenCipher

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
# The associated data the secret is encrypted under, with the robeing id (crypto's "user_id" slot).
SECRET_FIELD = "gmail_webhooks.secret"
MAX_URL_LENGTH = 2048


@dataclass(frozen=True)
class Webhook:
    """A robeing's webhook, secret opened; ``repr`` never shows the secret."""

    robeing_id: str
    url: str
    secret: str = field(repr=False)


def new_secret() -> str:
    """A new signing secret in the ``whsec_`` form the Standard Webhooks libraries take."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def check_url(url: str) -> str:
    """The URL, if it is an absolute http(s) URL with a host.

    Raises:
        InvalidArgument: anything else.
    """
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or len(url) > MAX_URL_LENGTH:
        raise InvalidArgument("the webhook URL must be an absolute http:// or https:// URL")
    if parts.username or parts.password:
        raise InvalidArgument("the webhook URL must not hold a user or password")
    return url.strip()


def set_webhook(conn: Connection, robeing_id: str, url: str, cipher: TokenCipher | None = None) -> str:
    """Stores (or replaces) a robeing's webhook with a new secret; returns the secret, to show once."""
    url = check_url(url)
    secret = new_secret()
    stored = cipher.encrypt(secret, user_id=robeing_id, field=SECRET_FIELD) if cipher else secret
    now = clock.to_naive_utc(clock.utcnow())
    conn.run(
        "INSERT INTO gmail_webhooks (robeing_id, url, secret, created_at, updated_at) "
        "VALUES (:robeing_id, :url, :secret, :now, :now) ON CONFLICT (robeing_id) DO UPDATE "
        "SET url = EXCLUDED.url, secret = EXCLUDED.secret, updated_at = EXCLUDED.updated_at",
        robeing_id=robeing_id,
        url=url,
        secret=stored,
        now=now,
    )
    return secret


def remove_webhook(conn: Connection, robeing_id: str) -> bool:
    """Removes a robeing's webhook; its undelivered events stay readable with ``list_events``.

    Returns:
        Whether there was one.
    """
    with conn.transaction():
        removed = conn.run(
            "DELETE FROM gmail_webhooks WHERE robeing_id = :r RETURNING robeing_id", r=robeing_id
        )
        conn.run(
            "UPDATE gmail_events SET next_attempt_at = NULL "
            "WHERE robeing_id = :r AND next_attempt_at IS NOT NULL",
            r=robeing_id,
        )
    return bool(removed)


def open_webhook(robeing_id: str, url: str, stored_secret: str) -> Webhook:
    """The webhook with its secret decrypted (when it was stored encrypted).

    Raises:
        ConfigError: the secret is encrypted and no keyring is configured.
        DecryptionError: the keyring cannot open it.
    """
    if stored_secret.startswith(SECRET_PREFIX):
        return Webhook(robeing_id, url, stored_secret)
    cipher = token_cipher()
    if cipher is None:
        raise ConfigError("a webhook secret is stored encrypted but no token keyring is configured")
    return Webhook(robeing_id, url, cipher.decrypt(stored_secret, user_id=robeing_id, field=SECRET_FIELD))
