"""``gearmill submit`` and ``gearmill admin`` as a user runs them: real processes, real server."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_http import Web

import gearmill as gm
from conftest import Running, free_port, start_gearmill, wait_until
from gearmill.protocol.packets import PacketType

CLI = [sys.executable, "-m", "gearmill.cli.main"]


def cli(
    *args: str, input: bytes | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*CLI, *args], input=input, capture_output=True, timeout=timeout)


def on_tty(*args: str, stdin: Path | None = None) -> tuple[int, str]:
    """Run with stdout and stderr on a pseudo-terminal; returns (exit code, what it showed)."""
    master, slave = pty.openpty()
    with open(stdin or os.devnull, "rb") as inp:
        proc = subprocess.Popen([*CLI, *args], stdin=inp, stdout=slave, stderr=slave)
    os.close(slave)
    shown = b""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            shown += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    return proc.wait(10), shown.decode(errors="replace")


def queued(server: Running) -> dict[str, tuple[int, int, int]]:
    with gm.AdminClient(server.address) as admin:
        return {f.name: (f.high, f.normal, f.low) for f in admin.priority_status()}


@pytest.fixture
def worker(gearmill: Running) -> Iterator[Running]:
    """A worker with 'rev' (reverse, with progress and a chunk of data) and 'fail'."""
    w = gm.Worker(gearmill.address, concurrency=2, exceptions=True)

    def rev(job: gm.WorkerJob) -> bytes:
        job.send_status(1, 2)
        return job.data[::-1]

    def fail(job: gm.WorkerJob) -> bytes:
        raise RuntimeError("broken input")

    w.register("rev", rev)
    w.register("fail", fail)
    thread = threading.Thread(target=w.work, daemon=True)
    thread.start()
    yield gearmill
    w.stop()
    thread.join(30)


def test_submit_foreground_prints_result_and_status(worker: Running) -> None:
    out = cli("submit", "-p", str(worker.port), "-f", "rev", "-P", "hello")
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"olleh"
    assert b"50% Complete" in out.stderr
    # workload from stdin when none is given
    out = cli("submit", "-p", str(worker.port), "-f", "rev", "--prefix", input=b"abc")
    assert out.stdout == b"rev: cba"


def test_submit_failure_exits_nonzero_with_message(worker: Running) -> None:
    out = cli("submit", "-p", str(worker.port), "-f", "fail", "x")
    assert out.returncode == 1
    assert b"broken input" in out.stderr  # the worker's exception text reaches the user
    assert b"failed" in out.stderr


def test_submit_no_server(tmp_path: Path) -> None:
    port = free_port()
    out = cli("submit", "-p", str(port), "-f", "rev", "x")
    assert out.returncode == 1
    assert f"127.0.0.1:{port}".encode() in out.stderr
    assert out.stderr.count(b"\n") == 1  # one line, no traceback


def http_port(srv: Running) -> str:
    """The port of a server's --http listener."""
    return Web(srv, srv.tmp / "server.log").base.rsplit(":", 1)[1]


def test_submit_to_a_port_where_another_service_answers_is_one_line() -> None:
    """The port of gearmill's own HTTP listener given by mistake: one line saying that is
    not a job server and how to give one, not 'could not connect ... connected' with the
    question asked twice."""
    srv = start_gearmill("--http", "127.0.0.1:0")
    try:
        port = http_port(srv)
        for args in (["-f", "rev", "x"], ["-b", "-f", "rev", "x"]):
            out = cli("submit", "-p", port, *args)
            assert (out.returncode, out.stderr.decode()) == (
                1,
                f"gearmill submit: could not connect to 127.0.0.1:{port}: not a Gearman job "
                "server (it sent unexpected text in binary stream); give a job server's "
                "address with -s HOST:PORT or -h/-p, or set $GEARMAN_SERVERS\n",
            )
    finally:
        srv.stop()


