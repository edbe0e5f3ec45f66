"""One stored token, decoded: messy rows in, one clean ``TokenRecord`` out, and the decisions about it.

Real rows are messy (see the README, "Data"): the access token may be named ``token``, ``oauth_config``
may be NULL or nested under ``installed``/``web``, client fields may sit in ``token_data``, expiry may be
NULL or only inside ``token_data``, JSON may be double-encoded. ``TokenRecord.from_row`` absorbs all of
that in one place, so the rest of the code sees one shape. Two decisions live here and nowhere else, for
the database and the file store alike: ``needs_refresh`` (does this token need a refresh now?) and
``check_usable`` (may it be used or sent anywhere at all?).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from shared import clock, config
from shared.errors import ReauthRequired
from shared.tokens.crypto import (
    OAUTH_CONFIG_SECRETS,
    TOKEN_DATA_SECRETS,
    TokenCipher,
    is_encrypted,
    open_row_without_key,
)

if TYPE_CHECKING:
    from shared.tokens.oauth import RefreshedToken

# Treat a token as expired this long before Google does, so a call that starts with it still has a
# valid token when it reaches Gmail (google-auth uses 3 m 45 s; a large upload can take longer).
EXPIRY_MARGIN = timedelta(minutes=5)

REFUSED_EARLIER = "Google refused this user's token earlier: reconnect Gmail"


def json_object(value: Any) -> dict[str, Any]:
    """A JSONB value as a dict: double-encoded strings are decoded, anything else non-object is {}."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return {}
    return dict(value) if isinstance(value, Mapping) else {}


