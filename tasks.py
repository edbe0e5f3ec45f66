#!/usr/bin/env python3
"""The four commands of this project, needing only Python 3.11+ and PyPI:

    python3 tasks.py serve    run every target on http://localhost:8080 over an embedded PostgreSQL
                              (--sandbox: against a local Google, with a demo mailbox and user)
    python3 tasks.py test     run the whole test suite (extra arguments go to pytest)
    python3 tasks.py check    ruff, ruff format --check and mypy
    python3 tasks.py venv     only create (or update) the virtualenv, e.g. for deploy.sh

Each creates .venv on first use and re-installs requirements-dev.txt whenever it changes.
TASKS_PYTHON=/path/to/python3.12 runs them on that interpreter instead, in its own virtualenv
.venv-3.12 (named after its version), so that CI can run the suite on the deployed Python too.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

ROOT = Path(__file__).resolve().parent


def interpreter() -> tuple[str, Path]:
    """The base interpreter and its virtualenv: this Python and .venv, or TASKS_PYTHON and .venv-X.Y."""
    chosen = os.environ.get("TASKS_PYTHON", "")
    if not chosen:
        if sys.version_info < (3, 11):
            sys.exit("Python 3.11 or newer is needed")
        return sys.executable, ROOT / ".venv"
    try:
        found = subprocess.run(
            [chosen, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as exc:
        sys.exit(f"TASKS_PYTHON={chosen} does not run: {exc}")
    if tuple(int(part) for part in found.split(".")) < (3, 11):
        sys.exit(f"TASKS_PYTHON={chosen} is Python {found}; 3.11 or newer is needed")
    return chosen, ROOT / f".venv-{found}"


def requirements_digest() -> str:
    digest = hashlib.sha256()
    for name in ("requirements.txt", "requirements-dev.txt"):
        digest.update((ROOT / name).read_bytes())
    return digest.hexdigest()


def ensure_venv(base: str, venv_dir: Path) -> Path:
    """Create ``venv_dir`` with ``base`` if missing, install requirements-dev.txt when it changed."""
    python = venv_dir / "bin" / "python"
    stamp = venv_dir / ".requirements.sha256"
    if not python.exists():
        print(f"creating {venv_dir.name} ...", file=sys.stderr)
        subprocess.run([base, "-m", "venv", str(venv_dir)], check=True)
    wanted = requirements_digest()
    if not stamp.exists() or stamp.read_text().strip() != wanted:
        print(f"installing requirements-dev.txt into {venv_dir.name} ...", file=sys.stderr)
        subprocess.run(
            [
                str(python),
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
        stamp.write_text(wanted)
    return python


def run(python: Path, args: list[str]) -> int:
    os.chdir(ROOT)
    return subprocess.call([str(python), *args])


def become(python: Path, args: list[str]) -> NoReturn:
    """Replaces this process with ``.venv/bin/python ARGS``: the server (or pytest) keeps this PID, so
    ``kill PID`` or Ctrl-C reaches it directly and it stops the functions and PostgreSQL itself; a child
    process would be left running by a signal to this one."""
    os.chdir(ROOT)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(str(python), [str(python), *args])  # noqa: S606 (our venv's python, fixed arguments)


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "help"
    if command not in ("serve", "test", "check", "venv"):
        print(__doc__)
        return 0 if command in ("help", "-h", "--help") else 2
    python = ensure_venv(*interpreter())
    if command == "venv":
        return 0
    if command == "serve":
        become(python, ["-m", "devtools.serve", *argv[1:]])
    if command == "test":
        become(python, ["-m", "pytest", *argv[1:]])
    status = run(python, ["-m", "ruff", "check", "."])
    status |= run(python, ["-m", "ruff", "format", "--check", "."])
    status |= run(python, ["-m", "mypy"])
    return status


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
