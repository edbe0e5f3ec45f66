"""Tests of shared.tokens.crypto: encryption at rest of the secret values of gmail_token rows."""

from __future__ import annotations

import base64
import copy
import json
import traceback

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.errors import SkillEmailError
from shared.tokens.crypto import (
    DecryptionError,
    TokenCipher,
    encrypted_key_id,
    is_encrypted,
    open_row_without_key,
)
from shared.tokens.keyring import KeyringError, derive_key_id, generate_key, with_new_primary

# Fixed keys, so a failing test is reproducible; distinctive enough to search for in error messages.
KEY1 = base64.b64encode(bytes(range(32))).decode()
KEY2 = base64.b64encode(bytes(range(100, 132))).decode()
USER = "user-1"
OTHER_USER = "user-2"


def keyring(primary: str, **keys: str) -> str:
    return json.dumps({"primary": primary, "keys": keys})


@pytest.fixture
def cipher() -> TokenCipher:
    return TokenCipher.from_keyring(keyring("k1", k1=KEY1))


@pytest.fixture
def rotated() -> TokenCipher:
    """k1 still readable, k2 now primary."""
    return TokenCipher.from_keyring(keyring("k2", k1=KEY1, k2=KEY2))


def plain_row() -> tuple[dict, dict]:
    token_data = {
        "access_token": "ya29.access-토큰",
        "refresh_token": "1//refresh-🔑",
        "token_type": "Bearer",
        "expiry": "2026-01-02T03:04:05Z",
        "scope": "https://www.googleapis.com/auth/gmail.send",
        "something_new": {"nested": [1, 2]},
    }
    oauth_config = {
        "client_id": "123.apps.googleusercontent.com",
        "client_secret": "GOCSPX-secret",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    return token_data, oauth_config


# -- round trips -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "plaintext",
    ["ya29.a0AfH6SMB-example", "", "안녕하세요 토큰입니다", "🔑📧✉️", "a" * 5000, "line\nbreak\x00nul"],
)
@pytest.mark.parametrize(
    "field", ["token_data.access_token", "token_data.refresh_token", "oauth_config.client_secret"]
)
def test_encrypt_then_decrypt_round_trips(cipher: TokenCipher, plaintext: str, field: str) -> None:
    value = cipher.encrypt(plaintext, user_id=USER, field=field)

    assert value.startswith("enc:v1:k1:")
    assert is_encrypted(value)
    assert cipher.decrypt(value, user_id=USER, field=field) == plaintext


def test_encrypted_value_does_not_contain_plaintext(cipher: TokenCipher) -> None:
    value = cipher.encrypt("ya29.visible-if-broken", user_id=USER, field="token_data.access_token")

    assert "ya29" not in value
    assert encrypted_key_id(value) == "k1"


def test_same_plaintext_twice_gives_different_ciphertexts(cipher: TokenCipher) -> None:
    values = {cipher.encrypt("same", user_id=USER, field="token_data.access_token") for _ in range(50)}
    nonces = {base64.urlsafe_b64decode(v.split(":")[3] + "==")[:12] for v in values}

    assert len(values) == 50
    assert len(nonces) == 50


@settings(max_examples=200, deadline=None)
@given(plaintext=st.text(), user_id=st.text(max_size=100))
def test_any_text_round_trips_for_any_user(plaintext: str, user_id: str) -> None:
    cipher = TokenCipher.from_keyring(keyring("k1", k1=KEY1))

    value = cipher.encrypt(plaintext, user_id=user_id, field="token_data.refresh_token")

    assert cipher.decrypt(value, user_id=user_id, field="token_data.refresh_token") == plaintext


# -- what the associated data and the tag refuse ---------------------------------------------------------


@pytest.mark.parametrize("other_user", [OTHER_USER, "user-1 ", "USER-1", "", "user-1|x"])
def test_value_copied_to_another_users_row_does_not_decrypt(cipher: TokenCipher, other_user: str) -> None:
    value = cipher.encrypt("1//refresh", user_id=USER, field="token_data.refresh_token")

    with pytest.raises(DecryptionError) as info:
        cipher.decrypt(value, user_id=other_user, field="token_data.refresh_token")

    assert info.value.field == "token_data.refresh_token"
    assert info.value.key_id == "k1"
    assert value not in str(info.value)
    assert "1//refresh" not in str(info.value)


def test_row_copied_to_another_user_does_not_open(cipher: TokenCipher) -> None:
    sealed = cipher.seal_row(*plain_row(), user_id=USER)

    with pytest.raises(DecryptionError):
        cipher.open_row(*sealed, user_id=OTHER_USER)


