"""A tampered or unreadable token row, or endpoint answer, never sends a secret elsewhere nor crashes.

ALLOWED_TOKEN_URIS, REQUIRE_ENCRYPTED_TOKENS, unreadable token-endpoint answers (502, not 500), and
errors that carry the status and Google's error code but never the endpoint's response body.
"""

from __future__ import annotations

import json
import traceback

import pytest
import responses

from devtools.fakes.oauth import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET
from shared.errors import ReauthRequired, SkillEmailError, UpstreamError
from shared.tokens import oauth
from shared.tokens.cipher import token_cipher
from shared.tokens.keyring import generate_key
from shared.tokens.maintenance import reseal_rows
from tests.conftest import SECRET_VALUES, insert_row, row, secret, utc_in

GOOGLE = "https://oauth2.googleapis.com/token"


def google_row(conn, user_id: str, *, token_uri: str | None = None, expires_in: float = -60) -> int:
    """A row whose refresh would go to Google's endpoint (or to ``token_uri``)."""
    oauth_config = {"client_id": DEFAULT_CLIENT_ID, "client_secret": DEFAULT_CLIENT_SECRET}
    if token_uri:
        oauth_config["token_uri"] = token_uri
    return insert_row(
        conn,
        user_id,
        token_data={"access_token": secret("ya29.a"), "refresh_token": secret("1//r")},
        oauth_config=oauth_config,
        expiry=utc_in(expires_in),
    )


def refresh(client, user_id: str):  # type: ignore[no-untyped-def]
    return client("refresh_tokens").post("/", json={"user_id": user_id})


# -- ALLOWED_TOKEN_URIS -------------------------------------------------------------------------------


def test_a_token_uri_neither_googles_nor_listed_is_ignored_and_logged(
    client, conn, token_endpoint, monkeypatch, log_lines
):
    monkeypatch.delenv("ALLOWED_TOKEN_URIS")  # the fake endpoint now stands for an attacker's URL
    row_id = google_row(conn, "tampered", token_uri=f"{token_endpoint.url}/token")
    refresh_token = row(conn, row_id)["token_data"]["refresh_token"]
    issued = secret("ya29.google")
    with responses.RequestsMock() as mock:
        mock.post(GOOGLE, json={"access_token": issued, "expires_in": 3599, "token_type": "Bearer"})
        response = refresh(client, "tampered")
        assert response.status_code == 200
        [call] = mock.calls
        assert f"refresh_token={refresh_token.replace('/', '%2F')}" in str(call.request.body)
    assert token_endpoint.count() == 0
    assert row(conn, row_id)["token_data"]["access_token"] == issued
    [warning] = [json.loads(line) for line in log_lines if "neither Google's nor in" in line]
    assert warning["severity"] == "WARNING"
    assert warning["refused_uri_host"] == "127.0.0.1"


def test_a_token_uri_listed_in_allowed_token_uris_is_honoured(client, conn, token_endpoint, monkeypatch):
    monkeypatch.setenv("ALLOWED_TOKEN_URIS", f"https://login.example.com/token, {token_endpoint.url}/token")
    row_id = google_row(conn, "listed", token_uri=f"{token_endpoint.url}/token")
    token_endpoint.add_refresh_token(row(conn, row_id)["token_data"]["refresh_token"])
    assert refresh(client, "listed").status_code == 200
    assert token_endpoint.count("POST", "/token") == 1


def test_googles_older_token_endpoint_names_are_honoured_without_a_warning(client, conn, log_lines):
    legacy = "https://accounts.google.com/o/oauth2/token"
    google_row(conn, "old-file", token_uri=legacy)
    with responses.RequestsMock() as mock:
        mock.post(legacy, json={"access_token": secret("ya29.g"), "expires_in": 3599})
        assert refresh(client, "old-file").status_code == 200
        assert len(mock.calls) == 1
    assert not [line for line in log_lines if "neither Google's nor in" in line]


# -- REQUIRE_ENCRYPTED_TOKENS -------------------------------------------------------------------------


