"""Load: the functions behind functions-framework's real server (gunicorn), hundreds of clients at once.

    python -m bench.load [--clients 200] [--duration 20] [--max-requests 100000] [--users 50]

What runs, all on 127.0.0.1:

- an embedded PostgreSQL (a temp dir, thrown away at the end), migrated, with ``--users`` equipped
  tokens, a third of them already expired and the rest expiring during the run;
- in a child process (off this process's GIL): a fake Gmail (``--gmail-latency``, 20 ms) that trusts
  every access token a fake Google token endpoint issues; the endpoint grants tokens that stay fresh for
  ``--token-life`` seconds (``expires_in`` = the store's 5-minute early-expiry margin + that), so every
  token expires, and is refreshed under load, several times during the run;
- ``functions-framework --source main.py --target T`` for send_email, list_emails and token_status, one
  process each, served by gunicorn (1 worker, ``THREADS`` threads: functions-framework reads both
  from the environment when ``--debug`` is off);
- ``--clients`` threads, each with its own ``requests.Session``, that send (a unique Idempotency-Key
  and a unique marker in the subject each time), list and ask token_status until ``--duration``
  seconds or ``--max-requests`` requests, whichever comes first; then a burst that fires each of
  ``--replay-keys`` Idempotency-Keys ``--replay-fanout`` times at once.

Reported: throughput, p50/p95/p99 latency per target, errors by status and code, the peak number of
our PostgreSQL connections (``pg_stat_activity``, polled from a side thread), token refreshes made.
Verified (the exit status is 1 when one fails): no lost send (every 200's marker is in the fake's sent
mail), no duplicate (no marker twice), no unexpected answer (only 2xx; 409 only in the replay burst),
each replayed key sent exactly once and every answer naming the same message, no idempotency record
left in progress, and every ``gmail_token`` row intact afterwards (a JSON object with access and
refresh token, an expiry, and an access token the fake issued for that very refresh token).

Ctrl-C or SIGTERM stops the clients, the servers, the fakes and PostgreSQL.
"""

from __future__ import annotations

import argparse
import contextlib
import email
import email.policy
import importlib
import json
import math
import multiprocessing
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pg8000.native
import requests

from bench._common import allow_token_uri
from devtools.embedded_pg import EmbeddedPostgres
from devtools.fakes._server import RecordedRequest, Response
from devtools.fakes.oauth import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, FakeTokenEndpoint
from shared import db, schema
from shared.tokens.record import EXPIRY_MARGIN

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DATABASE = "skill_email_load"
SCOPES = ["https://www.googleapis.com/auth/gmail.send", "https://www.googleapis.com/auth/gmail.readonly"]
MARGIN_S = int(EXPIRY_MARGIN.total_seconds())
MARKER = re.compile(r"\b(MK-[0-9a-f]{32})\b")
# Client timeouts: (connect, read). The functions answer within their own bounds (a 503 well under
# 20 s); 60 s means the server is hung, which is itself a finding.
CLIENT_TIMEOUT = (5.0, 60.0)


def progress(message: str) -> None:
    """A progress line on stderr; stdout holds only the report."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def utcnow() -> datetime:
    """Naive UTC, as the ``expiry`` column holds it."""
    return datetime.now(UTC).replace(tzinfo=None)


def new_marker() -> str:
    return f"MK-{uuid.uuid4().hex}"


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile of ``values`` (0 for none)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


# -- the fakes, in a child process ------------------------------------------------------------------


class FlakyTokenEndpoint(FakeTokenEndpoint):
    """The fake token endpoint, plus injected 500s: for every request naming a ``doomed`` refresh token,
    and for a random ``flaky_share`` of the others (google-auth retries those; most then succeed)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.doomed: set[str] = set()
        self.flaky_share = 0.0
        self.injected = 0
        self._rng = random.Random(20240611)

    def handle(self, request: RecordedRequest) -> Response:
        if request.method == "POST" and (self.doomed or self.flaky_share):
            refresh_token = request.form().get("refresh_token") if request.body else None
            with self.lock:
                if refresh_token in self.doomed or self._rng.random() < self.flaky_share:
                    if refresh_token:
                        self.calls_by_refresh_token[refresh_token] += 1
                    self.injected += 1
                    return Response.json(
                        500, {"error": "internal_failure", "error_description": "Backend Error"}
                    )
        return super().handle(request)


def _marker_of(raw: bytes) -> str | None:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    found = MARKER.search(str(message.get("Subject", "")))
    return found[1] if found else None


