"""Idempotency-Key records on the real PostgreSQL: every claim path, concurrency, expiry and takeover."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest

from shared import clock, db, idempotency
from shared.errors import IdempotencyConflict, Internal, InvalidArgument

USER = "user-idem@example.com"
KEY = "key-0001"
BODY = {"user_id": USER, "to": "a@example.com", "subject": "안녕하세요", "body": "hello"}
FP = idempotency.fingerprint(BODY)
OTHER_FP = idempotency.fingerprint({**BODY, "body": "goodbye"})
RESPONSE = {"id": "18c0ffee", "thread_id": "18c0ffee", "label_ids": ["SENT"]}


@pytest.fixture
def set_now(monkeypatch: pytest.MonkeyPatch) -> Callable[[datetime], None]:
    """Moves the project clock to a naive-UTC instant."""

    def move(naive_utc: datetime) -> None:
        monkeypatch.setattr(clock, "utcnow", lambda: naive_utc.replace(tzinfo=clock.UTC))

    return move


def stored(conn: db.Connection, key: str = KEY, user_id: str = USER) -> dict[str, Any] | None:
    return conn.one(
        "SELECT * FROM gmail_idempotency WHERE user_id = :user_id AND idempotency_key = :key",
        user_id=user_id,
        key=key,
    )


def msgid(n: int) -> str:
    return f"<attempt-{n}@skill-email.local>"


# -- claim -----------------------------------------------------------------------------------------


def test_claim_of_new_key_holds_it_in_progress(conn: db.Connection) -> None:
    before = clock.to_naive_utc(clock.utcnow())

    claimed = idempotency.claim(conn, USER, KEY, FP, message_id=msgid(1))

    assert claimed == idempotency.Claim(key=KEY)
    assert not claimed.is_replay
    row = stored(conn)
    assert row is not None
    assert row["state"] == "in_progress"
    assert row["fingerprint"] == FP
    assert row["message_id"] == msgid(1)
    assert row["response_body"] is None
    assert before + idempotency.TTL <= row["expires_at"] <= before + idempotency.TTL + timedelta(minutes=1)


def test_repeat_while_first_is_in_progress_is_conflict_still_running(conn: db.Connection) -> None:
    idempotency.claim(conn, USER, KEY, FP, message_id=msgid(1))

    with pytest.raises(IdempotencyConflict, match="still running") as caught:
        idempotency.claim(conn, USER, KEY, FP, message_id=msgid(2))

    assert caught.value.status == 409
    assert stored(conn)["message_id"] == msgid(1)  # type: ignore[index]


def test_repeat_after_success_replays_the_stored_response(conn: db.Connection) -> None:
    idempotency.claim(conn, USER, KEY, FP, message_id=msgid(1))
    idempotency.complete(conn, USER, KEY, status=200, body=RESPONSE)

    claimed = idempotency.claim(conn, USER, KEY, FP, message_id=msgid(2))

    assert claimed.is_replay
    assert claimed.replay == RESPONSE
    assert claimed.replay_status == 200
    assert claimed.resume_message_id is None
    assert stored(conn)["state"] == "succeeded"  # type: ignore[index]


def test_complete_keeps_non_ascii_response_intact(conn: db.Connection) -> None:
    body = {"id": "1", "thread_id": "1", "label_ids": ["SENT"], "note": "받은편지함 ✓"}
    idempotency.claim(conn, USER, KEY, FP, message_id=msgid(1))
    idempotency.complete(conn, USER, KEY, status=200, body=body)

    assert idempotency.claim(conn, USER, KEY, FP, message_id=msgid(2)).replay == body


@pytest.mark.parametrize("finished", [False, True], ids=["in_progress", "succeeded"])
def test_same_key_with_different_request_is_conflict(conn: db.Connection, finished: bool) -> None:
    idempotency.claim(conn, USER, KEY, FP, message_id=msgid(1))
    if finished:
        idempotency.complete(conn, USER, KEY, status=200, body=RESPONSE)

    with pytest.raises(IdempotencyConflict, match="different request"):
        idempotency.claim(conn, USER, KEY, OTHER_FP, message_id=msgid(2))


def test_keys_are_scoped_to_the_user(conn: db.Connection) -> None:
    idempotency.claim(conn, USER, KEY, FP, message_id=msgid(1))

    claimed = idempotency.claim(conn, "someone-else", KEY, OTHER_FP, message_id=msgid(2))

    assert claimed == idempotency.Claim(key=KEY)
    assert stored(conn, user_id="someone-else")["message_id"] == msgid(2)  # type: ignore[index]


@pytest.mark.parametrize("finished", [False, True], ids=["in_progress", "succeeded"])
def test_expired_row_is_replaced_by_a_fresh_claim(
    conn: db.Connection, set_now: Callable[[datetime], None], finished: bool
) -> None:
    start = datetime(2030, 1, 1, 12, 0)
    set_now(start)
    idempotency.claim(conn, USER, KEY, FP, message_id=msgid(1))
    if finished:
        idempotency.complete(conn, USER, KEY, status=200, body=RESPONSE)
    later = start + idempotency.TTL + timedelta(seconds=1)
    set_now(later)

    claimed = idempotency.claim(conn, USER, KEY, OTHER_FP, message_id=msgid(2))

    assert claimed == idempotency.Claim(key=KEY)
    row = stored(conn)
    assert row is not None
    assert (row["state"], row["fingerprint"], row["message_id"]) == ("in_progress", OTHER_FP, msgid(2))
    assert row["response_body"] is None
    assert row["response_status"] is None
    assert row["created_at"] == later
    assert row["expires_at"] == later + idempotency.TTL


def test_succeeded_row_is_replayed_until_it_expires(
    conn: db.Connection, set_now: Callable[[datetime], None]
) -> None:
    start = datetime(2030, 1, 1, 12, 0)
    set_now(start)
    idempotency.claim(conn, USER, KEY, FP, message_id=msgid(1))
    idempotency.complete(conn, USER, KEY, status=200, body=RESPONSE)
    set_now(start + idempotency.TTL - timedelta(seconds=1))

    assert idempotency.claim(conn, USER, KEY, FP, message_id=msgid(2)).replay == RESPONSE


def test_stale_in_progress_row_is_taken_over_with_resume_message_id(
    conn: db.Connection, set_now: Callable[[datetime], None]
) -> None:
    start = datetime(2030, 1, 1, 12, 0)
    set_now(start)
    idempotency.claim(conn, USER, KEY, FP, message_id=msgid(1))
    later = start + idempotency.STALE_AFTER + timedelta(seconds=1)
    set_now(later)

    claimed = idempotency.claim(conn, USER, KEY, FP, message_id=msgid(2))

    assert claimed.resume_message_id == msgid(1)
    assert not claimed.is_replay
    row = stored(conn)
    assert row is not None
    # The dead attempt's Message-ID is kept, so a further takeover searches Gmail for the same one.
    assert (row["state"], row["message_id"], row["updated_at"]) == ("in_progress", msgid(1), later)
    assert idempotency.stored_message_id(conn, USER, KEY) == msgid(1)
    # The takeover counts as a fresh attempt: an immediate repeat is "still running" again.
    with pytest.raises(IdempotencyConflict, match="still running"):
        idempotency.claim(conn, USER, KEY, FP, message_id=msgid(3))


def test_in_progress_row_younger_than_stale_after_is_not_taken_over(
    conn: db.Connection, set_now: Callable[[datetime], None]
) -> None:
    start = datetime(2030, 1, 1, 12, 0)
    set_now(start)
    idempotency.claim(conn, USER, KEY, FP, message_id=msgid(1))
    set_now(start + idempotency.STALE_AFTER - timedelta(seconds=1))

    with pytest.raises(IdempotencyConflict, match="still running"):
        idempotency.claim(conn, USER, KEY, FP, message_id=msgid(2))


def test_stale_in_progress_row_is_not_taken_over_by_a_different_request(
    conn: db.Connection, set_now: Callable[[datetime], None]
) -> None:
    start = datetime(2030, 1, 1, 12, 0)
    set_now(start)
    idempotency.claim(conn, USER, KEY, FP, message_id=msgid(1))
    set_now(start + idempotency.STALE_AFTER + timedelta(minutes=1))

    with pytest.raises(IdempotencyConflict, match="different request"):
        idempotency.claim(conn, USER, KEY, OTHER_FP, message_id=msgid(2))


def test_takeover_then_complete_replays_to_later_repeats(
    conn: db.Connection, set_now: Callable[[datetime], None]
) -> None:
    start = datetime(2030, 1, 1, 12, 0)
    set_now(start)
    idempotency.claim(conn, USER, KEY, FP, message_id=msgid(1))
    set_now(start + timedelta(hours=1))
    assert idempotency.claim(conn, USER, KEY, FP, message_id=msgid(2)).resume_message_id == msgid(1)

    idempotency.complete(conn, USER, KEY, status=200, body=RESPONSE)

    assert idempotency.claim(conn, USER, KEY, FP, message_id=msgid(3)).replay == RESPONSE


# -- release, complete, stored_message_id ------------------------------------------------------------


def test_release_frees_the_key_for_a_retry(conn: db.Connection) -> None:
    idempotency.claim(conn, USER, KEY, FP, message_id=msgid(1))

    idempotency.release(conn, USER, KEY)

    assert stored(conn) is None
    assert idempotency.claim(conn, USER, KEY, FP, message_id=msgid(2)) == idempotency.Claim(key=KEY)
    assert idempotency.stored_message_id(conn, USER, KEY) == msgid(2)


def test_release_never_deletes_a_succeeded_row(conn: db.Connection) -> None:
    idempotency.claim(conn, USER, KEY, FP, message_id=msgid(1))
    idempotency.complete(conn, USER, KEY, status=200, body=RESPONSE)

    idempotency.release(conn, USER, KEY)

    assert idempotency.claim(conn, USER, KEY, FP, message_id=msgid(2)).replay == RESPONSE


def test_release_maybe_sent_lets_the_retry_take_over_at_once(conn: db.Connection) -> None:
    idempotency.claim(conn, USER, KEY, FP, message_id=msgid(1))

    idempotency.release(conn, USER, KEY, maybe_sent=True)

    assert idempotency.claim(conn, USER, KEY, FP, message_id=msgid(2)).resume_message_id == msgid(1)


def test_release_maybe_sent_still_refuses_a_different_request(conn: db.Connection) -> None:
    idempotency.claim(conn, USER, KEY, FP, message_id=msgid(1))
    idempotency.release(conn, USER, KEY, maybe_sent=True)

    with pytest.raises(IdempotencyConflict, match="different request"):
        idempotency.claim(conn, USER, KEY, OTHER_FP, message_id=msgid(2))


def test_complete_without_a_claim_logs_and_does_not_raise(conn: db.Connection, log_lines: list[str]) -> None:
    idempotency.complete(conn, USER, KEY, status=200, body=RESPONSE)

    assert stored(conn) is None
    assert any('"WARNING"' in line and "idempotency record" in line for line in log_lines)
    assert not any(KEY in line for line in log_lines)


def test_complete_does_not_overwrite_a_finished_response(conn: db.Connection) -> None:
    idempotency.claim(conn, USER, KEY, FP, message_id=msgid(1))
    idempotency.complete(conn, USER, KEY, status=200, body=RESPONSE)

    idempotency.complete(conn, USER, KEY, status=200, body={"id": "other"})

    assert idempotency.claim(conn, USER, KEY, FP, message_id=msgid(2)).replay == RESPONSE


def test_stored_message_id_of_unknown_key_is_none(conn: db.Connection) -> None:
    assert idempotency.stored_message_id(conn, USER, "never-used") is None


# -- purge ------------------------------------------------------------------------------------------


def test_purge_expired_deletes_only_expired_rows(
    conn: db.Connection, set_now: Callable[[datetime], None]
) -> None:
    start = datetime(2030, 1, 1, 12, 0)
    set_now(start)
    for n in range(3):
        idempotency.claim(conn, USER, f"old-{n}", FP, message_id=msgid(n))
    set_now(start + timedelta(hours=12))
    idempotency.claim(conn, USER, "young", FP, message_id=msgid(9))
    set_now(start + idempotency.TTL + timedelta(seconds=1))

    assert idempotency.purge_expired(conn, limit=2) == 2
    assert idempotency.purge_expired(conn) == 1
    assert idempotency.purge_expired(conn) == 0
    keys = [row["idempotency_key"] for row in conn.run("SELECT idempotency_key FROM gmail_idempotency")]
    assert keys == ["young"]


def test_purge_expired_with_zero_limit_deletes_nothing(conn: db.Connection) -> None:
    assert idempotency.purge_expired(conn, limit=0) == 0


# -- concurrency ------------------------------------------------------------------------------------


def race(count: int, attempt: Callable[[db.Connection, int], Any]) -> list[Any]:
    """Runs ``attempt(conn, n)`` in ``count`` threads, each on its own connection, released together.

    Returns each thread's result or the exception it raised.
    """
    results: list[Any] = [None] * count
    barrier = threading.Barrier(count)

    def run(n: int) -> None:
        with db.connection() as own:
            barrier.wait(timeout=10)
            try:
                results[n] = attempt(own, n)
            except Exception as exc:  # collected for the test to judge
                results[n] = exc

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


@pytest.mark.parametrize("round_", range(5))
def test_two_concurrent_claims_of_one_key_exactly_one_wins(conn: db.Connection, round_: int) -> None:
    key = f"race-{round_}"

    results = race(2, lambda own, n: idempotency.claim(own, USER, key, FP, message_id=msgid(n)))

    winners = [result for result in results if isinstance(result, idempotency.Claim)]
    losers = [result for result in results if isinstance(result, IdempotencyConflict)]
    assert len(winners) == 1, results
    assert len(losers) == 1, results
    assert winners[0] == idempotency.Claim(key=key)
    assert idempotency.stored_message_id(conn, USER, key) == msgid(results.index(winners[0]))


def test_concurrent_takeovers_of_a_stale_row_exactly_one_wins(
    conn: db.Connection, set_now: Callable[[datetime], None]
) -> None:
    # The monkeypatched clock is process-wide, so the threads see the same "later" instant.
    start = datetime(2030, 1, 1, 12, 0)
    set_now(start)
    idempotency.claim(conn, USER, KEY, FP, message_id=msgid(0))
    set_now(start + timedelta(hours=1))

    results = race(4, lambda own, n: idempotency.claim(own, USER, KEY, FP, message_id=msgid(n + 1)))

    takers = [result for result in results if isinstance(result, idempotency.Claim)]
    assert len(takers) == 1, results
    assert takers[0].resume_message_id == msgid(0)
    assert all(isinstance(result, IdempotencyConflict) for result in results if result is not takers[0])


def test_concurrent_replacements_of_an_expired_row_exactly_one_wins(
    conn: db.Connection, set_now: Callable[[datetime], None]
) -> None:
    start = datetime(2030, 1, 1, 12, 0)
    set_now(start)
    idempotency.claim(conn, USER, KEY, FP, message_id=msgid(0))
    idempotency.complete(conn, USER, KEY, status=200, body=RESPONSE)
    set_now(start + idempotency.TTL + timedelta(minutes=1))

    results = race(4, lambda own, n: idempotency.claim(own, USER, KEY, OTHER_FP, message_id=msgid(n + 1)))

    winners = [result for result in results if isinstance(result, idempotency.Claim)]
    assert len(winners) == 1, results
    assert winners[0] == idempotency.Claim(key=KEY)
    assert all(isinstance(result, IdempotencyConflict) for result in results if result is not winners[0])


# -- database errors ---------------------------------------------------------------------------------


def test_claim_with_oversized_user_id_fails_with_the_sqlstate(conn: db.Connection) -> None:
    with pytest.raises(Internal) as caught:
        idempotency.claim(conn, "u" * 101, KEY, FP, message_id=msgid(1))

    assert caught.value.details["sqlstate"] == "22001"  # string_data_right_truncation


# -- fingerprint ------------------------------------------------------------------------------------


def test_fingerprint_is_stable_under_key_order() -> None:
    shuffled = dict(reversed(list(BODY.items())))
    nested_a = {
        "to": ["a@x"],
        "attachments": [{"filename": "f", "content": "QQ==", "mime_type": "text/plain"}],
    }
    nested_b = {
        "attachments": [{"mime_type": "text/plain", "content": "QQ==", "filename": "f"}],
        "to": ["a@x"],
    }

    assert idempotency.fingerprint(shuffled) == FP
    assert idempotency.fingerprint(nested_a) == idempotency.fingerprint(nested_b)


def test_fingerprint_is_sha256_hex() -> None:
    assert len(FP) == 64
    assert set(FP) <= set("0123456789abcdef")


@pytest.mark.parametrize(
    "change",
    [
        {"body": "hello!"},
        {"subject": "안녕"},
        {"robeing_id": "robeing-1"},
        {"to": ["a@example.com"]},
        {"cc": None},
        {"user_id": "other"},
    ],
    ids=["body", "subject", "robeing_id", "to_as_list", "null_field_added", "user_id"],
)
def test_fingerprint_differs_for_different_requests(change: dict[str, Any]) -> None:
    assert idempotency.fingerprint({**BODY, **change}) != FP


def test_fingerprint_of_non_ascii_matches_utf8_canonical_json() -> None:
    import hashlib

    expected = hashlib.sha256('{"subject":"안녕"}'.encode()).hexdigest()

    assert idempotency.fingerprint({"subject": "안녕"}) == expected


# -- validate_key -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("a", "a"),
        ("3f1c2a9e-0d4b-4c1e-9f6a-2b7d8e9f0a1b", "3f1c2a9e-0d4b-4c1e-9f6a-2b7d8e9f0a1b"),
        ("k" * 255, "k" * 255),
        ("  padded\t", "padded"),
        ("with inner space ~!", "with inner space ~!"),
    ],
    ids=["absent", "one_char", "uuid", "max_length", "ows_stripped", "printable_punctuation"],
)
def test_validate_key_accepts(value: str | None, expected: str | None) -> None:
    assert idempotency.validate_key(value) == expected


@pytest.mark.parametrize(
    "value",
    ["", "   ", "k" * 256, "key\x00", "key\nnext", "key\x7f", "키", "café"],
    ids=["empty", "blank", "too_long", "nul", "newline", "del", "korean", "latin1"],
)
def test_validate_key_rejects(value: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        idempotency.validate_key(value)

    assert idempotency.KEY_HEADER in caught.value.message
    assert caught.value.status == 400
