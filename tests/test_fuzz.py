"""Generated requests against every target: schemathesis from docs/openapi.yaml, and hypothesis over the
request parsers. Whatever arrives, the answer is a documented status with a JSON body, never a 5xx.

Everything runs in-process (one WSGI app of every target's functions-framework app), over the real
PostgreSQL, with Gmail and Google's token endpoint faked on loopback: no call leaves the machine.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from werkzeug.test import Client, TestResponse

from devtools.fakes.gmail import FakeGmail
from devtools.fakes.oauth import FakeTokenEndpoint
from shared.mailbox import send
from tests.conftest import row
from tests.test_openapi_responses import SPEC_PATH, assert_conforms, wsgi_app

SEEDED = "alice"
RECIPIENT = "김철수 <chulsoo@example.com>"
MAILBOX = "fuzz@example.com"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# The fixtures build a database, fake servers and a mailbox once per test, not once per example.
FIXTURES_ONCE = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]

schema = schemathesis.openapi.from_path(str(SPEC_PATH))
schema.app = wsgi_app()


# -- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture
def world(
    user_token: Callable[..., int],
    conn: Any,
    token_endpoint: FakeTokenEndpoint,
    monkeypatch: pytest.MonkeyPatch,
    fake_clock: Any,
) -> Iterator[FakeGmail]:
    """The database with a usable token for SEEDED, and a Gmail that accepts it and holds a message."""
    with FakeGmail(email_address=MAILBOX) as gmail:
        gmail.trust(token_endpoint)
        monkeypatch.setenv("GMAIL_API_ENDPOINT", gmail.url)
        monkeypatch.setenv("PUBSUB_TOPIC", "projects/fuzz/topics/gmail")  # as deployed: watches can start
        monkeypatch.setattr(send, "_senders", {})
        row_id = user_token(SEEDED, expires_in=3600, equipped_to="robeing-1")
        gmail.allow_token(row(conn, row_id)["token_data"]["access_token"])
        gmail.add_message(
            "From: =?UTF-8?B?6rmA7LKg7IiY?= <chulsoo@example.com>\r\nTo: fuzz@example.com\r\n"
            "Subject: =?UTF-8?B?7JWI64WV?=\r\nDate: Mon, 04 Mar 2024 09:00:00 +0900\r\n\r\n안녕\r\n".encode()
        )
        yield gmail


def _seed_user(case: schemathesis.Case) -> None:
    """Points about half of the generated requests at the seeded user, so they get past the token
    lookup and reach Gmail (with an address Gmail takes, for a send); the rest keep their generated
    (unknown, or malformed) values."""
    for container in (case.body, case.query):
        user_id = container.get("user_id") if isinstance(container, dict) else None
        if isinstance(container, dict) and isinstance(user_id, str) and len(user_id) % 2 == 0:
            container["user_id"] = SEEDED
            container.pop("robeing_id", None)
            for name in ("to", "cc", "bcc", "reply_to"):
                if name in container:
                    container[name] = RECIPIENT


# -- schemathesis: every operation of the spec -------------------------------------------------------


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=FIXTURES_ONCE)
def test_every_operation_answers_as_documented(case: schemathesis.Case, world: FakeGmail) -> None:
    _seed_user(case)
    response = case.call()
    case.validate_response(response, checks=CHECKS)


# -- hypothesis: the request parsers -----------------------------------------------------------------

FIELDS = {
    "token_status": ("user_id", "robeing_id"),
    "refresh_tokens": ("user_id", "robeing_id", "window_seconds"),
    "list_emails": (
        "user_id", "robeing_id", "q", "label_ids", "max_results", "page_token", "include_body",
        "include_spam_trash",
    ),
    "send_email": (
        "user_id", "robeing_id", "to", "cc", "bcc", "subject", "body", "html", "attachments",
        "reply_to_message_id", "thread_id", "from_name", "reply_to",
    ),
}  # fmt: skip
STATUS_CODES = {
    400: "invalid_argument",
    401: "reauth_required",
    403: "permission_denied",
    404: "not_found",
    409: "idempotency_conflict",
    413: "payload_too_large",
    429: "rate_limited",
}
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
# Text a person or a program may well send: RTL and bidi controls, emoji (with joiners and skin
# tones), combining marks, Korean, NUL and other controls, SQL, paths, URL-encoded and HTML-ish bits.
NASTY = [
    "사용자",
    "\u202eevil\u202c",
    "\u05e9\u05dc\u05d5\u05dd",
    "\u0627\u0644\u0633\u0644\u0627\u0645",
    "👩\u200d👩\u200d👧\u200d👦🏽",
    "e\u0301\u0301\u0301",
    "\x00",
    "a\x00b",
    "\x7f\x1b[31m",
    "\ufeff\u200b",
    "'; DROP TABLE gmail_token; --",
    "1' OR '1'='1",
    "$1; SELECT pg_sleep(10)",
    "../../etc/passwd",
    "..\\..\\windows\\win.ini",
    "/dev/null",
    "%00%2e%2e%2f",
    "<script>alert(1)</script>",
    "=?UTF-8?B?7JWI64WV?=",
    "\uffff\U0010ffff",
    "x" * 101,
]
any_text = st.text() | st.sampled_from(NASTY)
# Every field of a target, each maybe present, with values of any JSON type.
SEEDED_OR_ANY = st.sampled_from([SEEDED]) | json_values


def field_bodies(target: str) -> st.SearchStrategy[dict[str, Any]]:
    optional: dict[str, st.SearchStrategy[Any]] = {name: json_values for name in FIELDS[target]}
    optional["user_id"] = SEEDED_OR_ANY
    if target == "send_email":
        optional["to"] = st.sampled_from([RECIPIENT, ["a@example.com", RECIPIENT]]) | json_values
    return st.fixed_dictionaries({}, optional=optional)


def _unpaired(value: Any) -> bool:
    return any(0xD800 <= ord(char) <= 0xDFFF for char in json.dumps(value, ensure_ascii=False))


def assert_answer(response: TestResponse, target: str, method: str = "post") -> None:
    """Never a 5xx; a JSON body the spec documents; an error is the contract's error object."""
    assert response.status_code < 500, response.get_data(as_text=True)[:500]
    body = assert_conforms(response, f"/{target}", method)
    if response.status_code >= 400:
        assert body["error"]["code"] == STATUS_CODES[response.status_code], body


