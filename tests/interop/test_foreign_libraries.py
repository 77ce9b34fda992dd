"""Other languages' Gearman libraries against both servers, unchanged.

Perl's Gearman::Client and Gearman::Worker (Debian libgearman-client-perl, a
protocol implementation of its own), PHP's pecl gearman (Debian php-gearman,
on libgearman) and OpenStack's gear (PyPI, its own protocol code). For each:
three workers sleep on a function, a client runs ten foreground jobs (with a
NUL in every payload) and five background jobs; every result must come back
reversed, every background job must run once, and all three workers must
still be there afterwards. python-gearman is not here: its only release is
for Python 2, and its Python 3 fork (gearman3 0.2.1) fails on Python 3.9+
(`array.fromstring`).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import Running

pytestmark = pytest.mark.interop

HERE = Path(__file__).parent / "foreign"
LIBRARIES = {
    "perl": (["perl", str(HERE / "worker.pl")], ["perl", str(HERE / "client.pl")]),
    "php": (["php", str(HERE / "worker.php")], ["php", str(HERE / "client.php")]),
    "gear": (
        [sys.executable, str(HERE / "gear_worker.py")],
        [sys.executable, str(HERE / "gear_client.py")],
    ),
}


def _function_status(srv: Running, func: str) -> list[str]:
    """The admin `status` row of ``func``: [queued, running, workers]."""
    with srv.conn() as c:
        for line in c.admin(b"status\n").decode().splitlines():
            fields = line.split("\t")
            if fields[0] == func:
                return fields[1:]
    return []


@pytest.mark.parametrize("library", list(LIBRARIES))
def test_foreign_client_and_workers(server: Running, library: str, tmp_path: Path) -> None:
    worker_cmd, client_cmd = LIBRARIES[library]
    func = f"rev_{library}"
    ran = tmp_path / "background.txt"
    where = ["127.0.0.1", str(server.port), func]
    workers = [
        subprocess.Popen([*worker_cmd, *where, str(ran)], stderr=subprocess.DEVNULL)
        for _ in range(3)
    ]
    try:
        deadline = time.monotonic() + 15
        while _function_status(server, func)[2:] != ["3"]:
            assert time.monotonic() < deadline, f"{library} workers did not register"
            time.sleep(0.05)

        client = subprocess.run([*client_cmd, *where], capture_output=True, text=True, timeout=60)
        assert client.returncode == 0, client.stderr
        expected = [(b"job-%d\x00x" % i)[::-1].hex() for i in range(10)]
        assert client.stdout.split() == expected

        want = [f"bg-{i}" for i in range(5)]
        deadline = time.monotonic() + 15
        while (done := sorted(ran.read_text().split()) if ran.exists() else []) != want:
            assert time.monotonic() < deadline, f"background jobs that ran: {done}"
            time.sleep(0.05)
        assert _function_status(server, func) == ["0", "0", "3"]
        assert all(w.poll() is None for w in workers)
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            w.wait(10)
