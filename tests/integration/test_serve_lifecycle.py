"""gearmill serve as a new user meets it: what it says at start and at stop, as a daemon,
with a TOML file, environment variables and a gearmand config file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gearmill
from conftest import Conn, Running, start_gearmill

CAN_DO, PRE_SLEEP, NOOP, SUBMIT_JOB, JOB_CREATED, GRAB_JOB = 1, 4, 6, 7, 8, 9
SUBMIT_JOB_BG, JOB_ASSIGN, SUBMIT_JOB_EPOCH, SET_CLIENT_ID = 18, 11, 36, 22

SERVE = [sys.executable, "-m", "gearmill.cli.main", "serve"]


def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SERVE, *args], capture_output=True, text=True, timeout=30, env=env)


def log_lines(srv: Running) -> list[str]:
    return (srv.tmp / "server.log").read_text().splitlines()


def wait_exit(srv: Running) -> int:
    return srv.proc.wait(10)


# -------------------------------------------------------------------- start


def test_start_line_at_the_default_level_names_every_address() -> None:
    srv = start_gearmill("-L", "127.0.0.1", "-L", "::1")
    try:
        lines = log_lines(srv)
        assert len(lines) == 1, lines
        line = lines[0]
        assert line.startswith(" NOTICE ")
        # -p 0: the real port, one for every address (clients are given one port)
        where = line.split("Listening on ", 1)[1].split(" (", 1)[0]
        assert where == f"127.0.0.1:{srv.port}, [::1]:{srv.port}"
        assert line.endswith(
            f"(gearmill {gearmill.__version__}, {gearmill.IMPLEMENTATION} hot path, jobs in memory)"
        )
        with Conn(srv.port) as c:
            assert c.admin(b"version\n").startswith(b"OK 1.1.20+gearmill.")
    finally:
        srv.stop()


def test_help_is_plain_text_and_a_bad_flag_is_one_line() -> None:
    for args in (["--help"], ["serve", "--help"]):
        r = subprocess.run(
            [sys.executable, "-m", "gearmill.cli.main", *args],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert r.returncode == 0 and "``" not in r.stdout, r.stdout
    # a bad flag is one line, with the flag it looks like when there is one
    r = serve("--bogus")
    assert (r.returncode, r.stderr) == (
        2,
        "gearmill serve: unrecognized arguments: --bogus; see gearmill serve --help\n",
    )
    r = serve("--job-retry", "3")
    assert (r.returncode, r.stderr) == (
        2,
        "gearmill serve: unrecognized arguments: --job-retry 3; did you mean --job-retries? "
        "(see gearmill serve --help)\n",
    )


def test_debug_level_says_who_connects_registers_and_what_the_store_commits(
    tmp_path: Path,
) -> None:
    """--verbose DEBUG: a line per connection opened and closed (with the peer's address),
    per worker's registration, per job a lost worker gave back, per store commit."""
    srv = start_gearmill("--verbose", "DEBUG", "--store", f"sqlite://{tmp_path}/queue.db")
    try:
        with srv.conn() as c:
            c.send(SUBMIT_JOB_BG, b"resize", b"", b"x")
            handle = c.expect(JOB_CREATED).decode()
        w = srv.conn()
        port = w.sock.getsockname()[1]
        w.send(SET_CLIENT_ID, b"thumbs-1")
        w.send(CAN_DO, b"resize")
        w.send(CAN_DO, b"crop")
        w.send(GRAB_JOB)
        w.expect(JOB_ASSIGN)
        w.close()  # dies with the job
        with srv.conn() as c:  # answered once the server has seen the worker go
            assert c.admin(b"status\n").startswith(b"resize\t1\t0\t0\n")
    finally:
        srv.stop()
    said = [x.split(" [  main ] ", 1) for x in log_lines(srv)]
    debug = [text for level, text in said if level.strip().startswith("DEBUG")]
    opened = [x for x in debug if x.endswith(f"opened from 127.0.0.1:{port}")]
    assert len(opened) == 1, debug
    fd = opened[0].split()[1]
    who = f"connection {fd} (127.0.0.1, id thumbs-1)"
    for line in (
        f"{who} can do: resize, crop",
        f"job {handle} (resize) back in its queue (lost) from {who}",
        f"{who} closed",
        f"{who} no longer does: crop, resize",
    ):
        assert line in debug, (line, debug)
    url = f"sqlite://{tmp_path}/queue.db"
    assert any(
        x.startswith(f"store {url}: committed a group of 1 new and 0 finished jobs") for x in debug
    ), debug


# --------------------------------------------------------------------- stop


def test_sigterm_says_which_jobs_are_lost() -> None:
    srv = start_gearmill()
    with srv.conn() as c, srv.conn() as w:
        for data in (b"a", b"b"):
            c.send(SUBMIT_JOB_BG, b"bg", b"", data)
            c.expect(JOB_CREATED)
        c.send(SUBMIT_JOB, b"fg", b"", b"c")
        c.expect(JOB_CREATED)
        c.send(SUBMIT_JOB_EPOCH, b"later", b"", b"%d" % (int(time.time()) + 3600), b"d")
        c.expect(JOB_CREATED)
        w.send(CAN_DO, b"bg")
        w.send(GRAB_JOB)
        w.expect(JOB_ASSIGN)
        srv.proc.send_signal(signal.SIGTERM)
        assert wait_exit(srv) == 0
    lines = log_lines(srv)
    warnings = [x for x in lines if x.startswith("WARNING")]
    assert len(warnings) == 1, lines
    assert warnings[0].endswith(
        "SIGTERM: 4 jobs lost at exit: 3 background (1 queued, 1 scheduled, 1 running), "
        "1 foreground (1 queued); jobs are kept in memory only and do not survive a restart"
    )
    assert lines[-1].endswith("Shutdown complete (SIGTERM)")


def test_sigterm_with_nothing_queued_warns_of_nothing() -> None:
    srv = start_gearmill()
    srv.proc.send_signal(signal.SIGTERM)
    assert wait_exit(srv) == 0
    lines = log_lines(srv)
    assert len(lines) == 2 and "Listening on" in lines[0], lines
    assert lines[1].startswith(" NOTICE ") and lines[1].endswith("Shutdown complete (SIGTERM)")


def test_sigusr1_is_a_notice_and_warns_once_of_what_is_lost() -> None:
    """SIGUSR1 is an operator's normal stop (systemctl stop sends it): a NOTICE line at
    every level, as the start and stop lines; only the lost job is a warning."""
    srv = start_gearmill("--verbose", "WARNING")
    with srv.conn() as c:
        c.send(SUBMIT_JOB_BG, b"nobody", b"", b"x")
        c.expect(JOB_CREATED)
        srv.proc.send_signal(signal.SIGUSR1)
        assert wait_exit(srv) == 0
    said = [(x.split()[0], x.split(" [  main ] ")[1]) for x in log_lines(srv)[1:]]
    assert said == [
        ("NOTICE", "SIGUSR1: graceful shutdown: no new connections or jobs"),
        (
            "WARNING",
            "SIGUSR1: 1 job lost at exit: 1 background (1 queued); jobs are kept in memory "
            "only and do not survive a restart",
        ),
        ("NOTICE", "Shutdown complete (SIGUSR1)"),
    ]


# ------------------------------------------------------------------- daemon


def _wait_gone(pid: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)
    raise AssertionError(f"daemon {pid} still running")


def test_daemon_that_cannot_listen_says_so(tmp_path: Path, gearmill: Running) -> None:
    log, pid = tmp_path / "f.log", tmp_path / "f.pid"
    r = serve("-d", "-p", str(gearmill.port), "-l", str(log), "-P", str(pid))
    assert r.returncode == 1
    assert r.stderr.startswith(f"gearmill serve: cannot listen on 127.0.0.1 port {gearmill.port}: ")
    assert len(r.stderr.splitlines()) == 1
    assert f"cannot listen on 127.0.0.1 port {gearmill.port}" in log.read_text()
    assert not pid.exists()


def test_daemon_pid_file_exists_when_the_parent_returns(tmp_path: Path) -> None:
    log, pid_file = tmp_path / "f.log", tmp_path / "f.pid"
    r = serve("-d", "-p", "0", "-l", str(log), "-P", str(pid_file))
    try:
        assert pid_file.exists()  # at once: init scripts read it right away
        assert r.returncode == 0 and r.stderr == ""
        pid = int(pid_file.read_text())
        line = log.read_text()
        assert "Listening on 127.0.0.1:" in line
        port = int(line.split("Listening on 127.0.0.1:", 1)[1].split(" ", 1)[0])
        with Conn(port) as c:
            assert c.admin(b"getpid\n") == f"OK {pid}\n".encode()
    finally:
        # stop the daemon even when it wrote its pid file late
        deadline = time.monotonic() + 10
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        pid = int(pid_file.read_text())
        os.kill(pid, signal.SIGTERM)
        _wait_gone(pid)
    assert not pid_file.exists()


# ------------------------------------------------------------ config sources


def test_toml_file_and_environment_take_effect(tmp_path: Path) -> None:
    config = tmp_path / "gearmill.toml"
    config.write_text(
        'worker_wakeup = 0\nverbose = "WARNING"\nadmin_shutdown = "any"\n'
        '[[listen]]\nhost = "127.0.0.1"\n'
    )
    env = {**os.environ, "GEARMILL_ADMIN_SHUTDOWN": "off", "GEARMILL_VERBOSE": "INFO"}
    srv = start_gearmill("--config", str(config), env=env)
    try:
        with srv.conn() as c:
            # the environment beats the file
            assert c.admin(b"verbose\n") == b"OK INFO\n"
            assert (
                c.admin(b"shutdown\n") == b"ERR UNKNOWN_COMMAND Unknown+server+commandshutdown\r\n"
            )
        # the file's worker_wakeup = 0: every sleeping worker is woken, as gearmand does
        workers = [srv.conn() for _ in range(3)]
        try:
            for w in workers:
                w.send(CAN_DO, b"herd")
                w.send(PRE_SLEEP)
            with srv.conn() as c:
                c.send(SUBMIT_JOB_BG, b"herd", b"", b"x")
                c.expect(JOB_CREATED)
            assert [w.expect(NOOP) for w in workers] == [b""] * 3
        finally:
            for w in workers:
                w.close()
    finally:
        srv.stop()


def test_gearmand_config_file_takes_effect(tmp_path: Path) -> None:
    conf = tmp_path / "gearmand.conf"
    conf.write_text("# as gearmand reads it\n--verbose=DEBUG\n--admin-shutdown off\n")
    srv = start_gearmill("--config-file", str(conf))
    try:
        with srv.conn() as c:
            assert c.admin(b"verbose\n") == b"OK DEBUG\n"
            assert (
                c.admin(b"shutdown\n") == b"ERR UNKNOWN_COMMAND Unknown+server+commandshutdown\r\n"
            )
    finally:
        srv.stop()


def test_gearmands_default_config_file_is_pointed_out(tmp_path: Path) -> None:
    """gearmand reads /etc/gearmand.conf without being asked; an operator who kept
    gearmand's -q flags there and starts gearmill "the same way" is told the file is
    not read, rather than finding gearmand's queued jobs never ran. (The file's path is
    moved into tmp_path: this machine's /etc is not the test's to write.)"""
    conf = tmp_path / "gearmand.conf"
    conf.write_text(f"-q libsqlite3\n--libsqlite3-db={tmp_path}/gearmand.db\n")
    code = (
        "import sys; from gearmill.cli import serve, main;"
        " serve.GEARMAND_CONFIG = sys.argv[1]; sys.exit(main.main(sys.argv[2:]))"
    )

    def first_line(*args: str) -> str:
        cmd = [sys.executable, "-c", code, str(conf), "serve", "-p", "0", *args]
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stderr is not None
            return proc.stderr.readline()  # the start line comes at every level
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=10)

    line = first_line("--store", "memory")
    assert line == (
        f"gearmill serve: warning: {conf} exists, and gearmand reads it by default;"
        f" gearmill does only with --config-file {conf}\n"
    )
    assert "Listening on" in first_line("--config-file", str(conf))


