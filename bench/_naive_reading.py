"""Naive twins of get_email, get_thread and get_attachment for bench/reading.py: Gmail as samples read it.

Every call builds a new googleapiclient service (``build("gmail", "v1")``: the discovery document parsed
again, a new httplib2 connection); a thread is ``threads.get`` for the ids, then one ``messages.get`` per
message; an attachment is read whole by ``execute()``, decoded whole, and answered whole. The token
comes from the same store as ours, so the difference measured is the reading alone. Not production code.
"""

from __future__ import annotations

import base64
from typing import Any

import flask

from bench._naive_gmail import _service


def _args(request: flask.Request) -> dict[str, Any]:
    return request.get_json(silent=True) or dict(request.args)


def get_email_naive(request: flask.Request) -> flask.Response:
    args = _args(request)
    service = _service(args["user_id"])
    found = service.users().messages().get(userId="me", id=args["message_id"], format="full").execute()
    return flask.jsonify({"id": found["id"], "snippet": found["snippet"]})


def get_thread_naive(request: flask.Request) -> flask.Response:
    args = _args(request)
    service = _service(args["user_id"])
    thread = service.users().threads().get(userId="me", id=args["thread_id"], format="minimal").execute()
    messages = [
        service.users().messages().get(userId="me", id=item["id"], format="full").execute()
        for item in thread.get("messages", [])
    ]
    return flask.jsonify({"id": thread["id"], "messages": [{"id": m["id"]} for m in messages]})


def get_attachment_naive(request: flask.Request) -> flask.Response:
    args = _args(request)
    service = _service(args["user_id"])
    message = service.users().messages().get(userId="me", id=args["message_id"], format="full").execute()
    part = message["payload"]["parts"][int(args["attachment_id"].removeprefix("part-"))]
    answer = (
        service.users()
        .messages()
        .attachments()
        .get(userId="me", messageId=args["message_id"], id=part["body"]["attachmentId"])
        .execute()
    )
    data = base64.urlsafe_b64decode(answer["data"] + "=" * (-len(answer["data"]) % 4))
    return flask.Response(data, mimetype=part["mimeType"])
