"""What a user gets from ``pip install .`` in a plain virtual environment.

The tests elsewhere run an editable install; a wheel unpacks differently (every
file gets a new mtime, no ``build/`` folder beside it), so the choice between the
compiled and the pure-Python hot path is checked on a real one here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHOW = "import gearmill; print(gearmill.IMPLEMENTATION)"


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repository's files as a fresh clone would have them (no build products)."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    dest = tmp_path_factory.mktemp("checkout")
    for name in filter(None, files):
        src = ROOT / os.fsdecode(name)
        if src.is_file():
            (dest / src.relative_to(ROOT)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / src.relative_to(ROOT))
    return dest


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    yield path


def pip_install(venv: Path, checkout: Path, **env: str) -> None:
    subprocess.run(
        [
            str(venv / "bin/python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--force-reinstall",
            str(checkout),
        ],
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", **env},
        check=True,
        timeout=600,
    )


def implementation(venv: Path) -> str:
    out = subprocess.run(
        [str(venv / "bin/python"), "-c", SHOW], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


@pytest.mark.timeout(660)
def test_without_a_c_compiler_the_install_falls_back_to_pure_python(
    venv: Path, checkout: Path
) -> None:
    pip_install(venv, checkout, CC="/nonexistent/cc")
    assert implementation(venv) == "pure"
    version = subprocess.run(
        [str(venv / "bin/gearmill"), "--version"], capture_output=True, text=True, check=True
    )
    assert version.stdout.startswith("gearmill ")


# building the compiled modules takes minutes on a busy 2-core machine: pip's own limit
# (600 s) is the one that counts, not the suite's default per test
@pytest.mark.timeout(660)
def test_a_plain_pip_install_runs_the_compiled_hot_path(venv: Path, checkout: Path) -> None:
    pip_install(venv, checkout)
    assert implementation(venv) == "compiled"
