"""The README's "For robeing developers" quick start, followed from a fresh clone, command by command.

The clone gets a ``.venv`` of its own that sees this run's installed packages (a ``.pth`` line) and
carries tasks.py's requirements stamp, so ``python3 tasks.py`` installs nothing and no download is
needed except pip's build backend for ``pip install -e ./client``, which lands in the clone's ``.venv``
only. The changes to the printed commands: port 8080 becomes a free port (``--port P --db-port 0``), and
``.venv`` becomes ``.venv-X.Y`` when CI runs the suite on a second Python (``TASKS_PYTHON``).
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path
from typing import Any

from devtools.embedded_pg import EmbeddedPostgres
from tests.conftest import ROOT
from tests.serving import free_port, launch, port_open, scratch_dir

SECTION = "## For robeing developers"


def quick_start_blocks(readme: str) -> list[str]:
    """The ``sh`` code blocks of the quick-start section, in order."""
    section = readme[readme.index(SECTION) :]
    section = section[: section.index("\n## ", len(SECTION))]
    return re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)


def venv_name() -> str:
    """The virtualenv tasks.py uses: .venv, or .venv-X.Y when TASKS_PYTHON names another interpreter
    (CI's run on a second Python, which is this one then)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    return f".venv-{version}" if os.environ.get("TASKS_PYTHON") else ".venv"


def fresh_clone(into: Path) -> Path:
    """``git clone`` of this checkout, with a ``.venv`` that reuses this run's packages."""
    clone = into / "skill-email"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, timeout=120)
    env_dir = clone / venv_name()
    venv.EnvBuilder(with_pip=False, symlinks=True).create(env_dir)
    python = env_dir / "bin" / "python"
    overlay_site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    shared_site = sysconfig.get_paths()["purelib"]
    Path(overlay_site, "_reuse_test_venv.pth").write_text(f"import site; site.addsitedir({shared_site!r})\n")
    digest = hashlib.sha256()
    for name in ("requirements.txt", "requirements-dev.txt"):  # as tasks.py computes its stamp
        digest.update((clone / name).read_bytes())
    (env_dir / ".requirements.sha256").write_text(digest.hexdigest())
    return clone


def run_in(clone: Path, script: str) -> str:
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=clone,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"{script}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    return done.stdout


def banner_port(output: str, pattern: str) -> int:
    match = re.search(pattern, output)
    assert match, (pattern, output)
    return int(match[1])


def test_the_quick_start_works_as_printed_from_a_fresh_clone() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = quick_start_blocks(readme)
    serve_block, curl_block = blocks[:2]
    [push_block] = [block for block in blocks if "watch_mailbox" in block]
    [client_block] = [block for block in blocks if "skill_email_client" in block]
    [mcp_block] = [block for block in blocks if "streamable_http_client" in block]
    assert serve_block.strip() == "python3 tasks.py serve --sandbox"

    with scratch_dir("skill-email-quickstart-") as work:
        clone = fresh_clone(work)
        port = free_port()
        here = f"localhost:{port}"
        command = [shutil.which("python3") or sys.executable, *serve_block.split()[1:]]
        served = launch(
            [*command, "--port", str(port), "--db-port", "0"], port, 0, cwd=clone, new_session=True
        )
        try:
            # 1. Sandbox: send, then list finds what was sent.
            send_line, list_line, read_line = curl_block.replace("localhost:8080", here).strip().splitlines()
            sent: dict[str, Any] = json.loads(run_in(clone, send_line))
            assert sent["label_ids"] == ["SENT"]
            listed = json.loads(run_in(clone, list_line))
            assert sent["id"] in [message["id"] for message in listed["messages"]]
            # The read line is the banner's own third line (the seeded message's id is the same each start).
            assert read_line in served.output
            read = json.loads(run_in(clone, read_line))
            assert read["subject"] == "다음 주 회의 일정 안내"
            assert read["from_address"] == {"name": "김민준", "email": "minjun@example.kr"}

            # New mail: watch, a delivery, and its event in list_events.
            push_lines = push_block.replace("localhost:8080", here).strip().splitlines()
            watch_line, deliver_line, events_line = push_lines
            assert json.loads(run_in(clone, watch_line))["history_id"]
            delivered = json.loads(run_in(clone, deliver_line))
            assert delivered["notified"] is True
            events = json.loads(run_in(clone, events_line))["events"]
            [event] = [event for event in events if event["message"]["id"] == delivered["id"]]
            assert event["type"] == "message.received"
            assert event["message"]["subject"] == "새 메일"
            assert event["robeing_id"] == "demo-robeing"

            # 2. The client: installed into the clone's .venv, then the example as printed.
            client_script = client_block.replace("localhost:8080", here).replace(".venv/", f"{venv_name()}/")
            printed = run_in(clone, client_script)
            assert "From the client" in printed
            assert "as expected: not_found" in printed
            probe = "import skill_email_client; print(skill_email_client.__file__)"
            assert "/skill-email/client/" in run_in(clone, f"{venv_name()}/bin/python -c '{probe}'")

            # 3. MCP: the official client lists the tools and calls one, as printed.
            mcp_script = mcp_block.replace("localhost:8080", here).replace(".venv/", f"{venv_name()}/")
            printed_lines = run_in(clone, mcp_script).strip().splitlines()
            tools = set(ast.literal_eval(printed_lines[0]))
            assert {"send_email", "list_emails", "get_email", "token_status"} <= tools
            assert "From the client" in printed_lines[1]  # the client step's send, found through MCP

            # Stopping `python3 tasks.py serve` by its PID stops the functions, the fakes and PostgreSQL.
            output = served.output
            ports = {
                "functions": port,
                "PostgreSQL": banner_port(output, r"postgresql://postgres:\*\*\*@127\.0\.0\.1:(\d+)/"),
                "fake Gmail": banner_port(output, r"Gmail \(http://127\.0\.0\.1:(\d+)\)"),
                "fake token endpoint": banner_port(output, r"token endpoint \(http://127\.0\.0\.1:(\d+)\)"),
            }
            assert served.stop(signal.SIGTERM) == 0
            still_open = [name for name, number in ports.items() if port_open(number)]
            assert still_open == [], f"still answering after kill PID: {still_open}\n{served.output}"
            assert "Traceback" not in served.output
        finally:
            served.ensure_stopped()
            # Whatever a failed run left behind (a server that outlived its PID, its PostgreSQL) stops here.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(served.process.pid, signal.SIGTERM)
            EmbeddedPostgres(clone / ".local" / "sandbox" / "pg").stop()
