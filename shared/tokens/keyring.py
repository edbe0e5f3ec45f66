"""The keyring behind encryption at rest: its two text forms, new keys, and a new primary for rotation.

A keyring is JSON ``{"primary": "k2", "keys": {"k1": "<base64 32 bytes>", "k2": "..."}}`` or one bare
base64 key (its id derived from it). It lives in Secret Manager (``TOKEN_KEY_SECRET``) or, locally, in
``TOKEN_KEYS``. Nothing here imports cryptography: the CLI can make and rotate keyrings, and a malformed
one is refused, before any cipher is built. Messages never contain key material.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re

KEY_BYTES = 32  # AES-256
# Key ids appear in every encrypted value and in log lines, so they are short and plain. Capping them at 32
# characters also means a 32-byte key pasted where an id belongs (44 characters in base64) is never a valid
# id, so error messages may name valid ids without ever echoing key material.
KEY_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,32}")


class KeyringError(ValueError):
    """The keyring text is malformed; the message never contains key material."""


def generate_key() -> str:
    """Makes a new random key for a keyring.

    Returns:
        The standard base64 of 32 random bytes, e.g. for ``{"primary": "k1", "keys": {"k1": KEY}}``.
    """
    return base64.b64encode(os.urandom(KEY_BYTES)).decode("ascii")


def derive_key_id(key: bytes) -> str:
    """Returns the id of a bare key: the first 8 hex characters of a domain-separated SHA-256 of it.

    Deterministic, so every instance given the same bare key names it the same way.
    """
    return hashlib.sha256(b"skill-email key id|" + key).hexdigest()[:8]


def with_new_primary(text: str, key_id: str) -> str:
    """The keyring ``text`` plus a fresh key ``key_id`` as its primary, every old key kept under its id.

    A bare-key keyring keeps its key under :func:`derive_key_id`, the id its ciphertexts carry.

    Raises:
        KeyringError: ``text`` is malformed, ``key_id`` is malformed or already in the keyring.
    """
    parse_keyring(text)  # the same checks the functions apply, before anything is built on it
    check_key_id(key_id, "new key id")
    stripped = text.strip()
    if stripped.startswith("{"):
        keys = dict(json.loads(stripped)["keys"])
    else:
        keys = {derive_key_id(decode_key(stripped, "bare keyring key")): stripped}
    if key_id in keys:
        raise KeyringError(f"key id {key_id!r} is already in the keyring")
    keys[key_id] = generate_key()
    return json.dumps({"primary": key_id, "keys": keys})


def decode_key(text: object, what: str) -> bytes:
    """Decodes one base64 (standard or URL-safe, padding optional) 32-byte key; errors name only ``what``."""
    if not isinstance(text, str):
        raise KeyringError(f"{what} must be a base64 string")
    compact = "".join(text.split())
    # Accept both alphabets: keys pasted from other tools are often URL-safe or lack padding.
    compact = compact.replace("-", "+").replace("_", "/")
    compact += "=" * (-len(compact) % 4)
    try:
        key = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        # `from None`: the decoder's message can quote the input's length or characters.
        raise KeyringError(f"{what} is not valid base64") from None
    if len(key) != KEY_BYTES:
        raise KeyringError(f"{what} must decode to {KEY_BYTES} bytes, not {len(key)}")
    return key


def check_key_id(key_id: object, what: str) -> str:
    """``key_id`` when it is a valid key id; else KeyringError naming ``what`` (never the id itself)."""
    if not isinstance(key_id, str) or not KEY_ID_RE.fullmatch(key_id):
        # The id itself is not quoted: a malformed id may well be a key pasted into the wrong place.
        raise KeyringError(f"{what} must be 1-32 characters of A-Z, a-z, 0-9, '_', '.', '-' (no ':')")
    return key_id


def parse_keyring(text: str) -> tuple[dict[str, bytes], str]:
    """Parses keyring text as stored in Secret Manager or an environment variable.

    Args:
        text: The keyring text; surrounding whitespace (a trailing newline) is ignored.

    Returns:
        Key id -> 32 raw key bytes, and the primary key id (``primary`` may be left out of the JSON
        when there is exactly one key).

    Raises:
        KeyringError: The text is malformed. The message says what is wrong and never contains key
            material; it is raised ``from None`` so no chained exception carries the text either.
    """
    if not isinstance(text, str):
        raise KeyringError("keyring must be text")
    stripped = text.strip()
    if not stripped:
        raise KeyringError("keyring is empty")
    if not stripped.startswith("{"):
        key = decode_key(stripped, "bare keyring key")
        return {derive_key_id(key): key}, derive_key_id(key)
    try:
        document = json.loads(stripped)
    except ValueError:
        raise KeyringError("keyring is not valid JSON") from None
    if not isinstance(document, dict):
        raise KeyringError('keyring JSON must be an object {"primary": ..., "keys": {...}}')
    if set(document) - {"primary", "keys"}:
        # Field names are not quoted: they are arbitrary text from the secret.
        raise KeyringError('keyring JSON has unknown fields; only "primary" and "keys" are allowed')
    raw_keys = document.get("keys")
    if not isinstance(raw_keys, dict) or not raw_keys:
        raise KeyringError('keyring JSON needs "keys": a non-empty object of key id -> base64 key')
    keys: dict[str, bytes] = {}
    for index, (key_id, encoded) in enumerate(raw_keys.items(), start=1):
        check_key_id(key_id, f"key id #{index}")
        keys[key_id] = decode_key(encoded, f"key {key_id!r}")
    primary = document.get("primary")
    if primary is None:
        if len(keys) != 1:
            raise KeyringError('keyring JSON with several keys needs "primary"')
        primary = next(iter(keys))
    check_key_id(primary, '"primary"')
    if primary not in keys:
        raise KeyringError(f"primary key id {primary!r} is not among the keys {tuple(sorted(keys))}")
    return keys, primary
