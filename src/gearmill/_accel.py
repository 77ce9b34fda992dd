"""Choose the compiled (mypyc) or the pure-Python hot path, once, before it is imported.

The compiled extension modules sit beside their sources and Python would
prefer them. They are used only when ``GEARMILL_PURE`` is unset (or 0), every one of
them is present, and every source still has the SHA-256 recorded in the build's
stamp (``_compiled.json``, written by ``setup.py`` after a successful build), so
a stale build after an edit never runs old code while a wheel, whose files all
get new mtimes when unpacked, is trusted. Otherwise an import hook loads the
``.py`` files. All or nothing: compiled modules of one build call each
other directly, so they cannot be mixed with pure ones.

The compiled build also has C of its own (``NATIVE_MODULES``, stamped with the
rest): :func:`metrics_clock`.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from hashlib import sha256
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType

HOT_MODULES = (
    "gearmill.protocol.packets",
    "gearmill.protocol.codec",
    "gearmill.server.model",
    "gearmill.server.replies",
    "gearmill.server.journal",
    "gearmill.server.recorder",
    "gearmill.server.core",
    "gearmill.server.handlers",
    "gearmill.server.broker",
    "gearmill.server.stream",
    "gearmill.server.sink",
    "gearmill.server.durable",
    "gearmill.server.store._job",
    "gearmill.server.store._lane",
    "gearmill.server.store._postgresql_lane",
    "gearmill.server.store._redis_lane",
    "gearmill.server.store._mysql_lane",
)  # setup.py's HOT, as module names (tests/unit/test_accel.py checks they agree)
# setup.py's NATIVE: C extension modules, and their sources (beside this file)
NATIVE_MODULES = {"gearmill._clock": "_clock.c"}
_ROOT = Path(__file__).resolve().parent


def _source(name: str) -> Path:
    return _ROOT.joinpath(*name.split(".")[1:]).with_suffix(".py")


def _compiled_is_current() -> bool:
    try:
        stamp = json.loads(_ROOT.joinpath("_compiled.json").read_text())
    except (OSError, ValueError):
        return False
    for name in HOT_MODULES:
        src = _source(name)
        if not any(
            src.with_name(src.stem + suffix).exists()
            for suffix in importlib.machinery.EXTENSION_SUFFIXES
        ):
            return False
        if src.exists() and sha256(src.read_bytes()).hexdigest() != stamp.get(name):
            return False
    for name, c in NATIVE_MODULES.items():
        if not any(
            _ROOT.joinpath(name.split(".")[-1] + suffix).exists()
            for suffix in importlib.machinery.EXTENSION_SUFFIXES
        ):
            return False
        src = _ROOT / c  # absent from a wheel
        if src.exists() and sha256(src.read_bytes()).hexdigest() != stamp.get(name):
            return False
    return True


class _PureFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> ModuleSpec | None:
        if fullname in HOT_MODULES:
            return importlib.util.spec_from_file_location(fullname, _source(fullname))
        return None


def _pure_requested() -> bool:
    # GEARMILL_PURE=0 (false, no, off) keeps the compiled twin, as the server's switches read
    value = os.environ.get("GEARMILL_PURE", "").strip().lower()
    return value not in ("", "0", "false", "no", "off")


def _select() -> str:
    if not _pure_requested() and _compiled_is_current():
        return "compiled"
    if not any(isinstance(f, _PureFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _PureFinder())
    return "pure"


IMPLEMENTATION = _select()


def metrics_clock() -> Callable[[], float]:
    """time.monotonic; in the compiled build its C twin (the same readings, half the
    instructions per call from compiled code). Loaded when metrics start, not with
    every import of gearmill."""
    if IMPLEMENTATION == "compiled":
        from ._clock import monotonic

        return monotonic
    return time.monotonic
