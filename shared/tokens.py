"""The token store: a person's Gmail OAuth token, read per call and kept fresh without corruption.

Real rows are messy (see shared/SEED.md): the access token may be named ``token``, ``oauth_config``
may be NULL or nested under ``installed``/``web``, client fields may sit in ``token_data``, expiry may be
NULL or only inside ``token_data``, JSON may be double-encoded. ``TokenRecord.from_row`` absorbs all of
that in one place, so the rest of the code sees one clean shape.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from shared import clock, config, db, secret_manager
from shared.config import ConfigError, Settings
from shared.crypto import KeyringError, TokenCipher, open_row_without_key
from shared.errors import NotFound, ReauthRequired, SkillEmailError

if TYPE_CHECKING:
    from google.oauth2.credentials import Credentials

    from shared.oauth import RefreshedToken

logger = logging.getLogger(__name__)

# Treat a token as expired this long before Google does, so a call that starts with it still has a
# valid token when it reaches Gmail (google-auth uses 3 m 45 s; a large upload can take longer).
EXPIRY_MARGIN = timedelta(minutes=5)


def _fingerprint_sql(token_data: str, oauth_config: str) -> str:
    """The credentials Google judged; when they change (a new token was stored), the marker lapses."""
    return (
        f"encode(sha256(convert_to(concat_ws('|', ({token_data})->>'refresh_token', "
        f"({oauth_config})->>'client_id', ({oauth_config})->>'client_secret'), 'UTF8')), 'hex')"
    )


REAUTH_FINGERPRINT_SQL = _fingerprint_sql("token_data", "oauth_config")
NEEDS_REAUTH_SQL = f"(reauth_required_at IS NOT NULL AND reauth_fingerprint = {REAUTH_FINGERPRINT_SQL})"

_COLUMNS = (
    "id, user_id, token_data, oauth_config, scopes, expiry, equipped_to, reauth_reason, "
    f"{NEEDS_REAUTH_SQL} AS needs_reauth"
)


def _json_object(value: Any) -> dict[str, Any]:
    """A JSONB value as a dict: double-encoded strings are decoded, anything else non-object is {}."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return {}
    return dict(value) if isinstance(value, Mapping) else {}


def _row_json(row: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The row's ``token_data`` and ``oauth_config`` as dicts, as stored (a NULL oauth_config stays None)."""
    oauth_config = row.get("oauth_config")
    return _json_object(row.get("token_data")), None if oauth_config is None else _json_object(oauth_config)


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
    """One stored token, decoded and with secrets opened; ``repr`` shows no secret."""

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
    token_data: dict[str, Any] = field(default_factory=dict, repr=False)
    oauth_config: dict[str, Any] | None = field(default=None, repr=False)

    @classmethod
    def from_row(cls, row: Mapping[str, Any], cipher: TokenCipher | None) -> TokenRecord:
        """Decodes a ``gmail_token`` row, whatever shape its JSON columns have."""
        user_id = str(row["user_id"])
        token_data, oauth_config = _row_json(row)
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

    def can_refresh(self) -> bool:
        """True when the row holds all that a refresh needs."""
        return bool(self.refresh_token and self.client_id and self.client_secret)

    def credentials(self) -> Credentials:
        """google-auth credentials for Gmail; expiry naive UTC, as google-auth wants."""
        from google.oauth2.credentials import Credentials

        return Credentials(
            token=self.access_token,
            refresh_token=self.refresh_token,
            token_uri=self.token_uri,
            client_id=self.client_id,
            client_secret=self.client_secret,
            scopes=self.scopes or None,
            expiry=self.expiry,
        )

    def status(self) -> dict[str, Any]:
        """The contract's token_status body: never a token value."""
        usable = not self.needs_reauth and (self.is_fresh() or self.can_refresh())
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


@dataclass
class RefreshSummary:
    """The scheduled run's answer."""

    checked: int = 0
    refreshed: int = 0
    skipped: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, outcome: str, user_id: str | None = None, code: str | None = None) -> None:
        """Counts one row's outcome: ``refreshed``, ``skipped`` or ``failed``."""
        with self._lock:
            self.checked += 1
            if outcome == "refreshed":
                self.refreshed += 1
            elif outcome == "skipped":
                self.skipped += 1
            else:
                self.failed.append({"user_id": user_id or "", "code": code or "internal"})

    def as_dict(self) -> dict[str, Any]:
        """The contract's body."""
        return {
            "checked": self.checked,
            "refreshed": self.refreshed,
            "skipped": self.skipped,
            "failed": sorted(self.failed, key=lambda item: item["user_id"]),
        }


