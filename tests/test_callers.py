"""Callers (CONTRACT.md, Callers) with real ID tokens: signed by a test key, served at a local certs URL and
checked by google-auth itself, through functions-framework, against the real PostgreSQL."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from devtools.fakes.google_certs import CERTS_PATH, FakeGoogleCerts, signing_key
from shared import callers, cli, clock, config, db
from tests.conftest import AUDIENCE, OTHER_AUDIENCE, row

ROBEING = "robeing-svc@robeing-prod.iam.gserviceaccount.com"
SCHEDULER = "scheduler@robeing-prod.iam.gserviceaccount.com"
OPERATOR = "ops@example.com"
STRANGER = "someone@other-project.iam.gserviceaccount.com"


@pytest.fixture
def listed(conn: db.Connection) -> None:
    """The three roles on the allow-list."""
    callers.add_caller(conn, ROBEING, "robeing", ["robeing-7", "robeing-9"])
    callers.add_caller(conn, SCHEDULER, "scheduler", [])
    callers.add_caller(conn, OPERATOR, "operator", [])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def post(client: Callable[[str], Any], target: str, body: dict[str, Any], token: str | None) -> Any:
    return client(target).post("/", json=body, headers=bearer(token) if token else {})


def tampered(token: str) -> str:
    """The token with its claims rewritten to name the operator, the signature left as it was."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["email"] = OPERATOR
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


def error(response: Any) -> tuple[int, str, str]:
    payload = response.get_json()["error"]
    return response.status_code, payload["code"], payload["message"]


# -- 401: the ID token ---------------------------------------------------------------------------------


def test_enforce_without_a_token_is_401(client, enforce, listed):
    response = client("token_status").get("/?user_id=alice")
    assert error(response)[:2] == (401, "unauthenticated")
    assert "Authorization: Bearer" in error(response)[2]
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer not-a-jwt", "Bearer a.b.c"])
def test_a_header_that_is_no_id_token_is_401(client, enforce, listed, header):
    response = client("token_status").get("/?user_id=alice", headers={"Authorization": header})
    assert error(response)[:2] == (401, "unauthenticated")


def test_a_valid_token_of_a_listed_operator_is_admitted(client, enforce, listed):
    response = post(client, "token_status", {"user_id": "nobody"}, enforce.mint(OPERATOR, AUDIENCE))
    assert error(response)[:2] == (404, "not_found")


def test_either_audience_of_caller_audiences_is_accepted(client, enforce, listed):
    response = post(client, "token_status", {"user_id": "nobody"}, enforce.mint(OPERATOR, OTHER_AUDIENCE))
    assert response.status_code == 404


@pytest.mark.parametrize(
    ("mint", "words"),
    [
        (lambda fake: fake.mint(OPERATOR, "https://another-service.a.run.app"), "audience"),
        (lambda fake: fake.mint(OPERATOR, AUDIENCE, issued_at=int(time.time()) - 7200), "expired"),
        (lambda fake: fake.mint(OPERATOR, AUDIENCE, issued_at=int(time.time()) + 600), "too early"),
        (lambda fake: tampered(fake.mint(STRANGER, AUDIENCE)), "signature"),
        (lambda fake: fake.mint(OPERATOR, AUDIENCE, issuer="https://evil.example.com"), "issued by Google"),
        (lambda fake: fake.mint(OPERATOR, AUDIENCE, issuer="accounts.google.com.evil"), "issued by Google"),
        # The right key id, but signed by a key Google never published: a forged token.
        (
            lambda fake: fake.mint(OPERATOR, AUDIENCE, key_pem=signing_key(7)[0]),
            "signature",
        ),
        (lambda fake: fake.mint(None, AUDIENCE), "no email claim"),
        (lambda fake: fake.mint(OPERATOR, AUDIENCE, extra={"email_verified": False}), "not verified"),
    ],
)
def test_a_token_failing_any_check_is_401(client, enforce, listed, mint, words):
    response = post(client, "token_status", {"user_id": "alice"}, mint(enforce))
    status, code, message = error(response)
    assert (status, code) == (401, "unauthenticated")
    assert words in message


