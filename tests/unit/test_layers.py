"""The sans-I/O layers stay sans-I/O, and no module of ours imports itself back."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import gearmill

PACKAGE = Path(gearmill.__file__).parent

# protocol/ and the broker's modules (the socket edge is stream/connection/app)
SANS_IO = [
    "gearmill.protocol.packets",
    "gearmill.protocol.codec",
    "gearmill.protocol.payload",
    "gearmill.protocol.admin",
    "gearmill.server.model",
    "gearmill.server.sink",
    "gearmill.server.replies",
    "gearmill.server.journal",
    "gearmill.server.core",
    "gearmill.server.handlers",
    "gearmill.server.broker",
    "gearmill.server.admin",
]

# Import them in a fresh interpreter. The top-level package's __init__ re-exports
# the asyncio client, so it is stood in for by a bare package object (after the
# hot-path selection it would have run): only the modules named and what they
# import are loaded.
PROBE = """
import importlib, json, sys, types
pkg = types.ModuleType("gearmill")
pkg.__path__ = [sys.argv[1]]
sys.modules["gearmill"] = pkg
importlib.import_module("gearmill._accel")
for name in json.loads(sys.argv[2]):
    importlib.import_module(name)
print(json.dumps(sorted(sys.modules)))
"""


def test_protocol_and_broker_import_no_asyncio_socket_or_ssl() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(PACKAGE), json.dumps(SANS_IO)],
        capture_output=True,
        text=True,
        check=True,
    )
    loaded = set(json.loads(out.stdout))
    assert set(SANS_IO) <= loaded
    bad = {m for m in loaded if m.split(".")[0] in ("asyncio", "socket", "ssl", "_socket", "_ssl")}
    assert bad == set()
    ours = {m for m in loaded if m.startswith("gearmill.")}
    # nothing of the client, worker, command line or socket edge came along
    assert ours <= set(SANS_IO) | {"gearmill._accel", "gearmill.protocol", "gearmill.server"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, name: str) -> set[str]:
    """Every gearmill module ``path`` imports, at any level (TYPE_CHECKING too)."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            # "from . import admin" imports a module, not a name
            found.update(f"{target}.{a.name}" for a in node.names)
    return {m for m in found if m == "gearmill" or m.startswith("gearmill.")}


def test_no_import_cycles() -> None:
    """protocol/ and server/ have no import circle, counting imports under
    TYPE_CHECKING and a package's __init__ re-exports as edges."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: _imports(path, name) & files.keys() for name, path in files.items()}
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(graph[node]):
            assert nxt not in path and nxt != node, " -> ".join([*path, node, nxt])
            if nxt not in done:
                visit(nxt, [*path, node])
        done.add(node)

    for start in sorted(graph):
        if start.startswith(("gearmill.server", "gearmill.protocol")) and start not in done:
            visit(start, [])
