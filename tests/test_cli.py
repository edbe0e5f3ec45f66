"""The operator CLI (``python -m shared.cli``): migrate, import-tokens, add-token, status, authorize.

``authorize`` is driven end to end without a browser: the real ``InstalledAppFlow`` runs in a
subprocess against a fake Google on loopback; the test plays the browser (it opens the URL the command
prints, the fake consent page redirects to the command's local server with a code) and the fake token
endpoint answers the code exchange.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets as pysecrets
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus, urlencode

import pytest
import requests

from devtools.fakes._server import FakeServer, RecordedRequest, Response
from devtools.fakes.oauth import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET
from shared import cli, db, schema
from tests.conftest import ROOT, TEST_DATABASE, create_database, insert_row, secret

GMAIL_SEND = "https://www.googleapis.com/auth/gmail.send"
GMAIL_READONLY = "https://www.googleapis.com/auth/gmail.readonly"


def stored_rows(conn: db.Connection, user_id: str) -> list[dict[str, Any]]:
    return conn.run("SELECT * FROM gmail_token WHERE user_id = :user_id ORDER BY id", user_id=user_id)


# -- migrate ------------------------------------------------------------------------------------------


def test_migrate_twice_applies_once_and_keeps_existing_rows(
    pg_admin_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = create_database(pg_admin_url, f"{TEST_DATABASE}_cli_migrate")
    with db.connection(db.parse_database_url(url)) as conn:
        # A production database: gmail_token exists with a row before skill-email ever migrates.
        conn.run(schema.GMAIL_TOKEN_DDL)
        insert_row(conn, "legacy", token_data={"token": "x", "refresh_token": "y"}, is_equipped=False)
    monkeypatch.setenv("DATABASE_URL", url)

    assert cli.main(["migrate"]) == 0
    first = capsys.readouterr().out
    assert cli.main(["migrate"]) == 0
    second = capsys.readouterr().out

    assert first.strip() == "migrations applied: " + ", ".join(str(m.version) for m in schema.MIGRATIONS)
    assert second.strip() == "migrations applied: none (up to date)"
    with db.connection(db.parse_database_url(url)) as conn:
        assert [r["user_id"] for r in conn.run("SELECT user_id FROM gmail_token")] == ["legacy"]
        assert conn.one("SELECT count(*) AS n FROM skill_email_migrations") == {"n": len(schema.MIGRATIONS)}


# -- import-tokens, add-token, status ---------------------------------------------------------------------


def authorized_user_file(directory: Path, user_id: str) -> dict[str, Any]:
    info = {
        "token": secret("ya29.import"),
        "refresh_token": secret("1//import"),
        "client_id": DEFAULT_CLIENT_ID,
        "client_secret": DEFAULT_CLIENT_SECRET,
        "token_uri": "https://oauth2.googleapis.com/token",
        "scopes": [GMAIL_SEND],
        "expiry": "2030-01-02T03:04:05Z",
    }
    (directory / f"{user_id}.json").write_text(json.dumps(info), encoding="utf-8")
    return info


def test_import_tokens_twice_counts_and_is_idempotent(
    conn: db.Connection, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    alice = authorized_user_file(tmp_path, "alice")
    authorized_user_file(tmp_path, "bob")

    assert cli.main(["import-tokens", str(tmp_path)]) == 0
    first = capsys.readouterr()
    assert cli.main(["import-tokens", str(tmp_path)]) == 0
    second = capsys.readouterr()

    assert first.out.strip() == "inserted=2 updated=0 unchanged=0 kept=0 invalid=0"
    assert second.out.strip() == "inserted=0 updated=0 unchanged=2 kept=0 invalid=0"
    rows = stored_rows(conn, "alice")
    assert len(rows) == 1 and len(stored_rows(conn, "bob")) == 1
    assert rows[0]["is_equipped"] is True
    assert rows[0]["token_data"]["access_token"] == alice["token"]
    assert rows[0]["oauth_config"]["client_id"] == DEFAULT_CLIENT_ID
    for output in (first, second):
        assert alice["refresh_token"] not in output.out + output.err


def test_import_tokens_reports_invalid_files(
    conn: db.Connection, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    authorized_user_file(tmp_path, "alice")
    (tmp_path / "broken.json").write_text("{not json", encoding="utf-8")

    assert cli.main(["import-tokens", str(tmp_path)]) == 1

    captured = capsys.readouterr()
    assert captured.out.strip() == "inserted=1 updated=0 unchanged=0 kept=0 invalid=1"
    assert "skipped broken.json" in captured.err
    assert stored_rows(conn, "broken") == []


def test_add_token_then_status(conn: db.Connection, capsys: pytest.CaptureFixture[str]) -> None:
    refresh = secret("1//added")
    args = ["add-token", "carol", "--refresh-token", refresh, "--client-id", DEFAULT_CLIENT_ID]
    args += ["--client-secret", DEFAULT_CLIENT_SECRET, "--robeing-id", "robeing-7"]

    assert cli.main(args) == 0
    assert capsys.readouterr().out.strip() == "carol: inserted"
    assert cli.main(["status", "carol", "--robeing-id", "robeing-7"]) == 0
    status = json.loads(capsys.readouterr().out)

    assert status["user_id"] == "carol"
    assert status["connected"] is True and status["needs_reauth"] is False
    assert status["equipped_to"] == "robeing-7"
    [row] = stored_rows(conn, "carol")
    assert row["token_data"]["refresh_token"] == refresh
    assert row["oauth_config"]["client_secret"] == DEFAULT_CLIENT_SECRET


def test_add_token_without_refresh_token_is_refused(
    conn: db.Connection, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["add-token", "dave"]) == 2
    assert "refresh token is required" in capsys.readouterr().err
    assert stored_rows(conn, "dave") == []


def test_status_of_unknown_user_is_an_error(conn: db.Connection, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["status", "nobody"]) == 1
    assert capsys.readouterr().err.startswith("error: not_found:")


# -- authorize: the installed-app consent flow against a fake Google ------------------------------------


class FakeGoogleConsent(FakeServer):
    """Google's authorization endpoint (consent is immediate: a redirect with a code) and its token
    endpoint for the authorization_code grant, checking what a real Google checks: the client, the
    redirect URI the code was issued for, one use per code, and the PKCE verifier."""

    name = "fake-google-consent"

    def __init__(self, *, granted: list[str] | None = None, deny: bool = False) -> None:
        super().__init__()
        self.granted = granted
        self.deny = deny
        self.access_token = secret("ya29.consented")
        self.refresh_token = secret("1//consented")
        self.codes: dict[str, dict[str, str]] = {}

    def client_secrets(self, path: Path) -> Path:
        path.write_text(
            json.dumps(
                {
                    "installed": {
                        "client_id": DEFAULT_CLIENT_ID,
                        "client_secret": DEFAULT_CLIENT_SECRET,
                        "auth_uri": f"{self.url}/o/oauth2/auth",
                        "token_uri": f"{self.url}/token",
                        "redirect_uris": ["http://localhost"],
                    }
                }
            ),
            encoding="utf-8",
        )
        return path

    def handle(self, request: RecordedRequest) -> Response:
        if request.method == "GET" and request.path == "/o/oauth2/auth":
            return self._consent({name: values[0] for name, values in request.query.items()})
        if request.method == "POST" and request.path == "/token":
            return self._exchange(request.form(), request.headers.get("authorization", ""))
        return Response.json(404, {"error": "not_found"})

    def _consent(self, params: dict[str, str]) -> Response:
        answer = {"state": params["state"]}
        if self.deny:
            answer["error"] = "access_denied"
        else:
            code = f"4/0fake-{pysecrets.token_urlsafe(8)}"
            self.codes[code] = params
            answer |= {"code": code, "scope": " ".join(self.granted or params["scope"].split())}
        return Response(302, b"", {"Location": f"{params['redirect_uri']}?{urlencode(answer)}"})

    def _exchange(self, form: dict[str, str], authorization: str) -> Response:
        issued = self.codes.pop(form.get("code", ""), None)
        if form.get("grant_type") != "authorization_code" or issued is None:
            return Response.json(400, {"error": "invalid_grant", "error_description": "Bad Request"})
        # Google takes the client in HTTP Basic auth (what requests-oauthlib sends) or in the form.
        client = (form.get("client_id"), form.get("client_secret"))
        if authorization.startswith("Basic "):
            user, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
            client = (unquote_plus(user), unquote_plus(password))
        if client != (DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET):
            return Response.json(401, {"error": "invalid_client"})
        verifier = form.get("code_verifier", "").encode()
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier).digest()).rstrip(b"=").decode()
        if form.get("redirect_uri") != issued["redirect_uri"] or challenge != issued.get("code_challenge"):
            return Response.json(400, {"error": "invalid_grant", "error_description": "Bad Request"})
        return Response.json(
            200,
            {
                "access_token": self.access_token,
                "refresh_token": self.refresh_token,
                "expires_in": 3599,
                "scope": " ".join(self.granted or issued["scope"].split()),
                "token_type": "Bearer",
            },
        )


def run_authorize(
    fake: FakeGoogleConsent, client_secrets: Path, database_url: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    """Runs ``authorize`` in a subprocess and plays the browser: opens the URL it prints."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "PYTHONUNBUFFERED": "1",
        # The fake token endpoint is plain http on loopback; oauthlib insists on https without this.
        "OAUTHLIB_INSECURE_TRANSPORT": "1",
    }
    command = [
        sys.executable,
        "-m",
        "shared.cli",
        "authorize",
        "erin",
        "--client-secrets",
        str(client_secrets),
    ]
    command += ["--no-browser", "--timeout", "30", *extra]
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    printed: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            printed.append(line)
            if line.startswith(fake.url):
                # The browser: the consent page redirects to the command's local server, which answers.
                page = requests.get(line.strip(), timeout=10)
                assert page.status_code == 200
                assert "access granted" in page.text
                break
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return subprocess.CompletedProcess(command, process.returncode, "".join(printed) + out, err)


