#!/usr/bin/env python3
"""The two commands of this project, needing only Python 3.11+ and PyPI:

    python3 tasks.py serve    run all four functions on http://localhost:8080 over an embedded PostgreSQL
    python3 tasks.py test     run the whole test suite (extra arguments go to pytest)
    python3 tasks.py check    ruff, ruff format --check and mypy

Each creates .venv on first use and re-installs requirements-dev.txt whenever it changes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PYTHON = VENV / "bin" / "python"
STAMP = VENV / ".requirements.sha256"


def requirements_digest() -> str:
    digest = hashlib.sha256()
    for name in ("requirements.txt", "requirements-dev.txt"):
        digest.update((ROOT / name).read_bytes())
    return digest.hexdigest()


def ensure_venv() -> None:
    if sys.version_info < (3, 11):
        sys.exit("Python 3.11 or newer is needed")
    if not PYTHON.exists():
        print("creating .venv ...", file=sys.stderr)
        venv.EnvBuilder(with_pip=True).create(VENV)
    wanted = requirements_digest()
    if not STAMP.exists() or STAMP.read_text().strip() != wanted:
        print("installing requirements-dev.txt into .venv ...", file=sys.stderr)
        subprocess.run(
            [
                str(PYTHON),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
                str(ROOT / "requirements-dev.txt"),
            ],
            check=True,
        )
        STAMP.write_text(wanted)


def run(args: list[str]) -> int:
    os.chdir(ROOT)
    return subprocess.call([str(PYTHON), *args])


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "help"
    if command not in ("serve", "test", "check", "venv"):
        print(__doc__)
        return 0 if command in ("help", "-h", "--help") else 2
    ensure_venv()
    if command == "venv":
        return 0
    if command == "serve":
        return run(["-m", "devtools.serve", *argv[1:]])
    if command == "test":
        return run(["-m", "pytest", *argv[1:]])
    status = run(["-m", "ruff", "check", "."])
    status |= run(["-m", "ruff", "format", "--check", "."])
    status |= run(["-m", "mypy"])
    return status


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
