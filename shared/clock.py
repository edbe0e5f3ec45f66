"""The one clock of the project: wall time, monotonic time and sleeping, so tests move time in one place.

Invariant: no other module calls ``datetime.now``, ``time.monotonic`` or ``time.sleep`` for anything a test
may need to control (backoff, retry waits, caches with a lifetime); they call these.
"""

from __future__ import annotations

import datetime as dt
import time

UTC = dt.UTC


def utcnow() -> dt.datetime:
    """Returns the current time as an aware UTC datetime."""
    return dt.datetime.now(UTC)


def monotonic() -> float:
    """Seconds on a clock that never goes back, for deadlines and cache lifetimes."""
    return time.monotonic()


def sleep(seconds: float) -> None:
    """Waits ``seconds`` (backoff, the wait before a Message-ID search); tests replace it to not wait."""
    if seconds > 0:
        time.sleep(seconds)


def from_library_clock(value: dt.datetime) -> dt.datetime:
    """An instant a library computed from the machine's clock (google-auth's token expiry), moved onto
    this one, as naive UTC: the same instant in production, and consistent when a test moves time."""
    machine_now = dt.datetime.now(UTC).replace(tzinfo=None)
    return to_naive_utc(utcnow()) + (to_naive_utc(value) - machine_now)


def to_naive_utc(value: dt.datetime) -> dt.datetime:
    """Converts an aware or naive-UTC datetime to naive UTC (what google-auth and the table use)."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


def rfc3339(value: dt.datetime | None) -> str | None:
    """Formats a datetime (naive means UTC) as RFC 3339 in UTC, e.g. ``2026-01-02T03:04:05Z``."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    value = value.astimezone(UTC)
    text = value.isoformat(timespec="microseconds" if value.microsecond else "seconds")
    return text.replace("+00:00", "Z")
