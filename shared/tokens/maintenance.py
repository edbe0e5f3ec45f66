"""Operator writes to ``gmail_token``: storing a person's token (add, import, consent) and re-sealing rows.

Both run from the CLI, never from a request. ``store_token`` equips the token it stores and clears any
re-authorisation mark; ``reseal_rows`` rewrites secret values under the keyring's primary key (or in
plaintext) without touching ``updated_at``, so "the most recently updated row wins" keeps its meaning.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared import db
from shared.tokens import sql
from shared.tokens.crypto import TokenCipher
from shared.tokens.record import TokenRecord, row_json


@dataclass(frozen=True)
class StoreOutcome:
    """What ``store_token`` did, and which earlier token it concerns.

    ``outcome`` is ``inserted``, ``updated``, ``unchanged`` or ``kept``. ``previous_row_id`` and
    ``previous_equipped_to`` name the token a call without ``robeing_id`` used before, when it is not the
    row written: for ``kept``, the token kept in its place; for ``inserted``/``updated``, the token such
    calls no longer use (the row written is now the most recently updated). None: there was none, or it
    was the row written.
    """

    outcome: str
    previous_row_id: int | None = None
    previous_equipped_to: str | None = None


def store_token(
    conn: db.Connection,
    user_id: str,
    values: Mapping[str, Any],
    *,
    equipped_to: str | None = None,
    cipher: TokenCipher | None = None,
    replace: bool = True,
) -> StoreOutcome:
    """Stores a user's token as an equipped row.

    A row holding the same refresh token for that user and robeing is left ``unchanged``, so imports can
    run again. Otherwise, with ``replace``, the user's equipped row for that robeing is ``updated`` in
    place, or a row is ``inserted``. Without ``replace``, a user who already has any equipped token (for
    this robeing, another one or none) keeps it: ``kept``, and nothing is written, because a new row
    would become the most recently updated one and silently take over every call made without
    ``robeing_id``.

    Args:
        conn: the connection.
        user_id: whose token.
        values: the columns, as ``record.authorized_user_to_row`` makes them.
        equipped_to: the robeing to equip it to (None: the user's robeing-less token).
        cipher: seals the secrets when a keyring is configured.
        replace: write even when the user already has an equipped token.
    """
    token_data = dict(values["token_data"])
    oauth_config = dict(values["oauth_config"]) if values.get("oauth_config") is not None else None
    with conn.transaction():
        equipped = conn.run(
            f"SELECT {sql.COLUMNS} FROM gmail_token WHERE user_id = :user_id AND is_equipped "
            f"ORDER BY {sql.WINNER_ORDER} FOR UPDATE",
            user_id=user_id,
        )
        winner = equipped[0] if equipped else None
        existing = next((row for row in equipped if row["equipped_to"] == equipped_to), None)
        if existing is not None:
            current = TokenRecord.from_row(existing, cipher)
            if current.refresh_token and current.refresh_token == token_data.get("refresh_token"):
                return StoreOutcome("unchanged")
        if not replace and winner is not None:
            return StoreOutcome("kept", winner["id"], winner["equipped_to"])
        if cipher is not None:
            token_data, oauth_config = cipher.seal_row(token_data, oauth_config, user_id=user_id)
        params = {
            **sql.json_params(token_data, oauth_config),
            "scopes": list(values.get("scopes") or []),
            "expiry": values.get("expiry"),
        }
        if existing is not None:
            conn.run(
                sql.update_token_json(
                    "scopes = CAST(:scopes AS TEXT[])", "expiry = :expiry", sql.TOUCH, sql.CLEAR_REAUTH
                ),
                id=existing["id"],
                **params,
            )
            outcome, written = "updated", existing["id"]
        else:
            inserted = conn.one(
                "INSERT INTO gmail_token (user_id, robeing_id, token_data, oauth_config, scopes, expiry, "
                "is_equipped, equipped_to, created_at, updated_at) VALUES (:user_id, :equipped_to, "
                "CAST(:token_data AS JSONB), CAST(:oauth_config AS JSONB), CAST(:scopes AS TEXT[]), "
                ":expiry, true, "
                ":equipped_to, (now() AT TIME ZONE 'UTC'), (now() AT TIME ZONE 'UTC')) RETURNING id",
                user_id=user_id,
                equipped_to=equipped_to,
                **params,
            )
            outcome, written = "inserted", (inserted or {}).get("id")
        if winner is not None and winner["id"] != written:
            return StoreOutcome(outcome, winner["id"], winner["equipped_to"])
        return StoreOutcome(outcome)


@dataclass
class ResealCounts:
    """What ``reseal_rows`` did."""

    rewritten: int = 0
    unchanged: int = 0
    busy: int = 0


# The marker moves with the credentials: a row still refused by Google stays refused under new ciphertext.
_FINGERPRINT_OF_NEW_VALUES = sql.fingerprint_sql("CAST(:token_data AS JSONB)", "CAST(:oauth_config AS JSONB)")


def reseal_rows(
    conn: db.Connection, cipher: TokenCipher, *, decrypt: bool = False, batch_size: int = 100
) -> ResealCounts:
    """Rewrites every row's secret fields under the primary key, or in plaintext with ``decrypt``.

    ``encrypt-tokens``, ``rotate-key`` and ``decrypt-tokens`` are all this: each row in its own short
    transaction, locked with SKIP LOCKED so a refresh in progress is never waited on (that row counts as
    busy; run again), ``updated_at`` untouched so "most recently updated wins" keeps its meaning, and the
    re-authorisation marker carried over to the new ciphertext. Running it again rewrites nothing.

    Raises:
        DecryptionError: a row holds a value no key in the keyring opens (nothing is written for it).
    """
    counts = ResealCounts()
    last_id = 0
    while True:
        ids = [
            row["id"]
            for row in conn.run(
                "SELECT id FROM gmail_token WHERE id > :last ORDER BY id LIMIT :limit",
                last=last_id,
                limit=batch_size,
            )
        ]
        if not ids:
            return counts
        last_id = ids[-1]
        for row_id in ids:
            with conn.transaction():
                row = conn.one(
                    f"SELECT {sql.COLUMNS} FROM gmail_token WHERE id = :id FOR UPDATE SKIP LOCKED", id=row_id
                )
                if row is None:
                    counts.busy += 1
                    continue
                user_id = str(row["user_id"])
                token_data, oauth_config = row_json(row)
                opened_data, opened_config = cipher.open_row(token_data, oauth_config, user_id=user_id)
                if decrypt:
                    stored_data, stored_config = opened_data, opened_config
                elif cipher.row_needs_rewrite(token_data, oauth_config):
                    stored_data, stored_config = cipher.seal_row(opened_data, opened_config, user_id=user_id)
                else:
                    stored_data, stored_config = token_data, oauth_config
                if (stored_data, stored_config) == (token_data, oauth_config):
                    counts.unchanged += 1
                    continue
                conn.run(
                    sql.update_token_json(
                        f"reauth_fingerprint = CASE WHEN :needs_reauth THEN {_FINGERPRINT_OF_NEW_VALUES} "
                        "ELSE reauth_fingerprint END"
                    ),
                    **sql.json_params(stored_data, stored_config),
                    needs_reauth=bool(row.get("needs_reauth")),
                    id=row_id,
                )
                counts.rewritten += 1
