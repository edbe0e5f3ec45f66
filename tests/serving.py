"""Running ``devtools.serve`` (or ``tasks.py serve``) in a subprocess, as a developer would, for tests.

The server gets its own data directory and ports, so the developer's ``.local/`` is never touched.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import ROOT

# First start initialises a cluster (initdb, a few seconds); later starts take about a second.
START_TIMEOUT_S = 90
STOP_TIMEOUT_S = 30


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class Served:
    """A running server subprocess and everything it printed so far."""

    process: subprocess.Popen[str]
    port: int
    db_port: int
    lines: list[str] = field(default_factory=list)
    _queue: queue.Queue[str | None] = field(default_factory=queue.Queue)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def output(self) -> str:
        self._drain()
        return "".join(self.lines)

    def _drain(self) -> None:
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                return
            if line is not None:
                self.lines.append(line)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if "Ctrl-C stops" in self.output and port_open(self.port):
                return
            if self.process.poll() is not None:
                raise AssertionError(f"serve exited with {self.process.returncode}:\n{self.output}")
            time.sleep(0.1)
        raise AssertionError(f"serve did not start in {START_TIMEOUT_S} s:\n{self.output}")

    def stop(self, signum: int) -> int:
        self.process.send_signal(signum)
        try:
            return self.process.wait(timeout=STOP_TIMEOUT_S)
        finally:
            time.sleep(0.2)  # let the reader thread take the last lines
            self._drain()

    def ensure_stopped(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=STOP_TIMEOUT_S)


def launch(
    command: Sequence[str],
    port: int,
    db_port: int,
    *,
    cwd: Path = ROOT,
    env: dict[str, str] | None = None,
    new_session: bool = False,
) -> Served:
    """Starts ``command`` (a serve command line) and waits until it has printed its banner and listens.
    ``new_session``: in a process group of its own, which a test can stop whole whatever it started."""
    process = subprocess.Popen(
        list(command),
        cwd=cwd,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "LOG_LEVEL": "INFO", **(env or {})},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=new_session,
    )
    served = Served(process, port, db_port)

    def read() -> None:  # drains the pipe so the server never blocks on a full one
        assert process.stdout is not None
        for line in process.stdout:
            served._queue.put(line)
        served._queue.put(None)

    threading.Thread(target=read, daemon=True).start()
    try:
        served.wait_ready()
    except BaseException:
        served.ensure_stopped()
        raise
    return served


def start_serve(
    data_dir: Path, port: int, db_port: int, *extra: str, env: dict[str, str] | None = None
) -> Served:
    """``python -m devtools.serve`` on these ports and data directory, with ``extra`` options."""
    command = [
        sys.executable,
        "-m",
        "devtools.serve",
        *("--port", str(port), "--db-port", str(db_port)),
        *("--data-dir", str(data_dir)),
        *extra,
    ]
    return launch(command, port, db_port, env=env)


@contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A directory under /tmp rather than pytest's tmp_path: pytest keeps its own base directory private
    (0700), and PostgreSQL, run as the unprivileged user ``embedded_postgres`` when we are root, must be
    able to reach its data directory."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def sandbox_server(**env: str) -> Iterator[Served]:
    """``serve --sandbox`` on free ports in a scratch directory; stopped (SIGTERM) at the end."""
    with scratch_dir("skill-email-sandbox-test-") as work:
        served = start_serve(work / "pg", free_port(), free_port(), "--sandbox", env=env)
        try:
            yield served
        finally:
            if served.process.poll() is None:
                served.stop(signal.SIGTERM)
