"""The scope table (shared/scopes.py) against Gmail's own discovery document: every scope the table
accepts for a target really lets each Gmail method that target calls through."""

from __future__ import annotations

import json
from typing import Any

import pytest
from googleapiclient.discovery_cache import get_static_doc

from shared import scopes

# The Gmail methods each target calls on its way to a 200 (resource.method, as the document names them).
CALLS = {
    "create_draft": ["users.getProfile", "drafts.create"],
    "send_draft": ["drafts.get", "drafts.send"],
    "modify_email": [
        "labels.list",
        "messages.modify",
        "messages.trash",
        "messages.untrash",
        "threads.modify",
        "threads.trash",
        "threads.untrash",
    ],
    "list_labels": ["labels.list", "labels.get"],
    "list_emails": ["messages.list", "messages.get"],
    "get_email": ["messages.get"],
    "get_thread": ["threads.get"],
    "get_attachment": ["messages.get", "messages.attachments.get"],
}


def method_scopes(name: str) -> set[str]:
    """The scopes Gmail's discovery document lists for a method, e.g. ``messages.attachments.get``."""
    document: dict[str, Any] = json.loads(get_static_doc("gmail", "v1") or "{}")
    *resources, method = name.split(".")
    node = document["resources"]["users"]
    for resource in resources:
        node = node if resource == "users" else node["resources"][resource]
    return set(node["methods"][method]["scopes"])


@pytest.mark.parametrize("target", sorted(CALLS))
def test_every_accepted_scope_lets_every_call_of_the_target_through(target: str) -> None:
    for call in CALLS[target]:
        assert set(scopes.BY_TARGET[target]) <= method_scopes(call), (target, call)


def test_the_contract_table():
    assert (
        scopes.BY_TARGET["create_draft"]
        == scopes.BY_TARGET["send_draft"]
        == (
            "https://www.googleapis.com/auth/gmail.compose",
            "https://www.googleapis.com/auth/gmail.modify",
            "https://mail.google.com/",
        )
    )
    assert scopes.BY_TARGET["modify_email"] == (
        "https://www.googleapis.com/auth/gmail.modify",
        "https://mail.google.com/",
    )
    assert scopes.DEFAULT_AUTHORIZE == (
        "https://www.googleapis.com/auth/gmail.send",
        "https://www.googleapis.com/auth/gmail.readonly",
    )


@pytest.mark.parametrize(
    ("given", "expanded"),
    [
        ("gmail.modify", "https://www.googleapis.com/auth/gmail.modify"),
        ("mail.google.com", "https://mail.google.com/"),
        ("https://mail.google.com/", "https://mail.google.com/"),
        ("https://www.googleapis.com/auth/gmail.compose", "https://www.googleapis.com/auth/gmail.compose"),
    ],
)
def test_short_names_expand_to_googles_urls(given: str, expanded: str) -> None:
    assert scopes.expand(given) == expanded


def test_unknown_stored_scopes_are_not_judged_but_known_ones_are():
    scopes.require("modify_email", [])  # nothing stored: Gmail decides
    scopes.require("modify_email", ["https://mail.google.com/"])
    with pytest.raises(Exception) as info:
        scopes.require("modify_email", [scopes.READONLY, scopes.COMPOSE])
    assert info.value.details["required_scopes"] == [scopes.MODIFY, scopes.FULL]
