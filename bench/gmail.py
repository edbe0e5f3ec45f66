"""Figures for send_email and list_emails: our overhead per warm call, Gmail round trips per list, cold start.

    python -m bench.gmail [--calls 50] [--repeat 5] [--latency 0.02] [--json]

An embedded PostgreSQL in a temp dir holds one user's token; FakeGmail (every answer delayed by
``--latency``) and the fake token endpoint run on loopback in this process. Each figure is measured beside
a naive twin (bench/_naive_gmail.py: a new ``build("gmail", "v1")`` service and httplib2 connection per
call, one ``messages.get`` per listed message) in the same run. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import functions_framework
import httplib2

from bench._common import (
    BIN,
    ROOT,
    BenchDatabase,
    Section,
    allow_token_uri,
    bench_database,
    free_port,
    launch_until_ok,
    machine,
    ms,
    progress,
    raise_on_sigterm,
    render,
    stop_process,
    summary,
)
from devtools.fakes import _server
from devtools.fakes.gmail import FakeGmail
from devtools.fakes.oauth import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, FakeTokenEndpoint
from shared import config, logs
from shared.transport import RequestsHttp

USER = "bench-gmail-user"
MAILBOX = "bench.user@example.com"
ACCESS_TOKEN = "ya29.bench-gmail"
REFRESH_TOKEN = "1//bench-gmail-refresh"
SEEDED_MESSAGES = 120
NAIVE_SOURCE = "bench/_naive_gmail.py"
SEND_BODY = {
    "user_id": USER,
    "to": "김철수 <chulsoo@example.com>",
    "subject": "주간 회의 안내",
    "body": "안녕하세요.\n이번 주 회의는 목요일 오후 2시입니다.",
    "from_name": "홍길동",
}

# The fake answers in two writes (headers, then body); without TCP_NODELAY the body waits for the ACK
# the client delays by up to 40 ms on a kept-alive connection, an artefact no Google front end has.
# Set for the fakes of this process only (bench/_fake_oauth.py does the same in its own).
_server._Handler.disable_nagle_algorithm = True


# -- timing Gmail from the client side -------------------------------------------------------------


class GmailClock:
    """Wall time spent inside HTTP requests to Gmail (ours: RequestsHttp; naive: httplib2.Http)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.requests = 0
        self._lock = threading.Lock()

    def install(self) -> None:
        for cls in (RequestsHttp, httplib2.Http):
            original = cls.request

            def timed(self_: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    return _original(self_, *args, **kwargs)
                finally:
                    elapsed = time.perf_counter() - started
                    with self._lock:
                        self.seconds += elapsed
                        self.requests += 1

            cls.request = timed  # type: ignore[method-assign]

    def reset(self) -> None:
        with self._lock:
            self.seconds = 0.0
            self.requests = 0


CLOCK = GmailClock()


def measure_calls(call: Callable[[], Any], runs: int, warmup: int = 3) -> dict[str, Any]:
    """Per call: wall time, time inside Gmail requests, and their difference (our overhead)."""
    for _ in range(warmup):
        call()
    totals, gmail_times, overheads, round_trips = [], [], [], []
    for _ in range(runs):
        CLOCK.reset()
        started = time.perf_counter()
        call()
        total = time.perf_counter() - started
        totals.append(total)
        gmail_times.append(CLOCK.seconds)
        overheads.append(total - CLOCK.seconds)
        round_trips.append(CLOCK.requests)
    return {
        "total": summary(totals),
        "gmail": summary(gmail_times),
        "overhead": summary(overheads),
        "round_trips": sorted(set(round_trips)),
    }


# -- setup ------------------------------------------------------------------------------------------


def seed_token(database: BenchDatabase, token_uri: str) -> None:
    with database.connection() as conn:
        conn.run("DELETE FROM gmail_token WHERE user_id = :user_id", user_id=USER)
        conn.run(
            "INSERT INTO gmail_token (user_id, token_data, oauth_config, scopes, expiry, is_equipped, "
            "updated_at) VALUES (:user_id, CAST(:token_data AS JSONB), CAST(:oauth_config AS JSONB), "
            "CAST(:scopes AS TEXT[]), (now() AT TIME ZONE 'UTC') + interval '1 day', true, "
            "now() AT TIME ZONE 'UTC')",
            user_id=USER,
            token_data=json.dumps(
                {"access_token": ACCESS_TOKEN, "refresh_token": REFRESH_TOKEN, "token_type": "Bearer"}
            ),
            oauth_config=json.dumps(
                {
                    "client_id": DEFAULT_CLIENT_ID,
                    "client_secret": DEFAULT_CLIENT_SECRET,
                    "token_uri": token_uri,
                }
            ),
            scopes=[
                "https://www.googleapis.com/auth/gmail.send",
                "https://www.googleapis.com/auth/gmail.readonly",
            ],
        )


def seed_mailbox(gmail: FakeGmail, count: int) -> None:
    for index in range(count):
        raw = (
            "From: =?UTF-8?B?6rmA7LKg7IiY?= <chulsoo@example.kr>\r\n"
            f"To: {MAILBOX}\r\n"
            f"Subject: =?UTF-8?B?7ZqM7J2YIOydvOyglQ==?= {index}\r\n"
            "Date: Tue, 02 Jan 2024 12:04:05 +0900\r\n"
            f"Message-ID: <bench-{index}@example.kr>\r\n"
            "MIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n"
            "Content-Transfer-Encoding: base64\r\n"
            "\r\n"
            "7JWI64WV7ZWY7IS47JqULiDtmozsnZgg7J287KCVIOyViOuCtOyeheuLiOuLpC4=\r\n"
        ).encode("ascii")
        gmail.add_message(raw, internal_date_ms=1_704_164_645_000 + index * 1000)


@contextlib.contextmanager
def environment(database: BenchDatabase, gmail: FakeGmail) -> Iterator[dict[str, str]]:
    """Points this process (and returns the env for children) at the bench database and FakeGmail."""
    names = (config.DATABASE_URL, config.GMAIL_API_ENDPOINT, config.LOG_LEVEL)
    saved = {name: os.environ.get(name) for name in names}
    os.environ[config.DATABASE_URL] = database.socket_url
    os.environ[config.GMAIL_API_ENDPOINT] = gmail.url
    os.environ[config.LOG_LEVEL] = "INFO"
    for name in (config.DB_URL_SECRET, config.TOKEN_KEY_SECRET, config.TOKEN_KEYS, config.TOKEN_PROVIDER):
        os.environ.pop(name, None)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        yield env
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def quiet_logs() -> IO[str]:
    """Our JSON request lines go to /dev/null: still formatted and written, off the table's stdout."""
    sink = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    with contextlib.redirect_stdout(sink):
        logs.configure("INFO")
    return sink


def app_client(source: str, target: str) -> Any:
    return functions_framework.create_app(target=target, source=str(ROOT / source)).test_client()


def check(response: Any) -> Any:
    if response.status_code != 200:
        raise RuntimeError(f"{response.status_code}: {response.get_data(as_text=True)[:300]}")
    return response


# -- 1. warm overhead -------------------------------------------------------------------------------


def warm_overhead(calls: int, latency: float) -> tuple[Section, dict[str, Any]]:
    section = Section(
        f"1. Warm call, in process: our overhead = function time - time inside Gmail requests "
        f"(fake latency {latency * 1000:.0f} ms)"
    )
    send = app_client("main.py", "send_email")
    send_naive = app_client(NAIVE_SOURCE, "send_email_naive")
    listing = app_client("main.py", "list_emails")
    list_naive = app_client(NAIVE_SOURCE, "list_emails_naive")
    keys = iter(range(10**9))
    plan: list[tuple[str, Callable[[], Any], str]] = [
        ("send_email", lambda: check(send.post("/", json=SEND_BODY)), "ours"),
        (
            "send_email + Idempotency-Key",
            lambda: check(send.post("/", json=SEND_BODY, headers={"Idempotency-Key": f"bench-{next(keys)}"})),
            "ours: claim + complete rows",
        ),
        ("  naive send (build per call)", lambda: check(send_naive.post("/", json=SEND_BODY)), "naive twin"),
        (
            "list_emails, 20 messages",
            lambda: check(listing.get(f"/?user_id={USER}&max_results=20&label_ids=INBOX")),
            "ours: list + 1 batch",
        ),
        (
            "list_emails, 20 messages, include_body",
            lambda: check(listing.get(f"/?user_id={USER}&max_results=20&label_ids=INBOX&include_body=true")),
            "ours",
        ),
        (
            "  naive list, 20 messages (get per message)",
            lambda: check(list_naive.get(f"/?user_id={USER}&max_results=20&label_ids=INBOX")),
            "naive twin",
        ),
    ]
    results: dict[str, Any] = {}
    for label, call, note in plan:
        progress(f"warm: {label.strip()}")
        figures = measure_calls(call, calls)
        results[label.strip()] = figures
        overhead, total, gmail = figures["overhead"], figures["total"], figures["gmail"]
        section.row(
            label,
            ms(overhead["median_ms"]),
            f"p95 {ms(overhead['p95_ms'])}; total {ms(total['median_ms'])} (p95 {ms(total['p95_ms'])}), "
            f"in Gmail {ms(gmail['median_ms'])}, {'/'.join(map(str, figures['round_trips']))} "
            f"round trips; {note}",
        )
    section.notes.append(
        f"median of {calls} calls each after 3 warm-up calls, through functions_framework.create_app(...)"
        ".test_client(); database on a unix socket; request log lines formatted and written to /dev/null"
    )
    return section, results


# -- 2. round trips per list ---------------------------------------------------------------------------


def round_trips(gmail: FakeGmail, repeat: int, latency: float) -> tuple[Section, dict[str, Any]]:
    section = Section(f"2. Gmail round trips and wall time per list (fake latency {latency * 1000:.0f} ms)")
    listing = app_client("main.py", "list_emails")
    list_naive = app_client(NAIVE_SOURCE, "list_emails_naive")
    results: dict[str, Any] = {}
    for size in (20, 100):
        for label, test_client in (
            (f"list of {size}: ours", listing),
            (f"list of {size}: naive", list_naive),
        ):
            progress(f"round trips: {label}")
            path = f"/?user_id={USER}&max_results={size}&label_ids=INBOX"
            check(test_client.get(path))  # warm-up
            walls, wire = [], set()
            for _ in range(repeat):
                gmail.clear_requests()
                started = time.perf_counter()
                body = check(test_client.get(path)).get_json()
                walls.append(time.perf_counter() - started)
                wire.add(len(gmail.requests))
                if len(body["messages"]) != size:
                    raise RuntimeError(f"{label}: {len(body['messages'])} messages")
            batches = list(gmail.batch_sizes)
            figures = summary(walls)
            results[label] = {"round_trips": sorted(wire), "wall": figures, "batch_sizes": batches}
            detail = f"batches {batches}" if batches else f"1 list + {size} gets, new connection per call"
            section.row(
                label,
                "/".join(map(str, sorted(wire))),
                f"round trips ({detail}); "
                f"wall median {ms(figures['median_ms'])}, p95 {ms(figures['p95_ms'])}",
            )
    section.notes.append(
        f"median of {repeat} lists each, after one warm-up; round trips counted at FakeGmail"
    )
    return section, results


# -- 3. cold start --------------------------------------------------------------------------------


def launch_until_sent(
    args: list[str],
    env: dict[str, str],
    port: int,
    body: dict[str, Any],
    log: IO[bytes],
    timeout: float = 60.0,
) -> float:
    """Starts a server, POSTs ``body`` until it answers 200, stops it; returns launch-to-200 seconds."""
    payload = json.dumps(body).encode("utf-8")
    started = time.perf_counter()
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=log, start_new_session=True)
    try:
        while True:
            elapsed = time.perf_counter() - started
            if elapsed > timeout or proc.poll() is not None:
                raise RuntimeError(f"{args[-5]} gave no 200 within {elapsed:.1f} s (exit {proc.poll()})")
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
            try:
                connection.request("POST", "/", payload, {"Content-Type": "application/json"})
                response = connection.getresponse()
                answer = response.read()
                if response.status == 200:
                    return time.perf_counter() - started
                raise RuntimeError(f"the server answered {response.status}: {answer[:300]!r}")
            except (ConnectionRefusedError, ConnectionResetError):
                time.sleep(0.005)
            finally:
                connection.close()
    finally:
        stop_process(proc)


