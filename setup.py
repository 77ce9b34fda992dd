"""Builds the compiled twin of the hot path (mypyc) when it can; pure Python otherwise.

The pure-Python modules stay the reference: ``GEARMILL_PURE=1`` selects them at
run time, and ``GEARMILL_NO_COMPILE=1`` at install time skips the build.
"""

import os
import sys

from setuptools import setup

HOT = [
    "src/gearmill/protocol/packets.py",
    "src/gearmill/protocol/codec.py",
    "src/gearmill/server/broker.py",
    "src/gearmill/server/stream.py",
]

ext_modules = []
if not os.environ.get("GEARMILL_NO_COMPILE"):
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("gearmill: mypyc not available; installing pure Python only", file=sys.stderr)
    else:
        ext_modules = mypycify(HOT, opt_level="3")

setup(ext_modules=ext_modules)
