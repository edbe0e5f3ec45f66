"""How deploy_dry_run.json was made: ``deploy.sh --dry-run`` of commit 6eb118a (before the plan moved to
Python), for the configurations tests/test_deploy.py uses.

Run once, from the repository root, before deploy.sh changed:
``python tests/golden/capture_deploy_dry_run.py``.
Do not re-run it to make a test pass: the file is the record of the old plan that
tests/test_deploy_golden.py compares today's plan with.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent / "deploy_dry_run.json"
PROJECT = "robeing-prod"
INVOKER = f"robeing-api@{PROJECT}.iam.gserviceaccount.com"

# name -> (arguments after --dry-run, extra environment, text appended to env.yaml)
CASES: dict[str, tuple[list[str], dict[str, str], str]] = {
    "default": (["--project", PROJECT], {}, ""),
    "full": (
        [
            "--project",
            PROJECT,
            "--invoker",
            INVOKER,
            "--cloudsql-instance",
            f"{PROJECT}:us-central1:gmail-db",
            "--migrate",
        ],
        {},
        "",
    ),
    "two_invokers": (
        ["--project", PROJECT, "--invoker", INVOKER, "--invoker", "group:ops@example.com"],
        {},
        "",
    ),
    "budget_5": (["--project", PROJECT, "--db-connections", "5"], {}, ""),
    "budget_100": (["--project", PROJECT, "--db-connections", "100"], {}, ""),
    "only_send": (["--project", PROJECT, "--only", "send_email"], {}, ""),
    "no_scheduler": (["--project", PROJECT, "--no-scheduler"], {}, ""),
    "token_key": (["--project", PROJECT], {}, '\nTOKEN_KEY_SECRET: "projects/keys-proj/secrets/token-key"\n'),
    "from_environment": ([], {"GOOGLE_CLOUD_PROJECT": "other-proj", "REGION": "europe-west1"}, ""),
}


def capture(args: list[str], extra_env: dict[str, str], env_append: str) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "src"
        root.mkdir()
        shutil.copy2(REPO / "deploy.sh", root / "deploy.sh")
        shutil.copy2(REPO / "env.yaml", root / "env.yaml")
        (root / "main.py").write_text("# stand-in for the real main.py\n")
        if env_append:
            with (root / "env.yaml").open("a") as env_file:
                env_file.write(env_append)
        poison = Path(tmp) / "bin"
        poison.mkdir()
        (poison / "gcloud").write_text("#!/bin/sh\nexit 97\n")
        (poison / "gcloud").chmod(0o755)
        environ = {
            k: v for k, v in os.environ.items() if k not in {"GOOGLE_CLOUD_PROJECT", "REGION", "PYTHON"}
        }
        environ["PATH"] = f"{poison}{os.pathsep}{environ['PATH']}"
        environ.update(extra_env)
        result = subprocess.run(
            [str(root / "deploy.sh"), "--dry-run", *args],
            cwd=root,
            env=environ,
            capture_output=True,
            text=True,
            check=True,
        )
        env_files = {p.name: p.read_text() for p in sorted((root / ".local" / "deploy").glob("*.yaml"))}
        return {"stdout": result.stdout, "env_files": env_files}


def main() -> int:
    golden = {
        name: {"args": args, "env": env, "env_yaml_append": append, **capture(args, env, append)}
        for name, (args, env, append) in CASES.items()
    }
    OUT.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
