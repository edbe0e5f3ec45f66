"""The SQL fragments the token modules share, each written once: columns, winner order, the token UPDATE.

Invariants these fragments carry for every statement built from them:
- "the most recently updated equipped row wins" is one ``ORDER BY`` (``WINNER_ORDER``);
- a row "needs re-authorisation" only while it still holds the credentials Google refused
  (``NEEDS_REAUTH``: a new token stored by anyone lapses the marker without touching it);
- the JSON columns are written through one UPDATE (``update_token_json``), from ``json_params``.
"""

from __future__ import annotations

import json
from typing import Any

# The order that picks one row among duplicates: most recently updated first, then the newest id.
WINNER_ORDER = "updated_at DESC NULLS LAST, id DESC"


def beats(winner: str, row: str) -> str:
    """SQL that is true when the row aliased ``winner`` sorts before ``row`` in ``WINNER_ORDER``.

    The same order as ``WINNER_ORDER``, written as a comparison so that "is this due row the one its
    lookup would pick?" is one index probe per row (tests/test_scale_rules.py holds the two to agreement).
    """
    return (
        f"(({winner}.updated_at IS NOT NULL AND {row}.updated_at IS NULL) "
        f"OR {winner}.updated_at > {row}.updated_at "
        f"OR ({winner}.updated_at IS NOT DISTINCT FROM {row}.updated_at AND {winner}.id > {row}.id))"
    )


# When the scheduled run should next look at a row: ``check_at`` once it has set one, else the
# token's expiry (rows written before the column existed, or by other services), else at once. The
# expression index ``gmail_token_equipped_due_idx`` is on exactly this, so the due set is one range
# scan; the deadline is cast so the comparison stays timestamp-to-timestamp and can use it.
DUE_AT = "COALESCE(check_at, expiry, TIMESTAMP '-infinity')"
IS_DUE = f"{DUE_AT} < CAST(:deadline AS TIMESTAMP)"


def fingerprint_sql(token_data: str, oauth_config: str) -> str:
    """The SQL hash of the credentials Google judged, over the given JSONB expressions.

    When they change (a new token was stored), a re-authorisation marker holding the old hash lapses.
    """
    return (
        f"encode(sha256(convert_to(concat_ws('|', ({token_data})->>'refresh_token', "
        f"({oauth_config})->>'client_id', ({oauth_config})->>'client_secret'), 'UTF8')), 'hex')"
    )


REAUTH_FINGERPRINT = fingerprint_sql("token_data", "oauth_config")
NEEDS_REAUTH = f"(reauth_required_at IS NOT NULL AND reauth_fingerprint = {REAUTH_FINGERPRINT})"

# Every column TokenRecord.from_row reads.
COLUMNS = (
    "id, user_id, token_data, oauth_config, scopes, expiry, equipped_to, reauth_reason, last_used_at, "
    f"{NEEDS_REAUTH} AS needs_reauth"
)

# SET clauses used with update_token_json.
TOUCH = "updated_at = (now() AT TIME ZONE 'UTC')"
CLEAR_REAUTH = "reauth_required_at = NULL, reauth_reason = NULL, reauth_fingerprint = NULL"


def update_token_json(*also: str) -> str:
    """``UPDATE gmail_token SET token_data, oauth_config[, also...] WHERE id = :id``.

    Its parameters are ``id`` and those of :func:`json_params`, plus any the extra clauses name.
    """
    sets = ", ".join(
        ("token_data = CAST(:token_data AS JSONB)", "oauth_config = CAST(:oauth_config AS JSONB)", *also)
    )
    return f"UPDATE gmail_token SET {sets} WHERE id = :id"


def json_params(token_data: dict[str, Any], oauth_config: dict[str, Any] | None) -> dict[str, str | None]:
    """The JSON columns as statement parameters (a None ``oauth_config`` stays SQL NULL)."""
    return {
        "token_data": json.dumps(token_data),
        "oauth_config": json.dumps(oauth_config) if oauth_config is not None else None,
    }