def cold_start(
    env: dict[str, str], gmail: FakeGmail, repeat: int, workdir: Path
) -> tuple[Section, dict[str, Any]]:
    section = Section("3. Cold start to the first send (functions-framework subprocess, launch to first 200)")
    framework = str(BIN / "functions-framework")
    launches: dict[str, list[float]] = {"ours": [], "naive": [], "floor": []}
    sent_before = len(gmail.sent_messages())
    with (workdir / "servers.log").open("wb") as log:
        for index in range(repeat):
            progress(f"cold start {index + 1}/{repeat}")
            for kind in ("floor", "ours", "naive"):  # interleaved, so drift on the machine hits all alike
                port = free_port()
                host = ["--host", "127.0.0.1", "--port", str(port)]
                if kind == "floor":
                    args = [framework, "--source", "bench/trivial.py", "--target", "hello", *host]
                    launches[kind].append(launch_until_ok(args, env, port, "/", log))
                    continue
                source, target = (
                    ("main.py", "send_email") if kind == "ours" else (NAIVE_SOURCE, "send_email_naive")
                )
                args = [framework, "--source", source, "--target", target, *host]
                launches[kind].append(launch_until_sent(args, env, port, SEND_BODY, log))
    sent = len(gmail.sent_messages()) - sent_before
    figures = {kind: summary(values) for kind, values in launches.items()}
    for label, kind, note in (
        ("send_email (main.py)", "ours", "profile + send on the first call"),
        ("  naive send (build per call)", "naive", "build + profile + send on the first call"),
        ("trivial hello (bench/trivial.py)", "floor", "the framework's floor, GET"),
    ):
        value = figures[kind]
        section.row(
            label,
            ms(value["median_ms"]),
            f"median of {repeat}; min {ms(value['min_ms'])}, max {ms(value['max_ms'])}; {note}",
        )
    section.row(
        "ours over the floor",
        ms(figures["ours"]["median_ms"] - figures["floor"]["median_ms"]),
        "difference of medians",
    )
    section.notes.append(f"{sent} messages reached FakeGmail during the launches ({2 * repeat} expected)")
    return section, {kind: value for kind, value in figures.items()} | {"messages_sent": sent}