@pytest.mark.parametrize(
    ("written_as", "read_as"),
    [
        ("token_data.refresh_token", "token_data.access_token"),
        ("token_data.access_token", "token_data.refresh_token"),
        ("oauth_config.client_secret", "token_data.refresh_token"),
        ("token_data.refresh_token", "oauth_config.client_secret"),
    ],
)
def test_value_moved_to_another_field_does_not_decrypt(
    cipher: TokenCipher, written_as: str, read_as: str
) -> None:
    value = cipher.encrypt("secret", user_id=USER, field=written_as)

    with pytest.raises(DecryptionError) as info:
        cipher.decrypt(value, user_id=USER, field=read_as)

    assert read_as in str(info.value)


def test_refresh_token_moved_into_access_token_of_a_sealed_row_does_not_open(cipher: TokenCipher) -> None:
    token_data, oauth_config = cipher.seal_row(*plain_row(), user_id=USER)
    token_data["access_token"] = token_data["refresh_token"]

    with pytest.raises(DecryptionError) as info:
        cipher.open_row(token_data, oauth_config, user_id=USER)

    assert info.value.field == "token_data.access_token"


def test_legacy_token_renamed_to_access_token_still_opens(cipher: TokenCipher) -> None:
    # Both names hold the same secret; the contract says read both, write access_token.
    token_data, _ = cipher.seal_row({"token": "ya29.legacy"}, None, user_id=USER)

    opened, _ = cipher.open_row({"access_token": token_data["token"]}, None, user_id=USER)

    assert opened == {"access_token": "ya29.legacy"}


def flip_middle_payload_char(value: str) -> str:
    head, payload = value.rsplit(":", 1)
    # The middle of the payload: the last character may carry only unused padding bits.
    middle = len(payload) // 2
    replacement = "A" if payload[middle] != "A" else "B"
    return f"{head}:{payload[:middle]}{replacement}{payload[middle + 1 :]}"


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(flip_middle_payload_char, id="flipped-byte"),
        pytest.param(lambda v: v[:-4], id="truncated"),
        pytest.param(lambda v: v.rsplit(":", 1)[0] + ":AAAA", id="too-short"),
        pytest.param(lambda v: v + "A", id="extra-char"),
        pytest.param(lambda v: v.replace("enc:v1:k1:", "enc:v1:k2:"), id="other-key-id"),
    ],
)
def test_tampered_ciphertext_does_not_decrypt(rotated: TokenCipher, tamper) -> None:
    k1_only = TokenCipher.from_keyring(keyring("k1", k1=KEY1))
    value = k1_only.encrypt("ya29.real", user_id=USER, field="token_data.access_token")

    with pytest.raises(DecryptionError) as info:
        rotated.decrypt(tamper(value), user_id=USER, field="token_data.access_token")

    assert "ya29.real" not in str(info.value)


