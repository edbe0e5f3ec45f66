"""The CLI's token commands on bad input: validated ids, one-line errors, stdout for results only, and
``import-tokens --robeing-id`` never silently taking over a token the user already has."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from devtools.fakes.oauth import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET
from shared import cli, db
from tests.conftest import ROOT, insert_row, secret, utc_in

GMAIL_SEND = "https://www.googleapis.com/auth/gmail.send"
GMAIL_READONLY = "https://www.googleapis.com/auth/gmail.readonly"


def rows(conn: db.Connection, user_id: str | None = None) -> list[dict[str, Any]]:
    if user_id is None:
        return conn.run("SELECT * FROM gmail_token ORDER BY id")
    return conn.run("SELECT * FROM gmail_token WHERE user_id = :u ORDER BY id", u=user_id)


def token_file(directory: Path, name: str) -> dict[str, Any]:
    info = {
        "token": secret("ya29.file"),
        "refresh_token": secret("1//file"),
        "client_id": DEFAULT_CLIENT_ID,
        "client_secret": DEFAULT_CLIENT_SECRET,
        "scopes": [GMAIL_SEND],
    }
    (directory / f"{name}.json").write_text(json.dumps(info), encoding="utf-8")
    return info


def add_token_args(user_id: str, *extra: str) -> list[str]:
    return ["add-token", user_id, "--refresh-token", secret("1//r"), "--client-id", DEFAULT_CLIENT_ID, *extra]


# -- user ids ---------------------------------------------------------------------------------------------

BAD_USER_IDS = ["", "a" * 101, "ali\nce", "ali\x1b[31mce", "tab\there", "c1\x85control", "nul\x00"]


@pytest.mark.parametrize("user_id", BAD_USER_IDS)
@pytest.mark.parametrize("command", ["add-token", "status", "audit"])
def test_token_commands_refuse_bad_user_ids(conn, capsys, command, user_id):
    argv = add_token_args(user_id) if command == "add-token" else [command, user_id]
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    assert "user id" in capsys.readouterr().err
    assert rows(conn) == []


def test_a_robeing_id_over_50_characters_is_refused(conn, capsys):
    with pytest.raises(SystemExit):
        cli.main(add_token_args("alice", "--robeing-id", "r" * 51))
    assert "robeing id" in capsys.readouterr().err
    assert rows(conn) == []


def test_a_100_character_user_id_is_accepted(conn, capsys):
    assert cli.main(add_token_args("u" * 100)) == 0
    assert len(rows(conn, "u" * 100)) == 1


def test_import_tokens_skips_files_whose_name_is_not_a_user_id(conn, tmp_path, capsys):
    token_file(tmp_path, "good")
    token_file(tmp_path, "bad\x01name")
    token_file(tmp_path, "x" * 101)

    assert cli.main(["import-tokens", str(tmp_path)]) == 1

    captured = capsys.readouterr()
    assert captured.out.strip() == "inserted=1 updated=0 unchanged=0 kept=0 invalid=2"
    assert "\x01" not in captured.err and "user id" in captured.err
    assert [row["user_id"] for row in rows(conn)] == ["good"]


# -- bad files and a database that is down: one line, no traceback ------------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "cannot read"),
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "is not a JSON object"),
        (b"\xff\xfe\x00", "is not UTF-8"),
    ],
)
def test_add_token_with_a_bad_file_is_one_line(conn, tmp_path, capsys, content, expected):
    path = tmp_path / "token.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content, encoding="utf-8")

    assert cli.main(["add-token", "alice", "--file", str(path)]) == 2

    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("error: ")
    assert expected in captured.err
    assert rows(conn) == []


def test_import_tokens_counts_an_unreadable_file_as_invalid(conn, tmp_path, capsys):
    token_file(tmp_path, "good")
    (tmp_path / "folder.json").mkdir()  # matches *.json, cannot be read as a file (even by root)
    assert cli.main(["import-tokens", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert captured.out.strip() == "inserted=1 updated=0 unchanged=0 kept=0 invalid=1"
    assert "skipped folder.json: cannot read" in captured.err


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run_cli(*argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", *argv],
        cwd=ROOT,
        env={key: value for key, value in os.environ.items() if key != "LOG_LEVEL"} | env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "argv", [["status", "alice"], ["migrate"], ["add-token", "alice", "--refresh-token", "r"]]
)
def test_a_database_that_is_down_is_one_line_on_stderr(argv):
    down = f"postgresql://user:{secret('pw')}@127.0.0.1:{closed_port()}/db?connect_timeout=2"
    result = run_cli(*argv, DATABASE_URL=down)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("error: unavailable:") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


def test_log_lines_go_to_stderr_and_results_to_stdout(database_url, conn):
    insert_row(conn, "alice", token_data={"access_token": secret("a")}, expiry=utc_in(3600))
    result = run_cli("status", "alice", DATABASE_URL=database_url, LOG_LEVEL="DEBUG")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["user_id"] == "alice"  # stdout is the result and nothing else
    down = run_cli(
        "status", "alice", DATABASE_URL=f"postgresql://u:p@127.0.0.1:{closed_port()}/db", LOG_LEVEL="INFO"
    )
    assert down.stdout == ""
    assert any(json.loads(line)["severity"] == "ERROR" for line in down.stderr.splitlines()[:-1])


# -- add-token's default scopes ------------------------------------------------------------------------------


def test_add_token_stores_the_scopes_authorize_asks_for(conn, capsys):
    assert cli.main(add_token_args("alice", "--client-secret", DEFAULT_CLIENT_SECRET)) == 0
    [row] = rows(conn, "alice")
    assert row["scopes"] == [GMAIL_SEND, GMAIL_READONLY] == list(cli.DEFAULT_SCOPES)


def test_add_token_scope_flags_override_the_default(conn, capsys):
    assert cli.main(add_token_args("alice", "--scope", GMAIL_SEND)) == 0
    assert rows(conn, "alice")[0]["scopes"] == [GMAIL_SEND]


# -- import-tokens --robeing-id never silently shadows a token the user has ------------------------------


@pytest.mark.parametrize("existing_robeing", [None, "robeing-2"])
def test_import_for_a_robeing_keeps_a_users_other_equipped_token(conn, tmp_path, capsys, existing_robeing):
    old = insert_row(
        conn,
        "alice",
        token_data={"access_token": secret("a"), "refresh_token": secret("r")},
        equipped_to=existing_robeing,
        expiry=utc_in(3600),
    )
    token_file(tmp_path, "alice")

    assert cli.main(["import-tokens", str(tmp_path), "--robeing-id", "robeing-7"]) == 0

    captured = capsys.readouterr()
    assert captured.out.strip() == "inserted=0 updated=0 unchanged=0 kept=1 invalid=0"
    assert "kept alice" in captured.err and "--replace" in captured.err
    assert [row["id"] for row in rows(conn, "alice")] == [old]
    assert cli.main(["status", "alice"]) == 0
    assert json.loads(capsys.readouterr().out)["equipped_to"] == existing_robeing


def test_import_for_a_robeing_with_replace_says_which_token_calls_now_use(conn, tmp_path, capsys):
    insert_row(
        conn,
        "alice",
        token_data={"access_token": secret("a"), "refresh_token": secret("r")},
        equipped_to="robeing-2",
        expiry=utc_in(3600),
    )
    token_file(tmp_path, "alice")

    assert cli.main(["import-tokens", str(tmp_path), "--robeing-id", "robeing-7", "--replace"]) == 0

    captured = capsys.readouterr()
    assert captured.out.strip() == "inserted=1 updated=0 unchanged=0 kept=0 invalid=0"
    assert "calls without robeing_id now use the token just stored for robeing 'robeing-7'" in captured.err
    assert "'robeing-2'" in captured.err
    assert sorted(row["equipped_to"] for row in rows(conn, "alice")) == ["robeing-2", "robeing-7"]


def test_import_for_a_new_user_is_silent_and_a_rerun_is_unchanged(conn, tmp_path, capsys):
    token_file(tmp_path, "bob")
    assert cli.main(["import-tokens", str(tmp_path), "--robeing-id", "robeing-7"]) == 0
    assert cli.main(["import-tokens", str(tmp_path), "--robeing-id", "robeing-7"]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[-1] == "inserted=0 updated=0 unchanged=1 kept=0 invalid=0"
    assert captured.err == ""


def test_decrypt_tokens_is_refused_while_encryption_is_required(database_url, monkeypatch, capsys):
    from shared.tokens import keyring

    key = keyring.generate_key()
    from tests.conftest import SECRET_VALUES

    SECRET_VALUES.add(key)
    monkeypatch.setenv("TOKEN_KEYS", key)
    monkeypatch.setenv("REQUIRE_ENCRYPTED_TOKENS", "true")
    assert cli.main(["decrypt-tokens"]) == 1
    assert "REQUIRE_ENCRYPTED_TOKENS" in capsys.readouterr().err