_cipher_cache: dict[str, TokenCipher] = {}
_cipher_lock = threading.Lock()


def token_cipher(settings: Settings | None = None) -> TokenCipher | None:
    """The at-rest cipher when ``TOKEN_KEYS`` or ``TOKEN_KEY_SECRET`` is set, else None (plaintext)."""
    settings = settings or config.load_settings()
    if settings.token_keys:
        text = settings.token_keys
    elif settings.token_key_secret:
        text = secret_manager.secrets.read(settings.token_key_secret, settings)
    else:
        return None
    digest = hashlib.sha256(text.encode()).hexdigest()
    with _cipher_lock:
        cipher = _cipher_cache.get(digest)
        if cipher is None:
            try:
                cipher = TokenCipher.from_keyring(text)
            except KeyringError as exc:
                raise ConfigError(f"the token keyring is malformed: {exc}") from None
            _cipher_cache[digest] = cipher
        return cipher


class DatabaseTokenStore:
    """Tokens in the shared ``gmail_token`` table, one connection per invocation."""

    def __init__(self, conn: db.Connection, cipher: TokenCipher | None = None) -> None:
        self.conn = conn
        self.cipher = cipher

    # -- reading ---------------------------------------------------------------------------------

    def find(self, user_id: str, robeing_id: str | None = None) -> TokenRecord:
        """The equipped token for the user (and robeing), the most recently updated if several.

        Raises:
            NotFound: no equipped row matches.
        """
        row = self.conn.one(
            f"SELECT {_COLUMNS} FROM gmail_token "
            "WHERE user_id = :user_id AND is_equipped "
            "AND (CAST(:robeing_id AS VARCHAR) IS NULL OR equipped_to = :robeing_id) "
            "ORDER BY updated_at DESC NULLS LAST, id DESC LIMIT 1",
            user_id=user_id,
            robeing_id=robeing_id,
        )
        if row is None:
            raise self._not_found(user_id, robeing_id)
        return TokenRecord.from_row(row, self.cipher)

    def _not_found(self, user_id: str, robeing_id: str | None) -> NotFound:
        counts = (
            self.conn.one(
                "SELECT count(*) FILTER (WHERE NOT COALESCE(is_equipped, false)) AS unequipped, "
                "count(*) FILTER (WHERE is_equipped) AS equipped FROM gmail_token WHERE user_id = :user_id",
                user_id=user_id,
            )
            or {}
        )
        if robeing_id and counts.get("equipped"):
            return NotFound(f"no token equipped to robeing {robeing_id!r} for this user")
        if counts.get("unequipped"):
            # The old service's rows all started unequipped; say so instead of a bare "not found".
            return NotFound("this user's Gmail tokens are stored but none is equipped (is_equipped = false)")
        return NotFound("no Gmail token is stored for this user")

    def usable(self, user_id: str, robeing_id: str | None = None) -> TokenRecord:
        """The user's token, refreshed first when it has expired or is about to.

        Raises:
            NotFound, ReauthRequired, Unavailable, UpstreamError.
        """
        record = self.find(user_id, robeing_id)
        if record.needs_reauth:
            raise ReauthRequired("Google refused this user's token earlier: reconnect Gmail")
        if record.is_fresh():
            return record
        assert record.row_id is not None
        return self.refresh_row(record.row_id, force=False)

    # -- refreshing ------------------------------------------------------------------------------

    def refresh_row(self, row_id: int, *, force: bool, stale_access_token: str | None = None) -> TokenRecord:
        """Refreshes one row under its lock: re-read, refresh only if still needed, write back.

        Two invocations refreshing one user queue on the row lock; the second finds the first's fresh
        token and uses it, so Google is called once and an older token never overwrites a newer one.

        Args:
            row_id: the ``gmail_token.id``.
            force: refresh whatever the expiry says.
            stale_access_token: the token Gmail just refused; a different stored token is used as is.
        """
        failure: SkillEmailError | None = None
        with self.conn.transaction():
            row = self.conn.one(f"SELECT {_COLUMNS} FROM gmail_token WHERE id = :id FOR UPDATE", id=row_id)
            if row is None:
                raise NotFound("the token was deleted while it was being refreshed")
            record = TokenRecord.from_row(row, self.cipher)
            if record.needs_reauth:
                raise ReauthRequired("Google refused this user's token earlier: reconnect Gmail")
            replaced = stale_access_token is not None and record.access_token != stale_access_token
            if not force and record.is_fresh() and (stale_access_token is None or replaced):
                return record
            try:
                record = self._refresh_locked(record)
            except ReauthRequired as exc:
                self._mark_reauth(row_id, str(exc.details.get("reason") or "invalid_grant"))
                failure = exc
        if failure is not None:
            raise failure
        return record

    def _refresh_locked(self, record: TokenRecord) -> TokenRecord:
        # Imported on the first refresh: google-auth and requests cost ~90 ms of import that an
        # instance serving only fresh tokens or token_status never pays.
        from shared import oauth

        refreshed = oauth.refresh_access_token(
            refresh_token=record.refresh_token,
            client_id=record.client_id,
            client_secret=record.client_secret,
            token_uri=record.token_uri,
        )
        token_data, oauth_config = record.with_refresh(refreshed)
        stored_data, stored_config = token_data, oauth_config
        if self.cipher is not None:
            stored_data, stored_config = self.cipher.seal_row(
                token_data, oauth_config, user_id=record.user_id
            )
        self.conn.run(
            "UPDATE gmail_token SET token_data = CAST(:token_data AS JSONB), "
            "oauth_config = CAST(:oauth_config AS JSONB), expiry = :expiry, "
            "updated_at = (now() AT TIME ZONE 'UTC'), "
            "reauth_required_at = NULL, reauth_reason = NULL, reauth_fingerprint = NULL WHERE id = :id",
            token_data=json.dumps(stored_data),
            oauth_config=json.dumps(stored_config) if stored_config is not None else None,
            expiry=refreshed.expiry,
            id=record.row_id,
        )
        record.access_token = refreshed.access_token
        record.refresh_token = refreshed.refresh_token
        record.expiry = refreshed.expiry
        record.token_data, record.oauth_config = token_data, oauth_config
        logger.info("token refreshed", extra={"fields": {"user_id": record.user_id, "row_id": record.row_id}})
        return record

    def _mark_reauth(self, row_id: int, reason: str) -> None:
        self.conn.run(
            "UPDATE gmail_token SET reauth_required_at = (now() AT TIME ZONE 'UTC'), "
            f"reauth_reason = :reason, reauth_fingerprint = {REAUTH_FINGERPRINT_SQL} WHERE id = :id",
            reason=reason[:64],
            id=row_id,
        )
        logger.warning("token needs re-authorisation", extra={"fields": {"row_id": row_id, "reason": reason}})

    def refresh_record(self, record: TokenRecord, stale_access_token: str | None) -> TokenRecord:
        """Refreshes the token a call is using because it expired or Gmail refused it."""
        assert record.row_id is not None
        return self.refresh_row(record.row_id, force=False, stale_access_token=stale_access_token)

    def refresh_user(self, user_id: str, robeing_id: str | None = None) -> RefreshSummary:
        """Refreshes the user's token now, whatever its expiry (``refresh_tokens`` with a user_id)."""
        record = self.find(user_id, robeing_id)
        if record.needs_reauth:
            raise ReauthRequired("Google refused this user's token earlier: reconnect Gmail")
        assert record.row_id is not None
        self.refresh_row(record.row_id, force=True)
        summary = RefreshSummary()
        summary.add("refreshed")
        return summary