@pytest.fixture
def keyring(monkeypatch):  # type: ignore[no-untyped-def]
    key = generate_key()
    SECRET_VALUES.add(key)
    monkeypatch.setenv("TOKEN_KEYS", json.dumps({"primary": "k1", "keys": {"k1": key}}))
    monkeypatch.setenv("REQUIRE_ENCRYPTED_TOKENS", "true")


def test_a_plaintext_row_is_refused_with_401_naming_the_cause_and_nothing_is_sent(
    client, conn, user_token, token_endpoint, gmail, keyring
):
    row_id = user_token("plain", expires_in=-60)
    gmail.allow_token(row(conn, row_id)["token_data"]["access_token"])

    refreshed = refresh(client, "plain")
    listed = client("list_emails").get("/?user_id=plain")
    sent = client("send_email").post("/", json={"user_id": "plain", "to": "b@example.com", "body": "x"})

    for response in (refreshed, listed, sent):
        assert response.status_code == 401
        error = response.get_json()["error"]
        assert error["code"] == "reauth_required"
        assert "plain text" in error["message"] and "REQUIRE_ENCRYPTED_TOKENS" in error["message"]
        assert "token_data.refresh_token" in error["message"]
    assert token_endpoint.count() == 0
    assert gmail.count() == 0
    assert row(conn, row_id)["reauth_required_at"] is None  # not Google's refusal: no marker


def test_a_fresh_plaintext_row_is_not_sent_to_gmail_either(client, conn, user_token, gmail, keyring):
    row_id = user_token("fresh-plain", expires_in=3600)
    gmail.allow_token(row(conn, row_id)["token_data"]["access_token"])
    assert client("list_emails").get("/?user_id=fresh-plain").status_code == 401
    assert gmail.count() == 0


def test_status_and_the_scheduled_run_report_a_plaintext_row(
    client, conn, user_token, token_endpoint, keyring
):
    user_token("plain")
    status = client("token_status").get("/?user_id=plain")
    assert status.status_code == 200
    assert status.get_json()["connected"] is False and status.get_json()["needs_reauth"] is True
    body = client("refresh_tokens").post("/", json={}).get_json()
    assert body["failed"] == [{"user_id": "plain", "code": "reauth_required"}]
    assert token_endpoint.count() == 0


def test_an_encrypted_row_is_used_and_a_resealed_one_works_again(
    client, conn, database_url, user_token, token_endpoint, keyring
):
    user_token("sealed")
    assert refresh(client, "sealed").status_code == 401
    reseal_rows(conn, token_cipher())
    assert refresh(client, "sealed").status_code == 200
    assert token_endpoint.count("POST", "/token") == 1


def test_a_plaintext_client_secret_beside_sealed_tokens_is_refused(client, conn, user_token, keyring):
    row_id = user_token("mixed")
    reseal_rows(conn, token_cipher())
    conn.run(
        "UPDATE gmail_token SET oauth_config = oauth_config - 'client_secret', "
        "token_data = token_data || CAST(:extra AS JSONB) WHERE id = :id",
        extra=json.dumps({"client_secret": DEFAULT_CLIENT_SECRET}),
        id=row_id,
    )
    response = refresh(client, "mixed")
    assert response.status_code == 401
    assert "token_data.client_secret" in response.get_json()["error"]["message"]


def test_required_encryption_without_a_keyring_is_503_naming_the_setting(client, conn, monkeypatch):
    monkeypatch.setenv("REQUIRE_ENCRYPTED_TOKENS", "true")
    google_row(conn, "nokey")
    response = client("token_status").get("/?user_id=nokey")
    assert response.status_code == 503
    assert "REQUIRE_ENCRYPTED_TOKENS" in response.get_json()["error"]["message"]


