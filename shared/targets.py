"""The one registry of targets: each target's name, methods, request type and body limit, declared once.

``main.py`` exports these, the local server mounts them, ``deploy.sh`` deploys them (through
``python -m shared.targets``), and the OpenAPI checks and tests read them. Adding a target is one entry
here plus its entry point ``functions/<name>.py``; nothing else keeps a list that could drift.

Invariant: importing this module is cheap; it names request types, never the code that serves them.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from shared import request_types as rt
from shared.params import MAX_BODY_BYTES

# The caller roles (docs/deploy.md, "Who may call what"). The operator may call every target;
# ``Target.roles`` names who else may, and deploy.sh grants run.invoker per function from the same list.
ROBEING = "robeing"
SCHEDULER = "scheduler"
OPERATOR = "operator"

# How a target is triggered when deployed: an HTTP function, or a CloudEvent function subscribed to the
# Pub/Sub topic Gmail publishes to (deploy.sh gives it --trigger-topic, its own service account, --retry).
HTTP = "http"
PUBSUB = "pubsub"

# A send with 24 MiB of attachments is ~32 MiB of base64 plus the JSON around it.
MAX_SEND_BODY_BYTES = 34 * 1024 * 1024


@dataclass(frozen=True)
class Target:
    """One deployable function."""

    name: str
    methods: tuple[str, ...]
    request: type[rt.Request]
    summary: str
    max_body: int = MAX_BODY_BYTES
    # Who besides the operator may call it (and so gets run.invoker on it when deployed).
    roles: tuple[str, ...] = (ROBEING,)
    trigger: str = HTTP
    # Deploy sizes, read by devtools/deploy_plan.py (docs/deploy.md says why each is what it is).
    memory: str = "1Gi"
    timeout: str = "60s"
    # The most requests one instance serves at once; the planner picks between half this and this.
    max_concurrency: int = 4
    # Its weight in the split of the database-connection budget among the robeing-facing targets.
    db_weight: int = 1

    @property
    def module(self) -> str:
        """The entry point's module; its function has the target's name."""
        return f"functions.{self.name}"


TARGETS: tuple[Target, ...] = (
    Target(
        "send_email",
        ("POST",),
        rt.SendEmailRequest,
        "sends a message from the user's Gmail mailbox",
        max_body=MAX_SEND_BODY_BYTES,
        timeout="120s",
        db_weight=2,
    ),
    Target(
        "list_emails",
        ("GET", "POST"),
        rt.ListEmailsRequest,
        "lists / searches the user's messages, with decoded headers and optionally bodies",
        db_weight=2,
    ),
    Target(
        "get_email",
        ("GET", "POST"),
        rt.GetEmailRequest,
        "one message, with decoded bodies and every header a reply needs",
    ),
    Target(
        "get_thread",
        ("GET", "POST"),
        rt.GetThreadRequest,
        "a whole conversation, oldest message first",
    ),
    Target(
        "get_attachment",
        ("GET",),
        rt.GetAttachmentRequest,
        "the bytes of one attachment",
    ),
    Target(
        "refresh_tokens",
        ("POST",),
        rt.RefreshTokensRequest,
        "refreshes one user's token now, or every equipped token close to expiry (Cloud Scheduler)",
        roles=(SCHEDULER,),
        memory="512Mi",
        timeout="540s",
        max_concurrency=1,
    ),
    Target(
        "token_status",
        ("GET", "POST"),
        rt.TokenStatusRequest,
        "tells whether a user has a usable token; never returns token values",
        memory="512Mi",
        max_concurrency=8,
    ),
    Target(
        "create_draft",
        ("POST",),
        rt.CreateDraftRequest,
        "a draft for a person to review, built like send_email",
        max_body=MAX_SEND_BODY_BYTES,
    ),
    Target("send_draft", ("POST",), rt.SendDraftRequest, "sends a draft"),
    Target(
        "modify_email",
        ("POST",),
        rt.ModifyEmailRequest,
        "labels, read/unread, archive, trash for a message or a thread",
    ),
    Target("list_labels", ("GET", "POST"), rt.ListLabelsRequest, "the mailbox's labels"),
    Target(
        "watch_mailbox",
        ("POST",),
        rt.WatchMailboxRequest,
        "starts or stops new-mail notifications for a user",
    ),
    Target(
        "gmail_push",
        ("POST",),
        rt.GmailPushRequest,
        "Gmail's notification: finds the new messages and queues events for robeings",
        # Called by Eventarc's own identity, which deploy.sh grants; no caller role.
        roles=(),
        trigger=PUBSUB,
    ),
    Target(
        "list_events",
        ("GET", "POST"),
        rt.ListEventsRequest,
        "the events queued for a robeing, for pulling instead of (or besides) webhooks",
    ),
    Target(
        "mcp",
        ("POST",),
        rt.McpRequest,
        "the same operations as MCP tools (Model Context Protocol, streamable HTTP, stateless)",
        # A tools/call of send_email carries the same attachments, and runs the same send, as send_email.
        max_body=MAX_SEND_BODY_BYTES,
        timeout="120s",
    ),
)

BY_NAME: dict[str, Target] = {target.name: target for target in TARGETS}


def get(name: str) -> Target:
    """The registered target called ``name``.

    Raises:
        KeyError: no such target (a bug: an entry point whose name is not registered).
    """
    return BY_NAME[name]


def main(argv: list[str]) -> int:
    """``python -m shared.targets``: one line per target, ``NAME METHODS``, for deploy.sh."""
    del argv
    for target in TARGETS:
        print(target.name, ",".join(target.methods))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
