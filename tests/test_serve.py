"""The local run (``python -m devtools.serve``) as a developer uses it, and the README's commands.

The server runs in a subprocess with its own data directory and ports, so the developer's ``.local/pg``
is never touched.
"""

from __future__ import annotations

import ast
import os
import queue
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests

from devtools import serve
from devtools.embedded_pg import DEFAULT_PASSWORD
from devtools.fakes.oauth import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET
from shared import cli
from tests.conftest import ROOT, secret

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
    """A running ``devtools.serve`` subprocess and everything it printed so far."""

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


def start_serve(data_dir: Path, port: int, db_port: int) -> Served:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "devtools.serve",
            *("--port", str(port), "--db-port", str(db_port)),
            *("--data-dir", str(data_dir)),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "LOG_LEVEL": "INFO"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    served = Served(process, port, db_port)

    def read() -> None:  # drains the pipe so the server never blocks on a full one
        assert process.stdout is not None
        for line in process.stdout:
            served._queue.put(line)
        served._queue.put(None)

    threading.Thread(target=read, daemon=True).start()
    served.wait_ready()
    return served


@pytest.fixture
def work_dir() -> Iterator[Path]:
    """A directory for the server's data, under /tmp rather than pytest's tmp_path: pytest keeps its own
    base directory private (0700, reset by every pytest run), and PostgreSQL, run as the unprivileged
    user ``embedded_postgres`` when we are root, must be able to reach its data directory."""
    path = Path(tempfile.mkdtemp(prefix="skill-email-serve-test-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def serving(work_dir: Path) -> Iterator[Served]:
    served = start_serve(work_dir / "pg", free_port(), free_port())
    try:
        yield served
    finally:
        if served.process.poll() is None:
            served.process.terminate()
            served.process.wait(timeout=STOP_TIMEOUT_S)


def add_token(database_url: str, user_id: str) -> subprocess.CompletedProcess[str]:
    refresh = secret("1//serve")
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "shared.cli",
            "add-token",
            user_id,
            "--refresh-token",
            refresh,
            *("--client-id", DEFAULT_CLIENT_ID, "--client-secret", DEFAULT_CLIENT_SECRET),
        ],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_serve_runs_the_functions_and_stops_cleanly_on_sigint(serving: Served, work_dir: Path) -> None:
    missing = requests.get(f"{serving.url}/token_status", params={"user_id": "x"}, timeout=10)
    assert missing.status_code == 404
    assert missing.headers["Content-Type"] == "application/json"
    assert missing.json()["error"]["code"] == "not_found"

    # The printed instructions name the file holding the full URL; the URL itself is masked.
    [url_file] = re.findall(r'export DATABASE_URL="\$\(cat (\S+)\)"', serving.output)
    assert Path(url_file) == work_dir / "database_url"
    assert f":{serving.db_port}/" in Path(url_file).read_text()
    assert "postgresql://postgres:***@127.0.0.1" in serving.output
    added = add_token(Path(url_file).read_text().strip(), "alice")
    assert added.returncode == 0, added.stderr
    assert added.stdout.strip() == "alice: inserted"

    found = requests.post(f"{serving.url}/token_status", json={"user_id": "alice"}, timeout=10)
    assert found.status_code == 200
    assert found.json()["connected"] is True

    assert serving.stop(signal.SIGINT) == 0
    assert not port_open(serving.db_port), "PostgreSQL still listens after serve exited"
    assert not port_open(serving.port)
    assert "Traceback" not in serving.output
    for value in (DEFAULT_PASSWORD, quote(DEFAULT_PASSWORD, safe="")):
        assert value not in serving.output


def test_serve_mounts_every_target_and_an_index(serving: Served) -> None:
    index = requests.get(f"{serving.url}/", timeout=10)
    assert index.status_code == 200
    targets = index.json()["targets"]
    assert sorted(targets) == sorted(serve.TARGETS)
    assert targets["token_status"]["url"].endswith(f":{serving.port}/token_status")

    # Each target is its functions-framework app, at /NAME without a redirect to /NAME/.
    scheduled = requests.post(f"{serving.url}/refresh_tokens", json={}, timeout=10, allow_redirects=False)
    assert scheduled.status_code == 200
    assert scheduled.json() == {"checked": 0, "refreshed": 0, "skipped": 0, "failed": []}
    wrong_method = requests.get(f"{serving.url}/send_email", timeout=10, allow_redirects=False)
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"
    unknown = requests.get(f"{serving.url}/list_emails", params={"user_id": "x", "colour": "red"}, timeout=10)
    assert unknown.status_code == 400
    assert "colour" in unknown.json()["error"]["message"]
    nowhere = requests.get(f"{serving.url}/nowhere", timeout=10)
    assert nowhere.status_code == 404
    assert nowhere.json()["error"]["code"] == "not_found"


def test_serve_keeps_its_data_across_runs_and_stops_on_sigterm(work_dir: Path) -> None:
    data_dir = work_dir / "pg"
    first = start_serve(data_dir, free_port(), free_port())
    try:
        added = add_token((work_dir / "database_url").read_text().strip(), "bob")
        assert added.returncode == 0, added.stderr
    finally:
        assert first.stop(signal.SIGINT) == 0

    second = start_serve(data_dir, free_port(), free_port())
    try:
        found = requests.get(f"{second.url}/token_status", params={"user_id": "bob"}, timeout=10)
        assert found.status_code == 200
        assert "migrations applied" not in second.output
    finally:
        assert second.stop(signal.SIGTERM) == 0
    assert not port_open(second.db_port)
    assert "Traceback" not in second.output


def test_masked_hides_only_the_password() -> None:
    url = "postgresql://postgres:s3cr%3At%40p@127.0.0.1:54329/postgres?sslmode=disable"
    assert serve.masked(url) == "postgresql://postgres:***@127.0.0.1:54329/postgres?sslmode=disable"
    assert serve.masked("postgresql://postgres@/db?host=/tmp/x") == "postgresql://postgres@/db?host=/tmp/x"


# -- the README's commands exist -------------------------------------------------------------------------


COMMAND = re.compile(r"python3? tasks\.py|python -m shared\.cli")


def readme_commands() -> list[str]:
    """Every command in the README, in code blocks or inline, that runs ``tasks.py`` or ``shared.cli``."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.DOTALL)
    lines = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    lines += re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.DOTALL))
    stripped = (line.split(" #", 1)[0].strip() for line in lines)
    # A pipeline or a redirection: only the command itself is ours to check.
    commands = (re.split(r"\s(?:\||>|&&|;)\s", line, maxsplit=1)[0] for line in stripped)
    return [line for line in commands if COMMAND.search(line)]


def tasks_commands() -> set[str]:
    """The commands tasks.py accepts, read from its ``command not in (...)`` check."""
    tree = ast.parse((ROOT / "tasks.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Compare)
            and isinstance(node.left, ast.Name)
            and node.left.id == "command"
            and isinstance(node.ops[0], ast.NotIn)
            and isinstance(node.comparators[0], ast.Tuple)
        ):
            return {elt.value for elt in node.comparators[0].elts if isinstance(elt, ast.Constant)}
    raise AssertionError("tasks.py no longer checks its commands with `command not in (...)`")


def test_readme_has_the_commands_it_should() -> None:
    commands = readme_commands()
    for expected in ("python3 tasks.py serve", "python3 tasks.py test", "python3 tasks.py check"):
        assert expected in commands
    for name in ("migrate", "add-token", "authorize", "import-tokens", "status"):
        assert any(f"python -m shared.cli {name}" in command for command in commands), name


@pytest.mark.parametrize("command", sorted(set(readme_commands())))
def test_readme_command_is_known(command: str) -> None:
    words = shlex.split(command)
    if "tasks.py" in words:
        args = words[words.index("tasks.py") + 1 :]
        assert args and args[0] in tasks_commands(), command
        if args[0] == "serve":
            serve.build_parser().parse_args(args[1:])  # exits (SystemExit) on an unknown option
    else:
        start = words.index("shared.cli") + 1
        cli.build_parser().parse_args(words[start:])


def parse_errors(parser: Any, args: list[str]) -> bool:
    try:
        parser.parse_args(args)
    except SystemExit:
        return True
    return False


def test_readme_check_catches_unknown_commands() -> None:
    assert parse_errors(cli.build_parser(), ["import-token", "dir"])
    assert parse_errors(serve.build_parser(), ["--db-prot", "1"])
    assert "lint" not in tasks_commands()
