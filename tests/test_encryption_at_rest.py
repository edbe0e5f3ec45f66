"""Encryption at rest on the real table: opt-in, plaintext and encrypted rows side by side, rotation."""

from __future__ import annotations

import json

import pytest

from devtools.fakes.secret_manager import FakeSecretManager
from shared import db
from shared.tokens.cipher import token_cipher
from shared.tokens.keyring import generate_key
from shared.tokens.maintenance import reseal_rows
from tests.conftest import SECRET_VALUES, row


def keyring(primary: str, *names: str, keys: dict[str, str]) -> str:
    return json.dumps({"primary": primary, "keys": {name: keys[name] for name in names}})


@pytest.fixture
def keys() -> dict[str, str]:
    generated = {"k1": generate_key(), "k2": generate_key()}
    SECRET_VALUES.update(generated.values())
    return generated


def secret_fields(stored: dict) -> list[str]:
    return [
        stored["token_data"].get("access_token"),
        stored["token_data"].get("refresh_token"),
        stored["oauth_config"].get("client_secret"),
    ]


def test_refresh_with_a_keyring_writes_encrypted_secrets_and_keeps_the_rest_readable(
    client, conn, user_token, token_endpoint, keys, monkeypatch
):
    monkeypatch.setenv("TOKEN_KEYS", keyring("k1", "k1", keys=keys))
    row_id = user_token("alice")
    assert client("refresh_tokens").post("/", json={"user_id": "alice"}).status_code == 200
    stored = row(conn, row_id)
    assert all(value.startswith("enc:v1:k1:") for value in secret_fields(stored))
    assert stored["token_data"]["token_type"] == "Bearer"
    assert stored["oauth_config"]["client_id"].endswith(".apps.googleusercontent.com")
    assert stored["expiry"] is not None
    status = client("token_status").get("/?user_id=alice").get_json()
    assert status["connected"] is True
    # and the encrypted token still refreshes: the refresh token is opened before it is sent to Google
    assert client("refresh_tokens").post("/", json={"user_id": "alice"}).status_code == 200
    assert token_endpoint.count("POST", "/token") == 2


def test_plaintext_and_encrypted_rows_work_side_by_side(client, conn, user_token, keys, monkeypatch):
    monkeypatch.setenv("TOKEN_KEYS", keyring("k1", "k1", keys=keys))
    user_token("plain", expires_in=3600)
    encrypted = user_token("sealed", expires_in=3600)
    with db.connection() as connection:
        reseal_rows(connection, token_cipher())
    assert row(conn, encrypted)["token_data"]["access_token"].startswith("enc:")
    conn.run(
        "UPDATE gmail_token SET token_data = :t WHERE user_id = 'plain'",
        t=json.dumps({"access_token": "plain-access", "refresh_token": "plain-refresh"}),
    )
    for user in ("plain", "sealed"):
        assert client("token_status").get(f"/?user_id={user}").get_json()["connected"] is True


def test_encrypt_tokens_is_idempotent(conn, database_url, user_token, keys, monkeypatch):
    monkeypatch.setenv("TOKEN_KEYS", keyring("k1", "k1", keys=keys))
    for index in range(5):
        user_token(f"user-{index}")
    cipher = token_cipher()
    assert cipher is not None
    first = reseal_rows(conn, cipher, batch_size=2)
    second = reseal_rows(conn, cipher, batch_size=2)
    assert (first.rewritten, first.unchanged) == (5, 0)
    assert (second.rewritten, second.unchanged) == (0, 5)


def test_rotation_old_key_still_reads_then_rotate_moves_every_row_to_the_new_key(
    client, conn, user_token, keys, monkeypatch
):
    monkeypatch.setenv("TOKEN_KEYS", keyring("k1", "k1", keys=keys))
    row_id = user_token("rot", expires_in=3600)
    reseal_rows(conn, token_cipher())
    # step 1: k2 becomes primary, k1 kept: rows under k1 still read
    monkeypatch.setenv("TOKEN_KEYS", keyring("k2", "k1", "k2", keys=keys))
    assert client("token_status").get("/?user_id=rot").get_json()["connected"] is True
    # step 2: rotate-key re-encrypts under k2
    counts = reseal_rows(conn, token_cipher())
    assert counts.rewritten == 1
    assert all(value.startswith("enc:v1:k2:") for value in secret_fields(row(conn, row_id)))
    # step 3: k1 retired
    monkeypatch.setenv("TOKEN_KEYS", keyring("k2", "k2", keys=keys))
    assert client("token_status").get("/?user_id=rot").get_json()["connected"] is True


