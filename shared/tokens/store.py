"""The database token store: the shared ``gmail_token`` table, one connection per invocation.

Reads pick the equipped row that wins (``sql.WINNER_ORDER``); a refresh happens under the row's lock
(``SELECT ... FOR UPDATE``), re-checks ``needs_refresh`` there, and writes the new token, its expiry and
``updated_at`` in the same transaction, so two invocations never both call Google for one row and an
older token never overwrites a newer one. An ``invalid_grant`` marks the row (see ``sql.NEEDS_REAUTH``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import timedelta

from shared import clock, config, db
from shared.errors import NotFound, ReauthRequired, SkillEmailError
from shared.tokens import scheduled, sql
from shared.tokens.base import RefreshSummary, TokenStore
from shared.tokens.crypto import TokenCipher
from shared.tokens.record import TokenRecord

logger = logging.getLogger(__name__)

# A use is written at most this often per token: enough for a rule counted in days, and an active
# token costs one small UPDATE an hour rather than one per call.
USE_GRANULARITY = timedelta(hours=1)

Connect = Callable[[], AbstractContextManager[db.Connection]]


class DatabaseTokenStore(TokenStore):
    """Tokens in the shared ``gmail_token`` table, over one connection.

    Args:
        conn: the invocation's connection.
        cipher: opens and seals secret values; None when no keyring is configured.
        connect: opens another connection like ``conn`` (the scheduled run's extra workers); None
            means the scheduled run uses ``conn`` alone.
        concurrency: the scheduled run's workers, each one connection, ``conn`` included.
        require_encrypted: ``REQUIRE_ENCRYPTED_TOKENS``: a row with a plaintext secret is refused.
    """

    def __init__(
        self,
        conn: db.Connection,
        cipher: TokenCipher | None = None,
        *,
        connect: Connect | None = None,
        concurrency: int = 1,
        require_encrypted: bool = False,
        active_days: int = config.DEFAULT_ACTIVE_DAYS,
    ) -> None:
        self.conn = conn
        self.cipher = cipher
        self.require_encrypted = require_encrypted
        self.connect = connect
        self.concurrency = concurrency if connect is not None else 1
        self.active_days = active_days

    def on(self, conn: db.Connection) -> DatabaseTokenStore:
        """The same store (cipher and settings) over another connection."""
        return DatabaseTokenStore(
            conn,
            self.cipher,
            connect=self.connect,
            concurrency=self.concurrency,
            require_encrypted=self.require_encrypted,
            active_days=self.active_days,
        )

    def decode(self, row: dict[str, object]) -> TokenRecord:
        """A row read with ``sql.COLUMNS`` as a record, secrets opened."""
        return TokenRecord.from_row(row, self.cipher, require_encrypted=self.require_encrypted)

    # -- reading ---------------------------------------------------------------------------------

    def find(self, user_id: str, robeing_id: str | None = None) -> TokenRecord:
        """The equipped token for the user (and robeing), the most recently updated if several.

        Raises:
            NotFound: no equipped row matches.
        """
        row = self.conn.one(
            f"SELECT {sql.COLUMNS} FROM gmail_token "
            "WHERE user_id = :user_id AND is_equipped "
            "AND (CAST(:robeing_id AS VARCHAR) IS NULL OR equipped_to = :robeing_id) "
            f"ORDER BY {sql.WINNER_ORDER} LIMIT 1",
            user_id=user_id,
            robeing_id=robeing_id,
        )
        if row is None:
            raise self._not_found(user_id, robeing_id)
        return self.decode(row)

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

    def note_use(self, record: TokenRecord) -> None:
        """Writes ``last_used_at`` at most once per ``USE_GRANULARITY``, and pulls an idle token's next
        scheduled look forward to its expiry, so the scheduled run keeps it fresh from now on.

        Bookkeeping: it never waits for a row another invocation is refreshing (SKIP LOCKED), and a
        failure is logged, not raised: the call itself can still be served.
        """
        now = clock.to_naive_utc(clock.utcnow())
        if record.row_id is None or (record.last_used_at and record.last_used_at > now - USE_GRANULARITY):
            return
        try:
            self.conn.run(
                "UPDATE gmail_token SET last_used_at = :now, "
                "check_at = CASE WHEN check_at > expiry THEN expiry ELSE check_at END "
                "WHERE id = (SELECT id FROM gmail_token WHERE id = :id FOR UPDATE SKIP LOCKED)",
                now=now,
                id=record.row_id,
            )
        except SkillEmailError as exc:
            logger.warning(
                "token use not recorded: %s", exc.code, extra={"fields": {"row_id": record.row_id}}
            )
            return
        record.last_used_at = now

    # -- refreshing ------------------------------------------------------------------------------

    def refresh(
        self, record: TokenRecord, *, force: bool, stale_access_token: str | None = None
    ) -> TokenRecord:
        """See ``TokenStore.refresh``: here, under the row's lock."""
        assert record.row_id is not None
        return self.refresh_row(record.row_id, force=force, stale_access_token=stale_access_token)

    def refresh_row(self, row_id: int, *, force: bool, stale_access_token: str | None = None) -> TokenRecord:
        """Refreshes one row under its lock: re-read, refresh only if still needed, write back.

        Args:
            row_id: the ``gmail_token.id``.
            force: refresh whatever the expiry says.
            stale_access_token: the token Gmail just refused; a different stored token is used as is.
        """
        failure: SkillEmailError | None = None
        with self.conn.transaction():
            row = self.conn.one(f"SELECT {sql.COLUMNS} FROM gmail_token WHERE id = :id FOR UPDATE", id=row_id)
            if row is None:
                raise NotFound("the token was deleted while it was being refreshed")
            record = self.decode(row)
            record.check_usable()  # a refused record raises before anything is sent
            if not record.needs_refresh(force=force, stale_access_token=stale_access_token):
                return record
            try:
                record = self.refresh_locked(record)
            except ReauthRequired as exc:
                self.mark_reauth(row_id, str(exc.details.get("reason") or "invalid_grant"))
                failure = exc
        if failure is not None:
            raise failure
        return record

    def refresh_locked(self, record: TokenRecord) -> TokenRecord:
        """Calls Google for ``record`` and writes the answer back; the caller holds the row's lock.

        Returns:
            The record with the new access token, refresh token and expiry.
        """
        # Imported on the first refresh: google-auth and requests cost ~90 ms of import that an
        # instance serving only fresh tokens or token_status never pays.
        from shared.tokens import oauth

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
        now = clock.to_naive_utc(clock.utcnow())
        self.conn.run(
            sql.update_token_json(
                "expiry = :expiry",
                # Used lately: look again when it expires. Idle: only for the daily check.
                "check_at = CASE WHEN last_used_at >= :active_since THEN CAST(:expiry AS TIMESTAMP) "
                "ELSE CAST(:idle_check_at AS TIMESTAMP) END",
                sql.TOUCH,
                sql.CLEAR_REAUTH,
            ),
            **sql.json_params(stored_data, stored_config),
            expiry=refreshed.expiry,
            active_since=now - timedelta(days=self.active_days),
            idle_check_at=now + scheduled.IDLE_CHECK_EVERY,
            id=record.row_id,
        )
        record.access_token = refreshed.access_token
        record.refresh_token = refreshed.refresh_token
        record.expiry = refreshed.expiry
        record.token_data, record.oauth_config = token_data, oauth_config
        logger.info("token refreshed", extra={"fields": {"user_id": record.user_id, "row_id": record.row_id}})
        return record

    def mark_reauth(self, row_id: int, reason: str) -> None:
        """Marks the row as refused by Google, until its credentials change (``sql.NEEDS_REAUTH``)."""
        self.conn.run(
            "UPDATE gmail_token SET reauth_required_at = (now() AT TIME ZONE 'UTC'), "
            f"reauth_reason = :reason, reauth_fingerprint = {sql.REAUTH_FINGERPRINT}, "
            # Looked at daily: a new token stored by someone else lapses the mark (sql.NEEDS_REAUTH).
            "check_at = :check_at WHERE id = :id",
            reason=reason[:64],
            check_at=clock.to_naive_utc(clock.utcnow()) + scheduled.IDLE_CHECK_EVERY,
            id=row_id,
        )
        logger.warning("token needs re-authorisation", extra={"fields": {"row_id": row_id, "reason": reason}})

    def refresh_due(self, window_seconds: int) -> RefreshSummary:
        """The scheduled run over the table; see ``scheduled.refresh_due``."""
        return scheduled.refresh_due(self, window_seconds)

    def refresh_slice(self, row_ids: list[int], window_seconds: int) -> RefreshSummary:
        """One slice of a fanned-out scheduled run; see ``scheduled.refresh_slice``."""
        return scheduled.refresh_slice(self, row_ids, window_seconds)
