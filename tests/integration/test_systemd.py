"""gearmill serve under systemd and in containers: Type=notify readiness, stopping and
watchdog through a NOTIFY_SOCKET the test binds, a graceful stop bounded by
--graceful-timeout with a real worker process holding a job, and JSON log lines."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import gearmill
from conftest import Conn, Running, gearmill_cmd, start_gearmill, wait_until

SUBMIT_JOB_BG, JOB_CREATED = 18, 8
CLI = [sys.executable, "-m", "gearmill.cli.main"]


# ------------------------------------------------------------------ helpers


class NotifySocket:
    """The service manager's end: a unix datagram socket, by path or abstract name."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.messages: list[dict[str, str]] = []

    def next(self, timeout: float = 10.0) -> dict[str, str]:
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096).decode()
        fields = dict(line.split("=", 1) for line in data.split("\n"))
        self.messages.append(fields)
        return fields

    def wait_for(self, key: str, timeout: float = 10.0) -> dict[str, str]:
        """The next message carrying ``key`` (the ones before it are kept in messages)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {key} within {timeout} s; got {self.messages}")
            fields = self.next(left)
            if key in fields:
                return fields

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_dir() -> Iterator[Path]:
    # a short path: a unix socket's path is limited to 107 bytes
    path = Path(tempfile.mkdtemp(prefix="gm-notify-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def spawn(*args: str, env: dict[str, str], tmp: Path) -> subprocess.Popen[bytes]:
    with open(tmp / "server.log", "ab") as log:
        return subprocess.Popen(gearmill_cmd(0, *args), stdout=log, stderr=log, env=env)


def status_row(port: int, function: str) -> list[str]:
    with Conn(port) as c:
        for line in c.admin(b"status\n").decode().splitlines():
            cells = line.split("\t")
            if cells[0] == function:
                return cells
    return []


# --------------------------------------------------------------- readiness


def test_ready_once_listening_then_stopping_on_sigterm(notify_dir: Path) -> None:
    manager = NotifySocket(str(notify_dir / "notify"))
    env = dict(os.environ, NOTIFY_SOCKET=manager.address)
    proc = spawn(env=env, tmp=notify_dir)
    try:
        ready = manager.wait_for("READY")
        assert ready["READY"] == "1"
        assert ready["MAINPID"] == str(proc.pid)
        # what systemd starts the dependent units on: the port answers at once
        port = int(ready["STATUS"].split("Listening on 127.0.0.1:", 1)[1].split(";")[0])
        assert ready["STATUS"].endswith("; 0 jobs queued, 0 running, 0 workers")
        with Conn(port) as c:
            assert c.admin(b"version\n").startswith(b"OK 1.1.20+gearmill.")
        log = (notify_dir / "server.log").read_text()
        assert "Listening on 127.0.0.1:" in log  # the start line came first
        proc.send_signal(signal.SIGTERM)
        stopping = manager.wait_for("STOPPING")
        assert stopping == {"STOPPING": "1", "STATUS": "Stopping (SIGTERM)"}
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        manager.close()


def test_abstract_socket_watchdog_and_status(notify_dir: Path) -> None:
    name = f"@gearmill-test-{os.getpid()}-{time.monotonic_ns()}"
    manager = NotifySocket(name)
    # WatchdogSec=0.4s: a ping every 0.2 s, each with a fresh STATUS
    env = dict(os.environ, NOTIFY_SOCKET=name, WATCHDOG_USEC="400000")
    proc = spawn(env=env, tmp=notify_dir)
    try:
        port = int(manager.wait_for("READY")["STATUS"].split(":", 1)[1].split(";")[0])
        with Conn(port) as c:
            for data in (b"a", b"b"):
                c.send(SUBMIT_JOB_BG, b"nobody", b"", data)
                c.expect(JOB_CREATED)
        # pings keep coming, and a later one's STATUS counts the two queued jobs
        want = f"Listening on 127.0.0.1:{port}; 2 jobs queued, 0 running, 0 workers"
        deadline = time.monotonic() + 10
        pings = [manager.wait_for("WATCHDOG")]
        while pings[-1]["STATUS"] != want and time.monotonic() < deadline:
            pings.append(manager.wait_for("WATCHDOG"))
        assert pings[-1]["STATUS"] == want, pings
        assert len(pings) >= 2 and all(p["WATCHDOG"] == "1" for p in pings)
        proc.send_signal(signal.SIGUSR1)
        stopping = manager.wait_for("STOPPING")
        assert stopping["STATUS"] == "Stopping (SIGUSR1); 2 jobs queued, 0 running, 0 workers"
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        manager.close()


def test_a_notify_socket_nobody_listens_on_is_one_error_line(notify_dir: Path) -> None:
    env = dict(os.environ, NOTIFY_SOCKET=str(notify_dir / "gone"), WATCHDOG_USEC="200000")
    srv = start_gearmill(env=env)
    try:
        # the server runs on without its manager: a watchdog ping later, it still answers
        with srv.conn() as c:
            assert c.admin(b"version\n").startswith(b"OK ")
        log = srv.tmp / "server.log"
        wait_until(lambda: "NOTIFY_SOCKET" in log.read_text(), "the error line")
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(10) == 0
        errors = [x for x in log.read_text().splitlines() if x.startswith("  ERROR")]
        assert len(errors) == 1, errors
        assert errors[0].endswith(
            f"[  main ] NOTIFY_SOCKET {notify_dir}/gone: cannot notify the service manager: "
            "No such file or directory"
        )
    finally:
        srv.stop()


# ---------------------------------------------------------- graceful stop


def hold_worker(port: int, release: Path) -> subprocess.Popen[bytes]:
    """A real `gearmill work` whose command holds each job until ``release`` exists
    (at most 30 s)."""
    script = (
        f"i=0; while [ ! -e {release} ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; "
        "echo done"
    )
    return subprocess.Popen(
        [*CLI, "work", "-p", str(port), "-f", "hold", "--", "sh", "-c", script],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def running_job(srv: Running, release: Path) -> subprocess.Popen[bytes]:
    worker = hold_worker(srv.port, release)
    with srv.conn() as c:
        c.send(SUBMIT_JOB_BG, b"hold", b"", b"x")
        c.expect(JOB_CREATED)
    wait_until(lambda: status_row(srv.port, "hold")[1:3] == ["1", "1"], "the worker runs the job")
    return worker


def stop_worker(worker: subprocess.Popen[bytes], release: Path) -> None:
    release.touch()
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(10)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


def test_graceful_stop_waits_for_the_running_job(tmp_path: Path) -> None:
    srv = start_gearmill("--verbose", "WARNING")
    release = tmp_path / "release"
    worker = running_job(srv, release)
    try:
        srv.proc.send_signal(signal.SIGUSR1)
        log = srv.tmp / "server.log"
        wait_until(lambda: "graceful shutdown" in log.read_text(), "the graceful line")
        assert srv.proc.poll() is None  # still waiting for the job
        release.touch()
        assert srv.proc.wait(10) == 0
        text = log.read_text()
        assert "lost at exit" not in text and "--graceful-timeout" not in text, text
        assert text.splitlines()[-1].endswith("Shutdown complete (SIGUSR1)")
    finally:
        stop_worker(worker, release)
        srv.stop()


def test_graceful_timeout_stops_as_sigterm_and_says_what_is_lost(tmp_path: Path) -> None:
    srv = start_gearmill("--graceful-timeout", "1", "--log-format", "json")
    release = tmp_path / "release"
    worker = running_job(srv, release)
    try:
        srv.proc.send_signal(signal.SIGUSR1)
        assert srv.proc.wait(15) == 0  # the worker still holds its job
        lines = [json.loads(x) for x in (srv.tmp / "server.log").read_text().splitlines()]
        warnings = [x for x in lines if x["level"] == "WARNING"]
        assert [w["message"] for w in warnings] == [
            "SIGUSR1: graceful shutdown did not finish within 1 s (--graceful-timeout): "
            "1 job still running; stopping now",
            "SIGUSR1: 1 job lost at exit: 1 background (1 running); jobs are kept in memory "
            "only and do not survive a restart",
        ]
        assert warnings[0]["graceful_timeout"] == 1 and warnings[0]["jobs_running"] == 1
        assert warnings[1]["jobs_lost"] == 1
        assert lines[-1]["message"] == "Shutdown complete (SIGUSR1)"
    finally:
        stop_worker(worker, release)
        srv.stop()


# -------------------------------------------------------------------- logs


def test_json_logs_from_the_environment_parse_line_by_line() -> None:
    srv = start_gearmill(
        "--verbose",
        "NOTICE",
        "--http",
        "127.0.0.1:0",
        env=dict(os.environ, GEARMILL_LOG_FORMAT="json"),
    )
    srv.proc.send_signal(signal.SIGHUP)
    log = srv.tmp / "server.log"
    wait_until(lambda: "SIGHUP" in log.read_text(), "the SIGHUP line")
    srv.proc.send_signal(signal.SIGTERM)
    assert srv.proc.wait(10) == 0
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert [(x["level"], x["logger"]) for x in lines] == [
        ("NOTICE", "gearmill.lifecycle"),
        ("NOTICE", "gearmill.lifecycle"),
        ("NOTICE", "gearmill.server"),
        ("NOTICE", "gearmill.lifecycle"),
    ]
    start = lines[0]
    assert start["message"].startswith(f"Listening on 127.0.0.1:{srv.port} (gearmill ")
    # what the start line says, as fields a log shipper can index without parsing it
    assert {k: start[k] for k in ("listen", "ports", "store", "version", "hot_path", "pid")} == {
        "listen": [f"127.0.0.1:{srv.port}"],
        "ports": [srv.port],
        "store": "memory",
        "version": gearmill.__version__,
        "hot_path": gearmill.IMPLEMENTATION,
        "pid": srv.proc.pid,
    }
    http = lines[1]
    assert http["message"] == f"HTTP on {http['http']} (dashboard, /metrics, API, gateway)"
    assert http["http"].startswith("http://127.0.0.1:")
    assert lines[2]["message"] == "SIGHUP, reopening log file"
    assert lines[3]["message"] == "Shutdown complete (SIGTERM)"
    for line in lines[2:]:
        assert set(line) == {"time", "level", "logger", "message"}
    for line in lines:
        assert line["time"].endswith("Z")
        when = datetime.datetime.fromisoformat(line["time"])
        assert abs((datetime.datetime.now(datetime.UTC) - when).total_seconds()) < 120


@pytest.mark.parametrize(
    ("args", "env", "line"),
    [
        (
            ["--log-format", "bogus"],
            {},
            "gearmill serve: --log-format bogus: use one of plain, json",
        ),
        (
            [],
            {"GEARMILL_LOG_FORMAT": "xml"},
            "gearmill serve: GEARMILL_LOG_FORMAT='xml': use one of plain, json",
        ),
        (
            ["--graceful-timeout", "soon"],
            {},
            "gearmill serve: --graceful-timeout soon: not a whole number of seconds; "
            "use seconds from 0 (no limit) to 604800 (default 30)",
        ),
    ],
)
def test_a_bad_log_format_or_timeout_is_one_line(
    args: list[str], env: dict[str, str], line: str
) -> None:
    r = subprocess.run(
        [*CLI, "serve", "-p", "0", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **env},
    )
    assert r.returncode == 2
    assert r.stderr == line + "\n"