def refresh_due(
    connect: Any, window_seconds: int, concurrency: int, cipher: TokenCipher | None = None
) -> RefreshSummary:
    """The scheduled run: refreshes every equipped token whose expiry is NULL or within the window.

    Candidates are read once; each worker, with its own connection, then takes one row at a time with
    ``FOR UPDATE SKIP LOCKED`` and re-checks that it is still due, so two runs at once never refresh
    the same token twice: a row another run holds, or has just refreshed, counts as skipped.

    Args:
        connect: a zero-argument callable returning a context manager that yields a ``db.Connection``.
        window_seconds: how close to expiry a token must be.
        concurrency: how many workers (and connections) at most.
    """
    deadline = clock.to_naive_utc(clock.utcnow() + timedelta(seconds=window_seconds))
    summary = RefreshSummary()
    with connect() as conn:
        # Only the row each (user, robeing) lookup would pick: refreshing a shadowed older duplicate
        # would bump its updated_at and make it win over the token the person stored last.
        candidates = conn.run(
            "SELECT id FROM (SELECT DISTINCT ON (user_id, equipped_to) id, expiry, "
            f"{NEEDS_REAUTH_SQL} AS needs_reauth FROM gmail_token WHERE is_equipped "
            "ORDER BY user_id, equipped_to, updated_at DESC NULLS LAST, id DESC) AS winners "
            "WHERE NOT needs_reauth AND (expiry IS NULL OR expiry < :deadline) "
            "ORDER BY expiry NULLS FIRST, id",
            deadline=deadline,
        )
    ids = [row["id"] for row in candidates]
    if not ids:
        return summary
    queue = iter(ids)
    queue_lock = threading.Lock()

    def next_id() -> int | None:
        with queue_lock:
            return next(queue, None)

    def worker() -> None:
        with connect() as conn:
            store = DatabaseTokenStore(conn, cipher)
            while (row_id := next_id()) is not None:
                try:
                    _refresh_one_due(store, row_id, deadline, summary)
                except SkillEmailError as exc:  # the database failed under this row: count it, go on
                    summary.add("failed", None, exc.code)
                except Exception:
                    logger.exception("scheduled refresh of row %d failed", row_id)
                    summary.add("failed", None, "internal")

    workers = max(1, min(concurrency, len(ids)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="refresh") as pool:
        futures = [pool.submit(worker) for _ in range(workers)]
        for future in futures:
            future.result()
    return summary


def _refresh_one_due(
    store: DatabaseTokenStore, row_id: int, deadline: datetime, summary: RefreshSummary
) -> None:
    failure: SkillEmailError | None = None
    user_id: str | None = None
    with store.conn.transaction():
        row = store.conn.one(
            f"SELECT {_COLUMNS} FROM gmail_token WHERE id = :id AND is_equipped "
            f"AND (expiry IS NULL OR expiry < :deadline) AND NOT {NEEDS_REAUTH_SQL} "
            "FOR UPDATE SKIP LOCKED",
            id=row_id,
            deadline=deadline,
        )
        if row is None:
            summary.add("skipped")
            return
        user_id = str(row["user_id"])
        try:
            store._refresh_locked(TokenRecord.from_row(row, store.cipher))
        except ReauthRequired as exc:
            store._mark_reauth(row_id, str(exc.details.get("reason") or "invalid_grant"))
            failure = exc
        except SkillEmailError as exc:
            failure = exc
    if failure is not None:
        summary.add("failed", user_id, failure.code)
    else:
        summary.add("refreshed")


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


def store_token(
    conn: db.Connection,
    user_id: str,
    values: Mapping[str, Any],
    *,
    equipped_to: str | None = None,
    cipher: TokenCipher | None = None,
    replace: bool = True,
) -> str:
    """Stores a user's token as an equipped row; returns ``inserted``, ``updated``, ``unchanged`` or ``kept``.

    An existing equipped row for the same user and robeing is updated in place (``replace``) or kept;
    a row holding the same refresh token is left unchanged, so imports can run again.
    """
    token_data = dict(values["token_data"])
    oauth_config = dict(values["oauth_config"]) if values.get("oauth_config") is not None else None
    with conn.transaction():
        existing = conn.one(
            f"SELECT {_COLUMNS} FROM gmail_token WHERE user_id = :user_id AND is_equipped "
            "AND equipped_to IS NOT DISTINCT FROM CAST(:equipped_to AS VARCHAR) "
            "ORDER BY updated_at DESC NULLS LAST, id DESC LIMIT 1 FOR UPDATE",
            user_id=user_id,
            equipped_to=equipped_to,
        )
        if existing is not None:
            current = TokenRecord.from_row(existing, cipher)
            if current.refresh_token and current.refresh_token == token_data.get("refresh_token"):
                return "unchanged"
            if not replace:
                return "kept"
        if cipher is not None:
            token_data, oauth_config = cipher.seal_row(token_data, oauth_config, user_id=user_id)
        params = {
            "token_data": json.dumps(token_data),
            "oauth_config": json.dumps(oauth_config) if oauth_config is not None else None,
            "scopes": list(values.get("scopes") or []),
            "expiry": values.get("expiry"),
        }
        if existing is not None:
            conn.run(
                "UPDATE gmail_token SET token_data = CAST(:token_data AS JSONB), "
                "oauth_config = CAST(:oauth_config AS JSONB), scopes = CAST(:scopes AS TEXT[]), "
                "expiry = :expiry, "
                "updated_at = (now() AT TIME ZONE 'UTC'), reauth_required_at = NULL, reauth_reason = NULL, "
                "reauth_fingerprint = NULL WHERE id = :id",
                id=existing["id"],
                **params,
            )
            return "updated"
        conn.run(
            "INSERT INTO gmail_token (user_id, robeing_id, token_data, oauth_config, scopes, expiry, "
            "is_equipped, equipped_to, created_at, updated_at) VALUES (:user_id, :equipped_to, "
            "CAST(:token_data AS JSONB), CAST(:oauth_config AS JSONB), CAST(:scopes AS TEXT[]), "
            ":expiry, true, "
            ":equipped_to, (now() AT TIME ZONE 'UTC'), (now() AT TIME ZONE 'UTC'))",
            user_id=user_id,
            equipped_to=equipped_to,
            **params,
        )
        return "inserted"


@dataclass
class ResealCounts:
    """What ``reseal_rows`` did."""

    rewritten: int = 0
    unchanged: int = 0
    busy: int = 0


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
    new_fingerprint = _fingerprint_sql("CAST(:token_data AS JSONB)", "CAST(:oauth_config AS JSONB)")
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
                    f"SELECT {_COLUMNS} FROM gmail_token WHERE id = :id FOR UPDATE SKIP LOCKED", id=row_id
                )
                if row is None:
                    counts.busy += 1
                    continue
                user_id = str(row["user_id"])
                token_data, oauth_config = _row_json(row)
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
                    "UPDATE gmail_token SET token_data = CAST(:token_data AS JSONB), "
                    "oauth_config = CAST(:oauth_config AS JSONB), "
                    f"reauth_fingerprint = CASE WHEN :needs_reauth THEN {new_fingerprint} "
                    "ELSE reauth_fingerprint END WHERE id = :id",
                    token_data=json.dumps(stored_data),
                    oauth_config=json.dumps(stored_config) if stored_config is not None else None,
                    needs_reauth=bool(row.get("needs_reauth")),
                    id=row_id,
                )
                counts.rewritten += 1