def test_admin_to_the_http_port_is_one_line_naming_the_job_server_port() -> None:
    """gearadmin's text to gearmill's own HTTP listener: at once, one line saying that is
    not a job server and to give the job server's port, not 'connection lost: timed out'
    after five seconds."""
    srv = start_gearmill("--http", "127.0.0.1:0")
    try:
        port = http_port(srv)
        said = (
            f"127.0.0.1:{port} is not a Gearman job server (it sent 'HTTP/1.1 400 Bad Request');"
            " give the job server's port with -p PORT (or its address with -s HOST:PORT)"
        )
        for option in ("--status", "--server-version", "--dead-list"):
            out = cli("admin", "-p", port, option)
            assert (out.returncode, out.stdout, out.stderr.decode()) == (
                1,
                b"",
                f"gearmill admin: {said}\n",
            )
        out = cli("admin", "check", "-p", port)
        assert (out.returncode, out.stdout.decode()) == (2, f"GEARMAN CRITICAL - {said}\n")
    finally:
        srv.stop()


def test_work_on_the_http_port_says_so_once_and_keeps_retrying(tmp_path: Path) -> None:
    """A worker daemon given the --http port retries (servers come and go), but its first
    line says that is not a job server and which flag to fix, and the next retries are
    not a line each."""
    srv = start_gearmill("--http", "127.0.0.1:0")
    err = tmp_path / "stderr"
    try:
        port = http_port(srv)
        with err.open("wb") as out:
            proc = subprocess.Popen([*CLI, "work", "-p", port, "-f", "x"], stderr=out)
        try:
            wait_until(lambda: "4 attempts" in err.read_text(), "the fourth attempt's summary")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
    finally:
        srv.stop()
    assert err.read_text().splitlines() == [
        f"gearmill work: 127.0.0.1:{port} is not a Gearman job server (it sent unexpected text"
        " in binary stream); give the job server's port with -p PORT (or its address with -s"
        " HOST:PORT); retrying in 0.5 s",
        f"gearmill work: 127.0.0.1:{port}: still the same after 4 attempts; retrying in 4.0 s"
        " (said again after 16)",
    ]


def test_submit_background_priorities_unique_and_lines(gearmill: Running) -> None:
    port = str(gearmill.port)
    out = cli("submit", "-p", port, "-f", "hi", "-b", "-I", "-v", "a")
    assert out.returncode == 0
    assert out.stdout.startswith(b"Task created: H:test:")
    assert cli("submit", "-p", port, "-f", "lo", "-b", "-L", "a", "b").returncode == 0
    for _ in range(3):  # the same unique id coalesces into one job
        assert cli("submit", "-p", port, "-f", "once", "-b", "-u", "key", "x").returncode == 0
    lines = b"".join(b"line %d\n" % i for i in range(2500))
    assert cli("submit", "-p", port, "-f", "bulk", "-b", "-n", input=lines).returncode == 0
    assert queued(gearmill) == {
        "hi": (1, 0, 0),
        "lo": (0, 0, 2),
        "once": (0, 1, 0),
        "bulk": (0, 2500, 0),
    }


def test_submit_epoch_job_waits_for_its_time(gearmill: Running) -> None:
    later = str(int(time.time()) + 3600)
    out = cli("submit", "-p", str(gearmill.port), "-f", "later", "-e", later, "-v", "x")
    assert out.returncode == 0 and out.stdout.startswith(b"Task created:")
    with gearmill.conn() as worker:
        # scheduled for later: a worker asking now is told there is no job
        worker.send(PacketType.CAN_DO, b"later")
        worker.send(PacketType.GRAB_JOB)
        worker.expect(PacketType.NO_JOB)


def test_progress_bar_on_a_terminal_and_quiet_when_piped(gearmill: Running, tmp_path: Path) -> None:
    path = tmp_path / "jobs.txt"
    path.write_bytes(b"".join(b"%d\n" % i for i in range(3000)))
    code, shown = on_tty("submit", "-p", str(gearmill.port), "-f", "p", "-b", "-n", stdin=path)
    assert code == 0
    assert "3,000 jobs" in shown and "100%" in shown and "#" * 30 in shown
    with open(path, "rb") as f:
        out = subprocess.run(
            [*CLI, "submit", "-p", str(gearmill.port), "-f", "p", "-b", "-n"],
            stdin=f,
            capture_output=True,
            timeout=30,
        )
    assert out.returncode == 0
    assert out.stdout == b"" and out.stderr == b""