def test_authorize_runs_the_consent_flow_and_stores_the_token(
    conn: db.Connection, database_url: str, tmp_path: Path
) -> None:
    with FakeGoogleConsent() as fake:
        result = run_authorize(fake, fake.client_secrets(tmp_path / "client_secret.json"), database_url)

    assert result.returncode == 0, result.stderr
    assert f"erin: inserted; scopes: {GMAIL_SEND} {GMAIL_READONLY}" in result.stdout
    for value in (fake.access_token, fake.refresh_token, DEFAULT_CLIENT_SECRET):
        assert value not in result.stdout + result.stderr
    # What the flow asked Google for.
    [consent] = fake.find("GET", "^/o/oauth2/auth$")
    asked = {name: values[0] for name, values in consent.query.items()}
    assert asked["client_id"] == DEFAULT_CLIENT_ID
    assert asked["scope"].split() == [GMAIL_SEND, GMAIL_READONLY]
    assert asked["access_type"] == "offline" and asked["prompt"] == "consent"
    assert asked["code_challenge_method"] == "S256"
    assert asked["redirect_uri"].startswith("http://localhost:")
    # What was stored: the shared table's shape, equipped.
    [row] = stored_rows(conn, "erin")
    assert row["is_equipped"] is True and row["equipped_to"] is None
    assert row["token_data"] == {
        "access_token": fake.access_token,
        "refresh_token": fake.refresh_token,
        "token_type": "Bearer",
    }
    assert row["oauth_config"] == {
        "client_id": DEFAULT_CLIENT_ID,
        "client_secret": DEFAULT_CLIENT_SECRET,
        "token_uri": f"{fake.url}/token",
    }
    assert row["scopes"] == [GMAIL_SEND, GMAIL_READONLY]
    assert row["expiry"] is not None


