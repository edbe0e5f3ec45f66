"""Opt-in encryption at rest of the secret values in a ``gmail_token`` row.

Only four values are encrypted: ``token_data.access_token``, its legacy name ``token_data.token``,
``token_data.refresh_token`` and ``oauth_config.client_secret``. The table is shared with other services,
so everything else stays as it was: the JSON structure, ``token_type``, ``client_id``, ``token_uri``, the
``scopes`` and ``expiry`` columns remain readable and queryable by them, and a row written before encryption
was turned on still reads. Someone holding the table alone (a dump, a backup, a read-only role) therefore
still learns which user ids have Gmail connected, the OAuth client ids, the granted scopes and when each
access token expires, but no value that lets them act as anyone.

Each encrypted value is a string ``enc:v1:<key_id>:<base64url(nonce || ciphertext || tag)>`` made with
AES-256-GCM and a fresh random 96-bit nonce. The key id lets several keys live side by side for rotation:
writes use the primary key, reads use whichever key the value names.

The associated data binds each value to the row's ``user_id`` and to the field it sits in, so a value
copied into another user's row, or moved from ``refresh_token`` to ``access_token`` (or into
``client_secret``), fails to decrypt instead of being used. ``access_token`` and its legacy name ``token``
count as one field: both hold the same secret, and renaming the key must not break the row. The row's
``id`` and ``robeing_id`` are deliberately not bound, so copying a token to a new row for the same user
or re-equipping it to another robeing keeps it readable; changing a row's ``user_id`` does not.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared.errors import Internal
from shared.tokens.keyring import KEY_BYTES, KeyringError, check_key_id, parse_keyring

PREFIX = "enc:"
"""Every value starting with this is treated as encrypted, never as a token (see :func:`is_encrypted`)."""

_VERSION = "v1"
_NONCE_BYTES = 12  # 96 bits, the nonce size GCM is specified for
_TAG_BYTES = 16
# Random 96-bit nonces are safe for about 2**32 encryptions under one key (NIST SP 800-38D); a token write
# happens once an hour per user at most, so rotation for other reasons comes long before that limit.
_AAD_PREFIX = b"skill-email/v1|"

# The key id part matches keyring.KEY_ID_RE.
_VALUE_RE = re.compile(r"enc:v1:([A-Za-z0-9_.-]{1,32}):([A-Za-z0-9_-]+)")

# Where each secret lives -> the field name bound into the associated data.
TOKEN_DATA_SECRETS: Mapping[str, str] = {
    "access_token": "token_data.access_token",
    "token": "token_data.access_token",  # legacy name of the same secret: a rename keeps it readable
    "refresh_token": "token_data.refresh_token",
}
OAUTH_CONFIG_SECRETS: Mapping[str, str] = {
    "client_secret": "oauth_config.client_secret",
}


class DecryptionError(Internal):
    """An encrypted value cannot be opened: unknown key, tampered, moved to another row or field, no key."""

    def __init__(self, message: str, *, field: str, key_id: str | None = None) -> None:
        super().__init__(message, field=field, key_id=key_id)
        self.field = field
        self.key_id = key_id


def is_encrypted(value: object) -> bool:
    """Tells whether a stored value is (or claims to be) encrypted by this module.

    Anything starting with ``enc:`` counts, including malformed values and future versions, so that such a
    value is refused by :meth:`TokenCipher.decrypt` rather than handed to Google as a token. Google's tokens
    and client secrets never start with ``enc:``.

    Args:
        value: A value read from ``token_data`` or ``oauth_config``; need not be a string.

    Returns:
        True for a string starting with ``enc:``.
    """
    return isinstance(value, str) and value.startswith(PREFIX)


def encrypted_key_id(value: object) -> str | None:
    """Returns the key id a well-formed encrypted value names; None for plaintext, malformed, non-strings."""
    if not isinstance(value, str):
        return None
    match = _VALUE_RE.fullmatch(value)
    return match.group(1) if match else None


def open_row_without_key(
    token_data: dict[str, Any],
    oauth_config: dict[str, Any] | None,
    *,
    user_id: str | None = None,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Reads a row when no key is configured: plaintext passes, encrypted values are refused.

    Same shape as :meth:`TokenCipher.open_row`, so a caller can pick one of the two once.

    Args:
        token_data: The row's ``token_data``.
        oauth_config: The row's ``oauth_config``, or None.
        user_id: Ignored; accepted so this is interchangeable with :meth:`TokenCipher.open_row`.

    Returns:
        New dicts equal to the inputs (the inputs are never mutated).

    Raises:
        DecryptionError: Some secret field holds an encrypted value; it names the first such field and its
            key id. Ciphertext is never returned as if it were a token.
    """
    del user_id  # only here for the shared signature
    for column, secrets, data in (
        ("token_data", TOKEN_DATA_SECRETS, token_data),
        ("oauth_config", OAUTH_CONFIG_SECRETS, oauth_config),
    ):
        for name in secrets:
            value = (data or {}).get(name)
            if is_encrypted(value):
                key_id = encrypted_key_id(value)
                raise DecryptionError(
                    f"{column}.{name} is encrypted (key id {key_id or 'unreadable'}) but no token key is "
                    "configured; set TOKEN_KEY_SECRET to the keyring that holds that key",
                    field=f"{column}.{name}",
                    key_id=key_id,
                )
    return dict(token_data), (dict(oauth_config) if oauth_config is not None else None)