def test_both_google_issuer_spellings_are_accepted(client, enforce, listed):
    for issuer in ("accounts.google.com", "https://accounts.google.com"):
        token = enforce.mint(OPERATOR, AUDIENCE, issuer=issuer)
        assert post(client, "token_status", {"user_id": "nobody"}, token).status_code == 404


def test_a_token_whose_signature_cloud_run_removed_says_how_to_send_it(client, enforce, listed):
    header, payload, _ = enforce.mint(OPERATOR, AUDIENCE).split(".")
    response = post(
        client, "token_status", {"user_id": "a"}, f"{header}.{payload}.SIGNATURE_REMOVED_BY_GOOGLE"
    )
    assert error(response)[:2] == (401, "unauthenticated")
    assert "X-Serverless-Authorization" in error(response)[2]


def test_no_token_value_ever_reaches_the_answer_or_the_log(client, enforce, listed, log_lines):
    token = enforce.mint(STRANGER, "https://wrong.example.com")
    response = post(client, "token_status", {"user_id": "a"}, token)
    assert response.status_code == 401
    assert token.split(".")[1] not in response.get_data(as_text=True)
    assert not any(token.split(".")[2] in line for line in log_lines)


# -- the certificates: once per instance -----------------------------------------------------------------


def test_certificates_are_fetched_once_per_instance_not_per_call(client, enforce, listed):
    token = enforce.mint(OPERATOR, AUDIENCE)
    for _ in range(5):
        assert post(client, "token_status", {"user_id": "nobody"}, token).status_code == 404
    assert enforce.count("GET", CERTS_PATH) == 1


def test_a_rotated_key_is_fetched_when_a_token_names_it(client, enforce, listed):
    assert post(client, "token_status", {"user_id": "x"}, enforce.mint(OPERATOR, AUDIENCE)).status_code == 404
    enforce.rotate()
    token = enforce.mint(OPERATOR, AUDIENCE)
    # Within a minute of the first fetch, an unknown key id is refused without asking Google again...
    assert error(post(client, "token_status", {"user_id": "x"}, token))[0] == 401
    assert enforce.count("GET", CERTS_PATH) == 1


def test_unknown_key_ids_refetch_at_most_once_a_minute(client, enforce, listed, monkeypatch):
    start = clock.monotonic()
    now = [start]
    monkeypatch.setattr(clock, "monotonic", lambda: now[0])
    assert post(client, "token_status", {"user_id": "x"}, enforce.mint(OPERATOR, AUDIENCE)).status_code == 404
    enforce.rotate()
    token = enforce.mint(OPERATOR, AUDIENCE)
    now[0] = start + callers.UNKNOWN_KID_REFETCH_S + 1
    # ...after it, the new key is fetched once and then known.
    for _ in range(3):
        assert post(client, "token_status", {"user_id": "x"}, token).status_code == 404
    assert enforce.count("GET", CERTS_PATH) == 2
    forged = enforce.mint(OPERATOR, AUDIENCE, key_id="made-up-kid", key_pem=signing_key(7)[0])
    for _ in range(5):
        assert error(post(client, "token_status", {"user_id": "x"}, forged))[0] == 401
    assert enforce.count("GET", CERTS_PATH) == 2


def test_certificates_that_cannot_be_fetched_are_503_not_401(client, enforce, listed):
    enforce.fail_next = 1
    response = post(client, "token_status", {"user_id": "x"}, enforce.mint(OPERATOR, AUDIENCE))
    assert error(response)[:2] == (503, "unavailable")


def test_enforce_without_audiences_is_503_naming_the_setting(client, enforce, listed, monkeypatch):
    monkeypatch.setenv(config.CALLER_AUDIENCES, " , ")
    response = post(client, "token_status", {"user_id": "x"}, enforce.mint(OPERATOR, AUDIENCE))
    status, code, _ = error(response)
    assert (status, code) == (503, "unavailable")


def test_an_unknown_policy_is_refused_loudly(client, monkeypatch):
    monkeypatch.setenv(config.CALLER_POLICY, "enforced")
    assert error(client("token_status").get("/?user_id=a"))[:2] == (503, "unavailable")


