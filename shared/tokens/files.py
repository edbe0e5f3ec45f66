"""The file token provider (``TOKEN_PROVIDER=file``): Google authorized-user JSON files, one per user.

Kept for compatibility with the old service's ``FileCredentialsProvider(TOKEN_BASE)``. A refresh
rewrites the file atomically (temp file + rename) under an exclusive lock, so a reader never sees a
half-written token and two refreshes of one user call Google once. When to refresh and what to refuse
are ``TokenRecord``'s decisions and ``TokenStore``'s ``usable``, shared with the database store.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from shared import clock
from shared.config import ConfigError
from shared.errors import InvalidArgument, NotFound, ReauthRequired, SkillEmailError
from shared.tokens.base import RefreshSummary, TokenStore
from shared.tokens.record import TokenRecord

# Letters, digits and a few separators; no path separators, no leading dot: a user id can never name
# a file outside TOKEN_DIR (or a hidden one inside it).
_SAFE_USER_ID = re.compile(r"^[A-Za-z0-9@_+=-][A-Za-z0-9@._+=-]{0,99}$")
_MARKER = "skill_email_needs_reauth"


def _fingerprint(data: dict[str, Any]) -> str:
    material = "|".join(str(data.get(key) or "") for key in ("refresh_token", "client_id", "client_secret"))
    return hashlib.sha256(material.encode()).hexdigest()


class FileTokenStore(TokenStore):
    """Tokens as ``TOKEN_DIR/<user_id>.json``; robeing routing does not apply to files."""

    def __init__(self, token_dir: str | None, *, require_encrypted: bool = False) -> None:
        if not token_dir:
            raise ConfigError("TOKEN_DIR must be set when TOKEN_PROVIDER=file")
        if require_encrypted:
            # Token files are Google's authorized-user JSON, plain text by nature: no file could ever be
            # used, and reconnecting would not change that, so this is the operator's error (503), not
            # every user's 401.
            raise ConfigError("REQUIRE_ENCRYPTED_TOKENS=true cannot hold with TOKEN_PROVIDER=file")
        self.root = Path(token_dir).resolve()

    def path_for(self, user_id: str) -> Path:
        """The user's file, refusing any id that could leave TOKEN_DIR."""
        if not _SAFE_USER_ID.match(user_id) or ".." in user_id:
            raise InvalidArgument(
                "user_id: with the file provider only letters, digits and @._+=- are allowed"
            )
        path = (self.root / f"{user_id}.json").resolve()
        if path.parent != self.root:
            raise InvalidArgument("user_id: not a plain file name")
        return path

    def _read(self, path: Path) -> dict[str, Any]:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise NotFound("no Gmail token is stored for this user") from None
        except (ValueError, UnicodeDecodeError):
            raise NotFound("the stored token file is not valid JSON") from None
        if not isinstance(data, dict):
            raise NotFound("the stored token file is not a JSON object")
        return data

    def _record(self, user_id: str, data: dict[str, Any]) -> TokenRecord:
        marker = data.get(_MARKER)
        row = {
            "id": None,
            "user_id": user_id,
            "token_data": data,
            "oauth_config": None,
            "scopes": data.get("scopes"),
            "expiry": data.get("expiry"),
            "equipped_to": None,
            "needs_reauth": isinstance(marker, dict) and marker.get("fingerprint") == _fingerprint(data),
        }
        return TokenRecord.from_row(row, None)

    def find(self, user_id: str, robeing_id: str | None = None) -> TokenRecord:
        """The user's token as stored."""
        return self._record(user_id, self._read(self.path_for(user_id)))

    def refresh(
        self, record: TokenRecord, *, force: bool, stale_access_token: str | None = None
    ) -> TokenRecord:
        """Refreshes under an exclusive lock on ``<user_id>.json.lock`` and rewrites the file atomically."""
        user_id = record.user_id
        path = self.path_for(user_id)
        with self._locked(path):
            data = self._read(path)
            record = self._record(user_id, data)
            record.check_usable()
            if not record.needs_refresh(force=force, stale_access_token=stale_access_token):
                return record
            from shared.tokens import oauth  # imported on first use, as in the database store

            try:
                refreshed = oauth.refresh_access_token(
                    refresh_token=record.refresh_token,
                    client_id=record.client_id,
                    client_secret=record.client_secret,
                    token_uri=record.token_uri,
                )
            except ReauthRequired as exc:
                data[_MARKER] = {
                    "fingerprint": _fingerprint(data),
                    "since": clock.rfc3339(clock.utcnow()),
                    "reason": exc.details.get("reason"),
                }
                self._write(path, data)
                raise
            data["token"] = refreshed.access_token  # the authorized-user format's name for it
            data.pop("access_token", None)
            data["refresh_token"] = refreshed.refresh_token
            data["expiry"] = clock.rfc3339(refreshed.expiry)
            data.pop(_MARKER, None)
            self._write(path, data)
            return self._record(user_id, data)

    def refresh_due(self, window_seconds: int) -> RefreshSummary:
        """Refreshes every file whose token expires within the window (sequential: files are few)."""
        summary = RefreshSummary()
        deadline = clock.to_naive_utc(clock.utcnow() + timedelta(seconds=window_seconds))
        for path in sorted(self.root.glob("*.json")):
            user_id = path.stem
            try:
                record = self.find(user_id)
                if record.needs_reauth or (record.expiry is not None and record.expiry >= deadline):
                    continue
                # Due by the window (which may reach past EXPIRY_MARGIN): refresh it, as the database does.
                self.refresh(record, force=True)
                summary.add("refreshed")
            except SkillEmailError as exc:
                summary.add("failed", user_id, exc.code)
        return summary

    @contextlib.contextmanager
    def _locked(self, path: Path) -> Iterator[None]:
        with open(f"{path}.lock", "a+") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)

    @staticmethod
    def _write(path: Path, data: dict[str, Any]) -> None:
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle, ensure_ascii=False, indent=2, default=_default)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(temp, 0o600)  # tokens are secrets
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return clock.rfc3339(value)
    raise TypeError(type(value).__name__)
