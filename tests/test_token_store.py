"""The token store on a real PostgreSQL, through functions-framework: messy rows, refresh, locking."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest
import responses

from devtools.fakes.oauth import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET
from shared import db
from shared.tokens import provider
from shared.tokens.store import DatabaseTokenStore
from tests.conftest import DEFAULT_SCOPES, insert_row, row, secret, utc_in


def status(client, **body):  # type: ignore[no-untyped-def]
    return client("token_status").post("/", json=body)


# -- token_status on messy rows ----------------------------------------------------------------------


def test_status_reports_connected_token_without_any_token_value(client, user_token, conn):
    user_token("alice", expires_in=3600)
    response = status(client, user_id="alice")
    assert response.status_code == 200
    body = response.get_json()
    assert body["user_id"] == "alice"
    assert body["connected"] is True
    assert body["needs_reauth"] is False
    assert body["scopes"] == list(DEFAULT_SCOPES)
    assert body["expiry"].endswith("Z")
    assert body["equipped_to"] is None
    stored = row(conn, 1)
    text = response.get_data(as_text=True)
    assert stored["token_data"]["access_token"] not in text
    assert stored["token_data"]["refresh_token"] not in text


def test_status_works_with_get_query_parameters(client, user_token):
    user_token("alice", expires_in=3600)
    response = client("token_status").get("/?user_id=alice")
    assert response.status_code == 200
    assert response.get_json()["connected"] is True


def test_status_reads_legacy_token_key(client, user_token):
    user_token("legacy", expires_in=3600, legacy_key=True)
    assert status(client, user_id="legacy").get_json()["connected"] is True


def test_status_of_user_with_only_unequipped_rows_is_404_saying_so(client, conn):
    insert_row(
        conn, "bob", token_data={"access_token": secret("a"), "refresh_token": secret("r")}, is_equipped=False
    )
    insert_row(conn, "bob", token_data={"access_token": secret("a")}, is_equipped=None)
    response = status(client, user_id="bob")
    assert response.status_code == 404
    error = response.get_json()["error"]
    assert error["code"] == "not_found"
    assert "is_equipped" in error["message"]


def test_status_of_unknown_user_is_404(client, database_url):
    response = status(client, user_id="nobody")
    assert response.status_code == 404
    assert response.get_json() == {
        "error": {"code": "not_found", "message": "no Gmail token is stored for this user"}
    }


def test_most_recently_updated_equipped_row_wins(client, conn):
    insert_row(
        conn,
        "carol",
        token_data={"access_token": secret("a")},
        scopes=["old-scope"],
        expiry=utc_in(3600),
        updated_at=datetime(2024, 1, 1),
    )
    insert_row(
        conn,
        "carol",
        token_data={"access_token": secret("a")},
        scopes=["new-scope"],
        expiry=utc_in(3600),
        updated_at=datetime(2025, 1, 1),
    )
    insert_row(
        conn,
        "carol",
        token_data={"access_token": secret("a")},
        scopes=["unequipped"],
        expiry=utc_in(3600),
        updated_at=datetime(2026, 1, 1),
        is_equipped=False,
    )
    assert status(client, user_id="carol").get_json()["scopes"] == ["new-scope"]


def test_robeing_id_selects_only_the_token_equipped_to_it(client, conn):
    insert_row(
        conn,
        "dan",
        token_data={"access_token": secret("a")},
        scopes=["for-r1"],
        equipped_to="r1",
        expiry=utc_in(3600),
        updated_at=datetime(2024, 1, 1),
    )
    insert_row(
        conn,
        "dan",
        token_data={"access_token": secret("a")},
        scopes=["for-r2"],
        equipped_to="r2",
        expiry=utc_in(3600),
        updated_at=datetime(2025, 1, 1),
    )
    assert status(client, user_id="dan", robeing_id="r1").get_json()["scopes"] == ["for-r1"]
    assert status(client, user_id="dan", robeing_id="r2").get_json()["equipped_to"] == "r2"
    assert status(client, user_id="dan").get_json()["scopes"] == ["for-r2"]
    missing = status(client, user_id="dan", robeing_id="r3")
    assert missing.status_code == 404
    assert "r3" in missing.get_json()["error"]["message"]


def test_null_oauth_config_and_expired_token_needs_reauth(client, conn):
    insert_row(
        conn,
        "erin",
        token_data={"access_token": secret("a"), "refresh_token": secret("r")},
        oauth_config=None,
        expiry=utc_in(-60),
    )
    body = status(client, user_id="erin").get_json()
    assert body["connected"] is False
    assert body["needs_reauth"] is True


def test_null_expiry_is_reported_as_null(client, conn):
    insert_row(
        conn, "fay", token_data={"access_token": secret("a"), "refresh_token": secret("r")}, expiry=None
    )
    body = status(client, user_id="fay").get_json()
    assert body["expiry"] is None
    assert body["connected"] is True


@pytest.mark.parametrize(
    ("token_data", "oauth_config", "expected_client"),
    [
        # double-encoded JSON: a JSONB string holding the object
        ('{"access_token": "A", "refresh_token": "R"}', {"client_id": "cid", "client_secret": "cs"}, "cid"),
        # client fields inside token_data (an authorized-user file pasted into the row)
        ({"token": "A", "refresh_token": "R", "client_id": "cid2", "client_secret": "cs"}, None, "cid2"),
        # a client-secrets file pasted as oauth_config
        (
            {"access_token": "A", "refresh_token": "R"},
            {"installed": {"client_id": "cid3", "client_secret": "cs"}},
            "cid3",
        ),
    ],
)
def test_messy_rows_decode_to_one_shape(conn, database_url, token_data, oauth_config, expected_client):
    insert_row(conn, "messy", token_data=token_data, oauth_config=oauth_config, expiry=utc_in(3600))
    record = DatabaseTokenStore(conn).find("messy")
    assert record.access_token == "A"
    assert record.refresh_token == "R"
    assert record.client_id == expected_client
    assert record.token_uri == "https://oauth2.googleapis.com/token"


def test_scopes_as_one_space_separated_element_are_split(conn, database_url):
    insert_row(conn, "gil", token_data={"access_token": "A"}, scopes=["a b", "c"], expiry=utc_in(3600))
    assert DatabaseTokenStore(conn).find("gil").scopes == ["a", "b", "c"]


# -- refresh ---------------------------------------------------------------------------------------------


def test_refresh_user_writes_new_token_and_keeps_other_keys(client, conn, token_endpoint, user_token):
    row_id = user_token("hana", expires_in=3600)
    conn.run("UPDATE gmail_token SET token_data = token_data || '{\"custom\": 1}' WHERE id = :id", id=row_id)
    before = row(conn, row_id)
    response = client("refresh_tokens").post("/", json={"user_id": "hana"})
    assert response.status_code == 200
    assert response.get_json() == {"checked": 1, "refreshed": 1, "skipped": 0, "failed": []}
    after = row(conn, row_id)
    assert after["token_data"]["access_token"] in token_endpoint.issued_access_tokens
    assert after["token_data"]["refresh_token"] == before["token_data"]["refresh_token"]
    assert after["token_data"]["custom"] == 1
    assert after["token_data"]["token_type"] == "Bearer"
    assert after["expiry"] > before["expiry"] - (before["expiry"] - datetime.now(UTC).replace(tzinfo=None))
    assert after["updated_at"] > before["updated_at"]
    sent = token_endpoint.find("POST", "/token")[0].form()
    assert sent["grant_type"] == "refresh_token"
    assert sent["client_id"] == DEFAULT_CLIENT_ID


def test_refresh_of_legacy_row_writes_access_token_and_updates_token(conn, database_url, user_token):
    row_id = user_token("ivy", legacy_key=True)
    with db.connection() as connection:
        DatabaseTokenStore(connection).usable("ivy")
    data = row(conn, row_id)["token_data"]
    assert data["access_token"] == data["token"]


def test_rotated_refresh_token_is_stored(conn, database_url, token_endpoint, user_token):
    token_endpoint.rotate_refresh_tokens = True
    row_id = user_token("jin")
    old = row(conn, row_id)["token_data"]["refresh_token"]
    with db.connection() as connection:
        DatabaseTokenStore(connection).usable("jin")
    assert row(conn, row_id)["token_data"]["refresh_token"] == token_endpoint.rotated[old]


def test_expires_in_as_string_is_accepted(conn, database_url, token_endpoint, user_token):
    token_endpoint.expires_in = "3599"
    row_id = user_token("kim")
    with db.connection() as connection:
        record = DatabaseTokenStore(connection).usable("kim")
    assert record.expiry is not None
    assert row(conn, row_id)["expiry"] > datetime.now(UTC).replace(tzinfo=None)


def test_fresh_token_is_used_without_calling_google(conn, database_url, token_endpoint, user_token):
    user_token("lee", expires_in=3600)
    with db.connection() as connection:
        DatabaseTokenStore(connection).usable("lee")
    assert token_endpoint.count("POST", "/token") == 0


def test_missing_token_uri_means_googles_endpoint(conn, database_url):
    insert_row(
        conn,
        "mo",
        token_data={"access_token": secret("a"), "refresh_token": secret("r")},
        oauth_config={"client_id": DEFAULT_CLIENT_ID, "client_secret": DEFAULT_CLIENT_SECRET},
        expiry=utc_in(-10),
    )
    new_token = secret("ya29.google")
    with responses.RequestsMock() as mock:
        mock.post(
            "https://oauth2.googleapis.com/token",
            json={"access_token": new_token, "expires_in": 3599, "token_type": "Bearer"},
        )
        with db.connection() as connection:
            record = DatabaseTokenStore(connection).usable("mo")
        assert len(mock.calls) == 1
    assert record.access_token == new_token


@pytest.mark.parametrize("missing", ["refresh_token", "client_secret"])
def test_missing_refresh_fields_is_401_without_calling_google(client, conn, token_endpoint, missing):
    token_data = {"access_token": secret("a"), "refresh_token": secret("r")}
    oauth_config = {
        "client_id": DEFAULT_CLIENT_ID,
        "client_secret": DEFAULT_CLIENT_SECRET,
        "token_uri": f"{token_endpoint.url}/token",
    }
    (token_data if missing == "refresh_token" else oauth_config).pop(missing)
    insert_row(conn, "nia", token_data=token_data, oauth_config=oauth_config, expiry=utc_in(-60))
    response = client("refresh_tokens").post("/", json={"user_id": "nia"})
    assert response.status_code == 401
    error = response.get_json()["error"]
    assert error["code"] == "reauth_required"
    assert missing in error["message"]
    assert token_endpoint.count() == 0


def test_invalid_grant_marks_row_and_is_not_retried_until_a_new_token_is_stored(
    client, conn, token_endpoint, user_token
):
    row_id = user_token("oli")
    token_endpoint.revoke(row(conn, row_id)["token_data"]["refresh_token"])
    first = client("refresh_tokens").post("/", json={"user_id": "oli"})
    assert first.status_code == 401
    assert first.get_json()["error"]["code"] == "reauth_required"
    assert token_endpoint.count("POST", "/token") == 1
    assert row(conn, row_id)["reauth_reason"] == "invalid_grant"
    # the cooldown: neither a forced refresh, a status check nor the scheduled run calls Google again
    assert client("refresh_tokens").post("/", json={"user_id": "oli"}).status_code == 401
    assert client("refresh_tokens").post("/", json={}).get_json()["checked"] == 0
    body = status(client, user_id="oli").get_json()
    assert body["needs_reauth"] is True
    assert body["connected"] is False
    assert token_endpoint.count("POST", "/token") == 1
    # someone stores a new token: the marker lapses without anyone clearing it
    new_refresh = secret("1//new")
    token_endpoint.add_refresh_token(new_refresh)
    conn.run(
        "UPDATE gmail_token SET token_data = jsonb_set(token_data, '{refresh_token}', "
        "to_jsonb(CAST(:r AS TEXT))) WHERE id = :id",
        r=new_refresh,
        id=row_id,
    )
    assert status(client, user_id="oli").get_json()["needs_reauth"] is False
    assert client("refresh_tokens").post("/", json={"user_id": "oli"}).status_code == 200
    assert row(conn, row_id)["reauth_required_at"] is None


def test_token_endpoint_500s_answer_503_after_retries(client, token_endpoint, user_token):
    user_token("pat")
    token_endpoint.fail_next(500, count=3)
    response = client("refresh_tokens").post("/", json={"user_id": "pat"})
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "unavailable"
    assert token_endpoint.count("POST", "/token") == 3


def test_token_endpoint_recovering_within_retries_succeeds(client, token_endpoint, user_token):
    user_token("quinn")
    token_endpoint.fail_next(503, count=1)
    assert client("refresh_tokens").post("/", json={"user_id": "quinn"}).status_code == 200
    assert token_endpoint.count("POST", "/token") == 2


def test_two_threads_refreshing_one_user_call_google_once(database_url, conn, token_endpoint, user_token):
    token_endpoint.latency = 0.3  # long enough for both threads to want the refresh at once
    row_id = user_token("ravi")
    results: list[str | None] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def use_token() -> None:
        try:
            with db.connection() as connection:
                barrier.wait()
                results.append(DatabaseTokenStore(connection).usable("ravi").access_token)
        except BaseException as exc:  # surfaced by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=use_token) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert token_endpoint.count("POST", "/token") == 1
    assert results[0] == results[1] == row(conn, row_id)["token_data"]["access_token"]


def test_stale_token_refused_by_gmail_is_refreshed_even_if_not_expired(
    database_url, conn, token_endpoint, user_token
):
    row_id = user_token("sam", expires_in=3600)
    stale = row(conn, row_id)["token_data"]["access_token"]
    with db.connection() as connection:
        record = DatabaseTokenStore(connection).refresh_row(row_id, force=False, stale_access_token=stale)
    assert record.access_token != stale
    assert token_endpoint.count("POST", "/token") == 1


# -- the scheduled run -----------------------------------------------------------------------------------


def test_scheduled_run_refreshes_due_tokens_only(client, conn, token_endpoint, user_token):
    due = user_token("due", expires_in=60)
    null_expiry = user_token("null-expiry")
    conn.run("UPDATE gmail_token SET expiry = NULL WHERE id = :id", id=null_expiry)
    fresh = user_token("fresh", expires_in=7200)
    unequipped = user_token("unequipped", expires_in=60, is_equipped=False)
    response = client("refresh_tokens").post("/", json={})
    assert response.get_json() == {"checked": 2, "refreshed": 2, "skipped": 0, "failed": []}
    assert row(conn, due)["expiry"] > utc_in(3000)
    assert row(conn, null_expiry)["expiry"] is not None
    assert row(conn, fresh)["expiry"] < utc_in(7300)
    assert row(conn, unequipped)["expiry"] < utc_in(120)


def test_scheduled_run_window_seconds(client, conn, token_endpoint, user_token):
    user_token("soon", expires_in=1800)
    assert client("refresh_tokens").post("/", json={"window_seconds": 60}).get_json()["checked"] == 0
    assert client("refresh_tokens").post("/", json={"window_seconds": 3600}).get_json()["refreshed"] == 1


def test_scheduled_run_reports_failures_by_user(client, conn, token_endpoint, user_token):
    user_token("good")
    bad = user_token("bad")
    token_endpoint.revoke(row(conn, bad)["token_data"]["refresh_token"])
    body = client("refresh_tokens").post("/", json={}).get_json()
    assert body["refreshed"] == 1
    assert body["failed"] == [{"user_id": "bad", "code": "reauth_required"}]


def test_scheduled_run_skips_shadowed_duplicate_rows(client, conn, token_endpoint, user_token):
    old = user_token("twice", updated_at=datetime(2024, 1, 1))
    new = user_token("twice", expires_in=7200)
    body = client("refresh_tokens").post("/", json={}).get_json()
    assert body["checked"] == 0
    assert row(conn, old)["updated_at"] < row(conn, new)["updated_at"]


def test_two_scheduled_runs_at_once_refresh_each_token_once(database_url, conn, token_endpoint, user_token):
    token_endpoint.latency = 0.05
    users = [f"user-{index}" for index in range(30)]
    for user in users:
        user_token(user)
    summaries: list[dict] = []
    barrier = threading.Barrier(2)

    def run() -> None:
        barrier.wait()
        summaries.append(provider.refresh_due(900))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(summaries) == 2
    assert sum(summary["refreshed"] for summary in summaries) == len(users)
    assert sum(summary["skipped"] for summary in summaries) == sum(s["checked"] for s in summaries) - len(
        users
    )
    assert all(count == 1 for count in token_endpoint.calls_by_refresh_token.values())
    assert token_endpoint.count("POST", "/token") == len(users)
    remaining = conn.one("SELECT count(*) AS n FROM gmail_token WHERE expiry < :soon", soon=utc_in(900))
    assert remaining == {"n": 0}