@pytest.mark.parametrize(
    "value",
    ["enc:", "enc:v2:k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "enc:v1:k1:not base64!", "enc:v1::AAAA"],
)
def test_malformed_encrypted_value_is_refused_not_passed_through(cipher: TokenCipher, value: str) -> None:
    assert is_encrypted(value)
    with pytest.raises(DecryptionError) as info:
        cipher.decrypt(value, user_id=USER, field="token_data.access_token")

    assert info.value.field == "token_data.access_token"


def test_unknown_key_id_names_field_and_key_id(cipher: TokenCipher) -> None:
    other = TokenCipher.from_keyring(keyring("k9", k9=KEY2))
    value = other.encrypt("1//refresh", user_id=USER, field="token_data.refresh_token")

    with pytest.raises(DecryptionError) as info:
        cipher.decrypt(value, user_id=USER, field="token_data.refresh_token")

    message = str(info.value)
    assert "token_data.refresh_token" in message
    assert "k9" in message
    assert value not in message
    assert info.value.status == 500
    assert isinstance(info.value, SkillEmailError)


# -- key rotation ----------------------------------------------------------------------------------------


def test_values_written_under_old_key_still_open_after_rotation(rotated: TokenCipher) -> None:
    k1_only = TokenCipher.from_keyring(keyring("k1", k1=KEY1))
    sealed = k1_only.seal_row(*plain_row(), user_id=USER)

    assert rotated.open_row(*sealed, user_id=USER) == plain_row()


def test_values_under_old_key_need_rewrite(rotated: TokenCipher) -> None:
    k1_only = TokenCipher.from_keyring(keyring("k1", k1=KEY1))
    token_data, oauth_config = k1_only.seal_row(*plain_row(), user_id=USER)

    assert rotated.needs_rewrite(token_data["refresh_token"])
    assert rotated.row_needs_rewrite(token_data, oauth_config)
    assert not k1_only.row_needs_rewrite(token_data, oauth_config)


def test_seal_row_re_encrypts_old_key_values_under_primary(rotated: TokenCipher) -> None:
    k1_only = TokenCipher.from_keyring(keyring("k1", k1=KEY1))
    old = k1_only.seal_row(*plain_row(), user_id=USER)

    token_data, oauth_config = rotated.seal_row(*old, user_id=USER)

    for value in (token_data["access_token"], token_data["refresh_token"], oauth_config["client_secret"]):
        assert encrypted_key_id(value) == "k2"
    assert not rotated.row_needs_rewrite(token_data, oauth_config)
    k2_only = TokenCipher.from_keyring(keyring("k2", k2=KEY2))
    assert k2_only.open_row(token_data, oauth_config, user_id=USER) == plain_row()


def test_seal_row_keeps_values_already_under_primary_unchanged(cipher: TokenCipher) -> None:
    sealed = cipher.seal_row(*plain_row(), user_id=USER)

    assert cipher.seal_row(*sealed, user_id=USER) == sealed


def test_seal_row_of_old_key_value_for_another_user_fails(rotated: TokenCipher) -> None:
    k1_only = TokenCipher.from_keyring(keyring("k1", k1=KEY1))
    old = k1_only.seal_row(*plain_row(), user_id=USER)

    with pytest.raises(DecryptionError):
        rotated.seal_row(*old, user_id=OTHER_USER)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("ya29.plain", True), ("", True), ("enc:v1:k1:AAAA", True), ("enc:v2:k2:AAAA", True)],
)
def test_needs_rewrite_for_plaintext_and_non_primary_values(
    rotated: TokenCipher, value: str, expected: bool
) -> None:
    assert rotated.needs_rewrite(value) is expected


def test_needs_rewrite_false_under_primary(rotated: TokenCipher) -> None:
    value = rotated.encrypt("x", user_id=USER, field="token_data.access_token")

    assert not rotated.needs_rewrite(value)


# -- rows ------------------------------------------------------------------------------------------------


def test_seal_row_encrypts_only_secret_fields_and_keeps_the_rest(cipher: TokenCipher) -> None:
    token_data, oauth_config = cipher.seal_row(*plain_row(), user_id=USER)
    plain_token_data, plain_oauth_config = plain_row()

    assert set(token_data) == set(plain_token_data)
    assert set(oauth_config) == set(plain_oauth_config)
    for name in ("access_token", "refresh_token"):
        assert is_encrypted(token_data[name])
    assert is_encrypted(oauth_config["client_secret"])
    for name in ("token_type", "expiry", "scope", "something_new"):
        assert token_data[name] == plain_token_data[name]
    for name in ("client_id", "token_uri"):
        assert oauth_config[name] == plain_oauth_config[name]


def test_seal_row_then_open_row_round_trips(cipher: TokenCipher) -> None:
    assert cipher.open_row(*cipher.seal_row(*plain_row(), user_id=USER), user_id=USER) == plain_row()


def test_seal_row_and_open_row_do_not_mutate_inputs(cipher: TokenCipher) -> None:
    token_data, oauth_config = plain_row()
    before = copy.deepcopy((token_data, oauth_config))

    sealed = cipher.seal_row(token_data, oauth_config, user_id=USER)
    sealed_before = copy.deepcopy(sealed)
    opened = cipher.open_row(*sealed, user_id=USER)

    assert (token_data, oauth_config) == before
    assert sealed == sealed_before
    assert sealed[0] is not token_data
    assert sealed[1] is not oauth_config
    assert opened[0] is not sealed[0]
    assert opened[1] is not sealed[1]


def test_legacy_token_key_is_encrypted_too(cipher: TokenCipher) -> None:
    token_data, _ = cipher.seal_row({"token": "ya29.legacy", "refresh_token": "1//r"}, None, user_id=USER)

    assert is_encrypted(token_data["token"])
    assert "access_token" not in token_data
    assert cipher.open_row(token_data, None, user_id=USER) == (
        {"token": "ya29.legacy", "refresh_token": "1//r"},
        None,
    )


def test_plaintext_row_opens_as_before(cipher: TokenCipher) -> None:
    assert cipher.open_row(*plain_row(), user_id=USER) == plain_row()


def test_partly_encrypted_row_opens(cipher: TokenCipher) -> None:
    token_data, oauth_config = plain_row()
    token_data["refresh_token"] = cipher.encrypt(
        "1//refresh-🔑", user_id=USER, field="token_data.refresh_token"
    )

    assert cipher.open_row(token_data, oauth_config, user_id=USER) == plain_row()


