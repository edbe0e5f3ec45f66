"""OAuth scopes: which Gmail scopes each target needs, and the 403 when a token lacks them.

The contract's Scopes table, written once. A target's need is a tuple of full scope URLs, any one of
which will do. Invariants: a token whose stored scopes are known and hold none of them is refused with
403 ``permission_denied`` and ``required_scopes`` before Gmail is called; a token with no stored scopes
(older rows) is tried, and Gmail's own 403 for scopes is answered the same way.

May import: ``shared.errors`` only (cheap: every mailbox operation imports it).
"""

from __future__ import annotations

from collections.abc import Iterable

from shared.errors import PermissionDenied

_BASE = "https://www.googleapis.com/auth/"
READONLY = _BASE + "gmail.readonly"
SEND = _BASE + "gmail.send"
COMPOSE = _BASE + "gmail.compose"
MODIFY = _BASE + "gmail.modify"
LABELS = _BASE + "gmail.labels"
METADATA = _BASE + "gmail.metadata"
FULL = "https://mail.google.com/"

# Any one of each tuple will do; the narrowest first, as Google's own documentation lists them.
READING = (READONLY, MODIFY, FULL)
SENDING = (SEND, COMPOSE, MODIFY, FULL)
DRAFTS = (COMPOSE, MODIFY, FULL)
LABELS_AND_TRASH = (MODIFY, FULL)
# Listing labels is a read: Gmail's labels.list and labels.get also take gmail.labels and gmail.metadata
# (discovery document), so a default (send + readonly) token lists them. Changing labels is modify_email.
LISTING_LABELS = (READONLY, LABELS, METADATA, MODIFY, FULL)

BY_TARGET: dict[str, tuple[str, ...]] = {
    "list_emails": READING,
    "get_email": READING,
    "get_thread": READING,
    "get_attachment": READING,
    "send_email": SENDING,
    "create_draft": DRAFTS,
    "send_draft": DRAFTS,
    "modify_email": LABELS_AND_TRASH,
    "list_labels": LISTING_LABELS,
}

# What `python -m shared.cli authorize` asks for without --scopes: sending and reading, least privilege.
DEFAULT_AUTHORIZE = (SEND, READONLY)


def missing(granted: Iterable[str], needed: tuple[str, ...]) -> bool:
    """True when the stored scopes are known and hold none of ``needed``.

    Args:
        granted: The scopes stored with the token (empty when the row never recorded them).
        needed: Full scope URLs, any one of which would do.
    """
    stored = {expand(scope) for scope in granted if scope}
    return bool(stored) and not stored & {expand(scope) for scope in needed}


def denied(needed: tuple[str, ...], *, by_gmail: bool = False) -> PermissionDenied:
    """The 403 for a token that lacks every scope in ``needed``, carrying ``required_scopes``."""
    source = "Gmail refused the call" if by_gmail else "the stored token cannot make this call"
    return PermissionDenied(
        f"{source}: it needs one of the scopes {', '.join(needed)}; reconnect Gmail granting one of them",
        required_scopes=list(needed),
    )


def require(target: str, granted: Iterable[str]) -> None:
    """Refuses the call before Gmail is called when the stored scopes already say it would fail.

    Raises:
        PermissionDenied: with ``required_scopes``, when ``granted`` is known and lacks the target's need.
        KeyError: ``target`` has no entry (a bug: every mailbox target is listed in ``BY_TARGET``).
    """
    needed = BY_TARGET[target]
    if missing(granted, needed):
        raise denied(needed)


def expand(scope: str) -> str:
    """Full URL form: Google accepts, old rows hold and ``authorize --scopes`` takes short names such as
    ``gmail.send`` (``mail.google.com`` is the full-access scope)."""
    scope = scope.strip()
    if scope.startswith(("https://", "http://")):
        return scope.rstrip("/") + ("/" if scope.rstrip("/") == FULL.rstrip("/") else "")
    if scope in ("mail.google.com", "mail.google.com/"):
        return FULL
    return _BASE + scope
