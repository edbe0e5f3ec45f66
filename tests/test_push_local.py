"""The README's local path for new mail, on the app ``python -m devtools.serve`` serves: start a watch, post
Gmail's notification as a CloudEvent over HTTP to /gmail_push, see the event at a local webhook
(``devtools.webhook_sink``) and in list_events."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from typing import Any

import pytest
from werkzeug.test import Client

from devtools import serve, webhook_sink
from devtools.fakes.gmail import FakeGmail
from shared import cli
from tests.conftest import SECRET_VALUES
from tests.push_support import cloud_event, raw_message


@pytest.fixture
def sink() -> Iterator[ThreadingHTTPServer]:
    """The webhook sink on a free port (its handler, with the secret, is set once the secret exists)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), webhook_sink.make_handler(None))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_the_local_path_watch_notify_webhook_and_list_events(
    robeing_token: Any, topic: str, gmail: FakeGmail, sink: ThreadingHTTPServer, capsys: Any
) -> None:
    app = Client(serve.build_app("http://localhost:8080"))
    robeing_token("alice", "robeing-7")
    url = f"http://127.0.0.1:{sink.server_address[1]}/"
    assert cli.main(["webhooks", "set", "robeing-7", "--url", url]) == 0
    [printed] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("whsec_")]
    SECRET_VALUES.add(printed)
    sink.RequestHandlerClass = webhook_sink.make_handler(printed)  # as with --secret

    index = app.get("/").get_json()
    assert {"watch_mailbox", "gmail_push", "list_events"} <= set(index["targets"])
    started = app.post("/watch_mailbox", json={"user_id": "alice", "robeing_id": "robeing-7"})
    assert started.status_code == 200, started.get_json()

    message_id = gmail.add_message(raw_message("local hello"))
    headers, body = cloud_event({"emailAddress": gmail.email_address, "historyId": 99_999_999_999})
    assert app.post("/gmail_push", headers=headers, data=body).status_code == 200

    lines = [
        json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"webhook-id"')
    ]
    assert [(line["verified"], line["event"]["message"]["id"]) for line in lines] == [(True, message_id)]
    listed = app.get("/list_events?robeing_id=robeing-7").get_json()
    assert [event["id"] for event in listed["events"]] == [lines[0]["webhook-id"]]


def test_gmail_push_over_http_acknowledges_what_it_cannot_use(database_url: str) -> None:
    app = Client(serve.build_app("http://localhost:8080"))
    headers, body = cloud_event({"emailAddress": "nobody@example.com", "historyId": 7})
    assert app.post("/gmail_push", headers=headers, data=body).status_code == 200
    refused = app.post("/gmail_push", data=b"not an event")  # not a CloudEvent: functions-framework's own 4xx
    assert 400 <= refused.status_code < 500