# -- main -------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50, help="warm calls measured per row (default 50)")
    parser.add_argument("--repeat", type=int, default=5, help="cold starts and lists per row (default 5)")
    parser.add_argument("--latency", type=float, default=0.02, help="FakeGmail latency in seconds (0.02)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    options = parser.parse_args(argv)
    raise_on_sigterm()
    CLOCK.install()
    sink = quiet_logs()
    workdir = Path(tempfile.mkdtemp(prefix="skill-email-bench-gmail-"))
    try:
        progress("starting PostgreSQL")
        with (
            bench_database() as database,
            FakeTokenEndpoint() as token_endpoint,
            FakeGmail(email_address=MAILBOX, tokens=[ACCESS_TOKEN], latency=options.latency) as gmail,
        ):
            token_endpoint.add_refresh_token(REFRESH_TOKEN)
            gmail.trust(token_endpoint)
            allow_token_uri(f"{token_endpoint.url}/token")
            seed_token(database, f"{token_endpoint.url}/token")
            seed_mailbox(gmail, SEEDED_MESSAGES)
            with environment(database, gmail) as env:
                sections_and_results = [
                    warm_overhead(options.calls, options.latency),
                    round_trips(gmail, options.repeat, options.latency),
                    cold_start(env, gmail, options.repeat, workdir),
                ]
            info = machine(database.version)
    except KeyboardInterrupt:
        progress("interrupted; servers stopped")
        return 130
    finally:
        sink.close()
    sections = [section for section, _ in sections_and_results]
    results = {section.title: result for section, result in sections_and_results}
    if options.json:
        print(json.dumps({"machine": info, "results": results}, indent=2, ensure_ascii=False))
    else:
        header = [(name, str(value)) for name, value in info.items()]
        header.append(
            ("settings", f"calls={options.calls} repeat={options.repeat} latency={options.latency}s")
        )
        print(render(header, sections))
    progress(f"server logs in {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
