"""tasks.py and .ci/run: the interpreter and virtualenv each command runs in (CI runs the suite on 3.12)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.test_deploy import shellcheck_binary

REPO = Path(__file__).resolve().parent.parent


def load_tasks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tasks", REPO / "tasks.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_default_is_this_python_and_dot_venv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TASKS_PYTHON", raising=False)
    assert load_tasks().interpreter() == (sys.executable, REPO / ".venv")


def test_tasks_python_gets_a_virtualenv_named_after_its_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKS_PYTHON", sys.executable)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert load_tasks().interpreter() == (sys.executable, REPO / f".venv-{version}")


def test_tasks_python_that_is_too_old_or_missing_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = tmp_path / "python3.10"
    old.write_text("#!/bin/sh\necho 3.10\n")
    old.chmod(0o755)
    tasks = load_tasks()
    monkeypatch.setenv("TASKS_PYTHON", str(old))
    with pytest.raises(SystemExit, match=r"is Python 3\.10; 3\.11 or newer"):
        tasks.interpreter()
    monkeypatch.setenv("TASKS_PYTHON", str(tmp_path / "nowhere"))
    with pytest.raises(SystemExit, match="does not run"):
        tasks.interpreter()


def test_ci_script_is_shellcheck_clean() -> None:
    result = subprocess.run(
        [shellcheck_binary(), "--severity=style", str(REPO / ".ci" / "run")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
