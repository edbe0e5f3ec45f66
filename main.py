"""Every Cloud Functions target of skill-email, so one source tree deploys as several functions.

Deploy with ``--entry-point NAME``; run locally with
``functions-framework --source main.py --target NAME``. The names come from the one registry,
``shared/targets.py``; each target's entry point is ``functions/<name>.py``.

Invariant: an instance imports only its own target's entry point. functions-framework looks the target
up with ``getattr(main, NAME)``, and the module's ``__getattr__`` imports ``functions/<NAME>.py`` then:
importing every entry point cost a ``token_status`` instance ~55 ms of the scheduled run's modules, and
would cost it every target added later (docs/performance.md).
"""

import gc
import importlib
from typing import Any

from shared import body_limit
from shared.targets import BY_NAME, TARGETS

__all__ = [target.name for target in TARGETS]


def __getattr__(name: str) -> Any:
    target = BY_NAME.get(name)
    if target is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    entry_point = getattr(importlib.import_module(target.module), name)
    globals()[name] = entry_point
    if gc.get_freeze_count() == 0:
        # gunicorn's master gets here (functions-framework's lookup of the target) and then forks the
        # worker that serves. What exists now moves to the permanent generation, so the worker's
        # collections never write to those objects' headers and their pages stay shared with the
        # master instead of being copied into the worker (docs/performance.md, Memory). Once per
        # process: a test process that builds many apps freezes one snapshot, not one per app.
        gc.freeze()
    return entry_point


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


# functions-framework runs this file inside the app it is building, for the one target it serves:
# the body limit goes around that app before any request (see shared/body_limit.py for why here).
body_limit.install()