def row_json(row: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The row's ``token_data`` and ``oauth_config`` as dicts, as stored (a NULL oauth_config stays None)."""
    oauth_config = row.get("oauth_config")
    return json_object(row.get("token_data")), None if oauth_config is None else json_object(oauth_config)


def plaintext_secret_fields(
    token_data: Mapping[str, Any], oauth_config: Mapping[str, Any] | None
) -> list[str]:
    """The names (never the values) of the secret fields a row holds in plain text, as stored.

    Besides the fields encryption at rest seals, this counts the places ``from_row`` also takes a
    client secret from (``token_data.client_secret``, a pasted ``installed``/``web`` client), which are
    never sealed: with ``REQUIRE_ENCRYPTED_TOKENS`` a secret found there must not be sent either.
    """
    places: list[tuple[str, Mapping[str, Any] | None, tuple[str, ...]]] = [
        ("token_data", token_data, (*TOKEN_DATA_SECRETS, "client_secret")),
        ("oauth_config", oauth_config, tuple(OAUTH_CONFIG_SECRETS)),
    ]
    for nested in ("installed", "web"):
        inner = (oauth_config or {}).get(nested)
        if isinstance(inner, Mapping):
            places.append((f"oauth_config.{nested}", inner, ("client_secret",)))
    found: list[str] = []
    for column, data, names in places:
        for name in names:
            value = (data or {}).get(name)
            if isinstance(value, str) and value.strip() and not is_encrypted(value):
                found.append(f"{column}.{name}")
    return found


def _text(value: Any) -> str | None:
    return value.strip() or None if isinstance(value, str) else None


def _parse_expiry(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return clock.to_naive_utc(value)
    if isinstance(value, str) and value.strip():
        try:
            return clock.to_naive_utc(datetime.fromisoformat(value.strip().replace("Z", "+00:00")))
        except ValueError:
            return None
    return None


def _scopes(column: Any, token_data: Mapping[str, Any]) -> list[str]:
    raw: Any = column if column else token_data.get("scopes") or token_data.get("scope")
    if isinstance(raw, str):
        raw = [raw]
    scopes: list[str] = []
    for item in raw or []:
        if isinstance(item, str):
            # Some writers stored Google's space-separated "scope" string as one array element.
            scopes.extend(part for part in item.replace(",", " ").split() if part not in scopes)
    return scopes


@dataclass
class TokenRecord:
    """One stored token, decoded and with secrets opened; ``repr`` shows no secret.

    ``refused`` says why the token may not be used or sent anywhere whatever Google would say (today:
    plaintext secrets while ``REQUIRE_ENCRYPTED_TOKENS`` is on); None when nothing forbids it.
    """

    row_id: int | None
    user_id: str
    equipped_to: str | None
    access_token: str | None = field(repr=False)
    refresh_token: str | None = field(repr=False)
    client_id: str | None
    client_secret: str | None = field(repr=False)
    token_uri: str
    scopes: list[str]
    expiry: datetime | None
    needs_reauth: bool = False
    reauth_reason: str | None = None
    refused: str | None = None
    last_used_at: datetime | None = None
    token_data: dict[str, Any] = field(default_factory=dict, repr=False)
    oauth_config: dict[str, Any] | None = field(default=None, repr=False)

    @classmethod
    def from_row(
        cls, row: Mapping[str, Any], cipher: TokenCipher | None, *, require_encrypted: bool = False
    ) -> TokenRecord:
        """Decodes a ``gmail_token`` row (or a file shaped like one), whatever shape its JSON columns have.

        Args:
            row: the row's columns (``token_data`` and ``oauth_config`` as stored, possibly sealed).
            cipher: opens sealed values; None when no keyring is configured.
            require_encrypted: ``REQUIRE_ENCRYPTED_TOKENS``: a row holding any secret in plain text is
                decoded with ``refused`` set (its plaintext values are then never used).

        Raises:
            DecryptionError: a sealed value cannot be opened.
        """
        user_id = str(row["user_id"])
        token_data, oauth_config = row_json(row)
        refused = None
        if require_encrypted:
            plaintext = plaintext_secret_fields(token_data, oauth_config)
            if plaintext:
                refused = (
                    f"this token's {', '.join(plaintext)} is stored in plain text and "
                    "REQUIRE_ENCRYPTED_TOKENS is on: store it again (encrypted) or run encrypt-tokens"
                )
        opener = cipher.open_row if cipher else open_row_without_key
        token_data, oauth_config = opener(token_data, oauth_config, user_id=user_id)
        client = dict(oauth_config or {})
        for nested in ("installed", "web"):  # a client-secrets file pasted as is
            if isinstance(client.get(nested), Mapping):
                client = {**client[nested], **client}
        return cls(
            row_id=row.get("id"),
            user_id=user_id,
            equipped_to=row.get("equipped_to"),
            access_token=_text(token_data.get("access_token")) or _text(token_data.get("token")),
            refresh_token=_text(token_data.get("refresh_token")),
            client_id=_text(client.get("client_id")) or _text(token_data.get("client_id")),
            client_secret=_text(client.get("client_secret")) or _text(token_data.get("client_secret")),
            token_uri=_text(client.get("token_uri"))
            or _text(token_data.get("token_uri"))
            or config.DEFAULT_TOKEN_URI,
            scopes=_scopes(row.get("scopes"), token_data),
            expiry=_parse_expiry(row.get("expiry")) or _parse_expiry(token_data.get("expiry")),
            needs_reauth=bool(row.get("needs_reauth")),
            reauth_reason=row.get("reauth_reason"),
            refused=refused,
            last_used_at=_parse_expiry(row.get("last_used_at")),
            token_data=token_data,
            oauth_config=oauth_config,
        )

    def is_fresh(self, now: datetime | None = None) -> bool:
        """True when the access token can be used without a refresh (a NULL expiry is tried as is)."""
        if not self.access_token:
            return False
        if self.expiry is None:
            return True
        now = clock.to_naive_utc(now or clock.utcnow())
        return self.expiry - EXPIRY_MARGIN > now

    def needs_refresh(self, *, force: bool = False, stale_access_token: str | None = None) -> bool:
        """The one decision "refresh this token now?", for every store.

        Args:
            force: refresh whatever the expiry says (``refresh_tokens`` with a user).
            stale_access_token: the token Gmail just refused. If the record already holds another one,
                someone refreshed meanwhile and that one is used as is; if it holds the same, refresh.
        """
        if force or not self.is_fresh():
            return True
        return stale_access_token is not None and self.access_token == stale_access_token

    def can_refresh(self) -> bool:
        """True when the row holds all that a refresh needs."""
        return bool(self.refresh_token and self.client_id and self.client_secret)

    def check_usable(self) -> None:
        """Raises unless this token may be used or sent anywhere (to Gmail or to the token endpoint).

        Raises:
            ReauthRequired: Google refused it earlier and no new token was stored since, or ``refused``.
        """
        if self.refused:
            raise ReauthRequired(self.refused, reason="plaintext_secrets")
        if self.needs_reauth:
            raise ReauthRequired(REFUSED_EARLIER)

    def status(self) -> dict[str, Any]:
        """The contract's token_status body: never a token value."""
        usable = not self.needs_reauth and not self.refused and (self.is_fresh() or self.can_refresh())
        return {
            "user_id": self.user_id,
            "connected": usable,
            "needs_reauth": not usable,
            "scopes": list(self.scopes),
            "expiry": clock.rfc3339(self.expiry),
            "equipped_to": self.equipped_to,
        }

    def with_refresh(self, refreshed: RefreshedToken) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """The row's JSON after a refresh: new access token and expiry, every other key kept."""
        token_data = dict(self.token_data)
        token_data["access_token"] = refreshed.access_token
        if "token" in token_data:
            # Legacy readers look at "token": a stale value there would hand them a dead token.
            token_data["token"] = refreshed.access_token
        if refreshed.refresh_token:
            token_data["refresh_token"] = refreshed.refresh_token
        if "expiry" in token_data:
            token_data["expiry"] = clock.rfc3339(refreshed.expiry)
        return token_data, self.oauth_config


def authorized_user_to_row(info: Mapping[str, Any]) -> dict[str, Any]:
    """Google's authorized-user JSON (the old file provider's format) as ``gmail_token`` column values."""
    access = _text(info.get("token")) or _text(info.get("access_token"))
    token_data = {
        "access_token": access,
        "refresh_token": _text(info.get("refresh_token")),
        "token_type": "Bearer",
    }
    oauth_config = {
        "client_id": _text(info.get("client_id")),
        "client_secret": _text(info.get("client_secret")),
        "token_uri": _text(info.get("token_uri")) or config.DEFAULT_TOKEN_URI,
    }
    return {
        "token_data": token_data,
        "oauth_config": oauth_config,
        "scopes": _scopes(None, info),
        "expiry": _parse_expiry(info.get("expiry")),
    }
