"""Builds the compiled twin of the hot path (mypyc) when it can; pure Python otherwise.

The pure-Python modules stay the reference: ``GEARMILL_PURE=1`` selects them at
run time, and ``GEARMILL_NO_COMPILE=1`` at install time skips the build. When the
compiled modules are built, a stamp (``_compiled.json``: the SHA-256 of each source
they were built from) is written beside them; ``gearmill._accel`` uses them only
while every source still has that hash, which holds for a wheel, an sdist and an
editable install alike and catches a stale build after an edit. A failed build
(no C compiler, no Python headers) installs pure Python with a warning.
"""

import hashlib
import json
import os
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HOT = [  # the job path; durable.py for the store's edge a lone durable job crosses
    "src/gearmill/protocol/packets.py",
    "src/gearmill/protocol/codec.py",
    "src/gearmill/server/model.py",
    "src/gearmill/server/replies.py",
    "src/gearmill/server/journal.py",
    "src/gearmill/server/recorder.py",
    "src/gearmill/server/core.py",
    "src/gearmill/server/handlers.py",
    "src/gearmill/server/broker.py",
    "src/gearmill/server/stream.py",
    "src/gearmill/server/sink.py",
    "src/gearmill/server/durable.py",
    "src/gearmill/server/store/_job.py",
    "src/gearmill/server/store/_lane.py",
    "src/gearmill/server/store/_postgresql_lane.py",
    "src/gearmill/server/store/_redis_lane.py",
    "src/gearmill/server/store/_mysql_lane.py",
]
# C beside the mypyc modules, built and stamped with them (module name: source)
NATIVE = {"gearmill._clock": "src/gearmill/_clock.c"}
STAMP = "_compiled.json"


def warn(message: str) -> None:
    print(f"gearmill: {message}; installing pure Python only", file=sys.stderr)


class BuildHotPath(build_ext):
    """build_ext that falls back to pure Python and stamps a successful build."""

    def run(self) -> None:
        package = Path(self.get_ext_fullpath("gearmill.x")).parent
        stamp = package / STAMP
        stamp.unlink(missing_ok=True)
        try:
            super().run()
        except Exception as e:  # CompileError, a missing compiler, missing headers
            warn(f"compiling the hot path failed ({type(e).__name__}: {e})")
            for ext in self.extensions:
                Path(self.get_ext_fullpath(ext.name)).unlink(missing_ok=True)
            return
        if not self.extensions:
            return
        hashes = {
            ".".join(Path(src).with_suffix("").parts[1:]): hashlib.sha256(
                Path(src).read_bytes()
            ).hexdigest()
            for src in HOT
        }
        for name, src in NATIVE.items():
            hashes[name] = hashlib.sha256(Path(src).read_bytes()).hexdigest()
        package.mkdir(parents=True, exist_ok=True)
        stamp.write_text(json.dumps(hashes, indent=1) + "\n")


ext_modules = []
# read as GEARMILL_PURE is (gearmill/_accel.py): 0, false, no and off mean compile
if os.environ.get("GEARMILL_NO_COMPILE", "").strip().lower() in ("", "0", "false", "no", "off"):
    try:
        from mypyc.build import mypycify
    except ImportError:
        warn("mypyc is not available")
    else:
        try:
            ext_modules = mypycify(HOT, opt_level="3")
            ext_modules += [Extension(name, [src]) for name, src in NATIVE.items()]
        except Exception as e:  # mypy errors in the hot modules
            warn(f"mypyc could not translate the hot path ({e})")

setup(ext_modules=ext_modules, cmdclass={"build_ext": BuildHotPath})
