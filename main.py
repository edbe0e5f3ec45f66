"""Every Cloud Functions target of skill-email, so one source tree deploys as several functions.

Deploy with ``--entry-point NAME``; run locally with
``functions-framework --source main.py --target NAME``. The names come from the one registry,
``shared/targets.py``; each target's entry point is ``functions/<name>.py``.
"""

import importlib
from typing import Any

from shared import body_limit
from shared.targets import TARGETS

__all__ = [target.name for target in TARGETS]


def _entry_point(name: str, module: str) -> Any:
    return getattr(importlib.import_module(module), name)


for _target in TARGETS:
    globals()[_target.name] = _entry_point(_target.name, _target.module)

# functions-framework runs this file inside the app it is building, for the one target it serves:
# the body limit goes around that app before any request (see shared/body_limit.py for why here).
body_limit.install()