# -- 403: the allow-list and the roles -------------------------------------------------------------------


def test_a_valid_token_not_on_the_list_is_403_and_the_log_names_it(client, enforce, listed, log_lines):
    response = post(client, "token_status", {"user_id": "alice"}, enforce.mint(STRANGER, AUDIENCE))
    assert error(response)[:2] == (403, "permission_denied")
    [request_line] = [line for line in log_lines if "POST token_status 403" in line]
    assert f'"caller": "{STRANGER}"' in request_line


def test_emails_match_whatever_their_case(client, enforce, listed):
    response = post(client, "token_status", {"user_id": "nobody"}, enforce.mint(OPERATOR.upper(), AUDIENCE))
    assert response.status_code == 404


@pytest.mark.parametrize(
    ("email", "target", "body", "allowed"),
    [
        (ROBEING, "token_status", {"user_id": "u", "robeing_id": "robeing-7"}, True),
        (ROBEING, "token_status", {"user_id": "u", "robeing_id": "robeing-9"}, True),
        (ROBEING, "token_status", {"user_id": "u", "robeing_id": "robeing-8"}, False),
        (ROBEING, "token_status", {"user_id": "u"}, False),
        (ROBEING, "list_emails", {"user_id": "u", "robeing_id": "robeing-8"}, False),
        (ROBEING, "send_email", {"user_id": "u", "to": "a@b.c"}, False),
        (ROBEING, "refresh_tokens", {"user_id": "u", "robeing_id": "robeing-7"}, False),
        (ROBEING, "refresh_tokens", {}, False),
        (ROBEING, "list_events", {"robeing_id": "robeing-9"}, True),
        (ROBEING, "list_events", {"robeing_id": "robeing-8"}, False),  # only its own robeing ids
        (SCHEDULER, "list_events", {"robeing_id": "robeing-7"}, False),
        (ROBEING, "get_email", {"user_id": "u", "robeing_id": "robeing-8", "message_id": "m"}, False),
        (ROBEING, "watch_mailbox", {"user_id": "u", "robeing_id": "robeing-8"}, False),
        (SCHEDULER, "refresh_tokens", {}, True),
        (SCHEDULER, "refresh_tokens", {"window_seconds": 600}, True),
        (SCHEDULER, "refresh_tokens", {"row_ids": [12345]}, True),  # a slice queued on Cloud Tasks
        (ROBEING, "refresh_tokens", {"row_ids": [12345]}, False),
        (SCHEDULER, "refresh_tokens", {"user_id": "u"}, False),
        (SCHEDULER, "token_status", {"user_id": "u"}, False),
        (SCHEDULER, "send_email", {"user_id": "u", "to": "a@b.c"}, False),
        (SCHEDULER, "list_emails", {"user_id": "u"}, False),
        (OPERATOR, "token_status", {"user_id": "u"}, True),
        (OPERATOR, "refresh_tokens", {}, True),
        (OPERATOR, "token_status", {"user_id": "u", "robeing_id": "any-robeing"}, True),
    ],
)
def test_each_role_may_make_only_its_calls(client, enforce, listed, email, target, body, allowed):
    response = post(client, target, body, enforce.mint(email, AUDIENCE))
    if allowed:
        assert response.status_code in (200, 404), response.get_json()
    else:
        assert error(response)[:2] == (403, "permission_denied")


def test_a_robeing_that_omits_robeing_id_is_told_which_to_name(client, enforce, listed):
    response = post(client, "token_status", {"user_id": "u"}, enforce.mint(ROBEING, AUDIENCE))
    assert "robeing-7, robeing-9" in error(response)[2]


def test_a_robeing_uses_only_the_token_equipped_to_it(client, enforce, listed, user_token, conn, gmail):
    mine = user_token("alice", expires_in=3600, equipped_to="robeing-7")
    gmail.allow_token(row(conn, mine)["token_data"]["access_token"])
    # Another robeing's token for the same person, stored later: it would win without the binding.
    user_token("alice", expires_in=3600, equipped_to="robeing-8")
    token = enforce.mint(ROBEING, AUDIENCE)
    response = post(client, "list_emails", {"user_id": "alice", "robeing_id": "robeing-7"}, token)
    assert response.status_code == 200
    response = post(client, "list_emails", {"user_id": "alice", "robeing_id": "robeing-8"}, token)
    assert error(response)[:2] == (403, "permission_denied")


