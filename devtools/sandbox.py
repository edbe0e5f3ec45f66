"""The sandbox of ``python3 tasks.py serve --sandbox``: a local Google, a demo mailbox and a connected user.

Google's token endpoint and Gmail are the fakes the tests use (``devtools/fakes``), on 127.0.0.1 ports of
their own, so nothing leaves the machine. The functions reach them through the same settings a deployment
could change (``GMAIL_API_ENDPOINT``, the row's ``token_uri`` allowed by ``ALLOWED_TOKEN_URIS``), so they
run exactly the code a deployed function runs. Whatever Gmail operation the fake supports (send, list,
get, batch, upload, and what later targets add to it) works here with no change in this module.

Invariants: the demo user's row is written afresh at every start (the fakes' ports change, and the
mailbox lives in memory, so it is re-seeded too); real users' rows in the same database are untouched.
``/_sandbox`` is a small control surface for robeing developers: deliver new mail (which also reaches
``gmail_push`` as Gmail's notification would, once that target exists and the mailbox is watched), queue a
Gmail failure (to try a robeing's handling of 429 and 503), and read what was sent.
"""

from __future__ import annotations

import base64
import email
import email.policy
import email.utils
import json
import re
import secrets
from collections.abc import Iterable
from email.message import EmailMessage
from typing import Any

import requests

from devtools import demo_mailbox
from devtools.fakes.gmail import FakeGmail
from devtools.fakes.oauth import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, FakeTokenEndpoint
from shared import config, db, targets
from shared.tokens.maintenance import store_token
from shared.tokens.record import authorized_user_to_row

DEMO_USER = "demo"
# The demo token is equipped to this robeing, so calls that name a robeing (watch_mailbox needs one) find
# it; calls without robeing_id find it too.
DEMO_ROBEING = "demo-robeing"
SCOPES = tuple(
    f"https://www.googleapis.com/auth/gmail.{name}" for name in ("modify", "compose", "send", "readonly")
)
# Where watch_mailbox asks Gmail to publish; the fake accepts any topic name.
PUBSUB_TOPIC = "projects/sandbox/topics/gmail"
# The control surface takes small JSON objects only.
MAX_CONTROL_BODY = 64 * 1024


