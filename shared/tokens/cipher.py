"""The instance's keyring cipher: built once per keyring text, from ``TOKEN_KEYS`` or ``TOKEN_KEY_SECRET``.

Building a ``TokenCipher`` imports cryptography (~40 ms) and parses the keyring, so it happens on first
use and only when a keyring is configured; a rotated keyring (new text) gets a new cipher.
"""

from __future__ import annotations

import hashlib
import threading

from shared import config
from shared.config import ConfigError, Settings
from shared.tokens.crypto import TokenCipher
from shared.tokens.keyring import KeyringError

_ciphers: dict[str, TokenCipher] = {}
_lock = threading.Lock()


def keyring_text(settings: Settings) -> str | None:
    """The keyring's text: ``TOKEN_KEYS`` inline, else the ``TOKEN_KEY_SECRET`` secret; None when off."""
    if settings.token_keys:
        return settings.token_keys
    if settings.token_key_secret:
        from shared.secret_manager import secrets

        return secrets.read(settings.token_key_secret, settings)
    return None


def token_cipher(settings: Settings | None = None) -> TokenCipher | None:
    """The at-rest cipher when ``TOKEN_KEYS`` or ``TOKEN_KEY_SECRET`` is set, else None (plaintext).

    Raises:
        ConfigError: the keyring is malformed, or ``REQUIRE_ENCRYPTED_TOKENS`` is on without one.
        Unavailable: Secret Manager could not be read.
    """
    settings = settings or config.load_settings()
    text = keyring_text(settings)
    if text is None:
        if settings.require_encrypted_tokens:
            raise ConfigError(
                f"{config.REQUIRE_ENCRYPTED_TOKENS}=true needs a keyring: set {config.TOKEN_KEY_SECRET} "
                f"(or {config.TOKEN_KEYS} locally)"
            )
        return None
    digest = hashlib.sha256(text.encode()).hexdigest()
    with _lock:
        cipher = _ciphers.get(digest)
        if cipher is None:
            try:
                cipher = TokenCipher.from_keyring(text)
            except KeyringError as exc:
                raise ConfigError(f"the token keyring is malformed: {exc}") from None
            _ciphers[digest] = cipher
        return cipher


def forget_ciphers() -> None:
    """Drops the cached ciphers (tests: each starts without a keyring)."""
    with _lock:
        _ciphers.clear()
