"""Real responses of every target, checked against docs/openapi.yaml.

The functions-framework apps of every target are mounted on one WSGI app (``/send_email``, ...),
over the real PostgreSQL and the fake Google servers. Every response a scenario provokes is checked for
its status (documented for the operation), its content type and its body (the operation's response
schema, Draft 2020-12, ``$ref``s resolved within the spec, formats checked, and no property the spec
does not name), and the headers the spec names for it (``Retry-After``, ``Allow``).
"""

from __future__ import annotations

import base64
import copy
import functools
import socket
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

import functions_framework
import pytest
import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.test import Client, TestResponse
from werkzeug.wrappers import Response

from devtools.fakes.gmail import FakeGmail
from devtools.fakes.oauth import DEFAULT_CLIENT_ID, FakeTokenEndpoint
from shared import scopes, targets
from tests.conftest import MAILBOX, insert_row, row
from tests.push_support import cloud_event

ROOT = Path(__file__).resolve().parent.parent
SPEC_PATH = ROOT / "docs" / "openapi.yaml"
SPEC_URI = "urn:skill-email:openapi"
TARGETS = tuple(target.name for target in targets.TARGETS)

MiB = 1024 * 1024
ALL_SCOPES = (scopes.SEND, scopes.READONLY, scopes.COMPOSE, scopes.MODIFY)


# -- the functions, all on one WSGI app ---------------------------------------------------------------


def _at_root(app: Any) -> Any:
    """Serves ``/NAME`` as the function's ``/``: the dispatcher leaves PATH_INFO empty, which Flask
    would answer with a redirect to ``/NAME/``; a deployed function's URL is its root."""

    def wrapped(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        environ["PATH_INFO"] = environ.get("PATH_INFO") or "/"
        return app(environ, start_response)  # type: ignore[no-any-return]

    return wrapped


@functools.cache
def wsgi_app() -> DispatcherMiddleware:
    """Every target of main.py, built by functions-framework, mounted at ``/<target>``."""
    source = str(ROOT / "main.py")
    mounts = {
        f"/{target}": _at_root(functions_framework.create_app(target=target, source=source))
        for target in TARGETS
    }
    return DispatcherMiddleware(Response("no such target", status=404), mounts)


# -- the spec, as a validator ------------------------------------------------------------------------


@functools.cache
def spec() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))
    return loaded


def _strict(node: Any) -> Any:
    """A copy of the spec where every object schema that lists its properties allows only those, so
    a response field the spec does not document fails validation too."""
    if isinstance(node, dict):
        copied = {key: _strict(value) for key, value in node.items()}
        if copied.get("type") == "object" and "properties" in copied:
            copied.setdefault("additionalProperties", False)
        return copied
    if isinstance(node, list):
        return [_strict(item) for item in node]
    return node


@functools.cache
def _registry() -> Registry:
    resource = Resource.from_contents(_strict(copy.deepcopy(spec())), default_specification=DRAFT202012)
    return Registry().with_resource(SPEC_URI, resource)


def _pointer(*parts: str) -> str:
    return "/" + "/".join(part.replace("~", "~0").replace("/", "~1") for part in parts)


