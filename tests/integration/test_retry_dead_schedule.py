"""Retries, the dead set and schedules on a real gearmill server: through the admin
text protocol, ``gearmill admin``, ``gearmill schedule``, the config file, and a
real C ``gearman -w`` worker whose command fails."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Running, start_gearmill, wait_until
from gearmill.client.admin import AdminClient
from gearmill.errors import ServerError

CAN_DO, GRAB_JOB, NO_JOB, JOB_CREATED, WORK_FAIL = 1, 9, 10, 8, 14
JOB_ASSIGN, SUBMIT_JOB_BG, WORK_COMPLETE, WORK_EXCEPTION = 11, 18, 13, 25


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gearmill.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=20,
    )


@pytest.fixture
def retrying() -> Iterator[Running]:
    srv = start_gearmill(
        "--retry-on", "lost,timeout,cant_do,fail,exception", "--retry-max-attempts", "2", "-v"
    )
    yield srv
    srv.stop()


def test_dead_letter_life_cycle_through_admin_protocol_and_cli(retrying: Running) -> None:
    port = str(retrying.port)
    with retrying.conn() as c, retrying.conn() as w:
        c.send(SUBMIT_JOB_BG, b"resize", b"img-7", b"payload 7")
        handle = c.expect(JOB_CREATED)
        w.send(CAN_DO, b"resize")
        w.send(GRAB_JOB)
        assert w.expect(JOB_ASSIGN) == handle + b"\x00resize\x00payload 7"
        w.send(WORK_FAIL, handle)
        # retried at once with its handle; the attempt count is in show jobs
        w.send(GRAB_JOB)
        assert w.expect(JOB_ASSIGN) == handle + b"\x00resize\x00payload 7"
        assert c.admin(b"show jobs\n") == handle + b"\t1\t0\t1\n.\n"
        w.send(WORK_EXCEPTION, handle, b"Traceback: disk full")
        w.send(GRAB_JOB)
        assert w.expect(NO_JOB) == b""
        assert c.admin(b"dead status\n") == b"resize\t1\n.\n"
        row = c.admin(b"dead list resize\n").split(b"\t")
        assert row[:5] == [handle, b"resize", b"img-7", b"2", b"exception"]
        # the log says where it went (gearmand's "Dropped job" would send people looking)
        log = retrying.tmp / "server.log"
        moved = (
            f"Moved job to the dead set after max retry count: {handle.decode()} img-7 "
            "(function resize, last attempt: exception; "
            f"gearmill admin --dead-requeue {handle.decode()} runs it again)"
        )
        wait_until(lambda: moved in log.read_text(), f"{moved!r} in the server log")
        assert "Dropped job" not in log.read_text()

        h = handle.decode()
        out = cli("admin", "-p", port, "--dead-status", "--dead-show", h)
        assert out.returncode == 0, out.stderr
        assert "resize\t1\n" in out.stdout and "error\tTraceback: disk full\n" in out.stdout
        with AdminClient(retrying.address) as admin:
            dead = admin.dead_job(h)
            assert (dead.data, dead.error, dead.attempts) == (
                b"payload 7",
                "Traceback: disk full",
                2,
            )

        out = cli("admin", "-p", port, "--dead-requeue", "all")
        assert (out.returncode, out.stdout) == (0, "1\n")
        assert c.admin(b"dead status\n") == b".\n"
        w.send(GRAB_JOB)
        assert w.expect(JOB_ASSIGN) == handle + b"\x00resize\x00payload 7"  # same handle
        w.send(WORK_COMPLETE, handle, b"done")

        # into the dead set again (by a worker that leaves twice), then purged
        c.send(SUBMIT_JOB_BG, b"resize", b"", b"x")
        second = c.expect(JOB_CREATED)
    for _ in range(2):
        with retrying.conn() as w:
            w.send(CAN_DO, b"resize")
            w.send(GRAB_JOB)
            assert w.expect(JOB_ASSIGN).startswith(second)
    with AdminClient(retrying.address) as admin:
        wait_until(lambda: admin.dead_status() == {"resize": 1}, "a dead resize job")
        assert [d.reason for d in admin.dead_jobs()] == ["lost"]
    out = cli("admin", "-p", port, "--dead-purge", "function", "resize")
    assert (out.returncode, out.stdout) == (0, "1\n")
    out = cli("admin", "-p", port, "--dead-show", second.decode())
    assert (out.returncode, out.stderr) == (1, "Error: UNKNOWN_JOB\n")


def test_retry_rule_changed_live_with_gearmill_admin(retrying: Running) -> None:
    port = str(retrying.port)
    out = cli("admin", "-p", port, "--retry-set", "thumbs", "max_attempts=1", "retry_on=none")
    assert out.returncode == 0, out.stderr
    with AdminClient(retrying.address) as admin:
        assert admin.retry_rules()["thumbs"].startswith("max_attempts=1 backoff=0 retry_on=none")
        with pytest.raises(ServerError, match="backoff=-1: use a base in seconds"):
            admin.set_retry("thumbs", backoff=-1)
    with retrying.conn() as c, retrying.conn() as w:
        c.send(SUBMIT_JOB_BG, b"thumbs", b"", b"x")
        handle = c.expect(JOB_CREATED)
        w.send(CAN_DO, b"thumbs")
        w.send(GRAB_JOB)
        w.expect(JOB_ASSIGN)
        w.send(WORK_FAIL, handle)
        w.send(GRAB_JOB)
        assert w.expect(NO_JOB) == b""  # not retried any more
        assert c.admin(b"dead status\n") == b".\n"  # and not kept: dead_on_fail is off


@pytest.mark.interop
def test_real_gearman_worker_whose_command_fails_is_retried_then_dead(
    tmp_path: Path,
) -> None:
    gearman = shutil.which("gearman")
    assert gearman, "gearman-tools is not installed"
    srv = start_gearmill("--retry-on", "fail", "--retry-max-attempts", "3")
    runs = tmp_path / "runs"
    worker = subprocess.Popen(
        [
            gearman,
            "-p",
            str(srv.port),
            "-w",
            "-f",
            "flaky",
            "--",
            "sh",
            "-c",
            f"cat >> {runs}; echo >> {runs}; exit 1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with AdminClient(srv.address) as admin:
            wait_until(lambda: any(f.workers for f in admin.status()), "a worker")
            subprocess.run(
                [gearman, "-p", str(srv.port), "-b", "-f", "flaky", "job-1"], check=True, timeout=10
            )
            wait_until(lambda: admin.dead_status() == {"flaky": 1}, "a dead flaky job")
            (dead,) = admin.dead_jobs()
            assert (dead.attempts, dead.reason) == (3, "fail")
            assert admin.dead_job(dead.handle).data == b"job-1"
        assert runs.read_text().split() == ["job-1"] * 3  # one run per attempt
    finally:
        worker.kill()
        worker.wait()
        srv.stop()


def test_schedules_from_the_cli_and_the_config_file(tmp_path: Path) -> None:
    conf = tmp_path / "gearmill.toml"
    conf.write_text(
        "[retry]\nmax_attempts = 4\nbackoff = 0.5\n"
        '[[retry.function]]\nname = "mail"\nretry_on = ["lost", "fail"]\n'
        '[[schedule]]\nname = "nightly"\ncron = "@daily"\nfunction = "report"\ndata = "all"\n'
    )
    srv = start_gearmill("--config", str(conf))
    try:
        port = str(srv.port)
        with AdminClient(srv.address) as admin:
            rules = admin.retry_rules()
            assert rules["*"].startswith("max_attempts=4 backoff=0.5 retry_on=lost,timeout,cant_do")
            assert rules["mail"].startswith("max_attempts=4 backoff=0.5 retry_on=lost,fail ")
        out = cli("schedule", "-p", port, "add", "tick", "cleanup", "*/10 * * * *", "--data", "tmp")
        assert out.returncode == 0, out.stderr
        assert cli("schedule", "-p", port, "pause", "nightly").returncode == 0
        listed = cli("schedule", "-p", port, "list").stdout.splitlines()
        assert [line.split("\t")[:4] for line in listed] == [
            ["nightly", "0 0 * * *", "report", "paused"],
            ["tick", "*/10 * * * *", "cleanup", "active"],
        ]
        bad = cli("schedule", "-p", port, "add", "x", "f", "61 * * * *")
        assert bad.returncode == 1
        assert bad.stderr.startswith("gearmill schedule: bad cron expression '61 * * * *'")
        assert len(bad.stderr.splitlines()) == 1
        assert cli("schedule", "-p", port, "remove", "tick").returncode == 0
        gone = cli("schedule", "-p", port, "remove", "tick")
        assert (gone.returncode, gone.stderr) == (1, "gearmill schedule: no schedule named tick\n")
    finally:
        srv.stop()


def test_a_bad_retry_setting_in_the_config_file_is_one_clear_line(tmp_path: Path) -> None:
    conf = tmp_path / "gearmill.toml"
    conf.write_text('[retry]\nretry_on = ["lost", "crash"]\n')
    out = cli("serve", "-p", "0", "--config", str(conf))
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"gearmill serve: {conf}: retry.retry_on = [...]: unknown ending 'crash'; "
        "use some of lost, timeout, cant_do, fail, exception or none"
    ]


def test_client_schedules_a_recurring_job(gearmill: Running) -> None:
    import asyncio

    from gearmill import JSON, AsyncClient, Client

    with Client(gearmill.address, codec=JSON) as client:
        client.schedule("digest", "mail", "0 7 * * 1-5", {"to": "ops"}, priority="low")
        with pytest.raises(ServerError, match="schedule digest exists"):
            client.schedule("digest", "mail", "@daily")
        with pytest.raises(ValueError, match="one admin line"):
            client.schedule("x", "mail", "@daily", "two\nlines", codec=None)

    async def more() -> None:
        async with AsyncClient(gearmill.address) as client:
            await client.schedule("hourly", "cleanup", "@hourly")
            await client.unschedule("digest")
            with pytest.raises(ServerError, match="bad cron expression"):
                await client.schedule("bad", "cleanup", "* * *")

    asyncio.run(more())
    with AdminClient(gearmill.address) as admin:
        assert [(s.name, s.cron, s.function, s.paused) for s in admin.schedules()] == [
            ("hourly", "0 * * * *", "cleanup", False)
        ]


def test_an_epoch_job_waiting_for_its_time_is_listed_by_show_jobs(gearmill: Running) -> None:
    with gearmill.conn() as c:
        c.send(36, b"later", b"", b"%d" % (int(time.time()) + 3600), b"x")  # SUBMIT_JOB_EPOCH
        handle = c.expect(JOB_CREATED)
        assert c.admin(b"show jobs\n") == handle + b"\t0\t0\t1\n.\n"
        assert c.admin(b"status\n") == b"later\t1\t0\t0\n.\n"


def test_dead_set_and_schedules_survive_a_restart_on_a_durable_store(tmp_path: Path) -> None:
    """With a store, the dead set and the schedules are kept there: a restart (even a
    SIGKILL once they were written) brings both back, payload and failure text included."""
    srv = start_gearmill(
        "--store",
        f"sqlite://{tmp_path}/queue.db",
        "--retry-on",
        "lost,timeout,cant_do,fail,exception",
        "--retry-max-attempts",
        "1",
    )
    try:
        with srv.conn() as c, srv.conn() as w:
            c.send(SUBMIT_JOB_BG, b"resize", b"img-9", b"payload\x009")
            handle = c.expect(JOB_CREATED)
            w.send(CAN_DO, b"resize")
            w.send(GRAB_JOB)
            assert w.expect(JOB_ASSIGN) == handle + b"\x00resize\x00payload\x009"
            w.send(WORK_EXCEPTION, handle, b"ValueError: bad image")
            assert c.admin(b"schedule add nightly report 30 2 * * * all\n").startswith(b"OK")
            wait_until(lambda: c.admin(b"dead status\n") == b"resize\t1\n.\n", "a dead resize job")
        # both are written in the background: crash once the file has them
        db = sqlite3.connect(f"file:{tmp_path}/queue.db?mode=ro", uri=True)
        count = "SELECT (SELECT count(*) FROM gearmill_dead_letters),"
        count += " (SELECT count(*) FROM gearmill_schedules)"
        wait_until(
            lambda: db.execute(count).fetchone() == (1, 1), "the dead job and its rule in the file"
        )
        db.close()
        srv.proc.kill()
        srv.proc.wait(10)
        srv.restart()
        with AdminClient(srv.address) as admin:
            (name,) = [s.name for s in admin.schedules()]
            assert name == "nightly"
            with srv.conn() as c:
                assert c.admin(b"dead status\n") == b"resize\t1\n.\n"
                new_handle = c.admin(b"dead list resize\n").split(b"\t")[0]
            dead = admin.dead_job(new_handle.decode())
            assert (dead.data, dead.error) == (b"payload\x009", "ValueError: bad image")
            # the dead job is not queued again by the restart: no worker gets it
            with srv.conn() as w:
                w.send(CAN_DO, b"resize")
                w.send(GRAB_JOB)
                assert w.expect(NO_JOB) == b""
    finally:
        srv.stop()
