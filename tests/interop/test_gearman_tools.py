"""The real C `gearman` and `gearadmin` tools (Debian gearman-tools) against both servers."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator

import pytest

from conftest import Running

pytestmark = pytest.mark.interop


def gearman(srv: Running, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["gearman", "-h", "127.0.0.1", "-p", str(srv.port), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
    )


def gearadmin(srv: Running, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["gearadmin", "-h", "127.0.0.1", "-p", str(srv.port), *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.fixture
def rev_worker(server: Running) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        ["gearman", "-h", "127.0.0.1", "-p", str(server.port), "-w", "-f", "reverse", "--", "rev"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while "reverse" not in gearadmin(server, "--workers").stdout:
        assert time.monotonic() < deadline, "worker did not register"
        time.sleep(0.05)
    yield proc
    proc.terminate()
    proc.wait(10)


def test_foreground_background_and_lines(server: Running, rev_worker: object) -> None:
    r = gearman(server, "-f", "reverse", "Hello World!")
    assert (r.returncode, r.stdout) == (0, "!dlroW olleH")
    r = gearman(server, "-f", "reverse", "abc", "xyz")
    assert r.stdout == "cbazyx"
    r = gearman(server, "-P", "-f", "reverse", "abc")
    assert r.stdout == "reverse: cba"
    r = gearman(server, "-n", "-f", "reverse", stdin="ab\ncd\n")
    assert r.stdout == "ba\ndc\n"
    r = gearman(server, "-b", "-v", "-f", "reverse", "bg")
    assert r.returncode == 0
    assert re.fullmatch(r"Task created: H:test:\d+\n", r.stdout), r.stdout


def test_worker_failure_reaches_client(server: Running) -> None:
    proc = subprocess.Popen(
        ["gearman", "-h", "127.0.0.1", "-p", str(server.port), "-w", "-f", "fails", "--", "false"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while "fails" not in gearadmin(server, "--workers").stdout:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        r = gearman(server, "-f", "fails", "x")
        assert "Job failed" in r.stderr
        assert r.returncode == 1
    finally:
        proc.terminate()
        proc.wait(10)


def normalise(text: str) -> str:
    text = re.sub(r"^\d+ 127\.0\.0\.1", "FD 127.0.0.1", text, flags=re.M)
    text = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "UUID", text)
    return "\n".join(sorted(text.splitlines()))


def test_every_gearadmin_option_matches_gearmand() -> None:
    from conftest import start_gearmand, start_gearmill

    outputs: dict[str, list[tuple[int, str, str]]] = {}
    for srv in (start_gearmill(), start_gearmand()):
        try:
            for args in (
                ("-b", "-f", "nobody_works", "a"),
                ("-b", "-I", "-f", "nobody_works", "b"),
                ("-b", "-u", "myjob", "-f", "nobody_works", "c"),
            ):
                assert gearman(srv, *args).returncode == 0
            runs = []
            for option in (
                ["--status"],
                ["--priority-status"],
                ["--workers"],
                ["--show-jobs"],
                ["--show-unique-jobs"],
                ["--server-verbose"],
                ["--cancel-job", "H:test:2"],
                ["--cancel-job", "H:test:999"],
                ["--create-function", "newq"],
                ["--drop-function", "newq"],
                ["--drop-function", "nosuch"],
                ["--status"],
            ):
                r = gearadmin(srv, *option)
                runs.append((r.returncode, normalise(r.stdout), r.stderr))
            pid = gearadmin(srv, "--getpid")
            assert pid.stdout.strip() == str(srv.proc.pid)
            version = gearadmin(srv, "--server-version")
            assert version.stdout.startswith("1.1.20")
            outputs[srv.name] = runs
        finally:
            srv.stop()
    ours, theirs = outputs["gearmill"], outputs["gearmand"]
    # gearmand keeps a cancelled job counted in status until a worker reaps it;
    # gearmill forgets it at once (docs/compatibility.md)
    assert ours[-1][1] == ".\nnobody_works\t2\t0\t0"
    assert theirs[-1][1] == ".\nnobody_works\t3\t0\t0"
    assert ours[:-1] == theirs[:-1]


def test_gearadmin_cannot_connect_message() -> None:
    from conftest import free_port

    r = subprocess.run(
        ["gearadmin", "-p", str(free_port()), "--status"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 1
