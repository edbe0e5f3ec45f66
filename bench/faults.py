"""Faults: the functions behind functions-framework's real server while things around them break.

    python -m bench.faults [--only a,b,c,d,e]

Scenarios (each prints PASS or FAIL with its figures; the exit status is 1 when any fails):

(a) PostgreSQL stopped (``pg_ctl stop -m fast``) during traffic and started again ~3 s later: requests
    in the gap answer 503 quickly, everything answers 200 again afterwards without a restart of the
    functions, no send is duplicated or lost, and every ``gmail_token`` row is intact and consistent
    (tokens expire every 2 s during the run, so refreshes are in flight when the server goes down).
(b) Google's token endpoint failing during a scheduled refresh of 500 tokens: every request naming 40
    "doomed" refresh tokens and 10 % of the others answer 500 (google-auth retries those three times).
    The failures are reported, the next run (two at once) refreshes exactly those, none twice.
(c) Gmail 429 storms (``Retry-After: 1``) and 5xx (before and after storing the message) during sends,
    with every message retried by its client under the same Idempotency-Key: answers are 200, 429
    with Retry-After, or 503; every message ends up sent exactly once and no 200 is lost.
(d) Secret Manager down at cold start (``DB_URL_SECRET``, a fresh functions-framework process): the
    first requests answer 503 in bounded time, then 200 once it is back, without a restart, and the
    secret is read once.
(e) A slow database: a competing connection holds the row lock of a user's expired token (a send
    for that user must refresh it), then an ACCESS EXCLUSIVE lock on ``gmail_token``: the blocked
    requests answer 503 within the lock timeout, other users are unaffected, and all is well after.

Everything runs on 127.0.0.1 (embedded PostgreSQL in a temp dir, fakes in a child process, one
functions-framework process per target) and is stopped at the end, on an error or on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import requests

from bench.load import (
    DATABASE,
    MARGIN_S,
    Check,
    EmbeddedPostgres,
    Fakes,
    Outcome,
    Server,
    User,
    call,
    check_rows,
    database,
    new_marker,
    progress,
    raise_on_sigterm,
    raw_connection,
    reset_tables,
    seed_users,
    send,
    servers,
)
from shared import config, db

TARGETS = ["send_email", "list_emails", "token_status", "refresh_tokens"]
LOCK_TIMEOUT_S = db.LOCK_TIMEOUT_MS / 1000
STATEMENT_TIMEOUT_S = db.STATEMENT_TIMEOUT_MS / 1000
# How much later than a server-side bound an answer may come: the request's own work, a loaded 2-core
# machine, the client. Generous on purpose: the claim is "bounded", not "fast".
SLACK_S = 3.0
# "Quickly": a database that is down is refused at once; 2 s leaves room for a request caught mid-way.
QUICK_503_S = 2.0
SECRET_PROJECT = "bench-project"
SECRET_NAME = "skill-email-db-url"


@dataclass
class Context:
    pg: EmbeddedPostgres
    fakes: Fakes
    urls: dict[str, str]
    env: dict[str, str]
    log_dir: Path
    stop: threading.Event


@dataclass
class Result:
    """One scenario's outcome: figures to print and checks that decide PASS or FAIL."""

    key: str
    title: str
    figures: list[tuple[str, str]] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(check.ok for check in self.checks)

    def figure(self, label: str, value: str) -> None:
        self.figures.append((label, value))

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append(Check(name, ok, detail))


# -- helpers ----------------------------------------------------------------------------------------


def at_once(jobs: list[Callable[[requests.Session], Outcome]], timeout: float = 120.0) -> list[Outcome]:
    """Runs every job in its own thread and session, released together by a barrier."""
    results: list[Outcome] = []
    barrier = threading.Barrier(len(jobs), timeout=30)

    def run(job: Callable[[requests.Session], Outcome]) -> None:
        with requests.Session() as session:
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait()
            results.append(job(session))

    threads = [threading.Thread(target=run, args=(job,), daemon=True) for job in jobs]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    return results


def status_of(urls: dict[str, str], user: User) -> Callable[[requests.Session], Outcome]:
    return lambda session: call(
        session, "token_status", urls["token_status"], params={"user_id": user.user_id}
    )