def test_authorize_asks_for_the_scopes_named_with_scopes(
    conn: db.Connection, database_url: str, tmp_path: Path
) -> None:
    compose = "https://www.googleapis.com/auth/gmail.compose"
    modify = "https://www.googleapis.com/auth/gmail.modify"
    with FakeGoogleConsent() as fake:
        result = run_authorize(
            fake,
            fake.client_secrets(tmp_path / "cs.json"),
            database_url,
            "--scopes",
            "gmail.compose",
            modify,
            "mail.google.com",
        )

    assert result.returncode == 0, result.stderr
    [consent] = fake.find("GET", "^/o/oauth2/auth$")
    assert consent.query["scope"][0].split() == [compose, modify, "https://mail.google.com/"]
    [row] = stored_rows(conn, "erin")
    assert row["scopes"] == [compose, modify, "https://mail.google.com/"]


def test_authorize_stores_the_scopes_granted_and_warns_about_the_rest(
    conn: db.Connection, database_url: str, tmp_path: Path
) -> None:
    insert_row(conn, "erin", token_data={"access_token": "old", "refresh_token": "old"}, equipped_to="r1")

    with FakeGoogleConsent(granted=[GMAIL_SEND]) as fake:
        result = run_authorize(
            fake, fake.client_secrets(tmp_path / "cs.json"), database_url, "--robeing-id", "r1"
        )

    assert result.returncode == 0, result.stderr
    assert "erin: updated" in result.stdout
    assert f"did not grant {GMAIL_READONLY}" in result.stderr
    [row] = stored_rows(conn, "erin")
    assert row["scopes"] == [GMAIL_SEND]
    assert row["token_data"]["refresh_token"] == fake.refresh_token