@pytest.mark.parametrize(
    ("token_data", "oauth_config"),
    [
        ({"access_token": None, "refresh_token": "1//r"}, None),
        ({"refresh_token": "1//r"}, {"client_id": "c"}),
        ({}, {"client_secret": None}),
        ({"access_token": "ya29"}, {}),
    ],
)
def test_none_and_missing_fields_stay_as_they_are(
    cipher: TokenCipher, token_data: dict, oauth_config
) -> None:
    sealed_token_data, sealed_oauth_config = cipher.seal_row(token_data, oauth_config, user_id=USER)

    assert set(sealed_token_data) == set(token_data)
    for name, value in token_data.items():
        if value is None:
            assert sealed_token_data[name] is None
    if oauth_config is None:
        assert sealed_oauth_config is None
    else:
        assert set(sealed_oauth_config) == set(oauth_config)
        assert sealed_oauth_config.get("client_secret", "missing") == oauth_config.get(
            "client_secret", "missing"
        )
    assert cipher.open_row(sealed_token_data, sealed_oauth_config, user_id=USER) == (token_data, oauth_config)


@pytest.mark.parametrize("value", [12345, ["ya29"], {"t": "ya29"}])
def test_seal_row_refuses_non_string_secret(cipher: TokenCipher, value: object) -> None:
    with pytest.raises(TypeError) as info:
        cipher.seal_row({"refresh_token": value}, None, user_id=USER)

    assert "token_data.refresh_token" in str(info.value)
    assert "ya29" not in str(info.value)


def test_row_needs_rewrite_for_plaintext_row_only_until_sealed(cipher: TokenCipher) -> None:
    assert cipher.row_needs_rewrite(*plain_row())
    assert not cipher.row_needs_rewrite(*cipher.seal_row(*plain_row(), user_id=USER))
    assert not cipher.row_needs_rewrite({"token_type": "Bearer"}, None)


# -- no key configured -----------------------------------------------------------------------------------


def test_open_row_without_key_passes_plaintext_rows() -> None:
    token_data, oauth_config = plain_row()

    opened = open_row_without_key(token_data, oauth_config, user_id=USER)

    assert opened == plain_row()
    assert opened[0] is not token_data
    assert open_row_without_key({"token": "ya29"}, None) == ({"token": "ya29"}, None)


@pytest.mark.parametrize(
    ("location", "name"),
    [
        ("token_data", "access_token"),
        ("token_data", "token"),
        ("token_data", "refresh_token"),
        ("oauth_config", "client_secret"),
    ],
)
def test_open_row_without_key_refuses_encrypted_values(cipher: TokenCipher, location: str, name: str) -> None:
    token_data, oauth_config = cipher.seal_row(
        {"token": "a", "access_token": "b", "refresh_token": "c"}, {"client_secret": "d"}, user_id=USER
    )
    row = {"token_data": {}, "oauth_config": {}}
    row[location][name] = (token_data if location == "token_data" else oauth_config)[name]

    with pytest.raises(DecryptionError) as info:
        open_row_without_key(row["token_data"], row["oauth_config"], user_id=USER)

    message = str(info.value)
    assert f"{location}.{name}" in message
    assert "k1" in message
    assert row[location][name] not in message
    assert info.value.status == 500


# -- keyring parsing -------------------------------------------------------------------------------------


def test_keyring_json_with_several_keys(rotated: TokenCipher) -> None:
    assert rotated.primary_key_id == "k2"
    assert rotated.key_ids == ("k1", "k2")


def test_keyring_with_one_key_may_omit_primary() -> None:
    cipher = TokenCipher.from_keyring(json.dumps({"keys": {"only": KEY1}}))

    assert cipher.primary_key_id == "only"


@pytest.mark.parametrize(
    "text",
    [KEY1, f"  {KEY1}\n", base64.urlsafe_b64encode(bytes(range(32))).decode().rstrip("=")],
    ids=["standard", "with-whitespace", "urlsafe-unpadded"],
)
def test_bare_key_gets_a_deterministic_derived_id(text: str) -> None:
    cipher = TokenCipher.from_keyring(text)

    assert cipher.primary_key_id == derive_key_id(bytes(range(32)))
    assert len(cipher.primary_key_id) == 8
    assert cipher.primary_key_id == TokenCipher.from_keyring(KEY1).primary_key_id
    assert cipher.primary_key_id not in KEY1