def sending(urls: dict[str, str], user: User, marker: str, key: str) -> Callable[[requests.Session], Outcome]:
    return lambda session: send(session, urls["send_email"], user, marker, key)


def tally(outcomes: list[Outcome]) -> str:
    counts = Counter((o.status, o.code) for o in outcomes)
    return ", ".join(f"{s}{' ' + c if c else ''} x{n}" for (s, c), n in sorted(counts.items())) or "none"


def by_status(outcomes: list[Outcome], status: int) -> list[Outcome]:
    return [o for o in outcomes if o.status == status]


def count_in_progress(ctx: Context) -> int:
    conn = raw_connection(ctx.pg, "bench-admin")
    try:
        return int(conn.run("SELECT count(*) FROM gmail_idempotency WHERE state = 'in_progress'")[0][0])
    finally:
        conn.close()


def max_latency(outcomes: list[Outcome]) -> float:
    return max((o.latency for o in outcomes), default=0.0)


def sends_verified(result: Result, fakes: Fakes, outcomes: list[Outcome]) -> Counter[str]:
    """No duplicate marker in Gmail, every 200's marker there; returns the marker counts."""
    counts = Counter(marker for marker in fakes.call("sent_markers") if marker)
    ok_markers = {o.marker for o in outcomes if o.target == "send_email" and o.status == 200 and o.marker}
    lost = [marker for marker in ok_markers if counts[marker] == 0]
    duplicates = [
        marker for marker in ok_markers | {o.marker for o in outcomes if o.marker} if counts[marker] > 1
    ]
    result.check(
        "no lost 200", not lost, f"{len(ok_markers)} messages answered 200, {len(lost)} not in Gmail"
    )
    result.check("no duplicate send", not duplicates, f"{len(duplicates)} messages sent more than once")
    return counts


def rows_verified(result: Result, ctx: Context, expected_rows: int) -> None:
    issued = ctx.fakes.call("oauth_stats")["issued"]
    checked, problems = check_rows(ctx.pg, issued)
    result.check(
        "every gmail_token row intact",
        not problems and checked == expected_rows,
        f"{checked} rows: "
        + (
            "; ".join(problems[:3])
            if problems
            else "JSON objects, expiry set, token issued for its refresh token"
        ),
    )


def prepare(ctx: Context, *, expires_in: int) -> None:
    reset_tables(ctx.pg)
    ctx.fakes.call("clear_failures")
    ctx.fakes.call("set", name="oauth", attr="expires_in", value=expires_in)
    ctx.fakes.call("set", name="oauth", attr="doomed", value=[])
    ctx.fakes.call("set", name="oauth", attr="flaky_share", value=0.0)


# -- (a) PostgreSQL down and back ----------------------------------------------------------------------


