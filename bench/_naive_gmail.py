"""The naive twin of send_email and list_emails, for bench/gmail.py: Gmail as most samples call it.

Every call builds a new googleapiclient service with ``build("gmail", "v1", credentials=...)`` (which
parses the discovery document again and opens a new httplib2 connection), asks for the profile to learn
the From address, and a list fetches each message with its own ``messages.get``. The token comes from
the same store as ours, so the difference measured is the Gmail client alone. Not production code.
"""

from __future__ import annotations

import base64
import os
from email.headerregistry import Address
from email.message import EmailMessage
from typing import Any

import flask
from google.oauth2.credentials import Credentials
from googleapiclient.discovery import build

from shared import db
from shared.tokens.store import DatabaseTokenStore


def _service(user_id: str) -> Any:
    with db.connection() as conn:
        record = DatabaseTokenStore(conn).usable(user_id)
    return build(
        "gmail",
        "v1",
        credentials=Credentials(record.access_token),
        client_options={"api_endpoint": os.environ["GMAIL_API_ENDPOINT"]},
        cache_discovery=False,
    )


def send_email_naive(request: flask.Request) -> flask.Response:
    body = request.get_json()
    service = _service(body["user_id"])
    address = service.users().getProfile(userId="me").execute()["emailAddress"]
    message = EmailMessage()
    user, _, domain = address.partition("@")
    message["From"] = Address(body.get("from_name") or "", user, domain)
    message["To"] = body["to"]
    message["Subject"] = body.get("subject") or ""
    message.set_content(body.get("body") or "")
    raw = base64.urlsafe_b64encode(message.as_bytes()).decode("ascii")
    sent = service.users().messages().send(userId="me", body={"raw": raw}).execute()
    return flask.jsonify({"id": sent["id"], "thread_id": sent["threadId"], "label_ids": sent["labelIds"]})


def list_emails_naive(request: flask.Request) -> flask.Response:
    body = request.get_json(silent=True) or dict(request.args)
    service = _service(body["user_id"])
    messages = service.users().messages()
    listed = messages.list(
        userId="me", labelIds=body.get("label_ids") or None, maxResults=int(body.get("max_results", 20))
    ).execute()
    found = [
        messages.get(userId="me", id=item["id"], format="full").execute()
        for item in listed.get("messages", [])
    ]
    return flask.jsonify({"messages": [{"id": m["id"], "snippet": m["snippet"]} for m in found]})