def post(target: str, body: Any) -> TestResponse:
    return Client(wsgi_app()).post(f"/{target}", json=body)


PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=FIXTURES_ONCE)


@pytest.mark.parametrize("target", sorted(FIELDS))
@PROPERTY
@given(body=st.dictionaries(st.text(), json_values, max_size=6))
def test_any_json_object_is_answered_without_a_server_error(
    world: FakeGmail, target: str, body: dict[str, Any]
) -> None:
    assert_answer(post(target, body), target)


@pytest.mark.parametrize("target", sorted(FIELDS))
@PROPERTY
@given(data=st.data())
def test_the_target_fields_with_any_json_values_are_answered_without_a_server_error(
    world: FakeGmail, target: str, data: st.DataObject
) -> None:
    assert_answer(post(target, data.draw(field_bodies(target))), target)


@pytest.mark.parametrize(
    ("target", "field", "extra"),
    [
        ("token_status", "user_id", {}),
        ("token_status", "robeing_id", {"user_id": SEEDED}),
        ("refresh_tokens", "user_id", {}),
        ("list_emails", "user_id", {}),
        ("list_emails", "q", {"user_id": SEEDED}),
        ("list_emails", "page_token", {"user_id": SEEDED}),
        ("send_email", "user_id", {"to": RECIPIENT}),
        ("send_email", "subject", {"user_id": SEEDED, "to": RECIPIENT}),
        ("send_email", "from_name", {"user_id": SEEDED, "to": RECIPIENT}),
        ("send_email", "body", {"user_id": SEEDED, "to": RECIPIENT}),
        ("send_email", "thread_id", {"user_id": SEEDED, "to": RECIPIENT}),
    ],
)
@PROPERTY
@given(text=any_text)
def test_any_unicode_in_a_text_field_is_answered_without_a_server_error(
    world: FakeGmail, target: str, field: str, extra: dict[str, Any], text: str
) -> None:
    assert_answer(post(target, {**extra, field: text}), target)


@pytest.mark.parametrize(
    ("target", "fields"),
    [("list_emails", FIELDS["list_emails"]), ("token_status", ("user_id", "robeing_id"))],
)
@PROPERTY
@given(data=st.data())
def test_any_query_string_is_answered_without_a_server_error(
    world: FakeGmail, target: str, fields: tuple[str, ...], data: st.DataObject
) -> None:
    names = st.sampled_from([*fields, "junk", ""]) | st.text(max_size=8)
    values = any_text | st.sampled_from([SEEDED, "0", "-1", "501", "yes", "TRUE", " 5 ", "INBOX,,UNREAD"])
    query = data.draw(st.lists(st.tuples(names, values), max_size=6))
    response = Client(wsgi_app()).get(f"/{target}", query_string=query)
    assert_answer(response, target, "get")