def scenario_a(ctx: Context) -> Result:
    result = Result("a", "PostgreSQL stopped during traffic, started again ~3 s later")
    token_life = 2
    prepare(ctx, expires_in=MARGIN_S + token_life)
    users = seed_users(ctx.pg, ctx.fakes, "fault-a-", 20, expired_share=0.5, fresh_for=(0.5, token_life))
    outcomes: list[Outcome] = []
    owner: dict[str, User] = {}  # marker -> the user it was sent for
    end = time.monotonic() + 11.0

    def client(index: int) -> None:
        rng = random.Random(index)
        with requests.Session() as session:
            while time.monotonic() < end and not ctx.stop.is_set():
                user = rng.choice(users)
                if index % 2:
                    marker = new_marker()
                    owner[marker] = user
                    outcome = send(session, ctx.urls["send_email"], user, marker, uuid.uuid4().hex)
                else:
                    outcome = status_of(ctx.urls, user)(session)
                outcomes.append(outcome)
                time.sleep(0.02 if outcome.status == 200 else 0.2)  # a client backs off after a 503

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(24)]
    for thread in threads:
        thread.start()
    time.sleep(3.0)
    down_begin = time.monotonic()
    ctx.pg.stop("fast")
    down = time.monotonic()
    time.sleep(3.0)
    up_begin = time.monotonic()
    ctx.pg.start()
    up = time.monotonic()
    for thread in threads:
        thread.join(timeout=max(0.0, end - time.monotonic()) + 70)

    in_gap = [o for o in outcomes if o.started >= down and o.started + o.latency <= up_begin]
    after = [o for o in outcomes if o.started >= up + 1.0]
    unavailable = [o for o in outcomes if o.status == 503]
    odd = [o for o in outcomes if o.status not in (200, 503) or (o.status == 503 and o.code != "unavailable")]
    result.figure("requests", f"{len(outcomes)}: {tally(outcomes)}")
    result.figure(
        "outage",
        f"stop took {down - down_begin:.2f} s, down {up_begin - down:.1f} s, start {up - up_begin:.2f} s",
    )
    result.figure("in the gap", f"{len(in_gap)} requests: {tally(in_gap)}")
    result.figure(
        "503 latency", f"max {max_latency(unavailable) * 1000:.0f} ms over {len(unavailable)} answers"
    )
    result.figure("1 s after restart", f"{len(after)} requests: {tally(after)}")
    result.check(
        "gap answers 503 unavailable, quickly",
        bool(in_gap)
        and all(o.status == 503 and o.code == "unavailable" for o in in_gap)
        and max_latency(unavailable) <= QUICK_503_S,
        f"{len(in_gap)} in the gap; 503s within {max_latency(unavailable):.2f} s (bound {QUICK_503_S} s)",
    )
    result.check("only 200 or 503", not odd, f"{len(odd)} other answers" + (f": {tally(odd)}" if odd else ""))
    result.check(
        "everything works again",
        bool(after) and all(o.status == 200 for o in after),
        f"{len(after)} requests",
    )

    # The sends that failed are retried once with their key: 200 (sent now, or found sent), or 409 when
    # the first attempt's record was left in progress because the database died under it.
    failed = [o for o in outcomes if o.target == "send_email" and o.status != 200 and o.key and o.marker]
    with ThreadPoolExecutor(max_workers=12) as pool:
        retries = list(
            pool.map(
                lambda o: send(requests.Session(), ctx.urls["send_email"], owner[o.marker], o.marker, o.key),
                failed,
            )
        )
    stuck = count_in_progress(ctx)
    result.figure("failed sends retried", f"{len(retries)} with the same key: {tally(retries)}")
    result.figure("keys left in progress", f"{stuck} (the database died between claim and completion)")
    result.check(
        "retries answer 200 or 409",
        all(o.status == 200 or o.code == "idempotency_conflict" for o in retries),
        tally(retries),
    )
    sends_verified(result, ctx.fakes, outcomes + retries)
    rows_verified(result, ctx, len(users))
    return result


# -- (b) the token endpoint failing during the scheduled refresh ----------------------------------------


def refresh_run(ctx: Context, session: requests.Session) -> Outcome:
    return call(session, "refresh_tokens", ctx.urls["refresh_tokens"], method="POST", body={})


