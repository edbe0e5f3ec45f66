"""TOKEN_PROVIDER=file: authorized-user JSON files, refreshed atomically, never outside TOKEN_DIR."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta

import pytest

from devtools.fakes.oauth import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET
from shared.errors import InvalidArgument
from shared.tokens.files import FileTokenStore
from tests.conftest import secret


@pytest.fixture
def token_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKEN_PROVIDER", "file")
    monkeypatch.setenv("TOKEN_DIR", str(tmp_path))
    return tmp_path


def write_token(token_dir, user_id, token_endpoint, *, expiry="2020-01-01T00:00:00Z"):
    refresh = secret("1//file-refresh")
    token_endpoint.add_refresh_token(refresh)
    info = {
        "token": secret("ya29.file"),
        "refresh_token": refresh,
        "client_id": DEFAULT_CLIENT_ID,
        "client_secret": DEFAULT_CLIENT_SECRET,
        "token_uri": f"{token_endpoint.url}/token",
        "scopes": ["https://www.googleapis.com/auth/gmail.send"],
        "expiry": expiry,
    }
    path = token_dir / f"{user_id}.json"
    path.write_text(json.dumps(info))
    return path


def test_status_from_a_file(client, token_dir, token_endpoint):
    write_token(token_dir, "alice", token_endpoint, expiry="2999-01-01T00:00:00Z")
    body = client("token_status").get("/?user_id=alice").get_json()
    assert body["connected"] is True
    assert body["expiry"] == "2999-01-01T00:00:00Z"


def test_refresh_rewrites_the_file_keeping_its_format(client, token_dir, token_endpoint):
    path = write_token(token_dir, "bob", token_endpoint)
    before = json.loads(path.read_text())
    response = client("refresh_tokens").post("/", json={"user_id": "bob"})
    assert response.status_code == 200
    after = json.loads(path.read_text())
    assert after["token"] in token_endpoint.issued_access_tokens
    assert after["refresh_token"] == before["refresh_token"]
    assert after["client_id"] == DEFAULT_CLIENT_ID
    assert after["expiry"] > "2026"
    assert (path.stat().st_mode & 0o777) == 0o600
    assert not list(token_dir.glob(".*.tmp"))


def test_two_threads_refresh_a_file_once(token_dir, token_endpoint):
    token_endpoint.latency = 0.2
    write_token(token_dir, "carl", token_endpoint)
    store = FileTokenStore(str(token_dir))
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(store.usable("carl").access_token)) for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert token_endpoint.count("POST", "/token") == 1
    assert results[0] == results[1]


def test_scheduled_run_over_files(client, token_dir, token_endpoint):
    write_token(token_dir, "due", token_endpoint)
    write_token(token_dir, "fresh", token_endpoint, expiry="2999-01-01T00:00:00Z")
    body = client("refresh_tokens").post("/", json={}).get_json()
    assert body == {"checked": 1, "refreshed": 1, "skipped": 0, "failed": []}


def test_scheduled_run_refreshes_a_file_due_within_the_window_but_outside_the_margin(
    client, token_dir, token_endpoint
):
    in_ten_minutes = (datetime.now(UTC) + timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
    path = write_token(token_dir, "soon", token_endpoint, expiry=in_ten_minutes)
    body = client("refresh_tokens").post("/", json={}).get_json()
    assert body == {"checked": 1, "refreshed": 1, "skipped": 0, "failed": []}
    assert json.loads(path.read_text())["token"] in token_endpoint.issued_access_tokens


def test_invalid_grant_is_remembered_in_the_file(client, token_dir, token_endpoint):
    path = write_token(token_dir, "dee", token_endpoint)
    token_endpoint.revoke(json.loads(path.read_text())["refresh_token"])
    assert client("refresh_tokens").post("/", json={"user_id": "dee"}).status_code == 401
    assert client("refresh_tokens").post("/", json={"user_id": "dee"}).status_code == 401
    assert token_endpoint.count("POST", "/token") == 1
    assert client("token_status").get("/?user_id=dee").get_json()["needs_reauth"] is True


@pytest.mark.parametrize("user_id", ["../secret", "a/b", ".hidden", "..", "a\\b", "/etc/passwd", "a b"])
def test_user_ids_that_could_leave_token_dir_are_refused(client, token_dir, user_id):
    (token_dir.parent / "secret.json").write_text("{}")
    with pytest.raises(InvalidArgument):
        FileTokenStore(str(token_dir)).path_for(user_id)
    response = client("token_status").post("/", json={"user_id": user_id})
    assert response.status_code == 400


def test_missing_file_is_404(client, token_dir):
    assert client("token_status").get("/?user_id=nobody").status_code == 404


def test_token_dir_unset_is_503_naming_it(client, monkeypatch):
    monkeypatch.setenv("TOKEN_PROVIDER", "file")
    response = client("token_status").get("/?user_id=a")
    assert response.status_code == 503
    assert "TOKEN_DIR" in response.get_json()["error"]["message"]
