"""A Gmail client for one user's token, and the few Gmail calls only watches and sync make.

The token comes from the configured store and is refreshed through it (``mailbox.session``), as for every
other call. The store's database connection is its own: a sync holds the mailbox's row lock on another
connection, and a token refresh commits on this one without touching that transaction.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from datetime import datetime
from typing import Any

from shared import clock
from shared.errors import NotFound, PermissionDenied, ReauthRequired, SkillEmailError, UpstreamError
from shared.gmail import GmailClient
from shared.mailbox import session as mailbox_session
from shared.tokens import provider

# Google allows at most 500 history records or message ids per page.
PAGE_SIZE = 500
# A token that cannot be used for this user (gone, refused, lacking scope): trying another watcher's
# token may work; trying the same one again will not.
TOKEN_UNUSABLE = (NotFound, ReauthRequired, PermissionDenied)


@contextmanager
def client_for(user_id: str, robeing_id: str | None) -> Iterator[GmailClient]:
    """A Gmail client with the token of ``user_id`` (equipped to ``robeing_id`` when given).

    Raises:
        NotFound, ReauthRequired, Unavailable, UpstreamError: as any call that reads a token.
    """
    with (
        provider.open_session() as session,
        mailbox_session.gmail_client(session, user_id, robeing_id, {}) as (client, _record),
    ):
        yield client


@contextmanager
def client_for_any(watchers: Sequence[tuple[str, str]]) -> Iterator[GmailClient]:
    """A client with the first usable token among ``(user_id, robeing_id)`` watchers of one mailbox.

    Raises:
        The last watcher's token error when none is usable; Unavailable at once.
    """
    last: SkillEmailError = NotFound("nobody watches this mailbox")
    for user_id, robeing_id in watchers:
        stack = ExitStack()
        try:
            client = stack.enter_context(client_for(user_id, robeing_id))
        except TOKEN_UNUSABLE as exc:
            last = exc
            continue
        with stack:
            yield client
        return
    raise last


def profile(client: GmailClient) -> tuple[str, int]:
    """The mailbox's address (lower-case) and current history id (users.getProfile)."""
    result = client.execute(lambda: client.service.users().getProfile(userId="me"))
    address = result.get("emailAddress") if isinstance(result, dict) else None
    if not address:
        raise UpstreamError("Gmail's profile has no email address")
    return str(address).lower(), _history_id(result.get("historyId"))


def watch(client: GmailClient, topic: str, label_ids: Sequence[str]) -> tuple[int, datetime]:
    """users.watch for ``label_ids`` on ``topic``; returns Gmail's history id and the watch's expiry (UTC)."""
    body = {"topicName": topic, "labelIds": list(label_ids), "labelFilterBehavior": "include"}
    result = client.execute(lambda: client.service.users().watch(userId="me", body=body))
    if not isinstance(result, dict):
        raise UpstreamError("Gmail's watch answer is not an object")
    try:
        expiration_ms = int(result["expiration"])
    except (KeyError, TypeError, ValueError):
        raise UpstreamError("Gmail's watch answer has no expiration") from None
    expiration = clock.to_naive_utc(datetime.fromtimestamp(expiration_ms / 1000, clock.UTC))
    return _history_id(result.get("historyId")), expiration


def stop(client: GmailClient) -> None:
    """users.stop: Gmail stops publishing this mailbox's changes."""
    client.execute(lambda: client.service.users().stop(userId="me"))


def history_page(client: GmailClient, start_history_id: int) -> tuple[list[dict[str, Any]], int, bool]:
    """One page (``PAGE_SIZE`` records) of the messages added since ``start_history_id`` (users.history.list).

    Returns:
        The added messages (``{id, threadId, labelIds?}``) in history order; the history id to continue
        from (the page's last record when there is more, else the mailbox's current id); and whether
        there is more.

    Raises:
        NotFound: Gmail no longer has history that old; the caller lists the mailbox instead.
    """

    def make() -> Any:
        return (
            client.service.users()
            .history()
            .list(
                userId="me",
                startHistoryId=str(start_history_id),
                historyTypes=["messageAdded"],
                maxResults=PAGE_SIZE,
            )
        )

    result = client.execute(make)
    result = result if isinstance(result, dict) else {}
    added: list[dict[str, Any]] = []
    last_record = start_history_id
    for record in result.get("history") or []:
        if not isinstance(record, dict):
            continue
        last_record = max(last_record, _history_id(record.get("id"), default=last_record))
        for item in record.get("messagesAdded") or []:
            message = item.get("message") if isinstance(item, dict) else None
            if isinstance(message, dict) and message.get("id"):
                added.append(message)
    if result.get("nextPageToken"):
        # The next page is asked for as "after this page's last record" rather than with the page token,
        # so each page can be committed (events and history id together) on its own.
        return added, last_record, True
    return added, max(start_history_id, _history_id(result.get("historyId"), default=last_record)), False


def list_since(client: GmailClient, label_ids: Sequence[str], after_seconds: int) -> list[str]:
    """The ids of messages in any of ``label_ids`` received at or after ``after_seconds`` (every page)."""
    ids: dict[str, None] = {}
    for label in label_ids:
        page_token: str | None = None
        while True:
            listed = client.list_messages(
                q=f"after:{after_seconds}",
                label_ids=[label],
                max_results=PAGE_SIZE,
                page_token=page_token,
                include_spam_trash=label in ("SPAM", "TRASH"),
            )
            for item in listed.get("messages") or []:
                if isinstance(item, dict) and item.get("id"):
                    ids[str(item["id"])] = None
            page_token = listed.get("nextPageToken") or None
            if not page_token:
                break
    return list(ids)


def _history_id(value: Any, default: int | None = None) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        if default is not None:
            return default
        raise UpstreamError("Gmail's answer has no history id") from None