class Sandbox:
    """The fakes, the seeded mailbox and the demo user's token; ``close()`` stops the fakes."""

    def __init__(self) -> None:
        self.functions_url: str | None = None  # where gmail_push is, once the server knows its address
        self.oauth = FakeTokenEndpoint(scope=" ".join(SCOPES)).start()
        self.gmail = FakeGmail(email_address=demo_mailbox.DEMO_ADDRESS, tokens=()).start()
        self.gmail.trust(self.oauth)
        self.seeded = demo_mailbox.seed(self.gmail)

    @property
    def token_uri(self) -> str:
        return f"{self.oauth.url}/token"

    def environment(self) -> dict[str, str]:
        """The settings that point the functions at the fakes (they run in this process)."""
        return {
            config.GMAIL_API_ENDPOINT: self.gmail.url,
            "ALLOWED_TOKEN_URIS": self.token_uri,
            "PUBSUB_TOPIC": PUBSUB_TOPIC,
        }

    def connect_demo_user(self, database_url: str) -> str:
        """Stores the demo user's token (a new refresh token the fake endpoint knows) as an equipped row."""
        refresh_token = f"1//sandbox-{secrets.token_urlsafe(16)}"
        self.oauth.add_refresh_token(refresh_token, DEFAULT_CLIENT_ID)
        values = authorized_user_to_row(
            {
                "refresh_token": refresh_token,
                "client_id": DEFAULT_CLIENT_ID,
                "client_secret": DEFAULT_CLIENT_SECRET,
                "token_uri": self.token_uri,
                "scopes": list(SCOPES),
            }
        )
        with db.connection(db.parse_database_url(database_url)) as conn:
            return store_token(conn, DEMO_USER, values, equipped_to=DEMO_ROBEING)

    def deliver(self, fields: dict[str, Any]) -> dict[str, str]:
        """Puts a new message in the demo INBOX, as if someone had just written to the demo user."""
        message = EmailMessage()
        message["From"] = str(fields.get("from") or "Alice Kim <alice@example.com>")
        message["To"] = demo_mailbox.DEMO_ADDRESS
        message["Subject"] = str(fields.get("subject") or "New mail")
        message["Date"] = email.utils.formatdate(usegmt=True)
        message["Message-ID"] = email.utils.make_msgid(domain="sandbox.example")
        message.set_content(str(fields.get("body") or ""))
        thread_id = fields.get("thread_id")
        message_id = self.gmail.add_message(
            message.as_bytes(), thread_id=thread_id if isinstance(thread_id, str) else None
        )
        stored = self.gmail.message(message_id)
        return {
            "id": message_id,
            "thread_id": stored.thread_id if stored else message_id,
            "notified": self.notify(),
        }

    def notify(self) -> bool:
        """Gmail's new-mail notification, as Pub/Sub hands it to ``gmail_push`` (a binary-mode CloudEvent,
        ``message.data`` the base64 of ``{"emailAddress", "historyId"}``), when that target exists and the
        mailbox is watched; returns whether one was sent."""
        watched = getattr(self.gmail, "watches", {})  # the fake's watch state, where it keeps one
        if "gmail_push" not in targets.BY_NAME or self.functions_url is None or not watched:
            return False
        with self.gmail.lock:
            mailbox = self.gmail.mailboxes[self.gmail.email_address]
            notification = {"emailAddress": mailbox.email_address, "historyId": mailbox.history_id}
        event_id = secrets.token_hex(8)
        body = {
            "message": {
                "data": base64.b64encode(json.dumps(notification).encode()).decode("ascii"),
                "messageId": event_id,
                "publishTime": email.utils.formatdate(usegmt=True),
            },
            "subscription": "projects/sandbox/subscriptions/gmail-push",
        }
        headers = {
            "ce-id": event_id,
            "ce-source": f"//pubsub.googleapis.com/{PUBSUB_TOPIC}",
            "ce-type": "google.cloud.pubsub.topic.v1.messagePublished",
            "ce-specversion": "1.0",
            "Content-Type": "application/json",
        }
        answer = requests.post(f"{self.functions_url}/gmail_push", json=body, headers=headers, timeout=60)
        return answer.ok

    def fail(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Queues Gmail failures: ``{"path_regex", "status", "count"?, "method"?, "retry_after"?}``,
        or ``{"after_send": true, "status"?, "count"?}``: sends Gmail stores and then fails (outcome unknown).
        """
        count = int(fields.get("count") or 1)
        if fields.get("after_send"):
            self.gmail.fail_after_send(int(fields.get("status") or 500), count=count)
            return {"queued": count, "after_send": True}
        path_regex, status, method = fields.get("path_regex"), fields.get("status"), fields.get("method")
        if not isinstance(path_regex, str) or not isinstance(status, int):
            raise ValueError("path_regex (a regular expression) and status (an integer) are required")
        if method is not None and not isinstance(method, str):
            raise ValueError("method: an HTTP method such as GET or POST")
        re.compile(path_regex)  # a bad pattern is the caller's 400, not a crash of the fake later
        headers = {"Retry-After": str(fields["retry_after"])} if fields.get("retry_after") else None
        self.gmail.fail_next(path_regex, status, count=count, headers=headers, method=method)
        return {"queued": count, "path_regex": path_regex, "status": status}

    def sent(self) -> list[dict[str, Any]]:
        """What the demo user sent through Gmail, oldest first: the headers a robeing developer checks."""
        out = []
        for raw in self.gmail.sent_messages():
            parsed = email.message_from_bytes(raw, policy=email.policy.default)
            out.append({name.lower(): str(parsed.get(name, "")) for name in ("To", "Subject", "Message-ID")})
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "user_id": DEMO_USER,
            "robeing_id": DEMO_ROBEING,
            "email_address": demo_mailbox.DEMO_ADDRESS,
            "gmail_url": self.gmail.url,
            "token_url": self.token_uri,
            "seeded": vars(self.seeded),
            "sent": len(self.gmail.sent_messages()),
        }

    def control_app(self) -> Any:
        """The WSGI app at ``/_sandbox``: GET (describe), POST /deliver, POST /fail, GET /sent."""
        routes = {
            ("GET", ""): lambda _: self.describe(),
            ("GET", "/sent"): lambda _: {"sent": self.sent()},
            ("POST", "/deliver"): self.deliver,
            ("POST", "/fail"): self.fail,
        }

        def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "").rstrip("/")
            handler = routes.get((environ.get("REQUEST_METHOD", "GET"), path))
            status, body = "200 OK", None
            if handler is None:
                status = "404 Not Found"
                body = {
                    "error": {
                        "code": "not_found",
                        "message": f"sandbox control: {', '.join(map(' '.join, routes))}",
                    }
                }
            else:
                try:
                    length = min(int(environ.get("CONTENT_LENGTH") or 0), MAX_CONTROL_BODY)
                    raw = environ["wsgi.input"].read(length) if length else b""
                    fields = json.loads(raw or b"{}")
                    if not isinstance(fields, dict):
                        raise ValueError("the body must be a JSON object")
                    body = handler(fields)
                except (ValueError, TypeError, re.error) as exc:
                    status = "400 Bad Request"
                    body = {"error": {"code": "invalid_argument", "message": str(exc)}}
            data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
            start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
            return [data]

        return app

    def close(self) -> None:
        self.gmail.close()
        self.oauth.close()