def _resolve(pointer: str) -> tuple[str, Any]:
    """Follows ``$ref`` chains of non-schema objects (responses, headers); returns (pointer, object)."""
    node: Any = spec()
    for part in pointer.lstrip("/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    while isinstance(node, dict) and "$ref" in node:
        pointer = node["$ref"].removeprefix("#")
        node = spec()
        for part in pointer.lstrip("/").split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
    return pointer, node


def _validator(pointer: str) -> Draft202012Validator:
    return Draft202012Validator(
        {"$ref": f"{SPEC_URI}#{pointer}"},
        registry=_registry(),
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )


def operations() -> dict[str, tuple[str, str]]:
    """operationId -> (path, method) for every operation in the spec."""
    return {
        op["operationId"]: (path, method)
        for path, item in spec()["paths"].items()
        for method, op in item.items()
    }


def documented_statuses(path: str, method: str) -> set[int]:
    return {int(status) for status in spec()["paths"][path][method]["responses"]}


def assert_conforms(response: TestResponse, path: str, method: str) -> Any:
    """Checks a response against the spec's response for its status; returns the JSON body.

    A 405 answers a method the path does not document, so it is checked against the response every
    operation of the path documents for 405.
    """
    method = method.lower()
    item = spec()["paths"][path]
    if method not in item:
        assert response.status_code == 405, (method, path, response.status_code)
        method = next(iter(item))
    status = response.status_code
    assert status in documented_statuses(path, method), (
        f"{method.upper()} {path} answered {status}, which the spec does not document: "
        f"{response.get_data(as_text=True)[:300]}"
    )
    response_pointer, documented = _resolve(_pointer("paths", path, method, "responses", str(status)))
    content = documented.get("content", {})
    if not content:  # e.g. mcp's 202 for a notification
        assert response.get_data() == b"", (status, response.get_data()[:300])
        return None
    body: Any = None
    if response.mimetype not in content and "*/*" in content:
        # Bytes of any type (get_attachment): the type is the file's own; the headers are checked below.
        assert content["*/*"]["schema"].get("format") == "binary", (status, sorted(content))
    else:
        assert response.mimetype in content, (status, response.content_type, sorted(content))
        body = response.get_json()
        schema_pointer = response_pointer + _pointer("content", response.mimetype, "schema")
        errors = sorted(_validator(schema_pointer).iter_errors(body), key=lambda e: list(e.absolute_path))
        assert not errors, "\n".join(
            f"{method.upper()} {path} {status}: {'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in errors
        )
    for name in documented.get("headers", {}):
        header_pointer, header = _resolve(response_pointer + _pointer("headers", name))
        value: Any = response.headers.get(name)
        assert value is not None or not header.get("required"), f"{status} without the {name} header"
        if value is None:
            continue
        if header["schema"].get("type") == "integer":
            assert value.isdigit(), f"{name}: {value!r} is not a whole number of seconds"
            value = int(value)
        header_errors = list(_validator(header_pointer + "/schema").iter_errors(value))
        assert not header_errors, f"{name}: {header_errors[0].message}"
    return body


# -- the contract's statuses, operation by operation ------------------------------------------------

# Errors any operation that reaches Gmail can answer (docs/openapi.yaml's error responses), and the
# others'.
_GMAIL = {200, 400, 401, 403, 404, 405, 429, 500, 502, 503}
CONTRACT_STATUSES = {
    "send_email": _GMAIL | {409, 413},
    "list_emails_get": _GMAIL,
    "list_emails": _GMAIL,
    # A refresh answers with the refresh's own error: 401 invalid_grant, 502 an odd answer, 503 the
    # endpoint failing (google-auth retries its 429s and 5xx into that); it never sees a 403 or a 429.
    "get_email": _GMAIL,
    "get_email_get": _GMAIL,
    "get_thread": _GMAIL,
    "get_thread_get": _GMAIL,
    "get_attachment": _GMAIL,
    "refresh_tokens": {200, 400, 401, 404, 405, 500, 502, 503},
    "token_status": {200, 400, 404, 405, 500, 503},
    "token_status_get": {200, 400, 404, 405, 500, 503},
    "create_draft": _GMAIL | {409, 413},
    "send_draft": _GMAIL | {409},
    "modify_email": _GMAIL,
    "list_labels": _GMAIL,
    "list_labels_get": _GMAIL,
    "watch_mailbox": _GMAIL,
    # list_events reads only the database: no token, no Gmail.
    "list_events": {200, 400, 405, 500, 503},
    "list_events_get": {200, 400, 405, 500, 503},
    # A target's errors, 5xx included, are tool results (200); the transport's own are JSON-RPC errors
    # (400, 406).
    "mcp": {200, 202, 400, 405, 406, 413},
}


@pytest.mark.parametrize("operation_id", sorted(CONTRACT_STATUSES))
def test_spec_documents_exactly_the_statuses_each_operation_can_answer(operation_id: str) -> None:
    path, method = operations()[operation_id]
    assert documented_statuses(path, method) == CONTRACT_STATUSES[operation_id]


def test_every_operation_of_the_spec_is_covered_here() -> None:
    assert set(operations()) == set(CONTRACT_STATUSES)
    covered = {(s.operation_id, s.status) for s in SCENARIOS}
    documented = {
        (operation_id, status)
        for operation_id, (path, method) in operations().items()
        for status in documented_statuses(path, method)
    }
    assert documented - covered == set(), "documented statuses no scenario provokes"
    assert covered - documented == set(), "scenarios whose status the spec does not document"


# -- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture
def api() -> Client:
    return Client(wsgi_app())


@pytest.fixture
def alice(user_token: Callable[..., int], conn: Any, gmail: FakeGmail) -> int:
    """An equipped, unexpired token for "alice" that Gmail accepts; its row id."""
    # Granted drafts (gmail.compose) and labels and trash (gmail.modify) too, so every target answers.
    row_id = user_token("alice", expires_in=3600, equipped_to="robeing-1", scopes=ALL_SCOPES)
    gmail.allow_token(row(conn, row_id)["token_data"]["access_token"])
    return row_id


@pytest.fixture
def revoked(user_token: Callable[..., int], token_endpoint: FakeTokenEndpoint, gmail: FakeGmail) -> str:
    """A user "bob" whose access token has expired and whose refresh token Google has revoked."""
    user_token("bob", expires_in=-60, refresh_token="1//revoked-bob")
    token_endpoint.revoke("1//revoked-bob")
    return "bob"


@pytest.fixture
def broken(conn: Any, gmail: FakeGmail) -> str:
    """A user "carol" whose stored token claims to be encrypted while no key is configured: a 500."""
    insert_row(conn, "carol", token_data={"access_token": "enc:v1:k1:AAAA", "refresh_token": "r"})
    return "carol"


@pytest.fixture
def wrong_client(conn: Any, token_endpoint: FakeTokenEndpoint, gmail: FakeGmail) -> str:
    """A user "dave" whose stored OAuth client Google refuses (invalid_client): a 502."""
    token_endpoint.add_refresh_token("1//dave")
    insert_row(
        conn,
        "dave",
        token_data={"access_token": "expired", "refresh_token": "1//dave"},
        oauth_config={
            "client_id": DEFAULT_CLIENT_ID,
            "client_secret": "not-the-secret",
            "token_uri": f"{token_endpoint.url}/token",
        },
        expiry=None,
    )
    return "dave"


@pytest.fixture
def database_down(monkeypatch: pytest.MonkeyPatch) -> None:
    """DATABASE_URL names a port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("DATABASE_URL", f"postgresql://u:p@127.0.0.1:{port}/db?connect_timeout=2")


def raw_message(
    subject: str, *, date: str | None = "Mon, 04 Mar 2024 09:00:00 +0900", extra: str = ""
) -> bytes:
    date_line = f"Date: {date}\r\n" if date is not None else ""
    return (
        "From: =?UTF-8?B?6rmA7LKg7IiY?= <chulsoo@example.com>\r\n"
        f"To: {MAILBOX}\r\n"
        f"Subject: {subject}\r\n"
        f"{date_line}"
        "Message-ID: <m1@example.com>\r\n"
        "MIME-Version: 1.0\r\n"
        f"{extra}"
    ).encode()


def with_attachment() -> bytes:
    boundary = "b0undary"
    return (
        raw_message(
            "=?UTF-8?B?7ZqM7J2YIOyekOujjA==?=",
            extra=f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n',
        )
        + (
            f"\r\n--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n안녕하세요\r\n"
            f"--{boundary}\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>안녕</p>\r\n"
            f"--{boundary}\r\nContent-Type: application/pdf\r\n"
            "Content-Disposition: attachment; filename*=utf-8''%ED%9A%8C%EC%9D%98.pdf\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\n"
            + base64.b64encode(b"%PDF-1.4 hello").decode()
            + f"\r\n--{boundary}--\r\n"
        ).encode()
    )


@pytest.fixture
def inbox(alice: int, gmail: FakeGmail) -> FakeGmail:
    """Alice's mailbox: a Korean message with an attachment, one without a Date, one with a bad Date."""
    gmail.add_message(with_attachment())
    gmail.add_message(
        raw_message("no date", date=None, extra="Content-Type: text/plain\r\n") + b"\r\nbody\r\n",
        internal_date_ms=1_700_000_000_000,
    )
    gmail.add_message(
        raw_message("bad date", date="yesterday-ish", extra="Content-Type: text/plain\r\n") + b"\r\nx\r\n",
        internal_date_ms=1_700_000_000_001,
    )
    return gmail


# -- scenarios: (operationId, status, how to provoke it) ---------------------------------------------

Call = Callable[[Client, dict[str, Any]], TestResponse]


def _post(path: str, body: Any = None, headers: dict[str, str] | None = None) -> Call:
    def call(api: Client, given: dict[str, Any]) -> TestResponse:
        return api.post(path, json=body, headers=headers or {})

    return call


def _get(path: str) -> Call:
    def call(api: Client, given: dict[str, Any]) -> TestResponse:
        return api.get(path)

    return call


def _open(path: str, method: str) -> Call:
    def call(api: Client, given: dict[str, Any]) -> TestResponse:
        return api.open(path, method=method)

    return call


def _gmail_fails(path_regex: str, status: int, call: Call, count: int = 20) -> Call:
    def provoke(api: Client, given: dict[str, Any]) -> TestResponse:
        given["gmail"].fail_next(path_regex, status, count=count)
        return call(api, given)

    return provoke


def _send_twice_with_another_body(api: Client, given: dict[str, Any]) -> TestResponse:
    key = {"Idempotency-Key": "order-42"}
    first = api.post("/send_email", json={"user_id": "alice", "to": "a@example.com"}, headers=key)
    assert first.status_code == 200, first.get_json()
    return api.post("/send_email", json={"user_id": "alice", "to": "b@example.com"}, headers=key)


def _send_twice(api: Client, given: dict[str, Any]) -> TestResponse:
    key = {"Idempotency-Key": "order-43"}
    body = {"user_id": "alice", "to": "a@example.com", "subject": "안녕하세요"}
    first = api.post("/send_email", json=body, headers=key)
    again = api.post("/send_email", json=body, headers=key)
    assert again.get_json() == first.get_json()
    assert len(given["gmail"].sent_messages()) == 1
    return again


def _too_large_body() -> dict[str, Any]:
    content = "A" * ((24 * MiB + 3) // 3 * 4)  # base64 of 24 MiB + 3 zero bytes
    return {
        "user_id": "alice",
        "to": "a@example.com",
        "attachments": [{"filename": "big", "content": content}],
    }


def _send_too_large(api: Client, given: dict[str, Any]) -> TestResponse:
    return api.post("/send_email", json=_too_large_body())


def _first_message(given: dict[str, Any]) -> str:
    return next(iter(given["gmail"].mailboxes[MAILBOX].messages))


def _new_draft(api: Client) -> str:
    created = api.post("/create_draft", json={"user_id": "alice", "to": "a@example.com", "body": "초안"})
    assert created.status_code == 200, created.get_json()
    return str(created.get_json()["draft_id"])


def _send_draft(
    headers: dict[str, str] | None = None, twice: bool = False, draft_id: str | None = None
) -> Call:
    def call(api: Client, given: dict[str, Any]) -> TestResponse:
        body = {"user_id": "alice", "draft_id": draft_id or _new_draft(api)}
        response = api.post("/send_draft", json=body, headers=headers or {})
        if twice:
            again = api.post("/send_draft", json=body, headers=headers or {})
            assert again.get_json() == response.get_json()
            assert len(given["gmail"].sent_messages()) == 1
            return again
        return response

    return call


def _send_draft_fails(path_regex: str, status: int, count: int = 20) -> Call:
    def call(api: Client, given: dict[str, Any]) -> TestResponse:
        draft_id = _new_draft(api)
        given["gmail"].fail_next(path_regex, status, count=count)
        return api.post("/send_draft", json={"user_id": "alice", "draft_id": draft_id})

    return call


def _send_draft_with_another_draft(api: Client, given: dict[str, Any]) -> TestResponse:
    key = {"Idempotency-Key": "draft-order-1"}
    first = api.post("/send_draft", json={"user_id": "alice", "draft_id": _new_draft(api)}, headers=key)
    assert first.status_code == 200, first.get_json()
    return api.post("/send_draft", json={"user_id": "alice", "draft_id": _new_draft(api)}, headers=key)


def _modify(**fields: Any) -> Call:
    def call(api: Client, given: dict[str, Any]) -> TestResponse:
        body = {"user_id": "alice", **fields}
        if "message_id" not in body and "thread_id" not in body:
            body["message_id"] = _first_message(given)
        return api.post("/modify_email", json=body)

    return call


def _modify_thread(api: Client, given: dict[str, Any]) -> TestResponse:
    body = {"user_id": "alice", "thread_id": _first_message(given), "add_labels": ["STARRED"], "trash": True}
    return api.post("/modify_email", json=body)


def _draft_twice(body: dict[str, Any], other: dict[str, Any] | None = None) -> Call:
    def call(api: Client, given: dict[str, Any]) -> TestResponse:
        key = {"Idempotency-Key": "draft-key"}
        first = api.post("/create_draft", json=body, headers=key)
        assert first.status_code == 200, first.get_json()
        return api.post("/create_draft", json=other or body, headers=key)

    return call


def _with_topic(call: Call) -> Call:
    def provoke(api: Client, given: dict[str, Any]) -> TestResponse:
        given["request"].getfixturevalue("monkeypatch").setenv("PUBSUB_TOPIC", "projects/p/topics/gmail")
        return call(api, given)

    return provoke


def _watch_revoked(api: Client, given: dict[str, Any]) -> TestResponse:
    """A token equipped to the robeing whose refresh token Google has revoked: 401."""
    request = given["request"]
    request.getfixturevalue("user_token")(
        "frank", expires_in=-60, refresh_token="1//revoked-frank", equipped_to="robeing-1"
    )
    request.getfixturevalue("token_endpoint").revoke("1//revoked-frank")
    return api.post("/watch_mailbox", json={"user_id": "frank", "robeing_id": "robeing-1"})


def _watch_broken(api: Client, given: dict[str, Any]) -> TestResponse:
    """A token equipped to the robeing, claiming encryption while no key is configured: 500."""
    conn = given["request"].getfixturevalue("conn")
    insert_row(conn, "erin", token_data={"access_token": "enc:v1:k1:AAAA"}, equipped_to="robeing-1")
    return api.post("/watch_mailbox", json={"user_id": "erin", "robeing_id": "robeing-1"})


def _events_after_a_push(path: str) -> Call:
    """A watch, a new message and Gmail's notification through gmail_push, then list_events."""

    def provoke(api: Client, given: dict[str, Any]) -> TestResponse:
        gmail = given["gmail"]
        assert api.post("/watch_mailbox", json=WATCH).status_code == 200
        gmail.add_message(raw_message("새 메일", extra="Content-Type: text/plain\r\n") + b"\r\nbody\r\n")
        headers, body = cloud_event(gmail.notification())
        assert api.post("/gmail_push", headers=headers, data=body).status_code == 200
        response = api.get(path) if path.startswith("/list_events?") else api.post(path, json=EVENTS)
        assert len(response.get_json()["events"]) == 1
        return response

    return provoke


def _events_table_missing(call: Call) -> Call:
    """The schema missing its events table (a migration not run): 500."""

    def provoke(api: Client, given: dict[str, Any]) -> TestResponse:
        conn = given["request"].getfixturevalue("conn")
        conn.run("ALTER TABLE gmail_events RENAME TO gmail_events_elsewhere")
        try:
            return call(api, given)
        finally:
            conn.run("ALTER TABLE gmail_events_elsewhere RENAME TO gmail_events")

    return provoke


WATCH = {"user_id": "alice", "robeing_id": "robeing-1"}
EVENTS = {"robeing_id": "robeing-1", "limit": 10}


MCP_ACCEPT = {"Accept": "application/json, text/event-stream"}


def _mcp(message: dict[str, Any], headers: dict[str, str] | None = None) -> Call:
    def call(api: Client, given: dict[str, Any]) -> TestResponse:
        return api.post("/mcp", json={"jsonrpc": "2.0", **message}, headers={**MCP_ACCEPT, **(headers or {})})

    return call


def _mcp_tool(name: str, arguments: dict[str, Any]) -> Call:
    return _mcp({"id": 1, "method": "tools/call", "params": {"name": name, "arguments": arguments}})


def _mcp_raw(data: bytes, content_type: str) -> Call:
    def call(api: Client, given: dict[str, Any]) -> TestResponse:
        return api.post("/mcp", data=data, content_type=content_type, headers=MCP_ACCEPT)

    return call


def _mcp_too_large(api: Client, given: dict[str, Any]) -> TestResponse:
    return api.post("/mcp", data=b" " * (targets.get("mcp").max_body + 1), content_type="application/json")


def _with_ids(make: Callable[[str, str], Call]) -> Call:
    """A call built from the id of the inbox's message with an attachment, and of its thread."""

    def call(api: Client, given: dict[str, Any]) -> TestResponse:
        gmail: FakeGmail = given["gmail"]
        found = next(m for m in gmail.mailboxes[MAILBOX].messages.values() if b"application/pdf" in m.raw)
        return make(found.id, found.thread_id)(api, given)

    return call


def _get_email(query: str = "") -> Call:
    return _with_ids(lambda mid, tid: _get(f"/get_email?user_id=alice&message_id={mid}{query}"))


def _post_email(**extra: Any) -> Call:
    return _with_ids(lambda mid, tid: _post("/get_email", {"user_id": "alice", "message_id": mid, **extra}))


def _get_thread(query: str = "") -> Call:
    return _with_ids(lambda mid, tid: _get(f"/get_thread?user_id=alice&thread_id={tid}{query}"))


def _post_thread(**extra: Any) -> Call:
    return _with_ids(lambda mid, tid: _post("/get_thread", {"user_id": "alice", "thread_id": tid, **extra}))


def _get_file(attachment_id: str = "part-2", user: str = "alice") -> Call:
    return _with_ids(
        lambda mid, tid: _get(
            f"/get_attachment?user_id={user}&message_id={mid}&attachment_id={attachment_id}"
        )
    )


SEND = {"user_id": "alice", "to": ["김철수 <chulsoo@example.com>"], "subject": "회의 🙏", "body": "안녕"}
# A display name needs the mailbox's address, so this send asks Gmail for the profile first.
SEND_AS = {**SEND, "from_name": "로빙"}
LIST = {"user_id": "alice", "include_body": True, "label_ids": ["INBOX"]}
LIST_QUERY = "/list_emails?user_id=alice&include_body=true&label_ids=INBOX"


class Scenario(NamedTuple):
    """A request that provokes ``status`` from ``operation_id``; ``database_down``: with no database."""

    operation_id: str
    status: int
    call: Call
    database_down: bool = False


DOWN = True
SCENARIOS = [
    Scenario(*scenario)
    for scenario in [
        # send_email
        ("send_email", 200, _post("/send_email", SEND)),
        ("send_email", 200, _send_twice),
        ("send_email", 400, _post("/send_email", {"user_id": "alice", "to": "not-an-address"})),
        ("send_email", 400, _post("/send_email", SEND, headers={"Idempotency-Key": "k" * 256})),
        ("send_email", 401, _post("/send_email", {"user_id": "bob", "to": "a@example.com"})),
        ("send_email", 403, _gmail_fails(r"/profile$", 403, _post("/send_email", SEND_AS))),
        ("send_email", 404, _post("/send_email", {"user_id": "nobody", "to": "a@example.com"})),
        ("send_email", 404, _post("/send_email", {**SEND, "reply_to_message_id": "18c0000000000000"})),
        ("send_email", 405, _get("/send_email?user_id=alice")),
        ("send_email", 409, _send_twice_with_another_body),
        ("send_email", 413, _send_too_large),
        ("send_email", 429, _gmail_fails(r"/messages/send$", 429, _post("/send_email", SEND))),
        ("send_email", 500, _post("/send_email", {"user_id": "carol", "to": "a@example.com"})),
        ("send_email", 502, _gmail_fails(r"/profile$", 418, _post("/send_email", SEND_AS))),
        ("send_email", 503, _gmail_fails(r"/messages/send$", 500, _post("/send_email", SEND), count=1)),
        ("send_email", 503, _post("/send_email", {"user_id": "alice", "to": "a@example.com"}), DOWN),
        # list_emails, GET
        ("list_emails_get", 200, _get(LIST_QUERY)),
        ("list_emails_get", 200, _get("/list_emails?user_id=alice&q=subject:nothing-matches&max_results=1")),
        ("list_emails_get", 400, _get("/list_emails?user_id=alice&max_results=0")),
        ("list_emails_get", 401, _get("/list_emails?user_id=bob")),
        ("list_emails_get", 403, _gmail_fails(r"/messages$", 403, _get(LIST_QUERY))),
        ("list_emails_get", 404, _get("/list_emails?user_id=nobody")),
        ("list_emails_get", 405, _open("/list_emails?user_id=alice", "PUT")),
        ("list_emails_get", 429, _gmail_fails(r"/messages$", 429, _get(LIST_QUERY))),
        ("list_emails_get", 500, _get("/list_emails?user_id=carol")),
        ("list_emails_get", 502, _gmail_fails(r"/messages$", 418, _get(LIST_QUERY))),
        ("list_emails_get", 503, _gmail_fails(r"/messages$", 503, _get(LIST_QUERY))),
        ("list_emails_get", 503, _get("/list_emails?user_id=alice"), DOWN),
        # list_emails, POST
        ("list_emails", 200, _post("/list_emails", LIST)),
        (
            "list_emails",
            200,
            _post("/list_emails", {"user_id": "alice", "robeing_id": "robeing-1", "max_results": 1}),
        ),
        ("list_emails", 400, _post("/list_emails", {"user_id": "alice", "labels": ["INBOX"]})),
        ("list_emails", 401, _post("/list_emails", {"user_id": "bob"})),
        ("list_emails", 403, _gmail_fails(r"/messages/", 403, _post("/list_emails", LIST))),
        ("list_emails", 404, _post("/list_emails", {"user_id": "alice", "robeing_id": "another-robeing"})),
        ("list_emails", 405, _open("/list_emails", "DELETE")),
        ("list_emails", 429, _gmail_fails(r"/messages/", 429, _post("/list_emails", LIST))),
        ("list_emails", 500, _post("/list_emails", {"user_id": "carol"})),
        ("list_emails", 502, _gmail_fails(r"/messages/", 418, _post("/list_emails", LIST))),
        ("list_emails", 503, _post("/list_emails", {"user_id": "alice"}), DOWN),
        # get_email, GET and POST
        ("get_email_get", 200, _get_email()),
        ("get_email_get", 200, _get_email("&max_body_chars=2")),
        ("get_email_get", 400, _get("/get_email?user_id=alice")),
        ("get_email_get", 401, _get("/get_email?user_id=bob&message_id=m")),
        ("get_email_get", 403, _gmail_fails(r"/messages/", 403, _get_email())),
        ("get_email_get", 404, _get("/get_email?user_id=alice&message_id=18c0000000000000")),
        ("get_email_get", 405, _open("/get_email?user_id=alice&message_id=m", "PUT")),
        ("get_email_get", 429, _gmail_fails(r"/messages/", 429, _get_email())),
        ("get_email_get", 500, _get("/get_email?user_id=carol&message_id=m")),
        ("get_email_get", 502, _gmail_fails(r"/messages/", 418, _get_email())),
        ("get_email_get", 503, _gmail_fails(r"/messages/", 503, _get_email())),
        ("get_email_get", 503, _get("/get_email?user_id=alice&message_id=m"), DOWN),
        ("get_email", 200, _post_email(robeing_id="robeing-1")),
        ("get_email", 400, _post("/get_email", {"user_id": "alice", "message_id": "m", "max_body_chars": 0})),
        ("get_email", 401, _post("/get_email", {"user_id": "bob", "message_id": "m"})),
        ("get_email", 403, _gmail_fails(r"/messages/", 403, _post_email())),
        ("get_email", 404, _post("/get_email", {"user_id": "nobody", "message_id": "m"})),
        ("get_email", 405, _open("/get_email", "DELETE")),
        ("get_email", 429, _gmail_fails(r"/messages/", 429, _post_email())),
        ("get_email", 500, _post("/get_email", {"user_id": "carol", "message_id": "m"})),
        ("get_email", 502, _gmail_fails(r"/messages/", 418, _post_email())),
        ("get_email", 503, _post("/get_email", {"user_id": "alice", "message_id": "m"}), DOWN),
        # get_thread, GET and POST
        ("get_thread_get", 200, _get_thread()),
        ("get_thread_get", 400, _get("/get_thread?user_id=alice&thread_id=")),
        ("get_thread_get", 401, _get("/get_thread?user_id=bob&thread_id=t")),
        ("get_thread_get", 403, _gmail_fails(r"/threads/", 403, _get_thread())),
        ("get_thread_get", 404, _get("/get_thread?user_id=alice&thread_id=no-such-thread")),
        ("get_thread_get", 405, _open("/get_thread?user_id=alice&thread_id=t", "PUT")),
        ("get_thread_get", 429, _gmail_fails(r"/threads/", 429, _get_thread())),
        ("get_thread_get", 500, _get("/get_thread?user_id=carol&thread_id=t")),
        ("get_thread_get", 502, _gmail_fails(r"/threads/", 418, _get_thread())),
        ("get_thread_get", 503, _get("/get_thread?user_id=alice&thread_id=t"), DOWN),
        ("get_thread", 200, _post_thread(max_body_chars=5)),
        ("get_thread", 400, _post("/get_thread", {"user_id": "alice", "thread": "t"})),
        ("get_thread", 401, _post("/get_thread", {"user_id": "bob", "thread_id": "t"})),
        ("get_thread", 403, _gmail_fails(r"/threads/", 403, _post_thread())),
        ("get_thread", 404, _post("/get_thread", {"user_id": "alice", "thread_id": "no-such-thread"})),
        ("get_thread", 405, _open("/get_thread", "PATCH")),
        ("get_thread", 429, _gmail_fails(r"/threads/", 429, _post_thread())),
        ("get_thread", 500, _post("/get_thread", {"user_id": "carol", "thread_id": "t"})),
        ("get_thread", 502, _gmail_fails(r"/threads/", 418, _post_thread())),
        ("get_thread", 503, _gmail_fails(r"/threads/", 503, _post_thread())),
        ("get_thread", 503, _post("/get_thread", {"user_id": "alice", "thread_id": "t"}), DOWN),
        # get_attachment
        ("get_attachment", 200, _get_file()),
        ("get_attachment", 400, _get("/get_attachment?user_id=alice&message_id=m")),
        ("get_attachment", 401, _get("/get_attachment?user_id=bob&message_id=m&attachment_id=part-2")),
        ("get_attachment", 403, _gmail_fails(r"/attachments/", 403, _get_file())),
        ("get_attachment", 404, _get_file("part-7")),
        ("get_attachment", 404, _get("/get_attachment?user_id=alice&message_id=18c0&attachment_id=part-2")),
        ("get_attachment", 405, _post("/get_attachment", {"user_id": "alice"})),
        ("get_attachment", 429, _gmail_fails(r"/attachments/", 429, _get_file())),
        ("get_attachment", 500, _get("/get_attachment?user_id=carol&message_id=m&attachment_id=part-2")),
        ("get_attachment", 502, _gmail_fails(r"/attachments/", 418, _get_file())),
        ("get_attachment", 503, _gmail_fails(r"/attachments/", 503, _get_file())),
        ("get_attachment", 503, _get("/get_attachment?user_id=alice&message_id=m&attachment_id=p"), DOWN),
        # refresh_tokens
        ("refresh_tokens", 200, _post("/refresh_tokens", {"user_id": "alice", "robeing_id": "robeing-1"})),
        ("refresh_tokens", 200, _post("/refresh_tokens", {"window_seconds": 7200})),
        ("refresh_tokens", 200, _post("/refresh_tokens", headers={"Content-Type": "application/json"})),
        ("refresh_tokens", 400, _post("/refresh_tokens", {"window_seconds": "soon"})),
        ("refresh_tokens", 401, _post("/refresh_tokens", {"user_id": "bob"})),
        ("refresh_tokens", 404, _post("/refresh_tokens", {"user_id": "nobody"})),
        ("refresh_tokens", 405, _get("/refresh_tokens")),
        ("refresh_tokens", 500, _post("/refresh_tokens", {"user_id": "carol"})),
        ("refresh_tokens", 502, _post("/refresh_tokens", {"user_id": "dave"})),
        ("refresh_tokens", 503, _post("/refresh_tokens", {"user_id": "alice"}), DOWN),
        ("refresh_tokens", 503, _post("/refresh_tokens", {}), DOWN),
        # token_status
        ("token_status", 200, _post("/token_status", {"user_id": "alice"})),
        ("token_status", 200, _post("/token_status", {"user_id": "bob"})),
        ("token_status", 400, _post("/token_status", {"user_id": "a", "usr_id": "b"})),
        ("token_status", 404, _post("/token_status", {"user_id": "nobody"})),
        ("token_status", 405, _open("/token_status", "PATCH")),
        ("token_status", 500, _post("/token_status", {"user_id": "carol"})),
        ("token_status", 503, _post("/token_status", {"user_id": "alice"}), DOWN),
        ("token_status_get", 200, _get("/token_status?user_id=alice&robeing_id=robeing-1")),
        ("token_status_get", 400, _get("/token_status?user_id=")),
        ("token_status_get", 404, _get("/token_status?user_id=%EC%82%AC%EC%9A%A9%EC%9E%90")),
        ("token_status_get", 405, _open("/token_status?user_id=alice", "DELETE")),
        ("token_status_get", 500, _get("/token_status?user_id=carol")),
        ("token_status_get", 503, _get("/token_status?user_id=alice"), DOWN),
        # create_draft
        ("create_draft", 200, _post("/create_draft", SEND)),
        ("create_draft", 200, _draft_twice(SEND)),
        ("create_draft", 400, _post("/create_draft", {"user_id": "alice", "to": "not-an-address"})),
        ("create_draft", 401, _post("/create_draft", {"user_id": "bob", "to": "a@example.com"})),
        ("create_draft", 403, _gmail_fails(r"/drafts$", 403, _post("/create_draft", SEND))),
        ("create_draft", 404, _post("/create_draft", {"user_id": "nobody", "to": "a@example.com"})),
        ("create_draft", 404, _post("/create_draft", {**SEND, "reply_to_message_id": "18c0000000000000"})),
        ("create_draft", 405, _get("/create_draft?user_id=alice")),
        ("create_draft", 409, _draft_twice(SEND, {**SEND, "subject": "다른 초안"})),
        ("create_draft", 413, lambda api, given: api.post("/create_draft", json=_too_large_body())),
        ("create_draft", 429, _gmail_fails(r"/drafts$", 429, _post("/create_draft", SEND))),
        ("create_draft", 500, _post("/create_draft", {"user_id": "carol", "to": "a@example.com"})),
        ("create_draft", 502, _gmail_fails(r"/drafts$", 418, _post("/create_draft", SEND))),
        ("create_draft", 503, _gmail_fails(r"/drafts$", 500, _post("/create_draft", SEND), count=1)),
        ("create_draft", 503, _post("/create_draft", {"user_id": "alice", "to": "a@example.com"}), DOWN),
        # send_draft
        ("send_draft", 200, _send_draft()),
        ("send_draft", 200, _send_draft({"Idempotency-Key": "send-draft-1"}, twice=True)),
        ("send_draft", 400, _post("/send_draft", {"user_id": "alice"})),
        ("send_draft", 401, _post("/send_draft", {"user_id": "bob", "draft_id": "r1"})),
        ("send_draft", 403, _send_draft_fails(r"/drafts/", 403)),
        ("send_draft", 404, _send_draft(draft_id="r404")),
        ("send_draft", 405, _open("/send_draft", "PUT")),
        ("send_draft", 409, _send_draft_with_another_draft),
        ("send_draft", 429, _send_draft_fails(r"/drafts/send$", 429)),
        ("send_draft", 500, _post("/send_draft", {"user_id": "carol", "draft_id": "r1"})),
        ("send_draft", 502, _send_draft_fails(r"/drafts/r", 418)),
        ("send_draft", 503, _send_draft_fails(r"/drafts/send$", 500, count=1)),
        ("send_draft", 503, _post("/send_draft", {"user_id": "alice", "draft_id": "r1"}), DOWN),
        # modify_email
        ("modify_email", 200, _modify(add_labels=["STARRED"], mark_read=True, archive=True)),
        ("modify_email", 200, _modify_thread),
        ("modify_email", 400, _modify(add_labels=["no such label"])),
        ("modify_email", 401, _post("/modify_email", {"user_id": "bob", "message_id": "m", "trash": True})),
        ("modify_email", 403, _gmail_fails(r"/modify$", 403, _modify(mark_read=True))),
        ("modify_email", 404, _modify(message_id="18c0000000000000", trash=True)),
        ("modify_email", 405, _get("/modify_email?user_id=alice")),
        ("modify_email", 429, _gmail_fails(r"/trash$", 429, _modify(trash=True))),
        ("modify_email", 500, _post("/modify_email", {"user_id": "carol", "message_id": "m", "trash": True})),
        ("modify_email", 502, _gmail_fails(r"/labels$", 418, _modify(add_labels=["Work"]))),
        ("modify_email", 503, _gmail_fails(r"/modify$", 503, _modify(mark_read=False))),
        (
            "modify_email",
            503,
            _post("/modify_email", {"user_id": "alice", "message_id": "m", "trash": True}),
            DOWN,
        ),
        # list_labels, GET and POST
        ("list_labels_get", 200, _get("/list_labels?user_id=alice")),
        ("list_labels_get", 200, _get("/list_labels?user_id=alice&include_counts=true")),
        ("list_labels_get", 400, _get("/list_labels?user_id=alice&include_counts=maybe")),
        ("list_labels_get", 401, _get("/list_labels?user_id=bob")),
        ("list_labels_get", 403, _gmail_fails(r"/labels$", 403, _get("/list_labels?user_id=alice"))),
        ("list_labels_get", 404, _get("/list_labels?user_id=nobody")),
        ("list_labels_get", 405, _open("/list_labels?user_id=alice", "PUT")),
        ("list_labels_get", 429, _gmail_fails(r"/labels$", 429, _get("/list_labels?user_id=alice"))),
        ("list_labels_get", 500, _get("/list_labels?user_id=carol")),
        ("list_labels_get", 502, _gmail_fails(r"/labels$", 418, _get("/list_labels?user_id=alice"))),
        (
            "list_labels_get",
            503,
            _gmail_fails(r"/labels/", 503, _get("/list_labels?user_id=alice&include_counts=1"), count=500),
        ),
        ("list_labels_get", 503, _get("/list_labels?user_id=alice"), DOWN),
        ("list_labels", 200, _post("/list_labels", {"user_id": "alice", "include_counts": True})),
        ("list_labels", 400, _post("/list_labels", {"user_id": "alice", "counts": True})),
        ("list_labels", 401, _post("/list_labels", {"user_id": "bob"})),
        ("list_labels", 403, _gmail_fails(r"/labels", 403, _post("/list_labels", {"user_id": "alice"}))),
        ("list_labels", 404, _post("/list_labels", {"user_id": "alice", "robeing_id": "another-robeing"})),
        ("list_labels", 405, _open("/list_labels", "DELETE")),
        ("list_labels", 429, _gmail_fails(r"/labels", 429, _post("/list_labels", {"user_id": "alice"}))),
        ("list_labels", 500, _post("/list_labels", {"user_id": "carol"})),
        ("list_labels", 502, _gmail_fails(r"/labels", 418, _post("/list_labels", {"user_id": "alice"}))),
        ("list_labels", 503, _post("/list_labels", {"user_id": "alice"}), DOWN),
        # watch_mailbox
        ("watch_mailbox", 200, _with_topic(_post("/watch_mailbox", {**WATCH, "label_ids": ["INBOX"]}))),
        ("watch_mailbox", 200, _post("/watch_mailbox", {**WATCH, "action": "stop"})),
        ("watch_mailbox", 400, _post("/watch_mailbox", {**WATCH, "action": "pause"})),
        ("watch_mailbox", 401, _with_topic(_watch_revoked)),
        ("watch_mailbox", 403, _with_topic(_gmail_fails(r"/profile$", 403, _post("/watch_mailbox", WATCH)))),
        ("watch_mailbox", 404, _with_topic(_post("/watch_mailbox", {**WATCH, "user_id": "nobody"}))),
        ("watch_mailbox", 405, _get("/watch_mailbox?user_id=alice&robeing_id=robeing-1")),
        ("watch_mailbox", 429, _with_topic(_gmail_fails(r"/watch$", 429, _post("/watch_mailbox", WATCH)))),
        ("watch_mailbox", 500, _with_topic(_watch_broken)),
        ("watch_mailbox", 502, _with_topic(_gmail_fails(r"/profile$", 418, _post("/watch_mailbox", WATCH)))),
        ("watch_mailbox", 503, _with_topic(_gmail_fails(r"/watch$", 503, _post("/watch_mailbox", WATCH)))),
        ("watch_mailbox", 503, _with_topic(_post("/watch_mailbox", WATCH)), DOWN),
        # list_events
        ("list_events", 200, _with_topic(_events_after_a_push("/list_events"))),
        ("list_events", 200, _post("/list_events", {"robeing_id": "robeing-1", "after": "12"})),
        ("list_events", 400, _post("/list_events", {"robeing_id": "robeing-1", "after": "x"})),
        ("list_events", 405, _open("/list_events", "PUT")),
        ("list_events", 500, _events_table_missing(_post("/list_events", EVENTS))),
        ("list_events", 503, _post("/list_events", EVENTS), DOWN),
        ("list_events_get", 200, _with_topic(_events_after_a_push("/list_events?robeing_id=robeing-1"))),
        ("list_events_get", 400, _get("/list_events?robeing_id=robeing-1&limit=0")),
        ("list_events_get", 405, _open("/list_events?robeing_id=robeing-1", "DELETE")),
        ("list_events_get", 500, _events_table_missing(_get("/list_events?robeing_id=robeing-1"))),
        ("list_events_get", 503, _get("/list_events?robeing_id=robeing-1"), DOWN),
        # mcp
        ("mcp", 200, _mcp_tool("token_status", {"user_id": "alice"})),
        ("mcp", 200, _mcp_tool("list_emails", {"user_id": "nobody"})),
        ("mcp", 200, _mcp({"id": "l", "method": "tools/list"})),
        ("mcp", 202, _mcp({"method": "notifications/initialized"})),
        ("mcp", 400, _mcp_raw(b"{not json", "application/json")),
        ("mcp", 405, _get("/mcp")),
        ("mcp", 406, _mcp({"id": 1, "method": "tools/list"}, headers={"Accept": "text/html"})),
        ("mcp", 413, _mcp_too_large),
        ("mcp", 400, _mcp_raw(b'{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}', "text/plain")),
    ]
]


@pytest.mark.parametrize(
    "scenario",
    SCENARIOS,
    ids=[f"{s.operation_id}-{s.status}{'-database-down' if s.database_down else ''}" for s in SCENARIOS],
)
def test_response_conforms_to_the_spec(
    request: pytest.FixtureRequest, api: Client, scenario: Scenario
) -> None:
    given: dict[str, Any] = {"gmail": request.getfixturevalue("gmail"), "request": request}
    for name in ("inbox", "revoked", "broken", "wrong_client"):
        request.getfixturevalue(name)
    if scenario.database_down:
        request.getfixturevalue("database_down")

    response = scenario.call(api, given)

    status = scenario.status
    path, method = operations()[scenario.operation_id]
    assert response.status_code == status, response.get_data(as_text=True)[:500]
    body = assert_conforms(response, path, method)
    if status >= 400 and scenario.operation_id == "mcp" and status not in (405, 413):
        assert body["jsonrpc"] == "2.0" and isinstance(body["error"]["code"], int)  # JSON-RPC's error
    elif status >= 400:
        assert set(body) == {"error"}
        if status == 429:
            assert int(response.headers["Retry-After"]) >= 1
        if status == 405:
            assert response.headers["Allow"]
        if status == 500:
            assert body == {"error": {"code": "internal", "message": "internal error"}}
