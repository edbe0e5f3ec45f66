"""The one clock of the project, so tests can move time in a single place."""

from __future__ import annotations

import datetime as dt

UTC = dt.UTC


def utcnow() -> dt.datetime:
    """Returns the current time as an aware UTC datetime."""
    return dt.datetime.now(UTC)


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