def scenario_b(ctx: Context) -> Result:
    result = Result("b", "token endpoint failing during a scheduled refresh of 500 tokens")
    # Granted tokens live an hour, so a token refreshed by one run is not due (900 s window) in the next.
    prepare(ctx, expires_in=3599)
    users = seed_users(
        ctx.pg, ctx.fakes, "fault-b-", 500, expired_share=0.1, fresh_for=(10, 500), issue_access=False
    )
    by_token = {user.refresh_token: user.user_id for user in users}
    doomed = {user.refresh_token for user in random.Random(5).sample(users, 40)}
    ctx.fakes.call("set", name="oauth", attr="doomed", value=sorted(doomed))
    ctx.fakes.call("set", name="oauth", attr="flaky_share", value=0.10)
    with requests.Session() as session:
        first = refresh_run(ctx, session)
    stats1 = ctx.fakes.call("oauth_stats")
    ctx.fakes.call("set", name="oauth", attr="doomed", value=[])
    ctx.fakes.call("set", name="oauth", attr="flaky_share", value=0.0)
    second = at_once([lambda session: refresh_run(ctx, session)] * 2)
    with requests.Session() as session:
        third = refresh_run(ctx, session)
    stats2 = ctx.fakes.call("oauth_stats")

    summary1 = first.body if first.status == 200 else {}
    failed1 = {item.get("user_id") for item in summary1.get("failed", [])}
    codes1 = Counter(item.get("code") for item in summary1.get("failed", []))
    granted1 = {by_token[token] for token, issued in stats1["issued"].items() if token in by_token and issued}
    not_granted1 = {user.user_id for user in users} - granted1
    doomed_users = {by_token[token] for token in doomed}
    calls1 = sum(n for token, n in stats1["calls"].items() if token in by_token)
    result.figure(
        "run 1",
        f"{first.status} in {first.latency:.1f} s: checked {summary1.get('checked')}, refreshed "
        f"{summary1.get('refreshed')}, skipped {summary1.get('skipped')}, failed {len(failed1)} "
        f"({', '.join(f'{c} x{n}' for c, n in codes1.items())})",
    )
    result.figure(
        "token endpoint, run 1",
        f"{calls1} requests, {stats1['injected']} answered 500 (40 doomed tokens, 10 % of the rest)",
    )
    summaries2 = [o.body for o in second if o.status == 200]
    refreshed2 = sum(s.get("refreshed", 0) for s in summaries2)
    result.figure(
        "run 2 (two at once)",
        "; ".join(
            f"{o.status} in {o.latency:.1f} s: checked {o.body.get('checked')}, refreshed "
            f"{o.body.get('refreshed')}, skipped {o.body.get('skipped')}, "
            f"failed {len(o.body.get('failed', ''))}"
            for o in second
        ),
    )
    result.figure("run 3", f"{third.status}: checked {third.body.get('checked')}")
    grants = {by_token[token]: len(issued) for token, issued in stats2["issued"].items() if token in by_token}
    twice = sorted(user for user, n in grants.items() if n > 1)
    never = sorted({user.user_id for user in users} - set(grants))
    result.check(
        "failures reported, exactly",
        first.status == 200
        and summary1.get("checked") == 500
        and failed1 == not_granted1
        and doomed_users <= failed1,
        f"{len(failed1)} reported failed = the {len(not_granted1)} the endpoint never granted "
        f"(all 40 doomed among them); {summary1.get('refreshed')} refreshed",
    )
    result.check(
        "next run refreshes them",
        all(o.status == 200 and not o.body.get("failed") for o in second) and refreshed2 == len(failed1),
        f"{refreshed2} refreshed by the two concurrent runs, for {len(failed1)} failed",
    )
    result.check("none refreshed twice", not twice and not never, f"{len(twice)} twice, {len(never)} never")
    result.check(
        "then nothing is due",
        third.status == 200 and third.body.get("checked") == 0,
        f"checked {third.body.get('checked')}",
    )
    rows_verified(result, ctx, len(users))
    return result


# -- (c) Gmail 429 storms and 5xx during sends --------------------------------------------------------