def test_decrypt_tokens_turns_encryption_off(conn, database_url, user_token, keys, monkeypatch):
    monkeypatch.setenv("TOKEN_KEYS", keyring("k1", "k1", keys=keys))
    row_id = user_token("back")
    before = row(conn, row_id)
    cipher = token_cipher()
    assert cipher is not None
    reseal_rows(conn, cipher)
    reseal_rows(conn, cipher, decrypt=True)
    assert secret_fields(row(conn, row_id)) == secret_fields(before)


def test_a_value_copied_to_another_users_row_does_not_decrypt(client, conn, user_token, keys, monkeypatch):
    monkeypatch.setenv("TOKEN_KEYS", keyring("k1", "k1", keys=keys))
    victim = user_token("victim", expires_in=3600)
    attacker = user_token("attacker", expires_in=3600)
    reseal_rows(conn, token_cipher())
    conn.run(
        "UPDATE gmail_token SET token_data = (SELECT token_data FROM gmail_token WHERE id = :v) "
        "WHERE id = :a",
        v=victim,
        a=attacker,
    )
    response = client("token_status").get("/?user_id=attacker")
    assert response.status_code == 500
    assert response.get_json() == {"error": {"code": "internal", "message": "internal error"}}


def test_encrypted_rows_without_the_keyring_are_refused_not_sent_to_google(
    client, conn, user_token, keys, token_endpoint, monkeypatch
):
    monkeypatch.setenv("TOKEN_KEYS", keyring("k1", "k1", keys=keys))
    user_token("locked")
    reseal_rows(conn, token_cipher())
    monkeypatch.delenv("TOKEN_KEYS")
    assert client("refresh_tokens").post("/", json={"user_id": "locked"}).status_code == 500
    assert token_endpoint.count("POST", "/token") == 0


def test_reauth_marker_survives_reencryption(client, conn, user_token, token_endpoint, keys, monkeypatch):
    row_id = user_token("marked")
    token_endpoint.revoke(row(conn, row_id)["token_data"]["refresh_token"])
    assert client("refresh_tokens").post("/", json={"user_id": "marked"}).status_code == 401
    monkeypatch.setenv("TOKEN_KEYS", keyring("k1", "k1", keys=keys))
    reseal_rows(conn, token_cipher())
    assert client("token_status").get("/?user_id=marked").get_json()["needs_reauth"] is True
    assert client("refresh_tokens").post("/", json={"user_id": "marked"}).status_code == 401
    assert token_endpoint.count("POST", "/token") == 1


def test_keyring_from_secret_manager(client, conn, user_token, keys, monkeypatch):
    with FakeSecretManager() as secret_manager:
        secret_manager.set_secret("proj", "token-keys", keyring("k1", "k1", keys=keys))
        monkeypatch.setenv("SECRET_MANAGER_ENDPOINT", secret_manager.url)
        monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "proj")
        monkeypatch.setenv("TOKEN_KEY_SECRET", "token-keys")
        row_id = user_token("sm")
        assert client("refresh_tokens").post("/", json={"user_id": "sm"}).status_code == 200
        assert row(conn, row_id)["token_data"]["access_token"].startswith("enc:v1:k1:")
        assert secret_manager.access_count == 1


def test_malformed_keyring_is_503_without_key_material(client, database_url, monkeypatch):
    monkeypatch.setenv("TOKEN_KEYS", '{"primary": "k1", "keys": {"k1": "dG9vLXNob3J0"}}')
    response = client("token_status").get("/?user_id=a")
    assert response.status_code == 503
    assert "dG9vLXNob3J0" not in response.get_data(as_text=True)