def test_every_audit_row_records_the_caller(client, enforce, listed, alice, conn, gmail):
    token = enforce.mint(OPERATOR, AUDIENCE)
    assert post(client, "list_emails", {"user_id": "alice"}, token).status_code == 200
    sent = post(client, "send_email", {"user_id": "alice", "to": "bob@example.com", "subject": "hi"}, token)
    assert sent.status_code == 200
    audit_rows = conn.run("SELECT action, caller_email FROM gmail_audit_logs ORDER BY id")
    assert audit_rows == [
        {"action": "list", "caller_email": OPERATOR},
        {"action": "send", "caller_email": OPERATOR},
    ]


def test_under_policy_off_the_audit_caller_is_null(client, alice, conn, gmail):
    assert client("list_emails").get("/?user_id=alice").status_code == 200
    assert conn.run("SELECT caller_email FROM gmail_audit_logs") == [{"caller_email": None}]


def test_a_refusal_comes_before_anything_about_the_user_is_read(
    client, enforce, listed, user_token, conn, gmail, token_endpoint, database_url
):
    # An expired token: reading it would call the token endpoint, and using it would call Gmail.
    user_token("alice", expires_in=-60, equipped_to="robeing-7")
    token_endpoint.clear_requests()
    gmail.clear_requests()
    # And the table is locked: any read of gmail_token would wait (and the call would end in 503).
    locker = db.Connection(db.connect(db.parse_database_url(database_url)))
    locker.run("BEGIN")
    locker.run("LOCK TABLE gmail_token IN ACCESS EXCLUSIVE MODE")
    try:
        refusals = [
            ("send_email", {"user_id": "alice", "robeing_id": "robeing-8", "to": "a@b.c"}, ROBEING),
            ("list_emails", {"user_id": "alice"}, ROBEING),
            ("refresh_tokens", {"user_id": "alice", "robeing_id": "robeing-7"}, ROBEING),
            ("refresh_tokens", {"user_id": "alice"}, SCHEDULER),
            ("token_status", {"user_id": "alice"}, STRANGER),
        ]
        for target, body, email in refusals:
            started = time.monotonic()
            response = post(client, target, body, enforce.mint(email, AUDIENCE))
            assert error(response)[:2] == (403, "permission_denied"), target
            assert time.monotonic() - started < 2.0, f"{target} waited on the locked gmail_token"
        unauthenticated = post(client, "send_email", {"user_id": "alice", "to": "a@b.c"}, None)
        assert unauthenticated.status_code == 401
    finally:
        locker.run("ROLLBACK")
        locker.close()
    assert token_endpoint.requests == []
    assert gmail.requests == []


def test_a_list_change_takes_effect_within_60_seconds(client, enforce, listed, conn, monkeypatch):
    start = clock.monotonic()
    now = [start]
    monkeypatch.setattr(clock, "monotonic", lambda: now[0])
    token = enforce.mint(OPERATOR, AUDIENCE)
    assert post(client, "token_status", {"user_id": "x"}, token).status_code == 404
    assert callers.remove_caller(conn, OPERATOR)
    now[0] = start + 30  # cached: one read of the table a minute at most
    assert post(client, "token_status", {"user_id": "x"}, token).status_code == 404
    now[0] = start + callers.ALLOW_LIST_TTL_S + 0.5
    assert error(post(client, "token_status", {"user_id": "x"}, token))[0] == 403
    assert callers.allow_list.loads == 2


