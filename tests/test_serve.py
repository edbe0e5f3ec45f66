"""The local run (``python -m devtools.serve``) as a developer uses it, and the README's commands.

The server runs in a subprocess with its own data directory and ports, so the developer's ``.local/pg``
is never touched.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
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
from tests.serving import STOP_TIMEOUT_S, Served, free_port, port_open, scratch_dir, start_serve


@pytest.fixture
def work_dir() -> Iterator[Path]:
    with scratch_dir("skill-email-serve-test-") as path:
        yield path


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
    # Compact like every function's error (it used to be the only pretty-printed one).
    for response in (nowhere, unknown, wrong_method):
        assert response.text == json.dumps(response.json(), ensure_ascii=False, separators=(",", ":"))

    # werkzeug colours request lines with ANSI codes even into a pipe or file; ours are plain text.
    time.sleep(0.3)
    assert '"GET /nowhere HTTP/1.1" 404' in serving.output
    assert "\x1b[" not in serving.output


def test_serve_help_shows_plain_text() -> None:
    text = serve.build_parser().format_help()
    assert "``" not in text
    assert "python -m devtools.serve: every target of the registry on one port" in text


def test_serve_keeps_its_data_across_runs_and_restarts_at_once_on_the_same_ports(work_dir: Path) -> None:
    data_dir = work_dir / "pg"
    first = start_serve(data_dir, free_port(), free_port())
    try:
        added = add_token((work_dir / "database_url").read_text().strip(), "bob")
        assert added.returncode == 0, added.stderr
        # A connection the server closes first (HTTP/1.0) leaves its port in TIME_WAIT for about a minute.
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", first.port), timeout=10) as sock:
                sock.sendall(b"GET /token_status?user_id=bob HTTP/1.0\r\n\r\n")
                answer = b"".join(iter(lambda: sock.recv(65536), b""))
            assert answer.startswith(b"HTTP/1.0 200") or answer.startswith(b"HTTP/1.1 200"), answer[:80]
    finally:
        assert first.stop(signal.SIGINT) == 0

    # The same ports at once: a restart used to be refused ("port ... is in use") until TIME_WAIT ended.
    second = start_serve(data_dir, first.port, first.db_port)
    assert f"port {first.db_port} is taken" not in second.output
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
