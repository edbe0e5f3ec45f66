"""What every token store does, with the parts that do not depend on where tokens live written once.

A store implements ``find`` (read), ``refresh`` (re-read under its lock, refresh only if still needed,
write back) and ``refresh_due`` (the scheduled run). ``usable``, ``refresh_record`` and ``refresh_user``
are built here on those three and ``TokenRecord``'s decisions, so the database and the file store
cannot drift apart in when they refresh or what they refuse.
"""

from __future__ import annotations

import abc
import threading
from dataclasses import dataclass, field
from typing import Any

from shared.errors import InvalidArgument
from shared.tokens.record import TokenRecord


@dataclass
class RefreshSummary:
    """The ``refresh_tokens`` answer: ``checked``, ``refreshed``, ``skipped``, ``failed`` (thread-safe)."""

    checked: int = 0
    refreshed: int = 0
    skipped: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, outcome: str, user_id: str | None = None, code: str | None = None) -> None:
        """Counts one token's outcome: ``refreshed``, ``skipped`` or ``failed``."""
        with self.lock:
            self.checked += 1
            if outcome == "refreshed":
                self.refreshed += 1
            elif outcome == "skipped":
                self.skipped += 1
            else:
                self.failed.append({"user_id": user_id or "", "code": code or "internal"})

    def as_dict(self) -> dict[str, Any]:
        """The contract's body (exactly these four fields)."""
        return {
            "checked": self.checked,
            "refreshed": self.refreshed,
            "skipped": self.skipped,
            "failed": sorted(self.failed, key=lambda item: item["user_id"]),
        }


class TokenStore(abc.ABC):
    """A store of people's Gmail tokens."""

    @abc.abstractmethod
    def find(self, user_id: str, robeing_id: str | None = None) -> TokenRecord:
        """The user's token as stored (for ``robeing_id``, the one equipped to it).

        Raises:
            NotFound: no such token.
        """

    @abc.abstractmethod
    def refresh(
        self, record: TokenRecord, *, force: bool, stale_access_token: str | None = None
    ) -> TokenRecord:
        """Re-reads ``record`` under the store's lock and refreshes it if ``needs_refresh`` still says so.

        Two invocations refreshing one token queue on the lock; the second finds the first's fresh
        token and uses it, so Google is called once and an older token never overwrites a newer one.

        Raises:
            NotFound, ReauthRequired, Unavailable, UpstreamError.
        """

    @abc.abstractmethod
    def refresh_due(self, window_seconds: int) -> RefreshSummary:
        """The scheduled run: refreshes every token whose expiry is unknown or within the window."""

    def usable(self, user_id: str, robeing_id: str | None = None) -> TokenRecord:
        """The user's token, refreshed first when it has expired or is about to.

        Raises:
            NotFound, ReauthRequired, Unavailable, UpstreamError.
        """
        record = self.find(user_id, robeing_id)
        record.check_usable()
        self.note_use(record)
        return self.refresh(record, force=False) if record.needs_refresh() else record

    def refresh_slice(self, row_ids: list[int], window_seconds: int) -> RefreshSummary:
        """One slice of a fanned-out scheduled run (a Cloud Task's ``row_ids``).

        Raises:
            InvalidArgument: this store keeps no rows to slice (the file store).
        """
        del row_ids, window_seconds
        raise InvalidArgument("row_ids: only the database token store is refreshed in slices")

    def note_use(self, record: TokenRecord) -> None:
        """Records that a call is using ``record`` (the scheduled run refreshes used tokens early).

        A store without a scheduled run that cares (the file store) records nothing.
        """
        del record

    def refresh_record(self, record: TokenRecord, stale_access_token: str | None) -> TokenRecord:
        """Refreshes the token a call is using because it expired or Gmail refused it."""
        return self.refresh(record, force=False, stale_access_token=stale_access_token)

    def refresh_user(self, user_id: str, robeing_id: str | None = None) -> RefreshSummary:
        """Refreshes the user's token now, whatever its expiry (``refresh_tokens`` with a user_id)."""
        record = self.find(user_id, robeing_id)
        record.check_usable()
        self.refresh(record, force=True)
        summary = RefreshSummary()
        summary.add("refreshed")
        return summary