def test_admin_table_on_terminal_raw_when_asked(gearmill: Running) -> None:
    port = str(gearmill.port)
    assert cli("submit", "-p", port, "-f", "resize", "-b", "-I", "x").returncode == 0
    code, shown = on_tty("admin", "-p", port, "--status", "--priority-status")
    assert code == 0
    lines = shown.replace("\r", "").splitlines()
    assert lines[0].split() == ["FUNCTION", "TOTAL", "RUNNING", "WORKERS"]
    assert lines[1].split() == ["resize", "1", "0", "0"]
    assert lines[2].split() == ["FUNCTION", "HIGH", "NORMAL", "LOW", "WORKERS"]
    assert lines[3].split() == ["resize", "1", "0", "0", "0"]
    raw = cli("admin", "-p", port, "--status", "--raw")
    assert raw.stdout == b"resize\t1\t0\t0\n.\n"
    # piped without --raw: gearadmin's own output, so scripts written for it keep working
    piped = cli("admin", "-p", port, "--status")
    gearadmin = subprocess.run(
        ["gearadmin", "-h", "127.0.0.1", "-p", port, "--status"], capture_output=True, timeout=30
    )
    assert piped.stdout == gearadmin.stdout


def test_admin_error_reply(gearmill: Running) -> None:
    out = cli("admin", "-p", str(gearmill.port), "--drop-function", "nosuch")
    assert out.returncode == 1
    assert out.stderr.startswith(b"Error: ")


def test_a_bad_address_in_the_environment_is_named() -> None:
    env = {**os.environ, "GEARMAN_SERVERS": "127.0.0.1:4730,bad host:x"}
    out = subprocess.run(
        [*CLI, "admin", "--status"], capture_output=True, timeout=30, env=env, check=False
    )
    assert (out.returncode, out.stderr) == (
        2,
        b"gearmill admin: $GEARMAN_SERVERS: 'bad host:x': port 'x' is not a number\n",
    )


def test_admin_error_text_reads_as_words(gearmill: Running) -> None:
    out = cli("admin", "-p", str(gearmill.port), "--nodes")
    assert out.returncode == 1
    assert out.stderr == b"Error: NOT_SHARED the store is not shared: this server runs alone\n"


def test_admin_check_exit_codes(gearmill: Running) -> None:
    port = str(gearmill.port)

    def check(*flags: str) -> tuple[int, str]:
        out = cli("admin", "-p", port, "check", *flags)
        return out.returncode, out.stdout.decode()

    code, text = check()
    assert code == 0 and text.startswith("GEARMAN OK")
    for i in range(5):
        assert cli("submit", "-p", port, "-f", "q", "-b", str(i)).returncode == 0
    code, text = check("--warn-queue", "3", "--crit-queue", "10")
    assert code == 1 and "q: 5 queued >= 3" in text and "'q_queued'=5" in text
    code, text = check("--warn-queue", "3", "--crit-queue", "5")
    assert code == 2 and text.startswith("GEARMAN CRITICAL")
    code, text = check("--require-workers")
    assert code == 2 and "no worker" in text
    code, text = check("--function", "missing", "--min-workers", "1")
    assert code == 2 and "missing: unknown function" in text
    gearmill.stop()
    code, text = check()
    assert code == 2 and text.startswith("GEARMAN CRITICAL")


def test_admin_check_as_nagios_runs_it(gearmill: Running) -> None:
    """The server flags after `check` (a Nagios command line's order) and a usage error
    as UNKNOWN in one line: argparse's status 2 would page someone as CRITICAL."""
    for i in range(2):
        assert cli("submit", "-p", str(gearmill.port), "-f", "q", "-b", str(i)).returncode == 0
    out = cli("admin", "check", "-p", str(gearmill.port), "--warn-queue", "2")
    assert out.returncode == 1, out
    assert out.stdout.decode().startswith("GEARMAN WARNING - q: 2 queued >= 2")
    # given on both sides, the one after `check` wins
    out = cli("admin", "-p", str(free_port()), "check", "-s", gearmill.address)
    assert out.returncode == 0 and out.stdout.startswith(b"GEARMAN OK"), out
    for bad in (["--warn-queue", "many"], ["--bogus"]):
        out = cli("admin", "-p", str(gearmill.port), "check", *bad)
        assert out.returncode == 3, out
        assert out.stdout.startswith(b"GEARMAN UNKNOWN - ") and out.stdout.count(b"\n") == 1
        assert out.stderr == b""