def test_authorize_denied_stores_nothing(conn: db.Connection, database_url: str, tmp_path: Path) -> None:
    with FakeGoogleConsent(deny=True) as fake:
        result = run_authorize(fake, fake.client_secrets(tmp_path / "cs.json"), database_url)

    assert result.returncode == 1, result.stderr
    assert "authorization failed: AccessDeniedError" in result.stderr
    assert fake.count("POST", "^/token$") == 0
    assert stored_rows(conn, "erin") == []


def test_authorize_without_a_client_secrets_file_fails_before_the_browser(
    conn: db.Connection, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["authorize", "erin", "--client-secrets", str(tmp_path / "missing.json")]) == 2
    assert "no client secrets file" in capsys.readouterr().err


def test_key_commands_encrypt_rotate_and_decrypt_the_table(
    database_url, conn, user_token, monkeypatch, capsys
):
    """The operator's whole rotation, through the CLI, on rows the functions keep reading."""
    import json as json_module

    from shared import cli
    from shared.tokens import keyring
    from tests.conftest import SECRET_VALUES, row

    row_id = user_token("cli-user", expires_in=3600)
    plain = row(conn, row_id)["token_data"]["refresh_token"]
    first = keyring.generate_key()
    SECRET_VALUES.add(first)
    monkeypatch.setenv("TOKEN_KEYS", json_module.dumps({"primary": "k1", "keys": {"k1": first}}))
    assert cli.main(["encrypt-tokens"]) == 0
    assert "rewritten=1" in capsys.readouterr().out
    assert row(conn, row_id)["token_data"]["refresh_token"].startswith("enc:v1:k1:")
    assert cli.main(["encrypt-tokens"]) == 0
    assert "rewritten=0 unchanged=1" in capsys.readouterr().out

    assert cli.main(["add-key", "--key-id", "k2"]) == 0
    keyring = capsys.readouterr().out.strip()
    SECRET_VALUES.update(json_module.loads(keyring)["keys"].values())
    assert json_module.loads(keyring)["primary"] == "k2"
    monkeypatch.setenv("TOKEN_KEYS", keyring)
    assert cli.main(["rotate-key"]) == 0
    output = capsys.readouterr().out
    assert "rewritten=1" in output and "k1 may now leave the keyring" in output
    assert row(conn, row_id)["token_data"]["refresh_token"].startswith("enc:v1:k2:")

    assert cli.main(["decrypt-tokens"]) == 0
    capsys.readouterr()
    assert row(conn, row_id)["token_data"]["refresh_token"] == plain


def test_encrypt_tokens_without_a_keyring_says_what_to_set(database_url, capsys):
    from shared import cli

    assert cli.main(["encrypt-tokens"]) == 1
    assert "TOKEN_KEYS" in capsys.readouterr().err


def test_audit_command_prints_a_users_rows(database_url, conn, capsys):
    from shared import audit, cli

    audit.record(
        conn,
        user_id="aud",
        robeing_id=None,
        action=audit.SEND,
        status=audit.OK,
        http_status=200,
        duration_ms=12,
        gmail_calls=2,
        gmail_message_id="m1",
    )
    assert cli.main(["audit", "aud"]) == 0
    line = capsys.readouterr().out.strip()
    assert '"gmail_message_id": "m1"' in line and '"http_status": 200' in line


def test_help_shows_plain_text_not_rest_markup() -> None:
    # The module docstring is reST (``...``); --help is read in a terminal, where backticks are noise.
    text = cli.build_parser().format_help()
    assert "``" not in text
    assert "python -m shared.cli --help lists them" in text


def test_migrations_are_numbered_once_each_and_applied_in_order():
    # Branches that each add a migration must not reuse a number or apply out of order.
    versions = [migration.version for migration in schema.MIGRATIONS]
    assert versions == sorted(set(versions)) == list(range(1, len(versions) + 1))
