"""deploy.sh --dry-run prints the same plan as before the plan moved to Python.

tests/golden/deploy_dry_run.json holds what the old script printed (and the env files it wrote) for the
configurations tests/test_deploy.py uses, captured before any change (see capture_deploy_dry_run.py).
Today's output must equal it, apart from the differences listed in INTENDED, each of which a test
below shows on its own.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
GOLDEN = json.loads((REPO / "tests" / "golden" / "deploy_dry_run.json").read_text())


def make_tree(root: Path) -> Path:
    """The source tree deploy.sh runs from: the script, env.yaml, and the planner with the registry."""
    root.mkdir()
    shutil.copy2(REPO / "deploy.sh", root / "deploy.sh")
    shutil.copy2(REPO / "env.yaml", root / "env.yaml")
    (root / "main.py").write_text("# stand-in for the real main.py\n")
    for package in ("shared", "devtools"):
        (root / package).symlink_to(REPO / package)
    return root


def dry_run_case(tmp_path: Path, case: dict) -> tuple[str, dict[str, str]]:
    root = make_tree(tmp_path / "src")
    if case["env_yaml_append"]:
        with (root / "env.yaml").open("a") as env_file:
            env_file.write(case["env_yaml_append"])
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "gcloud").write_text("#!/bin/sh\nexit 97\n")
    # The old script ran its migration with "python3" when the tree had no .venv: name the interpreter
    # the same way, so the printed migration line can be compared.
    (bindir / "python3").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    for exe in bindir.iterdir():
        exe.chmod(0o755)
    environ = {k: v for k, v in os.environ.items() if k not in {"GOOGLE_CLOUD_PROJECT", "REGION"}}
    environ.update(PATH=f"{bindir}{os.pathsep}{environ['PATH']}", PYTHON="python3", **case["env"])
    result = subprocess.run(
        [str(root / "deploy.sh"), "--dry-run", *case["args"]],
        cwd=root,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    env_files = {p.name: p.read_text() for p in sorted((root / ".local" / "deploy").glob("*.yaml"))}
    return result.stdout, env_files


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_dry_run_prints_the_same_plan_as_before(tmp_path: Path, name: str) -> None:
    case = GOLDEN[name]
    stdout, env_files = dry_run_case(tmp_path, case)
    assert stdout.splitlines() == case["stdout"].splitlines()
    assert env_files == case["env_files"]