def test_bad_value_in_each_source_is_one_line_and_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "gearmill.toml"
    config.write_text("backlog = -1\n")
    r = serve("--config", str(config))
    assert (r.returncode, r.stderr) == (
        2,
        f"gearmill serve: {config}: backlog = -1: use 1 to 65535 (default 32)\n",
    )
    r = serve(env={**os.environ, "GEARMILL_STORE": "redis:/localhost"})
    assert (r.returncode, r.stderr) == (
        2,
        "gearmill serve: GEARMILL_STORE='redis:/localhost': use memory, sqlite:///path/queue.db, "
        "postgresql://user:password@host/db, mysql://user:password@host/db "
        "or redis://host:6379/0\n",
    )
    r = serve("--keepalive-idle", "0")
    assert (r.returncode, r.stderr) == (
        2,
        "gearmill serve: --keepalive-idle 0: use seconds (or a count) from 1 to 32767, "
        "or -1 for the default\n",
    )


def test_pid_file_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    pid_file = tmp_path / "no-such-dir" / "f.pid"
    r = serve("-p", "0", "-P", str(pid_file))
    assert r.returncode == 1
    assert r.stderr == (
        f"gearmill serve: cannot write pid file {pid_file}: No such file or directory\n"
    )


def test_http_without_its_extra_is_one_line_naming_the_install(tmp_path: Path) -> None:
    # a Python where h11 is missing (the [http] extra not installed)
    blocker = tmp_path / "h11"
    blocker.mkdir()
    (blocker / "__init__.py").write_text(
        "raise ImportError(\"No module named 'h11'\", name='h11')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "GEARMILL_STORE": "memory"}
    r = serve("-p", "0", "--http", "127.0.0.1:0", env=env)
    assert r.returncode == 1
    assert r.stderr == (
        "gearmill serve: the HTTP listener needs h11: pip install 'gearmill[http]' "
        "(h11, prometheus_client)\n"
    ), r.stderr
