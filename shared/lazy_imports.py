"""Modules our dependencies import at start-up but our calls never run: loaded on first use instead.

googleapiclient.discovery imports ``google.oauth2.service_account`` (and with it cryptography's x509
bindings) for ``build()`` with service-account credentials; httplib2 imports its ``auth`` module (and
with it pyparsing) for Digest and HMAC authentication. We call ``build_from_document`` without
credentials and send every request through ``shared.transport``, so neither runs. Measured on the
send path (docs/performance.md): ~37 ms and 9.2 MiB for the first, ~30 ms and 4 MiB for the second.

Each is registered in ``sys.modules`` as a module whose code runs the first time an attribute it does
not have yet is read, so code that does use it gets the real module. (``importlib.util.LazyLoader`` is
not enough on 3.11: the import statement reads ``__spec__`` of a module found in ``sys.modules``, which
makes a LazyLoader module load right there.)

Invariant: ``defer`` never imports the module, nor its parent packages; it does nothing for a module
that is already imported or cannot be found.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import threading
import types
from typing import Any

DEFERRED = ("google.oauth2.service_account", "httplib2.auth")


def _spec(name: str) -> importlib.machinery.ModuleSpec | None:
    """The module's spec, found along its parents' paths without running any of them."""
    parts = name.split(".")
    spec = importlib.machinery.PathFinder.find_spec(parts[0])
    for index in range(1, len(parts)):
        if spec is None or spec.submodule_search_locations is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(
            ".".join(parts[: index + 1]), list(spec.submodule_search_locations)
        )
    return spec


_load_lock = threading.RLock()


class _Deferred(types.ModuleType):
    """A module whose code has not run yet; the first missing attribute runs it, in this same object."""

    def __getattr__(self, attribute: str) -> Any:
        with _load_lock:
            if type(self) is _Deferred:
                self.__class__ = types.ModuleType  # type: ignore[assignment]  # its own code may read itself
                try:
                    self.__spec__.loader.exec_module(self)  # type: ignore[union-attr]
                except BaseException:
                    sys.modules.pop(self.__name__, None)  # the next import tries again, as usual
                    raise
        return getattr(self, attribute)


def defer(name: str) -> bool:
    """Makes ``name`` load on first attribute access; True when it was deferred."""
    if name in sys.modules:
        return False
    spec = _spec(name)
    if spec is None or spec.loader is None:
        return False
    module = importlib.util.module_from_spec(spec)
    module.__class__ = _Deferred
    sys.modules[name] = module
    return True


def defer_all() -> None:
    """Defers every module of ``DEFERRED``."""
    for name in DEFERRED:
        defer(name)