def test_bare_key_and_same_key_in_json_under_derived_id_read_each_other() -> None:
    bare = TokenCipher.from_keyring(KEY1)
    as_json = TokenCipher.from_keyring(keyring(bare.primary_key_id, **{bare.primary_key_id: KEY1}))

    value = bare.encrypt("x", user_id=USER, field="token_data.access_token")

    assert as_json.decrypt(value, user_id=USER, field="token_data.access_token") == "x"


SHORT_KEY = base64.b64encode(bytes(range(31))).decode()
LONG_KEY = base64.b64encode(bytes(range(33))).decode()


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        pytest.param('{"primary": "k1", "keys": {"k1": "' + KEY1 + '"', KEY1, id="bad-json"),
        pytest.param(keyring("k1", k1=SHORT_KEY), SHORT_KEY, id="key-31-bytes"),
        pytest.param(keyring("k1", k1=LONG_KEY), LONG_KEY, id="key-33-bytes"),
        pytest.param(SHORT_KEY, SHORT_KEY, id="bare-key-31-bytes"),
        pytest.param(keyring("k3", k1=KEY1, k2=KEY2), KEY1, id="primary-missing-from-keys"),
        pytest.param(json.dumps({"keys": {"k1": KEY1, "k2": KEY2}}), KEY2, id="several-keys-no-primary"),
        pytest.param(json.dumps({"primary": "a:b", "keys": {"a:b": KEY1}}), KEY1, id="id-with-colon"),
        pytest.param(json.dumps({"primary": KEY1, "keys": {"k1": KEY1}}), KEY1, id="key-pasted-as-primary"),
        pytest.param(json.dumps({"primary": "k", "keys": {KEY1: KEY2}}), KEY1, id="key-pasted-as-id"),
        pytest.param(
            json.dumps({"primary": "k1", "keys": {"k1": KEY1[:-5] + "!!!!="}}), KEY1[:-5], id="not-base64"
        ),
        pytest.param(json.dumps({"primary": "k1", "keys": {}}), "", id="no-keys"),
        pytest.param(json.dumps({"primary": "k1", "keys": {"k1": [KEY1]}}), KEY1, id="key-not-a-string"),
        pytest.param(json.dumps({"primary": "k1", "keys": {"k1": KEY1}, KEY2: 1}), KEY2, id="unknown-field"),
        pytest.param(json.dumps([KEY1]), KEY1, id="json-not-an-object"),
        pytest.param("   \n", "", id="empty"),
        pytest.param(f"{KEY1} {KEY2}", KEY2, id="two-bare-keys"),
    ],
)
def test_malformed_keyring_raises_without_leaking_key_material(text: str, secret: str) -> None:
    with pytest.raises(KeyringError) as info:
        TokenCipher.from_keyring(text)

    assert isinstance(info.value, ValueError)
    assert str(info.value)
    if secret:
        formatted = "".join(traceback.format_exception(info.value))
        assert secret not in str(info.value)
        assert secret not in repr(info.value)
        assert secret not in formatted
        # Nor a recognisable piece of it.
        assert secret[:16] not in formatted


def test_cipher_repr_never_shows_keys(rotated: TokenCipher) -> None:
    text = repr(rotated)

    assert KEY1 not in text
    assert KEY2 not in text
    assert "k2" in text


# -- helpers ---------------------------------------------------------------------------------------------


def test_generate_key_gives_fresh_32_byte_keys_usable_as_keyring() -> None:
    first, second = generate_key(), generate_key()

    assert len(base64.b64decode(first, validate=True)) == 32
    assert first != second
    assert TokenCipher.from_keyring(keyring("new", new=first)).primary_key_id == "new"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("enc:v1:k1:AAAA", True),
        ("enc:anything", True),
        ("ya29.a0", False),
        ("", False),
        (None, False),
        (1, False),
    ],
)
def test_is_encrypted(value: object, expected: bool) -> None:
    assert is_encrypted(value) is expected


def test_with_new_primary_keeps_a_bare_keys_derived_id_so_old_values_still_decrypt() -> None:
    bare = generate_key()
    old = TokenCipher.from_keyring(bare)
    value = old.encrypt("refresh", user_id="u", field="token_data.refresh_token")
    rotated = TokenCipher.from_keyring(with_new_primary(bare, "k2"))
    assert rotated.primary_key_id == "k2"
    assert rotated.decrypt(value, user_id="u", field="token_data.refresh_token") == "refresh"


def test_with_new_primary_refuses_an_id_already_there() -> None:
    keyring = json.dumps({"primary": "k1", "keys": {"k1": generate_key()}})
    with pytest.raises(KeyringError, match="already"):
        with_new_primary(keyring, "k1")