def test_concurrent_cold_requests_fetch_the_certificates_once(enforce, listed):
    settings = config.load_settings()
    token = enforce.mint(OPERATOR, AUDIENCE)
    results: list[str] = []

    def check() -> None:
        caller = callers.authenticate(f"Bearer {token}", settings)
        results.append(caller.role if caller else "")

    threads = [threading.Thread(target=check) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == ["operator"] * 8
    assert enforce.count("GET", CERTS_PATH) == 1


# -- the CLI ----------------------------------------------------------------------------------------------


def test_cli_callers_add_list_remove(database_url, capsys):
    assert (
        cli.main(
            ["callers", "add", ROBEING, "--role", "robeing", "--robeing-id", "rb-1", "--robeing-id", "rb-2"]
        )
        == 0
    )
    assert cli.main(["callers", "add", SCHEDULER, "--role", "scheduler"]) == 0
    assert cli.main(["callers", "add", "Ops@Example.com", "--role", "operator"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{ROBEING}: added",
        f"{SCHEDULER}: added",
        "ops@example.com: added",
    ]
    assert cli.main(["callers", "add", ROBEING, "--role", "robeing", "--robeing-id", "rb-3"]) == 0
    assert cli.main(["callers", "list"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{ROBEING}: updated",
        "ops@example.com operator",
        f"{ROBEING} robeing rb-3",
        f"{SCHEDULER} scheduler",
    ]
    assert cli.main(["callers", "remove", SCHEDULER]) == 0
    assert cli.main(["callers", "remove", SCHEDULER]) == 1
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [f"{SCHEDULER}: removed"]
    assert "not on the list" in captured.err


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["callers", "add", ROBEING, "--role", "robeing"], "at least one --robeing-id"),
        (["callers", "add", SCHEDULER, "--role", "scheduler", "--robeing-id", "x"], "takes no --robeing-id"),
        (["callers", "add", "not-an-email", "--role", "operator"], "not an email address"),
        (["callers", "add", ROBEING, "--role", "robeing", "--robeing-id", "x" * 51], "robeing id"),
    ],
)
def test_cli_callers_add_refuses_bad_input_in_one_line(database_url, capsys, argv, words):
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert words in captured.err
    assert len(captured.err.strip().splitlines()) == 1


def test_cli_callers_role_must_be_known(database_url, capsys):
    with pytest.raises(SystemExit):
        cli.main(["callers", "add", OPERATOR, "--role", "admin"])
    assert "invalid choice" in capsys.readouterr().err


def test_migration_is_additive_and_safe_to_rerun(conn):
    from shared import schema

    assert schema.migrate(conn) == []
    conn.run("DELETE FROM skill_email_migrations WHERE version = 10")
    assert schema.migrate(conn) == [10]
    columns = {
        r["column_name"]
        for r in conn.run(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'gmail_audit_logs'"
        )
    }
    assert "caller_email" in columns


def test_fake_certs_are_what_google_auth_verifies_with(google_certs: FakeGoogleCerts):
    """The fake is checked against the real client library: google-auth's own verify_token accepts it."""
    import google.auth.transport.requests
    import google.oauth2.id_token

    token = google_certs.mint(OPERATOR, AUDIENCE)
    claims = google.oauth2.id_token.verify_token(
        token, google.auth.transport.requests.Request(), audience=AUDIENCE, certs_url=google_certs.certs_url
    )
    assert claims["email"] == OPERATOR
    assert claims["iss"] == "https://accounts.google.com"


def test_certificates_are_fetched_again_once_their_max_age_passes(client, enforce, listed, monkeypatch):
    from devtools.fakes.google_certs import MAX_AGE_S

    start = clock.monotonic()
    now = [start]
    monkeypatch.setattr(clock, "monotonic", lambda: now[0])
    token = enforce.mint(OPERATOR, AUDIENCE)
    assert post(client, "token_status", {"user_id": "x"}, token).status_code == 404
    now[0] = start + MAX_AGE_S - 1
    assert post(client, "token_status", {"user_id": "x"}, token).status_code == 404
    assert enforce.count("GET", CERTS_PATH) == 1
    now[0] = start + MAX_AGE_S + 1  # Google's max-age passed: a key it retired must not stay trusted
    assert post(client, "token_status", {"user_id": "x"}, token).status_code == 404
    assert enforce.count("GET", CERTS_PATH) == 2
