"""The compiled twin is what runs by default, and GEARMILL_PURE selects the reference code."""

from __future__ import annotations

import importlib.machinery
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import gearmill

SHOW = (
    "import gearmill, gearmill.server.broker as b, gearmill.protocol.codec as c;"
    "print(gearmill.IMPLEMENTATION, b.__file__.endswith('.py'), c.__file__.endswith('.py'))"
)


def _run(env_extra: dict[str, str], pythonpath: str | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "GEARMILL_PURE"}
    env.update(env_extra)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    out = subprocess.run(
        [sys.executable, "-c", SHOW], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def test_installed_build_is_compiled() -> None:
    # scripts/setup installs with mypyc; a silent fallback to pure Python would cost speed
    assert _run({}) == "compiled False False"


def test_pure_python_on_request() -> None:
    assert _run({"GEARMILL_PURE": "1"}) == "pure True True"
    # switched off the way the server's own switches are: not pure, not slower
    assert _run({"GEARMILL_PURE": "0"}) == "compiled False False"
    assert _run({"GEARMILL_PURE": "off"}) == "compiled False False"


def _copy_install(tmp_path: Path) -> Path:
    src = Path(gearmill.__file__).parent
    shutil.copytree(src, tmp_path / "gearmill")
    for lib in src.parent.glob("*__mypyc*"):
        shutil.copy2(lib, tmp_path)
    codec = tmp_path / "gearmill" / "protocol" / "codec.py"
    assert any(
        (codec.with_name("codec" + s)).exists() for s in importlib.machinery.EXTENSION_SUFFIXES
    )
    return codec


def test_stale_build_is_not_used(tmp_path: Path) -> None:
    codec = _copy_install(tmp_path)
    codec.write_text(codec.read_text() + "\n# edited after the build\n")
    assert _run({}, pythonpath=str(tmp_path)) == "pure True True"


def test_stale_c_build_is_not_used(tmp_path: Path) -> None:
    _copy_install(tmp_path)
    clock = tmp_path / "gearmill" / "_clock.c"
    clock.write_text(clock.read_text() + "\n/* edited after the build */\n")
    assert _run({}, pythonpath=str(tmp_path)) == "pure True True"


def test_newer_mtimes_alone_keep_the_compiled_build(tmp_path: Path) -> None:
    # unpacking a wheel gives every .py a later mtime than its .so: same content, still compiled
    codec = _copy_install(tmp_path)
    later = time.time() + 60
    os.utime(codec, (later, later))
    assert _run({}, pythonpath=str(tmp_path)) == "compiled False False"


def test_build_without_stamp_is_not_used(tmp_path: Path) -> None:
    _copy_install(tmp_path)
    (tmp_path / "gearmill" / "_compiled.json").unlink()
    assert _run({}, pythonpath=str(tmp_path)) == "pure True True"


def test_the_build_and_the_loader_name_the_same_modules() -> None:
    """setup.py compiles HOT; _accel trusts and, under GEARMILL_PURE, replaces exactly
    those: a module in one list only would run compiled and stale, or never compiled."""
    from gearmill._accel import HOT_MODULES, NATIVE_MODULES

    setup = Path(__file__).resolve().parents[2] / "setup.py"
    if not setup.exists():
        return  # an installed copy without its checkout: nothing to compare
    namespace: dict[str, object] = {}
    text = setup.read_text()
    start = text.index("HOT = [")
    exec(text[start : text.index("]", start) + 1], namespace)  # the list literal only
    hot: list[str] = namespace["HOT"]  # type: ignore[assignment]
    built = [".".join(Path(p).with_suffix("").parts[1:]) for p in hot]
    assert sorted(built) == sorted(HOT_MODULES)
    # and the C modules built beside them, with their sources
    start = text.index("NATIVE = {")
    exec(text[start : text.index("}", start) + 1], namespace)
    native: dict[str, str] = namespace["NATIVE"]  # type: ignore[assignment]
    assert {name: Path(src).name for name, src in native.items()} == NATIVE_MODULES


def test_the_metrics_clock_reads_time_monotonic() -> None:
    """The compiled build's clock (C) gives time.monotonic's readings, and a reading
    someone holds keeps its value (the C reuses its float only when nobody does)."""
    from gearmill._accel import metrics_clock

    monotonic = metrics_clock()
    before = time.monotonic()
    held = monotonic()
    after = time.monotonic()
    assert before <= held <= after
    value = held + 0.0  # a copy, not the same object
    later = [monotonic() for _ in range(3)]
    assert held == value
    assert later == sorted(later) and later[0] >= after
    with pytest.raises(TypeError):
        monotonic(1)  # type: ignore[call-arg]
