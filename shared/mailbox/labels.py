"""``list_labels``, and label names resolved to ids for ``modify_email``.

Invariants: the labels are listed with one ``labels.list`` per call, never once per label; counts
(``include_counts``) come from ``labels.get`` in Gmail batch requests, never one request per label.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from shared import audit
from shared.errors import InvalidArgument, SkillEmailError
from shared.gmail import GmailClient, resource
from shared.mailbox.session import gmail_client, record_audit
from shared.request_types import ListLabelsRequest
from shared.tokens import provider
from shared.web import Call

# Gmail's system label ids. A call naming only these needs no labels.list: they exist in every mailbox.
SYSTEM_LABEL_IDS = frozenset(
    {
        "INBOX", "SENT", "DRAFT", "SPAM", "TRASH", "UNREAD", "STARRED", "IMPORTANT", "CHAT",
        "CATEGORY_PERSONAL", "CATEGORY_SOCIAL", "CATEGORY_PROMOTIONS", "CATEGORY_UPDATES",
        "CATEGORY_FORUMS",
    }
)  # fmt: skip


def fetch_labels(client: GmailClient) -> list[dict[str, Any]]:
    """The mailbox's labels, system and user, as ``labels.list`` gives them (one request)."""
    labels = resource(client.endpoint, "users", "labels")
    listed = client.execute(lambda: labels.list(userId="me"))
    labels = listed.get("labels") if isinstance(listed, dict) else None
    return [label for label in labels or [] if isinstance(label, dict) and label.get("id")]


class LabelIds:
    """Label names and ids to ids, for one call: the mailbox's labels are listed at most once."""

    def __init__(self, client: GmailClient) -> None:
        self._client = client
        self._labels: list[dict[str, Any]] | None = None

    def _listed(self) -> list[dict[str, Any]]:
        if self._labels is None:
            self._labels = fetch_labels(self._client)
        return self._labels

    def resolve(self, field: str, given: Iterable[str]) -> list[str]:
        """Each item as a label id: an id as it is, a name (exact, else ignoring case) as its label's id.

        Raises:
            InvalidArgument: an item is neither a label id nor a label name of this mailbox.
        """
        items = list(given)
        if all(item in SYSTEM_LABEL_IDS for item in items):
            return items
        labels = self._listed()
        ids = {str(label["id"]) for label in labels}
        by_name = {str(label.get("name")): str(label["id"]) for label in labels}
        by_folded = {str(label.get("name")).casefold(): str(label["id"]) for label in labels}
        resolved = []
        for item in items:
            label_id = item if item in ids else by_name.get(item) or by_folded.get(item.casefold())
            if label_id is None:
                raise InvalidArgument(
                    f"{field}: this mailbox has no label {item!r} (neither an id nor a name)"
                )
            resolved.append(label_id)
        return resolved


def _label(resource: dict[str, Any], counts: dict[str, Any] | None) -> dict[str, Any]:
    label: dict[str, Any] = {
        "id": str(resource["id"]),
        "name": str(resource.get("name") or resource["id"]),
        "type": "system" if resource.get("type") == "system" else "user",
    }
    if counts is not None:
        label["messages_total"] = int(counts.get("messagesTotal") or 0)
        label["messages_unread"] = int(counts.get("messagesUnread") or 0)
    return label


def list_labels(args: ListLabelsRequest, call: Call) -> dict[str, Any]:
    """The mailbox's labels, with message counts when asked; see the README, list_labels."""
    with provider.open_session() as session:
        try:
            with gmail_client(session, args.user_id, args.robeing_id, call.log, target="list_labels") as (
                client,
                _record,
            ):
                resources = fetch_labels(client)
                counted: dict[str, dict[str, Any]] | None = None
                if args.include_counts and resources:
                    labels = resource(client.endpoint, "users", "labels")
                    ids = [str(resource["id"]) for resource in resources]
                    details = client.batch_get(ids, lambda label_id: labels.get(userId="me", id=label_id))
                    counted = {str(detail.get("id")): detail for detail in details}
        except SkillEmailError as exc:
            record_audit(session, args, audit.LIST_LABELS, call, http_status=exc.status, error_code=exc.code)
            raise
        # A label deleted between the list and its count is left out, as list_emails leaves out a
        # message deleted between its list and get.
        result = [
            _label(resource, counted.get(str(resource["id"])) if counted is not None else None)
            for resource in resources
            if counted is None or str(resource["id"]) in counted
        ]
        call.log["result_count"] = len(result)
        record_audit(session, args, audit.LIST_LABELS, call, http_status=200, result_count=len(result))
        return {"labels": result}