def scenario_c(ctx: Context) -> Result:
    result = Result("c", "Gmail 429 storms and 5xx during sends")
    prepare(ctx, expires_in=3599)
    users = seed_users(ctx.pg, ctx.fakes, "fault-c-", 10, expired_share=0.0, fresh_for=(600, 900))
    send_path = r"/messages/send$"
    calls_before = ctx.fakes.call("gmail_count", method="POST", path_regex=send_path)
    storm = {"headers": {"Retry-After": "1"}}
    ctx.fakes.call("gmail_fail_next", path_regex=send_path, status=429, count=80, **storm)
    ctx.fakes.call("gmail_fail_next", path_regex=r"/messages$", status=429, count=30, method="GET", **storm)
    outcomes: list[Outcome] = []
    finished: dict[str, int] = {}  # marker -> attempts it took to get a 200
    unfinished: list[str] = []
    end = time.monotonic() + 10.0

    def sender(index: int) -> None:
        rng = random.Random(index)
        with requests.Session() as session:
            while time.monotonic() < end and not ctx.stop.is_set():
                user, marker, key = rng.choice(users), new_marker(), uuid.uuid4().hex
                for attempt in range(1, 9):  # bounded: a message gets at most 8 attempts
                    outcome = send(session, ctx.urls["send_email"], user, marker, key)
                    outcomes.append(outcome)
                    if outcome.status == 200:
                        finished[marker] = attempt
                        break
                    wait = float(outcome.retry_after or 1) if outcome.status == 429 else 1.0
                    time.sleep(min(wait, 5.0))
                else:
                    unfinished.append(marker)

    def lister(index: int) -> None:
        with requests.Session() as session:
            while time.monotonic() < end and not ctx.stop.is_set():
                params = {"user_id": users[index].user_id, "max_results": 5}
                outcomes.append(call(session, "list_emails", ctx.urls["list_emails"], params=params))
                time.sleep(0.2)

    threads = [threading.Thread(target=sender, args=(i,), daemon=True) for i in range(16)]
    threads += [threading.Thread(target=lister, args=(i,), daemon=True) for i in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(4.0)
    # 5xx: six sends refused before Gmail stored them, six stored and then answered 500.
    ctx.fakes.call("gmail_fail_next", path_regex=send_path, status=503, count=6)
    ctx.fakes.call("gmail_fail_after_send", status=500, count=6)
    time.sleep(3.0)
    ctx.fakes.call("gmail_fail_next", path_regex=send_path, status=429, count=40, **storm)
    for thread in threads:
        thread.join(timeout=max(0.0, end - time.monotonic()) + 90)

    sends = [o for o in outcomes if o.target == "send_email"]
    lists = [o for o in outcomes if o.target == "list_emails"]
    limited = [o for o in outcomes if o.status == 429]
    bad_429 = [o for o in limited if o.code != "rate_limited" or not (o.retry_after or "").isdigit()]
    allowed = {(200, None), (429, "rate_limited"), (503, "unavailable")}
    odd = [o for o in outcomes if (o.status, o.code) not in allowed]
    result.figure(
        "sends", f"{len(sends)} answers for {len(finished) + len(unfinished)} messages: {tally(sends)}"
    )
    result.figure("lists", f"{len(lists)}: {tally(lists)}")
    result.figure(
        "attempts per message", ", ".join(f"{k} x{n}" for k, n in sorted(Counter(finished.values()).items()))
    )
    result.figure(
        "latency",
        f"max: 429 {max_latency(limited):.1f} s, 503 {max_latency(by_status(outcomes, 503)):.1f} s, "
        f"200 {max_latency(by_status(outcomes, 200)):.1f} s",
    )
    calls = ctx.fakes.call("gmail_count", method="POST", path_regex=send_path) - calls_before
    result.figure("Gmail send calls", f"{calls} (120 answered 429, 6 x 503 before storing, 6 x 500 after)")
    result.check(
        "answers are 200, 429 or 503", not odd, f"{len(odd)} others" + (f": {tally(odd)}" if odd else "")
    )
    result.check(
        "every 429 has Retry-After",
        bool(limited) and not bad_429,
        f"{len(limited)} x 429, values {sorted({o.retry_after for o in limited})}",
    )
    result.check(
        "every message sent in the end", not unfinished, f"{len(unfinished)} unfinished after 8 attempts"
    )
    counts = sends_verified(result, ctx.fakes, outcomes)
    once = all(counts[marker] == 1 for marker in finished)
    result.check("each message exactly once", once, f"{len(finished)} messages, each once in Gmail")
    return result


# -- (d) Secret Manager down at cold start ------------------------------------------------------------


def scenario_d(ctx: Context) -> Result:
    result = Result("d", "Secret Manager down at cold start, then back")
    prepare(ctx, expires_in=3599)
    users = seed_users(ctx.pg, ctx.fakes, "fault-d-", 1, expired_share=0.0, fresh_for=(600, 900))
    ctx.fakes.call("set_secret", project=SECRET_PROJECT, name=SECRET_NAME, value=ctx.pg.tcp_url(DATABASE))
    ctx.fakes.call("set", name="secrets", attr="down", value=True)
    env = {key: value for key, value in ctx.env.items() if key != config.DATABASE_URL}
    env.update(
        {
            config.DB_URL_SECRET: SECRET_NAME,
            config.SECRET_MANAGER_ENDPOINT: ctx.fakes.urls["secrets"],
            config.GOOGLE_CLOUD_PROJECT: SECRET_PROJECT,
        }
    )
    server = Server("token_status", env, ctx.log_dir, threads=4).start()
    try:
        listening = server.wait_listening()
        urls = {"token_status": server.url}
        with requests.Session() as session:
            down = [status_of(urls, users[0])(session) for _ in range(2)]
        down += at_once([status_of(urls, users[0])] * 4)
        before = ctx.fakes.call("secret_accesses")
        ctx.fakes.call("set", name="secrets", attr="down", value=False)
        with requests.Session() as session:
            back = [status_of(urls, users[0])(session) for _ in range(5)]
        back += at_once([status_of(urls, users[0])] * 4)
        reads = ctx.fakes.call("secret_accesses") - before
    finally:
        server.stop()
    bound = config.SECRET_TOTAL_TIMEOUT_S + SLACK_S
    result.figure("cold start", f"a fresh functions-framework process, listening after {listening:.1f} s")
    result.figure("while down", f"{len(down)} requests: {tally(down)}; max {max_latency(down):.2f} s")
    result.figure("once back", f"{len(back)} requests: {tally(back)}; max {max_latency(back):.2f} s")
    result.figure("secret reads once back", str(reads))
    result.check(
        "503 in bounded time",
        all(o.status == 503 and o.code == "unavailable" for o in down) and max_latency(down) <= bound,
        f"max {max_latency(down):.2f} s (bound: Secret Manager's "
        f"{config.SECRET_TOTAL_TIMEOUT_S:.0f} s + {SLACK_S:.0f} s)",
    )
    result.check("200 without a restart", all(o.status == 200 for o in back), tally(back))
    result.check("the secret read once, then cached", reads == 1, f"{reads} reads for {len(back)} requests")
    return result


# -- (e) a slow database: locks held by a competing connection ---------------------------------------


def scenario_e(ctx: Context) -> Result:
    result = Result("e", "slow database: a row lock, then a table lock, held by another connection")
    prepare(ctx, expires_in=3599)
    locked = seed_users(ctx.pg, ctx.fakes, "fault-e-locked-", 1, expired_share=1.0, fresh_for=(0, 0))[0]
    others = seed_users(ctx.pg, ctx.fakes, "fault-e-free-", 4, expired_share=0.0, fresh_for=(600, 900))
    # lock_timeout bounds each lock wait, but a waiter queued behind another waiter waits twice (the
    # tuple lock, then the locker's transaction) and its timer starts again: statement_timeout is the
    # ceiling of a blocked statement.
    bound = STATEMENT_TIMEOUT_S + SLACK_S
    locker = raw_connection(ctx.pg, "bench-locker")
    try:
        # 1. The row lock a slow refresh would hold: a send for that user needs the same lock.
        locker.run("BEGIN")
        locker.run("SELECT id FROM gmail_token WHERE user_id = :user_id FOR UPDATE", user_id=locked.user_id)
        keys = [uuid.uuid4().hex for _ in range(4)]
        markers = [new_marker() for _ in range(4)]
        jobs = [sending(ctx.urls, locked, marker, key) for marker, key in zip(markers, keys, strict=True)]
        jobs += [status_of(ctx.urls, locked)] * 2
        jobs += [sending(ctx.urls, user, new_marker(), uuid.uuid4().hex) for user in others]
        row_phase = at_once(jobs)
        locker.run("ROLLBACK")
        with requests.Session() as session:
            retried = [
                send(session, ctx.urls["send_email"], locked, marker, key)
                for marker, key in zip(markers, keys, strict=True)
            ]
        # 2. The whole table locked (a migration gone wrong, a long maintenance statement).
        locker.run("BEGIN")
        locker.run("LOCK TABLE gmail_token IN ACCESS EXCLUSIVE MODE")
        table_phase = at_once(
            [status_of(ctx.urls, user) for user in others]
            + [sending(ctx.urls, others[0], new_marker(), uuid.uuid4().hex)]
        )
        locker.run("ROLLBACK")
        with requests.Session() as session:
            after = [status_of(ctx.urls, user)(session) for user in [locked, *others]]
    finally:
        with contextlib.suppress(Exception):
            locker.run("ROLLBACK")
        locker.close()

    blocked = [o for o in row_phase if o.target == "send_email" and o.marker in markers]
    readers = [o for o in row_phase if o.target == "token_status"]
    free = [o for o in row_phase if o.target == "send_email" and o.marker not in markers]
    result.figure("row lock: sends for that user", f"{tally(blocked)}; {min_max(blocked)}")
    result.figure("row lock: its token_status", f"{tally(readers)}; {min_max(readers)}")
    result.figure("row lock: other users' sends", f"{tally(free)}; {min_max(free)}")
    result.figure("after release, same keys", tally(retried))
    result.figure("table lock", f"{tally(table_phase)}; {min_max(table_phase)}")
    result.figure("after release", tally(after))
    result.check(
        "blocked sends answer 503 within the database's timeouts",
        all(o.status == 503 and o.code == "unavailable" for o in blocked) and max_latency(blocked) <= bound,
        f"within {max_latency(blocked):.1f} s (lock_timeout {LOCK_TIMEOUT_S:.0f} s, statement_timeout "
        f"{STATEMENT_TIMEOUT_S:.0f} s + {SLACK_S:.0f} s)",
    )
    result.check(
        "other work unaffected by a row lock",
        all(o.status == 200 for o in readers + free) and max_latency(readers + free) < 5.0,
        f"{len(readers + free)} x 200 within {max_latency(readers + free):.1f} s",
    )
    result.check(
        "a locked table answers 503 within the database's timeouts",
        all(o.status == 503 and o.code == "unavailable" for o in table_phase)
        and max_latency(table_phase) <= bound,
        f"{len(table_phase)} requests within {max_latency(table_phase):.1f} s",
    )
    result.check(
        "all well once released",
        all(o.status == 200 for o in retried + after),
        f"{len(retried)} retried sends and {len(after)} statuses answered 200",
    )
    sends_verified(result, ctx.fakes, row_phase + retried + table_phase)
    rows_verified(result, ctx, 1 + len(others))
    return result


# -- (f) the send's bookkeeping blocked after Gmail took the message ---------------------------------


def scenario_f(ctx: Context) -> Result:
    """Gmail accepts the message, then recording the Idempotency-Key's response fails (a lock timeout):
    the request still answers 200 with the message's id, and a retry with the same key, while the record
    stays in progress, is refused (409) or replayed; it must never send the message a second time."""
    result = Result("f", "Idempotency-Key record blocked after Gmail took the message, then a retry")
    prepare(ctx, expires_in=3599)
    user = seed_users(ctx.pg, ctx.fakes, "fault-f-", 1, expired_share=0.0, fresh_for=(600, 900))[0]
    key, marker = f"fault-f-{uuid.uuid4().hex}", new_marker()
    first: list[Outcome] = []
    gmail_latency = 1.5  # a slow Gmail: the window in which the key's record is claimed but not completed
    ctx.fakes.call("set", name="gmail", attr="latency", value=gmail_latency)
    locker = raw_connection(ctx.pg, "bench-locker")
    thread = threading.Thread(
        target=lambda: first.append(send(requests.Session(), ctx.urls["send_email"], user, marker, key)),
        daemon=True,
    )
    locked_at = None
    try:
        thread.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and locked_at is None:
            locker.run("BEGIN")
            if locker.run(
                "SELECT 1 FROM gmail_idempotency WHERE user_id = :user_id AND idempotency_key = :key "
                "FOR UPDATE",
                user_id=user.user_id,
                key=key,
            ):
                locked_at = time.monotonic()
            else:
                locker.run("ROLLBACK")
                time.sleep(0.01)
        if locked_at is not None:
            # Held until the send's completion has given up (lock_timeout, at most statement_timeout).
            time.sleep(gmail_latency + STATEMENT_TIMEOUT_S + 1.5)
            locker.run("COMMIT")
        thread.join(timeout=60)
    finally:
        with contextlib.suppress(Exception):
            locker.run("ROLLBACK")
        locker.close()
        ctx.fakes.call("set", name="gmail", attr="latency", value=0.01)
    with requests.Session() as session:
        retry = send(session, ctx.urls["send_email"], user, marker, key)
        again = send(session, ctx.urls["send_email"], user, marker, key)
    counts = Counter(m for m in ctx.fakes.call("sent_markers") if m)
    result.figure("record locked", "yes" if locked_at is not None else "no (the claim was never seen)")
    result.figure("first attempt", f"{tally(first)} after {max_latency(first):.1f} s")
    result.figure("retry, same key", f"{tally([retry])}; then {tally([again])}")
    result.figure("copies in Gmail", str(counts[marker]))
    result.check("the claim was caught in flight", locked_at is not None and bool(first), "")
    result.check(
        "the first attempt answers 200 (Gmail has the message)",
        bool(first) and first[0].status == 200,
        tally(first),
    )
    result.check(
        "a retry with the key is refused or replayed, never sent",
        all(o.status in (200, 409) for o in (retry, again)),
        tally([retry, again]),
    )
    result.check(
        "sent exactly once",
        counts[marker] == 1,
        f"{counts[marker]} copies of one message sent under one Idempotency-Key",
    )
    return result


def min_max(outcomes: list[Outcome]) -> str:
    if not outcomes:
        return "-"
    latencies = [o.latency for o in outcomes]
    return f"{min(latencies):.2f}-{max(latencies):.2f} s"


# -- main -----------------------------------------------------------------------------------------------

SCENARIOS: dict[str, Callable[[Context], Result]] = {
    "d": scenario_d,
    "e": scenario_e,
    "a": scenario_a,
    "c": scenario_c,
    "b": scenario_b,
    "f": scenario_f,
}


def print_result(result: Result) -> None:
    print()
    print(f"({result.key}) {result.title}: {'PASS' if result.passed else 'FAIL'}  [{result.seconds:.0f} s]")
    width = max([len(label) for label, _ in result.figures] + [len(c.name) + 5 for c in result.checks] + [10])
    for label, value in result.figures:
        print(f"    {label:<{width}}  {value}")
    for check in result.checks:
        print(f"    {('PASS ' if check.ok else 'FAIL ') + check.name:<{width}}  {check.detail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="a,b,c,d,e,f", help="scenarios to run, e.g. a,c (default: all)")
    parser.add_argument("--threads", type=int, default=16, help="gunicorn threads per function (default 16)")
    args = parser.parse_args(argv)
    wanted = [key.strip() for key in args.only.split(",") if key.strip()]
    unknown = [key for key in wanted if key not in SCENARIOS]
    if unknown or not wanted:
        known = ",".join(sorted(SCENARIOS))
        raise SystemExit(f"unknown scenarios: {', '.join(unknown) or '(none given)'}; choose from {known}")
    raise_on_sigterm()
    stop = threading.Event()
    log_dir = Path(tempfile.mkdtemp(prefix="skill-email-faults-logs-"))
    results: list[Result] = []
    started = time.monotonic()
    try:
        with database() as pg, Fakes(expires_in=3599, gmail_latency=0.01, oauth_latency=0.01) as fakes:
            env = {
                config.DATABASE_URL: pg.tcp_url(DATABASE),
                config.GMAIL_API_ENDPOINT: fakes.urls["gmail"],
                config.LOG_LEVEL: "WARNING",
            }
            progress(f"starting {len(TARGETS)} functions-framework servers")
            with servers(TARGETS, env, args.threads, log_dir) as running:
                urls = {target: server.url for target, server in running.items()}
                ctx = Context(pg, fakes, urls, env, log_dir, stop)
                for key, scenario in SCENARIOS.items():
                    if key not in wanted:
                        continue
                    progress(f"scenario ({key})")
                    began = time.monotonic()
                    try:
                        result = scenario(ctx)
                    except Exception as exc:  # a scenario that crashes is a FAIL, and the others still run
                        result = Result(key, f"{scenario.__name__} crashed")
                        result.check("ran to the end", False, repr(exc)[:300])
                    result.seconds = time.monotonic() - began
                    results.append(result)
    except KeyboardInterrupt:
        stop.set()
        progress("interrupted: servers, fakes and PostgreSQL stopped")
        return 130
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)

    print("skill-email faults: functions-framework (gunicorn) + PostgreSQL + fake Gmail/OAuth/Secret Manager")
    print(f"  on 127.0.0.1, {os.cpu_count()} CPUs, gunicorn 1 worker x {args.threads} threads per function")
    for result in sorted(results, key=lambda r: r.key):
        print_result(result)
    passed = sum(result.passed for result in results)
    verdict = "PASS" if passed == len(results) else "FAIL"
    print(
        f"\nRESULT: {verdict} ({passed}/{len(results)} scenarios passed, {time.monotonic() - started:.0f} s)"
    )
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