class TokenCipher:
    """Encrypts and decrypts the secret values of ``gmail_token`` rows with a keyring of AES-256-GCM keys.

    Attributes:
        primary_key_id: The id of the key new values are written under.
        key_ids: Every key id this cipher can read, sorted.
    """

    primary_key_id: str

    def __init__(self, keys: Mapping[str, bytes], primary_key_id: str) -> None:
        """Builds a cipher from raw keys.

        Args:
            keys: Key id -> 32 raw key bytes.
            primary_key_id: The id in ``keys`` that new values are written under.

        Raises:
            KeyringError: No keys, a malformed id, a key not 32 bytes, or the primary id not among the keys.
        """
        # Imported here: only instances with a keyring pay for cryptography's import.
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if not keys:
            raise KeyringError("keyring holds no keys")
        self._aeads: dict[str, AESGCM] = {}
        for index, (key_id, key) in enumerate(keys.items(), start=1):
            check_key_id(key_id, f"key id #{index}")
            if not isinstance(key, bytes | bytearray) or len(key) != KEY_BYTES:
                raise KeyringError(f"key {key_id!r} must be {KEY_BYTES} bytes")
            self._aeads[key_id] = AESGCM(bytes(key))
        check_key_id(primary_key_id, "primary key id")
        if primary_key_id not in self._aeads:
            raise KeyringError(f"primary key id {primary_key_id!r} is not among the keys {self.key_ids}")
        self.primary_key_id = primary_key_id

    @classmethod
    def from_keyring(cls, text: str) -> TokenCipher:
        """Parses keyring text as stored in Secret Manager or an environment variable.

        Two forms are accepted:

        - JSON ``{"primary": "k2", "keys": {"k1": "<base64 32 bytes>", "k2": "..."}}``; ``primary`` may be
          left out when there is exactly one key.
        - A bare base64 32-byte key; its id is ``keyring.derive_key_id`` of it.

        Args:
            text: The keyring text; surrounding whitespace (a trailing newline) is ignored.

        Returns:
            The cipher.

        Raises:
            KeyringError: The text is malformed. The message says what is wrong and never contains key
                material; it is raised ``from None`` so no chained exception carries the text either.
        """
        keys, primary = parse_keyring(text)
        return cls(keys, primary)

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(sorted(self._aeads))

    def __repr__(self) -> str:
        # Never the keys: this object may end up in a log line or a traceback's locals.
        return f"TokenCipher(primary_key_id={self.primary_key_id!r}, key_ids={self.key_ids!r})"

    def encrypt(self, plaintext: str, *, user_id: str, field: str) -> str:
        """Encrypts one value under the primary key, bound to a user and a field.

        Args:
            plaintext: The secret, any Unicode text (the empty string included).
            user_id: The row's ``user_id``.
            field: The field name bound into the associated data, e.g. ``token_data.refresh_token``; must
                not contain ``|``.

        Returns:
            ``enc:v1:<primary key id>:<base64url(nonce || ciphertext || tag)>``, unpadded.
        """
        if not isinstance(plaintext, str):
            raise TypeError(f"{field} must be a string to be encrypted, not {type(plaintext).__name__}")
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aeads[self.primary_key_id].encrypt(
            nonce, plaintext.encode("utf-8"), _associated_data(user_id, field)
        )
        payload = base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=").decode("ascii")
        return f"{PREFIX}{_VERSION}:{self.primary_key_id}:{payload}"

    def decrypt(self, value: str, *, user_id: str, field: str) -> str:
        """Decrypts one value; plaintext (no ``enc:`` prefix) passes through unchanged.

        Args:
            value: A stored value.
            user_id: The row's ``user_id``; must be the one it was encrypted for.
            field: The field name; must be the one it was encrypted for.

        Returns:
            The plaintext.

        Raises:
            DecryptionError: The value is malformed or of an unknown version, its key id is not in the
                keyring, or its tag does not verify (tampered, another user's, another field's). The message
                names the field and key id, never the value.
        """
        return self._decrypt(value, user_id=user_id, field=field, where=field)

    def needs_rewrite(self, value: str) -> bool:
        """Tells whether a value should be written again: plaintext, or not encrypted under the primary key.

        Only the prefix is read, no decryption; a malformed encrypted value also answers True, so a rewrite
        attempt surfaces it as a :class:`DecryptionError`.
        """
        return encrypted_key_id(value) != self.primary_key_id

    def seal_row(
        self, token_data: dict[str, Any], oauth_config: dict[str, Any] | None, *, user_id: str
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Encrypts the secret fields of a row for writing.

        Plaintext values are encrypted under the primary key; values already under the primary key are kept
        as they are (not re-encrypted, so an unchanged field is not rewritten); values under another key are
        decrypted and encrypted again under the primary key. None and missing fields stay so, and every
        other key is kept.

        Args:
            token_data: The row's ``token_data``.
            oauth_config: The row's ``oauth_config``, or None.
            user_id: The row's ``user_id``.

        Returns:
            New ``(token_data, oauth_config)`` dicts; the inputs are never mutated.

        Raises:
            DecryptionError: A value under an old key cannot be opened for re-encryption.
            TypeError: A secret field holds something other than a string or None.
        """
        return self._map_row(token_data, oauth_config, user_id, self._seal_value)

    def open_row(
        self, token_data: dict[str, Any], oauth_config: dict[str, Any] | None, *, user_id: str
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Decrypts the secret fields of a row read from the table; plaintext values pass through.

        Args:
            token_data: The row's ``token_data``.
            oauth_config: The row's ``oauth_config``, or None.
            user_id: The row's ``user_id``.

        Returns:
            New ``(token_data, oauth_config)`` dicts; the inputs are never mutated.

        Raises:
            DecryptionError: A secret value cannot be opened (see :meth:`decrypt`).
        """
        return self._map_row(token_data, oauth_config, user_id, self._open_value)

    def row_needs_rewrite(self, token_data: dict[str, Any], oauth_config: dict[str, Any] | None) -> bool:
        """Tells whether any secret field of a row is plaintext or not under the primary key."""
        for data, secrets in ((token_data, TOKEN_DATA_SECRETS), (oauth_config, OAUTH_CONFIG_SECRETS)):
            for name in secrets:
                value = (data or {}).get(name)
                if isinstance(value, str) and self.needs_rewrite(value):
                    return True
        return False

    # -- internals --------------------------------------------------------------------------------------

    def _decrypt(self, value: str, *, user_id: str, field: str, where: str) -> str:
        if not is_encrypted(value):
            return value
        match = _VALUE_RE.fullmatch(value)
        if match is None:
            raise DecryptionError(
                f"{where} holds a malformed or unsupported encrypted value", field=where, key_id=None
            )
        key_id, payload = match.groups()
        aead = self._aeads.get(key_id)
        if aead is None:
            raise DecryptionError(
                f"{where} is encrypted under key id {key_id}, which is not in the keyring {self.key_ids}",
                field=where,
                key_id=key_id,
            )
        try:
            blob = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        except (binascii.Error, ValueError):
            raise DecryptionError(
                f"{where} holds a malformed encrypted value (key id {key_id})", field=where, key_id=key_id
            ) from None
        if len(blob) < _NONCE_BYTES + _TAG_BYTES:
            raise DecryptionError(
                f"{where} holds a truncated encrypted value (key id {key_id})", field=where, key_id=key_id
            )
        from cryptography.exceptions import InvalidTag

        try:
            plaintext = aead.decrypt(
                blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], _associated_data(user_id, field)
            )
        except InvalidTag as exc:
            raise DecryptionError(
                f"{where} does not decrypt under key id {key_id}: "
                "tampered with, or written for another user or field",
                field=where,
                key_id=key_id,
            ) from exc
        return plaintext.decode("utf-8")

    def _seal_value(self, value: object, *, user_id: str, field: str, where: str) -> object:
        if value is None:
            return None
        if not isinstance(value, str):
            # Refuse rather than store a secret in the clear; the type name is safe to show, the value is not.
            raise TypeError(f"{where} must be a string or null, not {type(value).__name__}")
        if is_encrypted(value):
            if encrypted_key_id(value) == self.primary_key_id:
                return value
            value = self._decrypt(value, user_id=user_id, field=field, where=where)
        return self.encrypt(value, user_id=user_id, field=field)

    def _open_value(self, value: object, *, user_id: str, field: str, where: str) -> object:
        if not isinstance(value, str):
            return value
        return self._decrypt(value, user_id=user_id, field=field, where=where)

    @staticmethod
    def _map_row(
        token_data: dict[str, Any],
        oauth_config: dict[str, Any] | None,
        user_id: str,
        transform: Callable[..., object],
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        def apply(data: dict[str, Any], column: str, secrets: Mapping[str, str]) -> dict[str, Any]:
            result = dict(data)  # a new dict: callers may still hold and reuse the row they passed in
            for name, field in secrets.items():
                if name in result:
                    where = f"{column}.{name}"
                    result[name] = transform(result[name], user_id=user_id, field=field, where=where)
            return result

        return (
            apply(token_data, "token_data", TOKEN_DATA_SECRETS),
            apply(oauth_config, "oauth_config", OAUTH_CONFIG_SECRETS) if oauth_config is not None else None,
        )


def _associated_data(user_id: str, field: str) -> bytes:
    """Binds a value to its field and user.

    The field comes first and may not contain ``|``, so the user id can be any text (``|`` included) and
    two different (field, user) pairs never give the same bytes.
    """
    if "|" in field:
        raise ValueError("field names bound into the associated data must not contain '|'")
    if not isinstance(user_id, str):
        raise TypeError(f"user_id must be a string, not {type(user_id).__name__}")
    return _AAD_PREFIX + field.encode("utf-8") + b"|" + user_id.encode("utf-8")
