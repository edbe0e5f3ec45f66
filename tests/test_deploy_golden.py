"""deploy.sh --dry-run prints the same plan as before the plan moved to Python, plus the intended changes.

tests/golden/deploy_dry_run.json holds what the old script printed (and the env files it wrote) for the
configurations tests/test_deploy.py uses, captured before any change (see capture_deploy_dry_run.py).
Today's output must equal it once the intended changes, and only those, are undone:
1. each function is deployed with its ingress (``--ingress-settings``, appended to the deploy line);
2. robeing identities (``--invoker``) no longer get run.invoker on refresh_tokens;
3. the scheduler job's ID-token audience is refresh_tokens' cloudfunctions.net URL (one of CALLER_AUDIENCES)
   instead of the run.app URL read after the deploy;
4. each env file gains ``CALLER_POLICY: "enforce"`` and ``CALLER_AUDIENCES`` after the old added lines;
5. with the scheduler job comes the Cloud Tasks queue of the scheduled run's fan-out (three more lines
   at the end: the queue, the functions' account may queue tasks and act as the scheduler; and
   cloudtasks.googleapis.com among the APIs), and refresh_tokens' env file names them
   (REFRESH_TASKS_QUEUE, REFRESH_TASKS_URL, REFRESH_TASKS_SERVICE_ACCOUNT).
Steps for Pub/Sub targets appear only once one is registered: none is in these configurations.
tests/test_deploy.py shows each change on its own.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
GOLDEN = json.loads((REPO / "tests" / "golden" / "deploy_dry_run.json").read_text())


# The registry the golden plan was made from. Targets registered since are deployed too (with their
# share of the budget), so the comparison runs on a copy of the registry holding only these.
GOLDEN_TARGETS = ("send_email", "list_emails", "refresh_tokens", "token_status")


def make_tree(root: Path, registry_tail: str = "") -> Path:
    """The source tree deploy.sh runs from: the script, env.yaml, and the planner with the registry.

    ``registry_tail``, when given, is Python appended to a copy of shared/targets.py (the registry is
    data: a test may add or leave out entries); otherwise shared/ is the repository's own.
    """
    root.mkdir()
    shutil.copy2(REPO / "deploy.sh", root / "deploy.sh")
    shutil.copy2(REPO / "env.yaml", root / "env.yaml")
    (root / "main.py").write_text("# stand-in for the real main.py\n")
    (root / "devtools").symlink_to(REPO / "devtools")
    if not registry_tail:
        (root / "shared").symlink_to(REPO / "shared")
        return root
    shutil.copytree(REPO / "shared", root / "shared", ignore=shutil.ignore_patterns("__pycache__"))
    with (root / "shared" / "targets.py").open("a") as registry:
        registry.write(f"\n{registry_tail}\nBY_NAME = {{target.name: target for target in TARGETS}}\n")
    return root


def dry_run_case(tmp_path: Path, case: dict) -> tuple[str, dict[str, str]]:
    root = make_tree(tmp_path / "src", f"TARGETS = tuple(t for t in TARGETS if t.name in {GOLDEN_TARGETS!r})")
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


SCHEDULER_MEMBER = re.compile(r"--member serviceAccount:skill-email-scheduler@")
INGRESS = re.compile(r" --ingress-settings (?:all|internal-only)$")
AUDIENCE = re.compile(r"--oidc-token-audience https://[a-z0-9-]+\.cloudfunctions\.net/refresh_tokens ")
ADDED_SETTINGS = ("CALLER_POLICY", "CALLER_AUDIENCES")
FAN_OUT_SETTINGS = ("REFRESH_TASKS_QUEUE", "REFRESH_TASKS_URL", "REFRESH_TASKS_SERVICE_ACCOUNT")
ADDED_MARK = "\n# Added by deploy.sh for "


def old_lines_still_intended(old: str) -> list[str]:
    """The old plan less what least privilege removes (change 2)."""
    return [
        line
        for line in old.splitlines()
        if not ("add-invoker-policy-binding refresh_tokens " in line and not SCHEDULER_MEMBER.search(line))
    ]


def with_intended_changes_undone(new: str) -> list[str]:
    """Today's plan with changes 1, 3 and 5 undone."""
    lines = []
    for line in new.splitlines():
        if " tasks queues " in line or " iam service-accounts add-iam-policy-binding " in line:
            continue  # change 5
        if " services enable " in line:
            line = line.replace(" cloudtasks.googleapis.com", "")
        if " functions deploy " in line:
            assert INGRESS.search(line), f"no ingress: {line}"
            line = INGRESS.sub("", line)
        if "scheduler jobs " in line and " http " in line:
            assert len(AUDIENCE.findall(line)) == 2, line  # both branches of the create-or-update
            line = AUDIENCE.sub('--oidc-token-audience "${REFRESH_TOKENS_URL}" ', line)
        lines.append(line)
    return lines


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_dry_run_prints_the_same_plan_as_before(tmp_path: Path, name: str) -> None:
    case = GOLDEN[name]
    stdout, env_files = dry_run_case(tmp_path, case)
    assert with_intended_changes_undone(stdout) == old_lines_still_intended(case["stdout"])
    assert (" tasks queues " in stdout) == (" scheduler jobs " in case["stdout"])

    # Each env file is a header, env.yaml as it is today (it may have gained settings since the capture)
    # and the lines deploy.sh adds, which must be the old ones followed by change 4 alone.
    env_yaml = (REPO / "env.yaml").read_text() + case["env_yaml_append"]
    assert sorted(env_files) == sorted(case["env_files"])
    for file_name, text in env_files.items():
        old_head, old_added = case["env_files"][file_name].split(ADDED_MARK)
        head, added = text.split(ADDED_MARK)
        assert head == old_head.splitlines(keepends=True)[0] + env_yaml, file_name
        assert added.startswith(old_added), file_name
        new_keys = [line.split(":", 1)[0] for line in added[len(old_added) :].splitlines()]
        fan_out = file_name == "env.refresh_tokens.yaml" and " scheduler jobs " in case["stdout"]
        # change 4 (and 5), and nothing else
        assert new_keys == [*ADDED_SETTINGS, *(FAN_OUT_SETTINGS if fan_out else ())], file_name


def test_the_intended_changes_do_change_the_plan(tmp_path: Path) -> None:
    """The comparison above is not vacuous: the old plan had the lines that change 2 removes."""
    full = GOLDEN["full"]["stdout"]
    assert len(old_lines_still_intended(full)) == len(full.splitlines()) - 1