@pytest.mark.parametrize("depth", [10, 900, 5000])
@pytest.mark.parametrize(
    ("target", "field"),
    [
        ("send_email", "to"),
        ("send_email", "attachments"),
        ("list_emails", "label_ids"),
        ("token_status", "robeing_id"),
    ],
)
def test_deeply_nested_json_is_a_400(world: FakeGmail, target: str, field: str, depth: int) -> None:
    nested = "[" * depth + '"a@example.com"' + "]" * depth
    body = f'{{"user_id": "{SEEDED}", "to": "{RECIPIENT}", "{field}": {nested}}}'.encode()
    if target != "send_email":
        body = f'{{"user_id": "{SEEDED}", "{field}": {nested}}}'.encode()
    response = Client(wsgi_app()).post(f"/{target}", data=body, content_type="application/json")
    assert response.status_code == 400
    assert_answer(response, target)


def _surrogate_case(target: str, body: dict[str, Any]) -> Any:
    where = next((k if _unpaired(k) else f"in-{k}" for k, v in body.items() if _unpaired(v) or _unpaired(k)))
    return pytest.param(target, body, id=f"{target}-{where if where.isascii() else 'field-name'}")


@pytest.mark.parametrize(
    ("target", "body"),
    [
        _surrogate_case("token_status", {"user_id": "\ud800"}),
        _surrogate_case("token_status", {"user_id": SEEDED, "robeing_id": "r\udfff"}),
        _surrogate_case("token_status", {"user_id": SEEDED, "\ud800": 1}),
        _surrogate_case("refresh_tokens", {"user_id": "\ud800"}),
        _surrogate_case("list_emails", {"user_id": "\udc00"}),
        _surrogate_case("list_emails", {"user_id": SEEDED, "q": "from:\ud800"}),
        _surrogate_case("list_emails", {"user_id": SEEDED, "page_token": "\ud800"}),
        _surrogate_case("list_emails", {"user_id": SEEDED, "label_ids": ["INBOX", "\ud800"]}),
        _surrogate_case("send_email", {"user_id": "\ud800", "to": RECIPIENT}),
        _surrogate_case("send_email", {"user_id": SEEDED, "to": RECIPIENT, "subject": "\ud800"}),
        _surrogate_case("send_email", {"user_id": SEEDED, "to": RECIPIENT, "reply_to_message_id": "\ud800"}),
        _surrogate_case("send_email", {"user_id": SEEDED, "to": RECIPIENT, "thread_id": "\ud800"}),
        _surrogate_case(
            "send_email",
            {
                "user_id": SEEDED,
                "to": RECIPIENT,
                "attachments": [{"filename": "a", "content": "", "\udc80": 1}],
            },
        ),
    ],
)
def test_unpaired_surrogates_escaped_in_json_are_a_400(
    world: FakeGmail, log_lines: list[str], target: str, body: dict[str, Any]
) -> None:
    # "\ud800" is valid JSON (RFC 8259 section 8.2) that decodes to a string no UTF-8 encoder takes:
    # PostgreSQL, Gmail's URLs and stdout all refuse it, so it must be refused at the door.
    raw = json.dumps(body).encode()
    response = Client(wsgi_app()).post(f"/{target}", data=raw, content_type="application/json")
    assert response.status_code == 400, response.get_data(as_text=True)
    assert_answer(response, target)
    for line in log_lines:
        line.encode("utf-8")  # what Cloud Logging reads from stdout must be UTF-8


@pytest.mark.parametrize(
    ("target", "body"),
    [
        ("list_emails", {"user_id": SEEDED, "max_results": 25.0}),
        ("refresh_tokens", {"window_seconds": 7200.0}),
    ],
    ids=["max_results", "window_seconds"],
)
def test_whole_numbers_written_with_a_fraction_are_whole_numbers(
    world: FakeGmail, target: str, body: dict[str, Any]
) -> None:
    # JSON has one number type: 25.0 is the integer 25 to JSON Schema ("type": "integer"), and so to
    # the spec; Python's json.dumps writes a float that holds a whole number this way.
    response = post(target, body)
    assert response.status_code == 200, response.get_json()
    assert_answer(response, target)
