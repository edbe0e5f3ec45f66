"""Which OAuth scopes each target needs (CONTRACT.md, Scopes), and the 403 that names them.

One table, ``BY_TARGET``: for each target the full scope URLs any one of which lets its Gmail calls
through (taken from Gmail's discovery document, narrowed to what the contract lists). ``gate`` is how a
mailbox operation uses it:

- before Gmail is called, when the token's stored scopes are known and hold none of the target's, the
  call is answered 403 ``permission_denied`` with ``error.required_scopes``;
- when Gmail itself answers 403 for a missing scope (the stored list was empty, stale or wrong), the
  same 403 is raised, with the same ``required_scopes``.

A token row with no scopes stored (older rows, hand-made ones) is not judged here: Gmail decides.

Invariant: importing this module is cheap (no Google code); the CLI reads ``expand`` and the defaults.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from shared.errors import PermissionDenied

GMAIL = "https://www.googleapis.com/auth/gmail."
FULL = "https://mail.google.com/"
READONLY = GMAIL + "readonly"
SEND = GMAIL + "send"
COMPOSE = GMAIL + "compose"
MODIFY = GMAIL + "modify"
LABELS = GMAIL + "labels"
METADATA = GMAIL + "metadata"

READING = (READONLY, MODIFY, FULL)
SENDING = (SEND, COMPOSE, MODIFY, FULL)
DRAFTS = (COMPOSE, MODIFY, FULL)
LABELS_AND_TRASH = (MODIFY, FULL)
# labels.list and labels.get also take gmail.labels and gmail.metadata (discovery document): a token
# granted only those may still list labels, so they are not refused here.
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


def expand(name: str) -> str:
    """A scope as Google names it: ``gmail.modify`` -> ``https://www.googleapis.com/auth/gmail.modify``.

    ``mail.google.com`` (with or without scheme and slash) is the full-access scope; a URL passes as is.
    """
    text = name.strip()
    if text.startswith(("https://", "http://")):
        return text
    if text.rstrip("/") == "mail.google.com":
        return FULL
    return "https://www.googleapis.com/auth/" + text


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
        PermissionDenied: with ``required_scopes``; never when ``granted`` is empty (unknown).
    """
    stored = {scope.strip() for scope in granted if scope and scope.strip()}
    if stored and stored.isdisjoint(BY_TARGET[target]):
        raise denied(BY_TARGET[target])


@contextmanager
def gate(target: str, granted: Iterable[str]) -> Iterator[None]:
    """``require`` before the block; a Gmail 403 for a missing scope inside it becomes the same 403.

    Raises:
        PermissionDenied: with ``required_scopes``.
    """
    require(target, granted)
    try:
        yield
    except PermissionDenied as exc:
        if exc.details.get("scope_insufficient") and "required_scopes" not in exc.details:
            raise denied(BY_TARGET[target], by_gmail=True) from exc
        raise
