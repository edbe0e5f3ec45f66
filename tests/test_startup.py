"""What a cold start loads: only the target's own entry point, and no module its calls never run.

Each case runs a fresh interpreter, since what is imported is a property of the whole process.
"""

from __future__ import annotations

import subprocess
import sys

from shared.targets import TARGETS
from tests.conftest import ROOT


def run(code: str) -> list[str]:
    output = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "DATABASE_URL": "postgresql://a@h/d", "PYTHONPATH": str(ROOT)},
    )
    assert output.returncode == 0, output.stderr[-2000:]
    return output.stdout.split()


def test_a_token_status_instance_imports_no_other_entry_point():
    others = [f"functions.{target.name}" for target in TARGETS if target.name != "token_status"]
    code = f"import sys, main; main.token_status; print(*[name in sys.modules for name in {others!r}])"
    assert run(code) == ["False"] * len(others)


def test_main_exports_every_registered_target_and_nothing_else():
    names = [target.name for target in TARGETS]
    code = (
        "import main, types; "
        f"print(all(isinstance(getattr(main, n), types.FunctionType) for n in {names!r}), "
        f"set({names!r}) <= set(dir(main)), hasattr(main, 'no_such_target'))"
    )
    assert run(code) == ["True", "True", "False"]


def test_the_send_path_loads_neither_pyparsing_nor_cryptographys_x509():
    code = (
        "import sys, main; main.send_email; import shared.mailbox.send, shared.mailbox.listing; "
        "print('pyparsing' in sys.modules, 'cryptography.x509' in sys.modules)"
    )
    assert run(code) == ["False", "False"]


def test_a_deferred_module_is_the_real_one_on_first_use():
    code = (
        "import shared, sys; from google.oauth2 import service_account; import httplib2; "
        "print(service_account.Credentials.__name__, callable(httplib2.auth._parse_www_authenticate), "
        "type(sys.modules['google.oauth2.service_account']).__name__, 'pyparsing' in sys.modules)"
    )
    assert run(code) == ["Credentials", "True", "module", "True"]