def test_required_encryption_with_the_file_store_is_503_naming_both(client, tmp_path, monkeypatch):
    monkeypatch.setenv("TOKEN_PROVIDER", "file")
    monkeypatch.setenv("TOKEN_DIR", str(tmp_path))
    monkeypatch.setenv("REQUIRE_ENCRYPTED_TOKENS", "true")
    response = client("token_status").get("/?user_id=alice")
    assert response.status_code == 503
    message = response.get_json()["error"]["message"]
    assert "REQUIRE_ENCRYPTED_TOKENS" in message and "TOKEN_PROVIDER=file" in message


def test_a_malformed_require_encrypted_tokens_is_a_config_error(client, monkeypatch):
    monkeypatch.setenv("REQUIRE_ENCRYPTED_TOKENS", "maybe")
    response = client("token_status").get("/?user_id=alice")
    assert response.status_code == 503
    assert "REQUIRE_ENCRYPTED_TOKENS" in response.get_json()["error"]["message"]


# -- answers we cannot read ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        ('{"access_token": "ya29.x", "expires_in": "soon", "token_type": "Bearer"}', "application/json"),
        ("<html><body>Service temporarily rerouted</body></html>", "text/html"),
        ("[]", "application/json"),
        ('{"access_token": 12345, "expires_in": 3599}', "application/json"),
        ('{"access_token": "ya29.x", "expires_in": 1e300}', "application/json"),
        ('{"expires_in": 3599}', "application/json"),
    ],
)
def test_an_answer_we_cannot_read_is_502_upstream_error(client, conn, body, content_type):
    row_id = google_row(conn, "odd")
    before = row(conn, row_id)
    with responses.RequestsMock() as mock:
        mock.post(GOOGLE, body=body, status=200, content_type=content_type)
        response = refresh(client, "odd")
    assert response.status_code == 502
    assert response.get_json()["error"]["code"] == "upstream_error"
    assert row(conn, row_id)["token_data"] == before["token_data"]  # nothing half written


# -- no response body in an exception --------------------------------------------------------------------


def formatted(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


@pytest.mark.parametrize(
    ("status", "payload", "expected", "code"),
    [
        (
            400,
            {"error": "invalid_request", "error_description": "echo: {marker}"},
            UpstreamError,
            "invalid_request",
        ),
        (
            401,
            {"error": "invalid_client", "error_description": "client {marker}"},
            UpstreamError,
            "invalid_client",
        ),
        (
            400,
            {"error": "invalid_grant", "error_description": "{marker} revoked"},
            ReauthRequired,
            "invalid_grant",
        ),
        (400, "<html>{marker}</html>", UpstreamError, None),
        (200, {"expires_in": 3599, "note": "{marker}"}, UpstreamError, None),
    ],
)
def test_errors_carry_status_and_code_but_never_the_answer_body(status, payload, expected, code):
    marker = secret("echoed-secret")
    text = json.dumps(payload).replace("{marker}", marker) if isinstance(payload, dict) else payload
    text = text.replace("{marker}", marker)
    with responses.RequestsMock() as mock:
        mock.post(GOOGLE, body=text, status=status, content_type="application/json")
        with pytest.raises(SkillEmailError) as info:
            oauth.refresh_access_token(
                refresh_token=secret("1//r"),
                client_id=DEFAULT_CLIENT_ID,
                client_secret=DEFAULT_CLIENT_SECRET,
                token_uri=GOOGLE,
            )
    assert type(info.value) is expected
    assert info.value.details.get("status") == status
    assert info.value.details.get("error", code) == code
    assert marker not in formatted(info.value)
    assert marker not in repr(info.value.details)


def test_a_502_from_the_token_endpoint_logs_no_part_of_its_body(client, conn, log_lines):
    marker = secret("echoed-secret")
    google_row(conn, "echo")
    with responses.RequestsMock() as mock:
        mock.post(GOOGLE, json={"error": "invalid_request", "error_description": marker}, status=400)
        response = refresh(client, "echo")
    assert response.status_code == 502
    assert "invalid_request" in response.get_json()["error"]["message"]  # Google's code, not its text
    assert marker not in response.get_data(as_text=True)
    assert not [line for line in log_lines if marker in line]
