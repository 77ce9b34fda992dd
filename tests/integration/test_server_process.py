"""The gearmill serve process: flags, signals, files, large payloads, timers."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import time

from conftest import Conn, Running, free_port, start_gearmill

CAN_DO, PRE_SLEEP, NOOP, SUBMIT_JOB, JOB_CREATED, GRAB_JOB, JOB_ASSIGN = 1, 4, 6, 7, 8, 9, 11
WORK_COMPLETE, ECHO_REQ, ECHO_RES, SUBMIT_JOB_BG, ERROR, SUBMIT_JOB_EPOCH = 13, 16, 17, 18, 19, 36
CAN_DO_TIMEOUT, NO_JOB = 23, 10


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gearmill.cli.main", "serve", *args],
        capture_output=True,
        text=True,
        timeout=20,
    )


def test_unknown_gearmand_flag_gets_one_clear_line() -> None:
    r = serve("--libmemcached-servers", "127.0.0.1")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "gearmill serve: gearmand option --libmemcached-servers is not supported: "
        "the memcached queue is not supported"
    ]


def test_bad_values_say_what_to_do() -> None:
    r = serve("--job-retries", "300")
    assert r.returncode == 2 and "use 0 (the retry default, 25 attempts) to 255" in r.stderr
    r = serve("-q", "memcached")
    assert r.returncode == 2 and "use builtin, libsqlite3, Postgres, MySQL or redis" in r.stderr
    r = serve("--worker-wakeup", "-1")
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        "gearmill serve: --worker-wakeup -1: use 0 (all), N (at most N), or leave it out "
        "(one per queued job)"
    ]
    r = subprocess.run(
        [sys.executable, "-m", "gearmill.cli.main", "serve"],
        capture_output=True,
        text=True,
        timeout=20,
        env={**os.environ, "GEARMAND_PORT": "nope"},
    )
    assert r.returncode == 2
    assert r.stderr == (
        "gearmill serve: GEARMAND_PORT='nope': not a port number; use 0 to 65535 "
        "(0 picks a free one)\n"
    )


def test_port_already_taken_is_one_line() -> None:
    srv = start_gearmill()
    try:
        r = serve("-p", str(srv.port))
        assert r.returncode == 1
        assert r.stderr == (
            f"gearmill serve: cannot listen on 127.0.0.1 port {srv.port}: Address already in use;"
            " another server listens there (or a connection holds it as its local port):"
            " stop it or choose another port\n"
        )
    finally:
        srv.stop()


def test_http_port_already_taken_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = serve("-p", "0", "--http", f"127.0.0.1:{port}")
    assert r.returncode == 1
    assert r.stderr == (
        f"gearmill serve: cannot listen for HTTP on 127.0.0.1 port {port}: Address already"
        " in use; another server listens there (or a connection holds it as its local port):"
        " stop it or choose another port\n"
    )


def test_a_port_held_by_a_connection_is_not_blamed_on_a_server() -> None:
    """A client that reconnects to a stopped server's port from the ephemeral range can
    connect to itself (TCP simultaneous open) and hold the port with nothing listening,
    as a C gearman -w did here: the error must not send the operator looking for a
    server."""
    with socket.socket() as own:
        own.bind(("127.0.0.1", 0))
        port = own.getsockname()[1]
        own.connect(("127.0.0.1", port))  # connected to itself
        r = serve("-p", str(port))
    assert r.returncode == 1
    assert "or a connection holds it as its local port" in r.stderr


def test_ctrl_c_while_starting_is_one_line_not_a_traceback() -> None:
    """SIGINT before the server is up (here: its store never answers) stops it with one
    line, as after it."""
    with socket.socket() as mute:  # accepts connections, never says a word
        mute.bind(("127.0.0.1", 0))
        mute.listen()
        url = f"postgresql://gm@127.0.0.1:{mute.getsockname()[1]}/gm"
        proc = subprocess.Popen(
            [sys.executable, "-m", "gearmill.cli.main", "serve", "-p", "0", "--store", url],
            stderr=subprocess.PIPE,
            text=True,
        )
        conn, _ = mute.accept()  # the store's connect is waiting for an answer
        try:
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=20)
        finally:
            conn.close()
    assert proc.returncode == 1
    assert err == "gearmill serve: interrupted while starting (SIGINT)\n"


def test_gearmand_port_environment_variable(tmp_path: object) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gearmill.cli.main", "serve"],
        env={**os.environ, "GEARMAND_PORT": str(port)},
        stderr=subprocess.DEVNULL,
    )
    try:
        from conftest import wait_port

        wait_port(port, proc)
    finally:
        proc.terminate()
        proc.wait(10)


def test_pid_file_log_file_sighup_and_sigterm(tmp_path: object) -> None:
    from pathlib import Path

    tmp = Path(str(tmp_path))
    pid_file, log_file = tmp / "run.pid", tmp / "srv.log"
    srv = start_gearmill(
        "--pid-file", str(pid_file), "--log-file", str(log_file), "--verbose", "INFO", tmp=tmp
    )
    assert pid_file.read_text().strip() == str(srv.proc.pid)
    assert f"Listening on 127.0.0.1:{srv.port}" in log_file.read_text()
    log_file.rename(tmp / "srv.log.1")
    srv.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while not log_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    # log rotation is routine: gearmand's NOTICE line, not a warning
    said = log_file.read_text().splitlines()
    assert said[0].startswith(" NOTICE ") and said[0].endswith("SIGHUP, reopening log file")
    srv.proc.send_signal(signal.SIGTERM)
    assert srv.proc.wait(10) == 0
    assert not pid_file.exists()


def test_sigusr1_lets_running_job_finish() -> None:
    srv = start_gearmill()
    with srv.conn() as c, srv.conn() as w:
        c.send(SUBMIT_JOB, b"f", b"", b"x")
        h = c.expect(JOB_CREATED)
        w.send(CAN_DO, b"f")
        w.send(GRAB_JOB)
        w.expect(JOB_ASSIGN)
        srv.proc.send_signal(signal.SIGUSR1)
        time.sleep(0.3)
        assert srv.proc.poll() is None
        # new connections are refused, new jobs too
        try:
            Conn(srv.port, timeout=1).close()
            refused = False
        except OSError:
            refused = True
        assert refused
        c.send(SUBMIT_JOB_BG, b"f", b"", b"y")
        assert c.expect(ERROR) == b"QUEUE_ERROR\x00Server is shutting down"
        w.send(WORK_COMPLETE, h, b"done")
        assert c.expect(WORK_COMPLETE) == h + b"\x00done"
    assert srv.proc.wait(10) == 0


def test_admin_shutdown_is_configurable() -> None:
    srv = start_gearmill("--admin-shutdown", "off")
    try:
        with srv.conn() as c:
            assert (
                c.admin(b"shutdown\n") == b"ERR UNKNOWN_COMMAND Unknown+server+commandshutdown\r\n"
            )
    finally:
        srv.stop()
    srv = start_gearmill()
    with srv.conn() as c:
        assert c.admin(b"shutdown\r\n") == b"OK\r\n"
    assert srv.proc.wait(10) == 0


def test_64mib_job_round_trip(gearmill: Running) -> None:
    payload = os.urandom(1 << 20) * 64
    with gearmill.conn() as c, gearmill.conn() as w:
        c.sock.settimeout(60)
        w.sock.settimeout(60)
        w.send(CAN_DO, b"echo")
        c.send(SUBMIT_JOB, b"echo", b"", payload)
        h = c.expect(JOB_CREATED)
        w.send(GRAB_JOB)
        got = w.expect(JOB_ASSIGN)
        assert got == h + b"\x00echo\x00" + payload
        w.send(WORK_COMPLETE, h, payload)
        assert c.expect(WORK_COMPLETE) == h + b"\x00" + payload


def test_large_job_cut_off_halfway_leaves_nothing_behind(server: Running) -> None:
    """A client gone in the middle of an 8 MiB submission (received in place
    by gearmill): no job, and the server goes on serving."""
    payload = b"z" * (8 << 20)
    body = b"half\x00\x00" + payload
    packet = b"\x00REQ" + struct.pack(">II", SUBMIT_JOB_BG, len(body)) + body
    with server.conn() as c:
        c.raw(packet[: len(packet) // 2])
    with server.conn() as c, server.conn() as w:
        w.send(CAN_DO, b"half")
        w.send(GRAB_JOB)
        assert w.expect(NO_JOB) == b""
        c.send(SUBMIT_JOB, b"half", b"", b"small")
        h = c.expect(JOB_CREATED)
        w.send(GRAB_JOB)
        assert w.expect(JOB_ASSIGN) == h + b"\x00half\x00small"
        w.send(WORK_COMPLETE, h, b"done")
        assert c.expect(WORK_COMPLETE) == h + b"\x00done"
        assert c.admin(b"status\n") == b"half\t0\t0\t1\n.\n"


def test_epoch_job_wakes_worker_on_time(gearmill: Running) -> None:
    with gearmill.conn() as c, gearmill.conn() as w:
        w.send(CAN_DO, b"later")
        w.send(PRE_SLEEP)
        c.send(SUBMIT_JOB_EPOCH, b"later", b"", b"%d" % (int(time.time()) + 2), b"x")
        c.expect(JOB_CREATED)
        assert w.quiet(0.5)  # not yet due
        w.sock.settimeout(5)
        assert w.expect(NOOP) == b""  # gearmand 1.1.20 never sends this one (#101)
        w.send(GRAB_JOB)
        assert w.expect(JOB_ASSIGN).endswith(b"\x00later\x00x")


def test_can_do_timeout_requeues_on_real_server(gearmill: Running) -> None:
    with gearmill.conn() as c, gearmill.conn() as w1, gearmill.conn() as w2:
        c.send(SUBMIT_JOB, b"slow", b"", b"x")
        h = c.expect(JOB_CREATED)
        w1.send(CAN_DO_TIMEOUT, b"slow", b"1000")
        w1.send(GRAB_JOB)
        w1.expect(JOB_ASSIGN)
        w2.send(CAN_DO, b"slow")
        w2.send(PRE_SLEEP)
        assert w2.expect(NOOP) == b""
        w2.send(GRAB_JOB)
        assert w2.expect(JOB_ASSIGN).startswith(h)
        w2.send(WORK_COMPLETE, h, b"ok")
        assert c.expect(WORK_COMPLETE) == h + b"\x00ok"


def test_many_connections_and_pipelined_submits(gearmill: Running) -> None:
    conns = [gearmill.conn() for _ in range(50)]
    try:
        for i, c in enumerate(conns):
            c.raw(
                b"".join(
                    __import__("struct").pack(
                        ">4sII", b"\x00REQ", SUBMIT_JOB_BG, 5 + len(b"%d" % j)
                    )
                    + b"p\x00\x00%d" % j
                    + b"xx"
                    for j in range(i * 20, i * 20 + 20)
                )
            )
        handles = set()
        for c in conns:
            for _ in range(20):
                handles.add(c.expect(JOB_CREATED))
        assert len(handles) == 1000
        assert conns[0].admin(b"status\n") == b"p\t1000\t0\t0\n.\n"
    finally:
        for c in conns:
            c.close()
    with gearmill.conn() as c:
        c.send(ECHO_REQ, b"ok")
        assert c.expect(ECHO_RES) == b"ok"


def _three_sleepers_then_one_job(srv: Running, data: bytes) -> list[Conn]:
    """Three workers of ``herd`` asleep, then one background job for them."""
    workers = [srv.conn() for _ in range(3)]
    for w in workers:
        w.send(CAN_DO, b"herd")
        w.send(PRE_SLEEP)
    with srv.conn() as c:
        c.send(SUBMIT_JOB_BG, b"herd", b"", data)
        c.expect(JOB_CREATED)
    return workers


def test_one_sleeping_worker_woken_per_job_and_a_silent_one_makes_all_others_woken(
    gearmill: Running,
) -> None:
    workers = _three_sleepers_then_one_job(gearmill, b"only one")
    try:
        woken = [w for w in workers if not w.quiet(0.3)]
        assert len(woken) == 1  # gearmand NOOPs all three
        assert woken[0].expect(NOOP) == b""
        # the woken worker never asks: about a second later every other
        # sleeper is woken at once (however many froze, one delay per job)
        rest = [w for w in workers if w is not woken[0]]
        deadline = time.monotonic() + 5
        second = [w for w in rest if not w.quiet(0.1)]
        while len(second) < len(rest) and time.monotonic() < deadline:
            second = [w for w in rest if not w.quiet(0.1)]
        assert len(second) == 2
        assert [w.expect(NOOP) for w in second] == [b"", b""]
        second[0].send(GRAB_JOB)
        assert second[0].expect(JOB_ASSIGN).endswith(b"\x00herd\x00only one")
        second[1].send(GRAB_JOB)
        assert second[1].expect(NO_JOB) == b""
        assert woken[0].quiet(0.2)
    finally:
        for w in workers:
            w.close()


def test_worker_wakeup_zero_wakes_every_sleeper_like_gearmand() -> None:
    srv = start_gearmill("--worker-wakeup", "0")
    try:
        workers = _three_sleepers_then_one_job(srv, b"x")
        assert [w.expect(NOOP) for w in workers] == [b""] * 3
        for w in workers:
            w.close()
    finally:
        srv.stop()
