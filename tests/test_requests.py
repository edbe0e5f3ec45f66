"""Bad input on every target: a clear JSON 4xx naming what was wrong, never a 500 or an HTML page."""

from __future__ import annotations

import pytest

TARGETS_AND_METHODS = {
    "token_status": ("GET", "POST"),
    "refresh_tokens": ("POST",),
    "send_email": ("POST",),
    "list_emails": ("GET", "POST"),
}


@pytest.mark.parametrize(
    ("target", "method"),
    [
        (target, method)
        for target, allowed in sorted(TARGETS_AND_METHODS.items())
        for method in ("PUT", "DELETE", "PATCH", "GET")
        if method not in allowed
    ],
)
def test_methods_a_target_does_not_take_are_405_json(client, target, method):
    response = client(target).open("/", method=method)
    assert response.status_code == 405
    assert response.get_json()["error"]["code"] == "method_not_allowed"
    assert set(response.headers["Allow"].split(", ")) == set(TARGETS_AND_METHODS[target])


@pytest.mark.parametrize("target", ["token_status", "refresh_tokens", "list_emails", "send_email"])
@pytest.mark.parametrize(
    ("body", "content_type", "words"),
    [
        (b"{not json", "application/json", "not valid JSON"),
        (b"[1, 2]", "application/json", "JSON object"),
        (b'"text"', "application/json", "JSON object"),
        (b"user_id=a", "application/x-www-form-urlencoded", "Content-Type: application/json"),
        (b"[" * 20_000 + b"]" * 20_000, "application/json", "not valid JSON"),
    ],
)
def test_bodies_that_are_not_a_json_object_are_400(client, target, body, content_type, words):
    response = client(target).post("/", data=body, content_type=content_type)
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == "invalid_argument"
    assert words in error["message"]


@pytest.mark.parametrize(
    ("target", "body", "words"),
    [
        ("token_status", {"user_id": "a", "usr_id": "b"}, "unknown field: usr_id"),
        ("token_status", {}, "user_id: required"),
        ("token_status", {"user_id": ""}, "user_id: must not be empty"),
        ("token_status", {"user_id": "x" * 101}, "user_id: at most 100"),
        ("token_status", {"user_id": 42}, "user_id: must be a string"),
        ("token_status", {"user_id": ["a"]}, "user_id: must be a string"),
        ("token_status", {"user_id": "a\nb"}, "control characters"),
        ("token_status", {"user_id": "a\x00b"}, "control characters"),
        ("token_status", {"user_id": "a", "robeing_id": "r" * 51}, "robeing_id: at most 50"),
        ("refresh_tokens", {"window_seconds": "soon"}, "window_seconds: must be a whole number"),
        ("refresh_tokens", {"window_seconds": -1}, "window_seconds: must be at least 0"),
        ("refresh_tokens", {"window_seconds": True}, "window_seconds: must be a whole number"),
        ("refresh_tokens", {"robeing_id": "r"}, "robeing_id: only with user_id"),
        ("list_emails", {"user_id": "a", "max_results": 0}, "max_results: must be at least 1"),
        ("list_emails", {"user_id": "a", "max_results": 501}, "max_results: must be at most 500"),
        ("list_emails", {"user_id": "a", "include_body": "yes"}, "include_body: must be true or false"),
        ("list_emails", {"user_id": "a", "label_ids": "INBOX"}, "label_ids: must be a list"),
        ("send_email", {"user_id": "a"}, "to: required"),
        ("send_email", {"user_id": "a", "to": "b@example.com", "cc_": "x"}, "unknown field: cc_"),
    ],
)
def test_malformed_fields_are_400_naming_the_field(client, database_url, target, body, words):
    response = client(target).post("/", json=body)
    assert response.status_code == 400, response.get_json()
    assert words in response.get_json()["error"]["message"]


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("user_id=a&user_id=b", "user_id: given more than once"),
        ("user_id=a&bogus=1", "unknown field: bogus"),
        ("", "user_id: required"),
    ],
)
def test_query_parameters_are_checked_like_json(client, query, words):
    response = client("token_status").get(f"/?{query}")
    assert response.status_code == 400
    assert words in response.get_json()["error"]["message"]


def test_list_query_parameters_are_converted(client, database_url):
    # a well-formed GET reaches the token store: no token for this user is a 404, not a 400
    response = client("list_emails").get("/?user_id=a&max_results=5&include_body=true&label_ids=INBOX,UNREAD")
    assert response.status_code == 404


def test_sql_looking_and_path_like_user_ids_are_just_ids(client, database_url, conn):
    for user_id in ("'; DROP TABLE gmail_token; --", "../../etc/passwd", "%00", "사용자"):
        response = client("token_status").post("/", json={"user_id": user_id})
        assert response.status_code == 404
    assert conn.one("SELECT count(*) AS n FROM gmail_token") == {"n": 0}


def test_oversized_body_is_413(client):
    response = client("token_status").post(
        "/", data=b'{"user_id": "' + b"a" * 70_000 + b'"}', content_type="application/json"
    )
    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "payload_too_large"


def test_refresh_tokens_empty_json_body_is_the_scheduled_run(client, database_url):
    response = client("refresh_tokens").post("/", content_type="application/json")
    assert response.status_code == 200
    assert response.get_json() == {"checked": 0, "refreshed": 0, "skipped": 0, "failed": []}


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"],
)
def test_a_post_that_is_not_json_never_starts_the_scheduled_run(
    client, database_url, user_token, token_endpoint, content_type
):
    # The content types a browser may POST across origins without a preflight, empty or not.
    user_token("due", expires_in=60)
    for body in (b"", b"{}"):
        headers = {"Content-Type": content_type} if content_type else {}
        response = client("refresh_tokens").post("/", data=body, headers=headers)
        assert response.status_code == 400
        assert "Content-Type: application/json" in response.get_json()["error"]["message"]
    assert token_endpoint.count("POST", "/token") == 0


def test_an_unexpected_bug_is_a_generic_500_with_details_only_in_the_log(
    client, database_url, conn, log_lines
):
    # a token_data that is JSON but not usable as a token: the keyring is not configured yet the
    # value claims to be encrypted, which the store refuses loudly
    from tests.conftest import insert_row

    insert_row(conn, "enc", token_data={"access_token": "enc:v1:k1:AAAA", "refresh_token": "r"})
    response = client("token_status").post("/", json={"user_id": "enc"})
    assert response.status_code == 500
    assert response.get_json() == {"error": {"code": "internal", "message": "internal error"}}
    assert any('"severity": "ERROR"' in line for line in log_lines)


@pytest.mark.parametrize(("target", "field"), [("token_status", "user_id"), ("list_emails", "q")])
def test_a_post_field_left_in_the_query_string_says_it_belongs_in_the_body(client, target, field):
    # A POST reads only its JSON body; "user_id: required" alone left callers looking in the wrong place.
    response = client(target).post(f"/?{field}=alice", json={} if field == "user_id" else {"user_id": "x"})
    assert response.status_code == 400
    message = response.get_json()["error"]["message"]
    assert message.startswith(f"{field}: ")
    assert "query string" in message
    assert "JSON body" in message
