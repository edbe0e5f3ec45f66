"""A test run cleans up after itself: nothing is left in the temporary directory once pytest exits."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from devtools.embedded_pg import EmbeddedPostgres
from tests.conftest import ROOT
from tests.serving import scratch_dir


def test_a_test_run_leaves_no_temporary_folder_behind() -> None:
    # One test on the embedded PostgreSQL, with TMPDIR pointing at an empty folder; pytest's own
    # temporary base (kept on purpose, for failed tests) goes elsewhere. The session fixture used to
    # leave an empty "skill-email-test-*" folder behind on every run.
    with scratch_dir("skill-email-tmpdir-") as tmpdir, scratch_dir("skill-email-basetemp-") as basetemp:
        env = {key: value for key, value in os.environ.items() if key != "TEST_DATABASE_URL"}
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                f"--basetemp={basetemp / 'pytest'}",
                "tests/test_cli.py::test_add_token_then_status",
            ],
            cwd=ROOT,
            env={**env, "TMPDIR": str(tmpdir)},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "1 passed" in done.stdout
        assert sorted(path.name for path in tmpdir.iterdir()) == []


def test_destroying_a_throwaway_server_removes_the_folder_made_for_it() -> None:
    # Fixtures elsewhere (tests/test_faults.py, the push tests, the benchmarks) make mkdtemp() / "pgdata".
    with scratch_dir("skill-email-keep-") as other:
        made = Path(tempfile.mkdtemp(prefix="skill-email-throwaway-"))
        EmbeddedPostgres(made / "pgdata").destroy()
        assert not made.exists()
        (other / "pgdata").mkdir()
        (other / "notes.txt").write_text("not the server's")
        EmbeddedPostgres(other / "pgdata").destroy()
        assert sorted(path.name for path in other.iterdir()) == ["notes.txt"]
