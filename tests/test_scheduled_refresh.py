"""The scheduled run at scale: the due set through one index, the activity rule, the daily check of idle
tokens, and slices (inline, and fanned out over Cloud Tasks) that never refresh a token twice."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest

from devtools.fakes.cloud_tasks import FakeCloudTasks
from shared import clock
from shared.tokens import scheduled, sql
from tests.conftest import insert_row, row

DAY = timedelta(days=1)


@pytest.fixture
def now(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[timedelta], datetime]]:
    """Moves the project's one clock forward by a delta from the real now; returns the naive-UTC instant."""
    start = clock.to_naive_utc(clock.utcnow())
    real_utcnow = clock.utcnow

    def move(delta: timedelta) -> datetime:
        moved = start + delta
        monkeypatch.setattr(clock, "utcnow", lambda: moved.replace(tzinfo=clock.UTC))
        return moved

    yield move
    monkeypatch.setattr(clock, "utcnow", real_utcnow)


def run(client: Callable[[str], Any], **body: Any) -> dict[str, Any]:
    response = client("refresh_tokens").post("/", json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    result: dict[str, Any] = response.get_json()
    return result


def use(client: Callable[[str], Any], user_id: str) -> None:
    """A robeing's call that uses the user's token (a list, through FakeGmail)."""
    response = client("list_emails").get(f"/?user_id={user_id}")
    assert response.status_code == 200, response.get_data(as_text=True)


# -- which rows are due ------------------------------------------------------------------------------


def test_a_shadowed_duplicate_is_never_refreshed_and_is_put_off_a_day(
    client, conn, token_endpoint, user_token
):
    old = user_token("twice", expires_in=-60, updated_at=datetime(2024, 1, 1))
    new = user_token("twice", expires_in=-60)
    old_before = row(conn, old)

    assert run(client) == {"checked": 1, "refreshed": 1, "skipped": 0, "failed": []}

    shadowed = row(conn, old)
    assert shadowed["token_data"] == old_before["token_data"]
    assert shadowed["updated_at"] == old_before["updated_at"]  # still the loser
    assert shadowed["check_at"] > clock.to_naive_utc(clock.utcnow()) + DAY - timedelta(minutes=1)
    assert row(conn, new)["expiry"] > clock.to_naive_utc(clock.utcnow()) + timedelta(minutes=50)
    assert token_endpoint.count("POST", "/token") == 1


def test_duplicates_per_robeing_each_have_their_own_winner(client, conn, token_endpoint, user_token):
    user_token("shared", equipped_to="rb-1")
    user_token("shared", equipped_to="rb-2")
    user_token("shared", equipped_to=None)
    assert run(client)["refreshed"] == 3


def test_a_token_google_refused_is_not_retried_until_a_new_one_is_stored(
    client, conn, token_endpoint, user_token, now
):
    refused = user_token("gone")
    token_endpoint.revoke(row(conn, refused)["token_data"]["refresh_token"])
    assert run(client)["failed"] == [{"user_id": "gone", "code": "reauth_required"}]
    calls = token_endpoint.count("POST", "/token")

    now(2 * DAY)  # looked at daily, but the marker still holds: no call to Google
    assert run(client)["checked"] == 0
    assert token_endpoint.count("POST", "/token") == calls

    # Someone stores a new token in the row: the marker lapses, and the next daily look refreshes it.
    fresh_refresh = "1//new-refresh-token-from-reconnect"
    token_endpoint.add_refresh_token(fresh_refresh)
    conn.run(
        "UPDATE gmail_token SET token_data = "
        "jsonb_set(token_data, '{refresh_token}', to_jsonb(CAST(:rt AS TEXT))) WHERE id = :id",
        rt=fresh_refresh,
        id=refused,
    )
    now(4 * DAY)
    assert run(client)["refreshed"] == 1


def test_the_winner_comparison_agrees_with_the_lookup_order(conn):
    """sql.beats (one probe per due row) and sql.WINNER_ORDER (the per-call lookup) pick the same row."""
    moments = [None, datetime(2025, 1, 1), datetime(2025, 1, 1), datetime(2025, 6, 1)]
    generator = random.Random(7)
    for group in range(40):
        for _ in range(generator.randint(1, 4)):
            insert_row(conn, f"u{group}", updated_at=generator.choice(moments), expiry=None)
        if generator.random() < 0.5:
            conn.run("UPDATE gmail_token SET updated_at = NULL WHERE user_id = :u", u=f"u{group}")
    by_order = {
        r["user_id"]: r["id"]
        for r in conn.run(
            f"SELECT DISTINCT ON (user_id) user_id, id FROM gmail_token WHERE is_equipped "
            f"ORDER BY user_id, {sql.WINNER_ORDER}"
        )
    }
    by_beats = {
        r["user_id"]: r["id"]
        for r in conn.run(
            "SELECT t.user_id, t.id FROM gmail_token t WHERE t.is_equipped AND NOT EXISTS (SELECT 1 "
            "FROM gmail_token w WHERE w.is_equipped AND w.user_id = t.user_id AND w.id <> t.id "
            f"AND {sql.beats('w', 't')})"
        )
    }
    assert by_beats == by_order


def test_the_due_set_is_read_through_the_due_index(conn):
    """With most rows not due (the production shape), the due set is a range of the due index."""
    later = clock.to_naive_utc(clock.utcnow()) + DAY
    conn.run(
        "INSERT INTO gmail_token (user_id, is_equipped, expiry, check_at, updated_at) "
        "SELECT 'u' || n, true, :later, :later, :later FROM generate_series(1, 5000) AS n",
        later=later,
    )
    conn.run("ANALYZE gmail_token")
    plan = "\n".join(
        str(next(iter(r.values())))
        for r in conn.run(
            f"EXPLAIN SELECT t.id FROM gmail_token t WHERE t.is_equipped AND {sql.IS_DUE}",
            deadline=clock.to_naive_utc(clock.utcnow()),
        )
    )
    assert "gmail_token_equipped_due_idx" in plan, plan
    assert "Seq Scan" not in plan, plan


# -- the activity rule ------------------------------------------------------------------------------------


def test_a_token_in_use_is_kept_fresh_and_an_idle_one_is_checked_once_a_day(
    client, conn, token_endpoint, user_token, gmail, now
):
    active = user_token("active")
    idle = user_token("idle")
    use(client, "active")  # a call: last_used_at is written, and this refresh schedules by expiry
    assert row(conn, active)["last_used_at"] is not None
    assert row(conn, idle)["last_used_at"] is None

    assert run(client) == {"checked": 1, "refreshed": 1, "skipped": 0, "failed": []}  # idle: its daily check
    assert row(conn, idle)["check_at"] > row(conn, idle)["expiry"] + timedelta(hours=20)

    # Every hour for a day: the active token is refreshed before each expiry, the idle one never.
    refreshed: dict[str, int] = {"active": 0, "idle": 0}
    for hour in range(1, 24):
        now(timedelta(hours=hour))
        before = {name: row(conn, row_id)["expiry"] for name, row_id in (("active", active), ("idle", idle))}
        run(client)
        for name, row_id in (("active", active), ("idle", idle)):
            refreshed[name] += row(conn, row_id)["expiry"] != before[name]
    assert refreshed["active"] >= 22
    assert refreshed["idle"] == 0

    now(timedelta(hours=24, minutes=30))  # a day after its check: the idle token is looked at again
    before_idle = row(conn, idle)["expiry"]
    run(client)
    assert row(conn, idle)["expiry"] != before_idle


def test_an_idle_token_becomes_active_when_a_call_needs_it(
    client, conn, token_endpoint, user_token, gmail, now
):
    idle = user_token("sleepy")
    run(client)  # its daily check
    now(timedelta(hours=3))  # expired now, but not due for the scheduled run until tomorrow
    assert run(client)["checked"] == 0

    use(client, "sleepy")  # the call refreshes it itself, and from now on the run keeps it fresh
    assert row(conn, idle)["check_at"] == row(conn, idle)["expiry"]
    now(timedelta(hours=3, minutes=55))
    assert run(client)["refreshed"] == 1


def test_a_token_unused_for_active_days_goes_back_to_daily_checks(
    client, conn, token_endpoint, user_token, gmail, now
):
    token = user_token("drifter")
    use(client, "drifter")
    now(timedelta(days=8))
    run(client)  # refreshed (it was due by expiry), but last used 8 days ago: next look in a day
    assert row(conn, token)["check_at"] > row(conn, token)["expiry"] + timedelta(hours=20)


def test_use_is_written_at_most_once_an_hour(client, conn, token_endpoint, user_token, gmail, now):
    token = user_token("chatty", expires_in=3600)
    use(client, "chatty")
    first = row(conn, token)["last_used_at"]
    now(timedelta(minutes=30))
    use(client, "chatty")
    assert row(conn, token)["last_used_at"] == first
    later = now(timedelta(minutes=90))
    use(client, "chatty")
    assert row(conn, token)["last_used_at"] == later


# -- slices ------------------------------------------------------------------------------------------------


def test_a_retried_slice_refreshes_nothing_twice(client, conn, token_endpoint, user_token):
    ids = [user_token(f"slice-{index}") for index in range(6)]
    first = run(client, row_ids=ids)
    assert first == {"checked": 6, "refreshed": 6, "skipped": 0, "failed": []}
    again = run(client, row_ids=ids)  # Cloud Tasks delivered the same task twice
    assert again == {"checked": 6, "refreshed": 0, "skipped": 6, "failed": []}
    assert all(count == 1 for count in token_endpoint.calls_by_refresh_token.values())


def test_a_slice_refreshes_only_rows_that_are_still_due(client, conn, token_endpoint, user_token):
    due = user_token("due-now")
    fresh = user_token("fresh-now", expires_in=7200)
    assert run(client, row_ids=[due, fresh, 999_999]) == {
        "checked": 3,
        "refreshed": 1,
        "skipped": 2,
        "failed": [],
    }


@pytest.mark.parametrize(
    "body",
    [{"row_ids": []}, {"row_ids": [0]}, {"row_ids": ["1"]}, {"row_ids": [1], "user_id": "a"}],
)
def test_bad_slices_are_refused(client, body):
    response = client("refresh_tokens").post("/", json=body)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_argument"


def test_a_large_due_set_fans_out_over_cloud_tasks_and_each_token_is_refreshed_once(
    client, conn, token_endpoint, user_token, monkeypatch
):
    ids = [user_token(f"fan-{index}") for index in range(7)]
    monkeypatch.setattr(scheduled, "SLICE_SIZE", 3)
    monkeypatch.setattr(scheduled, "INLINE_MAX_TOKENS", 5)
    with FakeCloudTasks() as tasks:
        monkeypatch.setenv("CLOUD_TASKS_ENDPOINT", tasks.url)
        monkeypatch.setenv("REFRESH_TASKS_QUEUE", "projects/p/locations/l/queues/refresh")
        monkeypatch.setenv("REFRESH_TASKS_URL", "https://refresh-tokens.example.run.app")
        monkeypatch.setenv("REFRESH_TASKS_SERVICE_ACCOUNT", "scheduler@p.iam.gserviceaccount.com")

        assert run(client) == {"checked": 0, "refreshed": 0, "skipped": 0, "failed": []}
        assert token_endpoint.count("POST", "/token") == 0
        bodies = tasks.bodies()
        queued = [task for _, task in tasks.tasks]

    assert [len(body["row_ids"]) for body in bodies] == [3, 3, 1]
    assert sorted(itertools.chain.from_iterable(body["row_ids"] for body in bodies)) == sorted(ids)
    assert all(task["httpRequest"]["url"] == "https://refresh-tokens.example.run.app" for task in queued)
    assert all(
        task["httpRequest"]["oidcToken"]
        == {
            "serviceAccountEmail": "scheduler@p.iam.gserviceaccount.com",
            "audience": "https://refresh-tokens.example.run.app",
        }
        for task in queued
    )
    # Cloud Tasks delivers each slice (the second one twice, as a retry would).
    for body in [*bodies, bodies[1]]:
        run(client, **body)
    assert all(count == 1 for count in token_endpoint.calls_by_refresh_token.values())
    assert token_endpoint.count("POST", "/token") == 7


def test_cloud_tasks_down_leaves_the_tokens_due_for_the_next_run(client, conn, user_token, monkeypatch):
    for index in range(4):
        user_token(f"later-{index}")
    monkeypatch.setattr(scheduled, "INLINE_MAX_TOKENS", 1)
    with FakeCloudTasks() as tasks:
        tasks.fail_next(503)
        monkeypatch.setenv("CLOUD_TASKS_ENDPOINT", tasks.url)
        monkeypatch.setenv("REFRESH_TASKS_QUEUE", "projects/p/locations/l/queues/refresh")
        monkeypatch.setenv("REFRESH_TASKS_URL", "https://refresh-tokens.example.run.app")
        monkeypatch.setenv("REFRESH_TASKS_SERVICE_ACCOUNT", "scheduler@p.iam.gserviceaccount.com")
        response = client("refresh_tokens").post("/", json={})
    assert response.status_code == 503
    due = conn.one(
        f"SELECT count(*) AS n FROM gmail_token WHERE is_equipped AND {sql.IS_DUE}",
        deadline=clock.to_naive_utc(clock.utcnow()),
    )
    assert due == {"n": 4}


def test_half_the_fan_out_settings_is_a_config_error(client, monkeypatch):
    monkeypatch.setenv("REFRESH_TASKS_QUEUE", "projects/p/locations/l/queues/refresh")
    response = client("refresh_tokens").post("/", json={})
    assert response.status_code == 503
    assert "REFRESH_TASKS_URL" in response.get_json()["error"]["message"]