def fakes_main(conn: Any, options: dict[str, Any]) -> None:
    """The child process: fake Gmail, token endpoint and Secret Manager, driven through ``conn``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us, after its clients
    from devtools.fakes import _server
    from devtools.fakes.gmail import FakeGmail
    from devtools.fakes.secret_manager import FakeSecretManager

    # The fakes answer in two writes; without TCP_NODELAY the body waits for a delayed ACK (40 ms) on
    # kept-alive connections, an artefact no Google front end has.
    _server._Handler.disable_nagle_algorithm = True
    oauth = FlakyTokenEndpoint(expires_in=options["expires_in"], latency=options["oauth_latency"]).start()
    gmail = FakeGmail(latency=options["gmail_latency"]).start()
    gmail.trust(oauth)
    secrets = FakeSecretManager().start()
    objects: dict[str, Any] = {"oauth": oauth, "gmail": gmail, "secrets": secrets}

    def issue(refresh_tokens: list[str]) -> list[str]:
        issued = []
        for refresh_token in refresh_tokens:
            body = urllib.parse.urlencode(
                {
                    "grant_type": "refresh_token",
                    "refresh_token": refresh_token,
                    "client_id": DEFAULT_CLIENT_ID,
                    "client_secret": DEFAULT_CLIENT_SECRET,
                }
            ).encode()
            answer = oauth.handle(RecordedRequest("POST", "/token", {}, {}, body))
            issued.append(json.loads(answer.body)["access_token"])
        return issued

    def oauth_stats() -> dict[str, Any]:
        with oauth.lock:
            return {
                "calls": dict(oauth.calls_by_refresh_token),
                "issued": {key: list(value) for key, value in oauth.access_tokens_by_refresh_token.items()},
                "injected": oauth.injected,
            }

    def sent_markers() -> list[str | None]:
        return [_marker_of(raw) for raw in gmail.sent_messages()]

    def setattr_(name: str, attr: str, value: Any) -> None:
        target = objects[name]
        with target.lock:
            setattr(target, attr, set(value) if attr == "doomed" else value)

    def clear_failures() -> None:
        with gmail.lock:
            gmail._failures.clear()
            gmail._send_failures.clear()
        with oauth.lock:
            oauth._failures.clear()

    def add_refresh_tokens(tokens: list[str]) -> None:
        for token in tokens:
            oauth.add_refresh_token(token)

    commands: dict[str, Callable[..., Any]] = {
        "add_refresh_tokens": add_refresh_tokens,
        "issue": issue,
        "oauth_stats": oauth_stats,
        "sent_markers": sent_markers,
        "set": setattr_,
        "gmail_fail_next": gmail.fail_next,
        "gmail_fail_after_send": gmail.fail_after_send,
        "gmail_add_message": gmail.add_message,
        "gmail_count": gmail.count,
        "clear_failures": clear_failures,
        "set_secret": secrets.set_secret,
        "secret_accesses": lambda: secrets.access_count,
    }
    conn.send({"oauth": oauth.url, "gmail": gmail.url, "secrets": secrets.url})
    try:
        while True:
            try:
                command, kwargs = conn.recv()
            except (EOFError, OSError):
                break  # the parent is gone
            if command == "stop":
                break
            try:
                conn.send(("ok", commands[command](**kwargs)))
            except Exception as exc:  # reported to the parent, which raises it there
                conn.send(("error", repr(exc)))
    finally:
        for fake in (gmail, oauth, secrets):
            with contextlib.suppress(Exception):
                fake.close()


class Fakes:
    """The child process that serves the fakes; ``call`` runs a command there and returns its result."""

    def __init__(self, *, expires_in: int, gmail_latency: float, oauth_latency: float) -> None:
        self.options = {
            "expires_in": expires_in,
            "gmail_latency": gmail_latency,
            "oauth_latency": oauth_latency,
        }
        self._lock = threading.Lock()
        self.urls: dict[str, str] = {}

    def __enter__(self) -> Fakes:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        # By the module's real name, so the spawned child can import it whether we run as __main__ or not.
        target = importlib.import_module("bench.load").fakes_main
        self._proc = context.Process(target=target, args=(child, self.options), name="fakes", daemon=True)
        self._proc.start()
        child.close()
        if not self._conn.poll(60):
            raise RuntimeError("the fakes process did not start within 60 s")
        self.urls = self._conn.recv()
        allow_token_uri(self.token_uri)
        return self

    def __exit__(self, *exc_info: object) -> None:
        with contextlib.suppress(Exception):
            self._conn.send(("stop", {}))
        self._proc.join(timeout=5)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(timeout=5)

    @property
    def token_uri(self) -> str:
        return f"{self.urls['oauth']}/token"

    def call(self, command: str, **kwargs: Any) -> Any:
        with self._lock:
            self._conn.send((command, kwargs))
            if not self._conn.poll(60):
                raise RuntimeError(f"the fakes process did not answer {command} within 60 s")
            status, value = self._conn.recv()
        if status != "ok":
            raise RuntimeError(f"fakes {command} failed: {value}")
        return value


# -- PostgreSQL -------------------------------------------------------------------------------------


def raw_connection(server: EmbeddedPostgres, application_name: str) -> pg8000.native.Connection:
    """A connection over the unix socket that ``pg_stat_activity`` does not count as ours."""
    return pg8000.native.Connection(
        "postgres",
        unix_sock=str(server.socket_dir / f".s.PGSQL.{server.port}"),
        database=DATABASE,
        application_name=application_name,
        timeout=10,
    )


@contextlib.contextmanager
def database() -> Iterator[EmbeddedPostgres]:
    """An embedded PostgreSQL in a temp dir with the migrated ``DATABASE``; destroyed at the end."""
    data_dir = Path(tempfile.mkdtemp(prefix="skill-email-load-")) / "pgdata"
    server = EmbeddedPostgres(data_dir, durable=False)
    try:
        progress("starting PostgreSQL")
        server.start()
        with db.connection(db.parse_database_url(server.socket_url())) as conn:
            conn.run(f'CREATE DATABASE "{DATABASE}"')
        with db.connection(db.parse_database_url(server.socket_url(DATABASE))) as conn:
            schema.migrate(conn)
        yield server
    finally:
        server.destroy()
        shutil.rmtree(data_dir.parent, ignore_errors=True)


def reset_tables(server: EmbeddedPostgres) -> None:
    conn = raw_connection(server, "bench-admin")
    try:
        conn.run("TRUNCATE gmail_token, gmail_audit_logs, gmail_idempotency RESTART IDENTITY")
    finally:
        conn.close()


@dataclass
class User:
    user_id: str
    refresh_token: str


def seed_users(
    server: EmbeddedPostgres,
    fakes: Fakes,
    prefix: str,
    count: int,
    *,
    expired_share: float,
    fresh_for: tuple[float, float],
    issue_access: bool = True,
) -> list[User]:
    """Stores ``count`` equipped tokens whose refresh tokens the fake endpoint accepts.

    The first ``expired_share`` expired a minute ago; the others stay fresh (past the store's margin)
    for a random time within ``fresh_for`` seconds. With ``issue_access`` their access tokens were
    issued by the fake (so Gmail takes them); otherwise they are placeholders nobody issued.
    """
    users = [
        User(f"{prefix}{index:03d}", f"1//{prefix}{index:03d}-{uuid.uuid4().hex[:8]}")
        for index in range(count)
    ]
    fakes.call("add_refresh_tokens", tokens=[user.refresh_token for user in users])
    if issue_access:
        access = fakes.call("issue", refresh_tokens=[user.refresh_token for user in users])
    else:
        access = [f"ya29.placeholder-{index}" for index in range(count)]
    rng = random.Random(count)
    expired = round(count * expired_share)
    now = utcnow()
    conn = raw_connection(server, "bench-admin")
    try:
        for index, user in enumerate(users):
            if index < expired:
                expiry = now - timedelta(seconds=60)
            else:
                expiry = now + timedelta(seconds=MARGIN_S + rng.uniform(*fresh_for))
            conn.run(
                "INSERT INTO gmail_token (user_id, token_data, oauth_config, scopes, expiry, is_equipped, "
                "updated_at) VALUES (:user_id, CAST(:token_data AS JSONB), CAST(:oauth_config AS JSONB), "
                "CAST(:scopes AS TEXT[]), :expiry, true, now() AT TIME ZONE 'UTC')",
                user_id=user.user_id,
                token_data=json.dumps(
                    {
                        "access_token": access[index],
                        "refresh_token": user.refresh_token,
                        "token_type": "Bearer",
                    }
                ),
                oauth_config=json.dumps(
                    {
                        "client_id": DEFAULT_CLIENT_ID,
                        "client_secret": DEFAULT_CLIENT_SECRET,
                        "token_uri": fakes.token_uri,
                    }
                ),
                scopes=SCOPES,
                expiry=expiry,
            )
    finally:
        conn.close()
    return users


def check_rows(server: EmbeddedPostgres, issued: dict[str, list[str]]) -> tuple[int, list[str]]:
    """Every ``gmail_token`` row intact: returns (rows checked, problems)."""
    conn = raw_connection(server, "bench-admin")
    try:
        rows = conn.run("SELECT id, user_id, token_data, expiry FROM gmail_token ORDER BY id")
    finally:
        conn.close()
    problems = []
    for row_id, user_id, token_data, expiry in rows:
        where = f"row {row_id} ({user_id})"
        if not isinstance(token_data, dict):
            problems.append(f"{where}: token_data is {type(token_data).__name__}, not a JSON object")
            continue
        access, refresh = token_data.get("access_token"), token_data.get("refresh_token")
        if not isinstance(access, str) or not access:
            problems.append(f"{where}: no access_token")
        if not isinstance(refresh, str) or not refresh:
            problems.append(f"{where}: no refresh_token")
        if expiry is None:
            problems.append(f"{where}: expiry is NULL")
        if isinstance(refresh, str) and access not in issued.get(refresh, []):
            problems.append(f"{where}: the access token was not issued by the fake for this refresh token")
    return len(rows), problems


class ConnectionPeak:
    """Polls ``pg_stat_activity`` every 20 ms from a side thread; keeps the peak of our connections."""

    def __init__(self, server: EmbeddedPostgres) -> None:
        self.server = server
        self.peak = 0
        self.peak_total = 0
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pg-peak", daemon=True)

    def __enter__(self) -> ConnectionPeak:
        self._conn = raw_connection(self.server, "bench-monitor")
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        with contextlib.suppress(Exception):
            self._conn.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            ours, total = self._conn.run(
                "SELECT count(*) FILTER (WHERE application_name = :name), count(*) FROM pg_stat_activity "
                "WHERE backend_type = 'client backend'",
                name=db.APPLICATION_NAME,
            )[0]
            self.peak = max(self.peak, int(ours))
            self.peak_total = max(self.peak_total, int(total))
            self.polls += 1
            self._stop.wait(0.02)


# -- the functions, behind functions-framework's server ------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """``functions-framework --target T`` in its own process group, logging to a file."""

    def __init__(self, target: str, env: dict[str, str], log_dir: Path, threads: int) -> None:
        self.target = target
        self.port = free_port()
        self.env = {
            **{
                key: value
                for key, value in os.environ.items()
                if key not in ("DATABASE_URL", "DB_URL_SECRET")
            },
            **env,
            "PYTHONPATH": str(ROOT),
            "THREADS": str(threads),
            "WORKERS": "1",
        }
        self.log_path = log_dir / f"{target}-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self) -> Server:
        args = [str(BIN / "functions-framework"), "--source", str(ROOT / "main.py"), "--target", self.target]
        args += ["--host", "127.0.0.1", "--port", str(self.port)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                args, cwd=ROOT, env=self.env, stdout=log, stderr=log, start_new_session=True
            )
        return self

    def wait_listening(self, timeout: float = 60.0) -> float:
        """Waits until the port accepts connections; returns the seconds it took."""
        assert self.proc is not None
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.target} exited ({self.proc.returncode}); see {self.log_path}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return time.monotonic() - started
            time.sleep(0.05)
        raise RuntimeError(f"{self.target} did not listen within {timeout:.0f} s; see {self.log_path}")

    def stop(self) -> None:
        """SIGINT is gunicorn's quick shutdown; SIGKILL the whole group if it lingers."""
        if self.proc is None:
            return
        for sig, wait in ((signal.SIGINT, 5.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # a worker left behind by its arbiter
        self.proc = None

    def log_tail(self, lines: int = 5) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@contextlib.contextmanager
def servers(
    targets: list[str], env: dict[str, str], threads: int, log_dir: Path
) -> Iterator[dict[str, Server]]:
    """Starts one functions-framework process per target; stops them all at the end."""
    started: dict[str, Server] = {}
    try:
        for target in targets:
            started[target] = Server(target, env, log_dir, threads).start()
        for server in started.values():
            server.wait_listening()
        yield started
    finally:
        for server in started.values():
            server.stop()


def raise_on_sigterm() -> None:
    """SIGTERM becomes KeyboardInterrupt, so every ``finally`` stops what it started."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


# -- one request --------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """One request as the client saw it."""

    target: str
    status: int  # 0: no HTTP answer (see ``code``)
    code: str | None
    started: float
    latency: float
    body: dict[str, Any] = field(default_factory=dict)
    retry_after: str | None = None
    marker: str | None = None
    key: str | None = None
    phase: str = "load"
    transport_retries: int = 0


# A kept-alive connection that the server closes (gunicorn's keepalive is 2 s) just as the client
# reuses it fails with one of these before any answer; browsers and urllib3 retry such a request once.
# Our sends carry an Idempotency-Key, so even a POST may be repeated safely: that is what the key is for.
_KEEPALIVE_RACE = ("RemoteDisconnected", "ConnectionResetError", "BrokenPipeError", "Connection aborted")


def call(
    session: requests.Session,
    target: str,
    url: str,
    *,
    method: str = "GET",
    params: dict[str, Any] | None = None,
    body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    timeout: tuple[float, float] = CLIENT_TIMEOUT,
) -> Outcome:
    """Makes one request and classifies the answer; transport failures become status 0.

    A keep-alive race (see ``_KEEPALIVE_RACE``) is retried once and counted in ``transport_retries``.
    """
    started = time.monotonic()
    retries = 0
    while True:
        try:
            response = session.request(
                method, url, params=params, json=body, headers=headers, timeout=timeout
            )
            break
        except requests.ConnectionError as exc:
            if retries == 0 and any(sign in repr(exc) for sign in _KEEPALIVE_RACE):
                retries += 1
                continue
            failure = exc
        except requests.RequestException as exc:
            failure = exc
        outcome = Outcome(target, 0, f"client:{type(failure).__name__}", started, time.monotonic() - started)
        outcome.body = {"error": {"code": outcome.code, "message": repr(failure)[:300]}}
        outcome.transport_retries = retries
        return outcome
    latency = time.monotonic() - started
    try:
        payload = response.json()
    except ValueError:
        payload = {"error": {"code": "not-json", "message": response.text[:200]}}
    code = None
    if response.status_code >= 300:
        error = payload.get("error") if isinstance(payload, dict) else None
        code = str(error.get("code")) if isinstance(error, dict) else "no-error-body"
    return Outcome(
        target,
        response.status_code,
        code,
        started,
        latency,
        payload if isinstance(payload, dict) else {},
        response.headers.get("Retry-After"),
        transport_retries=retries,
    )


def send_body(user: User, marker: str) -> dict[str, Any]:
    return {
        "user_id": user.user_id,
        "to": ["Recipient <to@example.com>"],
        "subject": f"부하 시험 {marker}",
        "body": f"load test message {marker}\n",
    }


def send(session: requests.Session, url: str, user: User, marker: str, key: str, **kwargs: Any) -> Outcome:
    outcome = call(
        session,
        "send_email",
        url,
        method="POST",
        body=send_body(user, marker),
        headers={"Idempotency-Key": key},
        **kwargs,
    )
    outcome.marker, outcome.key = marker, key
    return outcome


# -- the load run ---------------------------------------------------------------------------------------


class Budget:
    """At most ``limit`` requests, none after ``deadline``, none after ``stop``: the clients' bound."""

    def __init__(self, limit: int, deadline: float, stop: threading.Event) -> None:
        self.left = limit
        self.deadline = deadline
        self.stop = stop
        self._lock = threading.Lock()

    def take(self) -> bool:
        if self.stop.is_set() or time.monotonic() >= self.deadline:
            return False
        with self._lock:
            if self.left <= 0:
                return False
            self.left -= 1
            return True


def client_loop(
    index: int, urls: dict[str, str], users: list[User], budget: Budget, results: list[Outcome]
) -> None:
    """One client: a session of its own, a mix of sends (45 %), lists (35 %) and statuses (20 %)."""
    rng = random.Random(index)
    with requests.Session() as session:
        while budget.take():
            user = rng.choice(users)
            pick = rng.random()
            if pick < 0.45:
                outcome = send(session, urls["send_email"], user, new_marker(), f"load-{uuid.uuid4().hex}")
            elif pick < 0.80:
                params = {"user_id": user.user_id, "label_ids": "INBOX", "max_results": 10}
                outcome = call(session, "list_emails", urls["list_emails"], params=params)
            else:
                outcome = call(
                    session, "token_status", urls["token_status"], params={"user_id": user.user_id}
                )
            results.append(outcome)  # list.append is atomic under the GIL


def run_clients(
    count: int, worker: Callable[[int], None], stop: threading.Event, join_timeout: float
) -> tuple[int, float]:
    """Starts ``count`` daemon threads running ``worker(i)``; returns (threads still alive, seconds)."""
    threads = [
        threading.Thread(target=worker, args=(i,), name=f"client-{i}", daemon=True) for i in range(count)
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    deadline = started + join_timeout
    try:
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
    except KeyboardInterrupt:
        stop.set()
        raise
    return sum(thread.is_alive() for thread in threads), time.monotonic() - started


def replay_burst(
    urls: dict[str, str], users: list[User], keys: int, fanout: int, stop: threading.Event
) -> tuple[list[Outcome], dict[str, tuple[str, User]]]:
    """Fires each of ``keys`` Idempotency-Keys ``fanout`` times at once (same request), then once more
    after all have answered, then once with a different request (which must be 409)."""
    plans = {f"replay-{uuid.uuid4().hex}": (new_marker(), users[i % len(users)]) for i in range(keys)}
    results: list[Outcome] = []
    barrier = threading.Barrier(keys * fanout, timeout=30)
    jobs = [(key, plan) for key, plan in plans.items() for _ in range(fanout)]

    def fire(index: int) -> None:
        key, (marker, user) = jobs[index]
        with requests.Session() as session:
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait()
            if stop.is_set():
                return
            outcome = send(session, urls["send_email"], user, marker, key)
            outcome.phase = "replay-burst"
            results.append(outcome)

    run_clients(len(jobs), fire, stop, join_timeout=120)
    with requests.Session() as session:
        for key, (marker, user) in plans.items():
            outcome = send(session, urls["send_email"], user, marker, key)
            outcome.phase = "replay-after"
            results.append(outcome)
            different = send(session, urls["send_email"], user, new_marker(), key)
            different.phase = "replay-different"
            different.marker = None  # a 409 sends nothing; its marker must never appear
            results.append(different)
    return results, plans


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def verify_sends(
    load: list[Outcome], replays: list[Outcome], plans: dict[str, tuple[str, User]], sent: list[str | None]
) -> list[Check]:
    """No lost send, no duplicate, replays sent exactly once."""
    counts = Counter(marker for marker in sent if marker)
    sent_200 = [o for o in load + replays if o.target == "send_email" and o.status == 200 and o.marker]
    lost = sorted({o.marker for o in sent_200 if counts[o.marker or ""] == 0})  # type: ignore[misc]
    duplicates = sorted(marker for marker, n in counts.items() if n > 1)
    answered = {o.marker for o in load if o.target == "send_email" and o.marker}
    replay_markers = {marker for marker, _ in plans.values()}
    strays = [m for m in counts if m not in answered and m not in replay_markers]
    checks = [
        Check("no lost send", not lost, f"{len(sent_200)} sends answered 200, {len(lost)} not in Gmail"),
        Check(
            "no duplicate send",
            not duplicates,
            f"{len(counts)} markers sent, {len(duplicates)} more than once",
        ),
        Check(
            "nothing sent unasked",
            not strays and None not in sent,
            f"{len(strays)} sent markers no client sent; {sent.count(None)} messages without a marker",
        ),
    ]
    by_key: dict[str, list[Outcome]] = defaultdict(list)
    for outcome in replays:
        if outcome.key:
            by_key[outcome.key].append(outcome)
    bad = []
    for key, (marker, _user) in plans.items():
        same = [o for o in by_key[key] if o.phase in ("replay-burst", "replay-after")]
        ids = {o.body.get("id") for o in same if o.status == 200}
        others = [o for o in same if o.status != 200 and not (o.status == 409 and o.phase == "replay-burst")]
        different = [o for o in by_key[key] if o.phase == "replay-different"]
        if (
            counts[marker] != 1
            or len(ids) != 1
            or others
            or any(o.status != 409 or o.code != "idempotency_conflict" for o in different)
        ):
            bad.append(key)
    burst = [o for o in replays if o.phase == "replay-burst"]
    checks.append(
        Check(
            "replayed keys sent exactly once",
            not bad,
            f"{len(plans)} keys x {len(burst) // max(1, len(plans))} at once: "
            f"{sum(o.status == 200 for o in burst)} x 200, {sum(o.status == 409 for o in burst)} x 409 "
            f"(still running); {len(bad)} keys wrong",
        )
    )
    return checks


def latency_rows(results: list[Outcome]) -> list[tuple[str, str]]:
    rows = []
    for target in TARGETS:
        values = [o.latency * 1000 for o in results if o.target == target]
        ok = sum(200 <= o.status < 300 for o in results if o.target == target)
        if values:
            rows.append(
                (
                    target,
                    f"n={len(values):>5}  2xx={ok:>5}  p50 {percentile(values, 50):7.1f} ms  "
                    f"p95 {percentile(values, 95):7.1f} ms  p99 {percentile(values, 99):7.1f} ms  "
                    f"max {max(values):7.1f} ms",
                )
            )
    return rows


def print_section(title: str, rows: list[tuple[str, str]]) -> None:
    print()
    print(title)
    print("-" * len(title))
    width = max([len(label) for label, _ in rows] + [10])
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")


def print_checks(checks: list[Check]) -> bool:
    rows = [(("PASS " if check.ok else "FAIL ") + check.name, check.detail) for check in checks]
    print_section("Verification", rows)
    return all(check.ok for check in checks)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=200, help="concurrent client threads (default 200)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load (default 20)")
    parser.add_argument("--max-requests", type=int, default=100_000, help="stop after this many requests")
    parser.add_argument("--users", type=int, default=50, help="equipped tokens (default 50)")
    parser.add_argument("--threads", type=int, default=16, help="gunicorn threads per function (default 16)")
    parser.add_argument("--gmail-latency", type=float, default=0.02, help="fake Gmail's latency, s")
    parser.add_argument("--oauth-latency", type=float, default=0.02, help="fake token endpoint's latency, s")
    parser.add_argument(
        "--token-life", type=int, default=8, help="seconds a granted token stays fresh past the margin (8)"
    )
    parser.add_argument("--replay-keys", type=int, default=20, help="Idempotency-Keys replayed at once (20)")
    parser.add_argument("--replay-fanout", type=int, default=6, help="concurrent repeats of each key (6)")
    return parser


# -- CPU: where the cores went --------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_stats() -> list[tuple[int, int, int, float, float]]:
    """(pid, ppid, pgrp, own CPU s, reaped children's CPU s) of every process we can read."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue  # it exited meanwhile
        fields = text[text.rindex(")") + 2 :].split()
        own = (int(fields[11]) + int(fields[12])) / _TICK
        reaped = (int(fields[13]) + int(fields[14])) / _TICK
        found.append((int(entry.name), int(fields[1]), int(fields[2]), own, reaped))
    return found


def cpu_snapshot(groups: dict[str, int], pids: dict[str, int], postmaster: int | None) -> dict[str, float]:
    """CPU seconds used so far by each process group (``groups``), process (``pids``), PostgreSQL
    (the postmaster, its live backends and those it reaped) and this process."""
    stats = _proc_stats()
    usage: dict[str, float] = {}
    for name, pgid in groups.items():
        usage[name] = sum(own + reaped for _pid, _ppid, pgrp, own, reaped in stats if pgrp == pgid)
    for name, wanted in pids.items():
        usage[name] = sum(own for pid, _ppid, _pgrp, own, _reaped in stats if pid == wanted)
    if postmaster is not None:
        usage["PostgreSQL"] = sum(
            own + (reaped if pid == postmaster else 0.0)
            for pid, ppid, _pgrp, own, reaped in stats
            if pid == postmaster or ppid == postmaster
        )
    times = os.times()
    usage["clients (this process)"] = times.user + times.system
    return usage


def postmaster_pid(server: EmbeddedPostgres) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int((server.data_dir / "postmaster.pid").read_text().splitlines()[0])
    return None


# -- the run and its report ---------------------------------------------------------------------------


def inbox_message(index: int) -> bytes:
    return (
        f"From: Sender {index} <sender{index}@example.org>\r\nTo: me@example.com\r\n"
        f"Subject: inbox message {index}\r\nDate: Mon, 3 Jun 2024 10:{index:02d}:00 +0000\r\n"
        f"Message-ID: <inbox-{index}@example.org>\r\n\r\nHello {index}\r\n"
    ).encode()


def counted(outcomes: list[Outcome], phase: str) -> str:
    tally = Counter((o.status, o.code) for o in outcomes if o.phase == phase)
    return ", ".join(
        f"{status}{' ' + code if code else ''} x{n}" for (status, code), n in sorted(tally.items())
    )


def run(args: argparse.Namespace, stop: threading.Event, log_dir: Path) -> dict[str, Any]:
    """Starts everything, runs the load and the replay burst, collects what the report needs."""
    expires_in = MARGIN_S + args.token_life
    data: dict[str, Any] = {"expires_in": expires_in}
    fakes_options = {"gmail_latency": args.gmail_latency, "oauth_latency": args.oauth_latency}
    with database() as pg, Fakes(expires_in=expires_in, **fakes_options) as fakes:
        users = seed_users(
            pg, fakes, "load-user-", args.users, expired_share=1 / 3, fresh_for=(1, args.token_life)
        )
        for index in range(20):
            fakes.call("gmail_add_message", raw=inbox_message(index), labels=["INBOX", "UNREAD"])
        env = {
            "DATABASE_URL": pg.tcp_url(DATABASE),
            "GMAIL_API_ENDPOINT": fakes.urls["gmail"],
            "LOG_LEVEL": "WARNING",
        }
        progress(f"starting 3 functions-framework servers (gunicorn, 1 worker x {args.threads} threads)")
        with servers(["send_email", "list_emails", "token_status"], env, args.threads, log_dir) as running:
            urls = {target: server.url for target, server in running.items()}
            groups = {target: server.proc.pid for target, server in running.items() if server.proc}
            pids = {"fakes (Gmail, OAuth)": fakes._proc.pid or 0}
            results: list[Outcome] = []
            progress(f"{args.clients} clients for {args.duration:.0f} s (or {args.max_requests} requests)")
            before = fakes.call("oauth_stats")
            refresh_span = time.monotonic()
            with ConnectionPeak(pg) as peak:
                cpu_before = cpu_snapshot(groups, pids, postmaster_pid(pg))
                budget = Budget(args.max_requests, time.monotonic() + args.duration, stop)
                alive, elapsed = run_clients(
                    args.clients,
                    lambda i: client_loop(i, urls, users, budget, results),
                    stop,
                    join_timeout=args.duration + 90,
                )
                cpu_after = cpu_snapshot(groups, pids, postmaster_pid(pg))
                progress(f"replaying {args.replay_keys} Idempotency-Keys x {args.replay_fanout} at once")
                replays, plans = replay_burst(urls, users, args.replay_keys, args.replay_fanout, stop)
            after = fakes.call("oauth_stats")
            refresh_span = time.monotonic() - refresh_span
            data["sent"] = fakes.call("sent_markers")
            data["server_logs"] = {target: server.log_tail(3) for target, server in running.items()}
        admin = raw_connection(pg, "bench-admin")
        try:
            data["in_progress"] = admin.run(
                "SELECT count(*) FROM gmail_idempotency WHERE state = 'in_progress'"
            )[0][0]
        finally:
            admin.close()
        data["rows_checked"], data["problems"] = check_rows(pg, after["issued"])
    data.update(
        users=users,
        results=results,
        replays=replays,
        plans=plans,
        alive=alive,
        elapsed=elapsed,
        peak=peak.peak,
        peak_total=peak.peak_total,
        polls=peak.polls,
        refreshes={
            user.refresh_token: after["calls"].get(user.refresh_token, 0)
            - before["calls"].get(user.refresh_token, 0)
            for user in users
        },
        refresh_span=refresh_span,
        cpu={name: cpu_after[name] - cpu_before.get(name, 0.0) for name in cpu_after},
    )
    return data


def report(args: argparse.Namespace, data: dict[str, Any]) -> bool:
    """Prints the table and the verification; True when every check passed."""
    load: list[Outcome] = data["results"]
    replays: list[Outcome] = data["replays"]
    users: list[User] = data["users"]
    elapsed: float = data["elapsed"]
    print("skill-email load: functions-framework (gunicorn) + PostgreSQL + fake Gmail/OAuth, on 127.0.0.1")
    print(
        f"  {args.clients} clients, {args.users} users ({round(args.users / 3)} tokens expired at start), "
        f"{args.duration:.0f} s; gunicorn 1 worker x {args.threads} threads per function; Gmail latency "
        f"{args.gmail_latency * 1000:.0f} ms; tokens fresh {args.token_life} s (expires_in "
        f"{data['expires_in']} s minus the {MARGIN_S} s margin); {os.cpu_count()} CPUs"
    )
    ok = sum(200 <= o.status < 300 for o in load)
    rate = len(load) / elapsed
    retried = sum(o.transport_retries for o in load + replays)
    print_section(
        "Throughput",
        [
            ("requests", f"{len(load)} in {elapsed:.1f} s: {rate:.1f} req/s, {ok / elapsed:.1f} 2xx/s"),
            ("sends / lists / statuses", " / ".join(str(sum(o.target == t for o in load)) for t in TARGETS)),
            ("keep-alive races retried", f"{retried} (server closed an idle connection as it was reused)"),
            ("clients left running", f"{data['alive']} (all stop by themselves at the deadline)"),
        ],
    )  # fmt: skip
    print_section("Latency, client side", latency_rows(load))
    errors = Counter(f"{o.target} {o.status} {o.code}" for o in load if not 200 <= o.status < 300)
    rows = [(name, str(n)) for name, n in errors.most_common()] or [("none", "0")]
    samples = {o.body["error"]["message"] for o in load if o.status == 0}
    rows += [("  e.g.", sample[:100]) for sample in sorted(samples)[:3]]
    print_section("Errors by status and code (load phase)", rows)
    print_section(
        "Idempotency replays",
        [
            (f"{args.replay_keys} keys x {args.replay_fanout} at once", counted(replays, "replay-burst")),
            ("same request after the burst", counted(replays, "replay-after")),
            ("same key, another request", counted(replays, "replay-different")),
        ],
    )
    refreshes: dict[str, int] = data["refreshes"]
    total = sum(refreshes.values())
    refreshed = sum(1 for n in refreshes.values() if n > 0)
    most = max(refreshes.values(), default=0)
    # A granted token stays fresh token_life s: one refresh per expiry, plus one for an expired seed.
    span = data["refresh_span"]
    bound = math.ceil(span / args.token_life) + 1
    print_section(
        "PostgreSQL and tokens",
        [
            ("peak connections, ours", f"{data['peak']} (at most 3 functions x {args.threads} threads)"),
            ("peak client backends", f"{data['peak_total']} ({data['polls']} polls, 20 ms apart)"),
            ("token refreshes", f"{total} for {len(users)} tokens ({refreshed} refreshed at least once)"),
            ("refreshes per token", f"max {most}; one per expiry in {span:.0f} s allows {bound}"),
        ],
    )  # fmt: skip
    cpu: dict[str, float] = data["cpu"]
    cores = os.cpu_count() or 1
    print_section(
        f"CPU seconds during the load phase ({elapsed:.1f} s x {cores} cores = {elapsed * cores:.0f} s)",
        [(name, f"{used:6.1f} s  ({used / elapsed / cores:4.0%} of all)") for name, used in cpu.items()],
    )  # fmt: skip
    checks = verify_sends(load, replays, data["plans"], data["sent"])
    unexpected = [o for o in load if not 200 <= o.status < 300]
    unexpected += [o for o in replays if o.phase == "replay-after" and o.status != 200]
    problems: list[str] = data["problems"]
    expired = [user for index, user in enumerate(users) if index < round(len(users) / 3)]
    checks += [
        Check(
            "no unexpected answer",
            not unexpected and data["alive"] == 0,
            "only 2xx under load" if not unexpected else f"{len(unexpected)} non-2xx (see the errors above)",
        ),
        Check("no Idempotency-Key left in progress", data["in_progress"] == 0, f"{data['in_progress']} rows"),
        Check(
            "every gmail_token row intact",
            not problems and data["rows_checked"] == len(users),
            f"{data['rows_checked']} rows: "
            + ("; ".join(problems[:3]) if problems else "JSON objects, expiry set, tokens the fake issued"),
        ),
        Check(
            "tokens refreshed under load, once per expiry",
            most <= bound and all(refreshes[user.refresh_token] > 0 for user in expired),
            f"{total} refreshes for {len(load)} requests; every expired seed refreshed; max {most} per token",
        ),
    ]
    passed = print_checks(checks)
    if not passed:
        for target, tail in data["server_logs"].items():
            if tail:
                print(f"\n  last log lines of {target}:\n    " + tail.replace("\n", "\n    "))
    print(f"\nRESULT: {'PASS' if passed else 'FAIL'}")
    return passed


TARGETS = ("send_email", "list_emails", "token_status")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not (1 <= args.clients <= 1000 and 1 <= args.duration <= 600 and 1 <= args.users <= 10_000):
        raise SystemExit("clients must be 1-1000, duration 1-600 s, users 1-10000")
    raise_on_sigterm()
    stop = threading.Event()
    log_dir = Path(tempfile.mkdtemp(prefix="skill-email-load-logs-"))
    try:
        data = run(args, stop, log_dir)
    except KeyboardInterrupt:
        stop.set()
        progress("interrupted: clients, servers, fakes and PostgreSQL stopped")
        return 130
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)
    return 0 if report(args, data) else 1


if __name__ == "__main__":
    sys.exit(main())
