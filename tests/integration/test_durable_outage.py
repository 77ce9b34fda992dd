"""A store that goes away while the server runs: background submissions get
ERROR QUEUE_ERROR (never a JOB_CREATED, never a hang), foreground jobs go on, the
gearmill client moves its background jobs to its next server, and the server
recovers by itself once the store is back."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import gearmill as gm
from conftest import Running, start_gearmill, wait_until
from gearmill.protocol.packets import PacketType

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "stores"))
from storekit import PrivatePostgres, PrivateRedis
from test_durable import GEARMAN, drain, status, submit, wait_queued

AOF = ("--appendonly", "yes", "--appendfsync", "always")


def test_redis_outage_refuses_background_jobs_keeps_foreground_and_recovers(
    tmp_path: Path,
) -> None:
    redis = PrivateRedis(tmp_path, *AOF)
    srv = start_gearmill("--store", redis.url)
    other = start_gearmill("--store", "memory")
    worker = None
    try:
        assert submit(srv.port, "out", "before") == ""
        redis.kill()

        # a background submission is refused with gearmand's code, in bounded time
        with srv.conn() as c:
            c.send(PacketType.SUBMIT_JOB_BG, b"out", b"", b"during")
            kind, payload = c.recv()
            assert kind == PacketType.ERROR and payload.startswith(b"QUEUE_ERROR\0")
            c.send(PacketType.SUBMIT_JOB_BG, b"out", b"u2", b"during2")
            kind, payload = c.recv()
            assert kind == PacketType.ERROR and payload.startswith(b"QUEUE_ERROR\0")
        assert "QUEUE_ERROR" in submit(srv.port, "out", "during3")

        # foreground work goes on
        worker = subprocess.Popen(
            [GEARMAN, "-p", str(srv.port), "-w", "-f", "fg", "-c", "1", "--", "tr", "a-z", "A-Z"],
            stdout=subprocess.DEVNULL,
        )
        r = subprocess.run(
            [GEARMAN, "-p", str(srv.port), "-f", "fg", "hello"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert r.stdout.strip() == "HELLO"

        # the gearmill client takes its background jobs to the next server
        async def spread() -> None:
            async with gm.AsyncClient([f"127.0.0.1:{srv.port}", f"127.0.0.1:{other.port}"]) as cl:
                for i in range(4):
                    await cl.submit("moved", f"m{i}", background=True)

        asyncio.run(spread())
        assert status(other)["moved"][0] == 4
        assert status(srv).get("moved", [0])[0] == 0

        # the store comes back: the server recovers by itself
        redis.start()
        deadline = time.monotonic() + 30
        while submit(srv.port, "out", "after") != "":
            assert time.monotonic() < deadline, "the server did not recover"
            time.sleep(0.1)
        assert status(srv)["out"][0] == 2
        # the outage's log lines name the store once each, in words, before "; the fix"
        named = [x for x in (srv.tmp / "server.log").read_text().splitlines() if redis.url in x]
        assert any("failed" in x for x in named), named
        assert [x for x in named if x.count(redis.url) != 1 or ".;" in x] == []
        # and what it had committed before the outage is still stored: kill, restart
        srv.proc.kill()
        srv.proc.wait(10)
        srv.restart()
        deadline = time.monotonic() + 10
        while status(srv).get("out", [0])[0] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sorted(drain(srv.port, "out", 2, tmp_path / "out")) == ["after", "before"]
    finally:
        if worker is not None:
            worker.kill()
            worker.wait(10)
        srv.stop()
        other.stop()
        redis.close()
        shutil.rmtree(tmp_path, ignore_errors=True)


def refused_while_frozen(
    srv: Running, func: bytes, unique: bytes, data: bytes, epoch: bool = False
) -> None:
    """A background submission while the store is frozen gets QUEUE_ERROR (once the
    commit times out, 10 s), not a hang. ``epoch``: an epoch job due in a second, long
    before its commit gives up."""
    with srv.conn() as c:
        c.sock.settimeout(30)
        if epoch:
            when = b"%d" % (time.time() + 1)
            c.send(PacketType.SUBMIT_JOB_EPOCH, func, unique, when, data)
        else:
            c.send(PacketType.SUBMIT_JOB_BG, func, unique, data)
        kind, payload = c.recv()
        assert kind == PacketType.ERROR and payload.startswith(b"QUEUE_ERROR\0"), payload


def accepted_again(srv: Running, func: str, data: str) -> None:
    """Submit ``data`` until the server, its store thawed, accepts it by itself."""
    wait_until(lambda: submit(srv.port, func, data) == "", "the server recovered", 30, 0.1)


def test_a_store_that_stops_answering_refuses_the_waiting_job_then_recovers(
    tmp_path: Path,
) -> None:
    """Redis frozen (SIGSTOP) mid-commit: the waiting submission gets QUEUE_ERROR once the
    commit times out (10 s), not a hang; thawed, the server accepts again by itself."""
    redis = PrivateRedis(tmp_path, *AOF)
    assert redis.proc is not None
    pid = redis.proc.pid
    srv = start_gearmill("--store", redis.url)
    try:
        assert submit(srv.port, "frozen", "before") == ""
        os.kill(pid, signal.SIGSTOP)
        refused_while_frozen(srv, b"frozen", b"u1", b"during")
        os.kill(pid, signal.SIGCONT)
        accepted_again(srv, "frozen", "after")
        # the refused job never runs (its row, if the frozen commit wrote it, is removed)
        assert status(srv)["frozen"][0] == 2
        got = drain(srv.port, "frozen", 2, tmp_path / "out")
        assert sorted(got) == ["after", "before"]
    finally:
        os.kill(pid, signal.SIGCONT)
        srv.stop()
        redis.close()


class HeldWorker:
    """A Redis of the test's own (pid: to freeze it), a server on it, and a real C
    `gearman -w` on "held" appending each job's data to ``ran``, which has run
    "before;" (registered, asleep again)."""

    def __init__(self, tmp_path: Path) -> None:
        self.redis = PrivateRedis(tmp_path, *AOF)
        assert self.redis.proc is not None
        self.pid = self.redis.proc.pid
        self.srv = start_gearmill("--store", self.redis.url)
        self.ran = tmp_path / "ran"
        run = ["sh", "-c", f"cat >> {self.ran}"]
        self.worker = subprocess.Popen(
            [GEARMAN, "-p", str(self.srv.port), "-w", "-f", "held", "--", *run],
            stdout=subprocess.DEVNULL,
        )

    def wait_ran(self, text: str) -> None:
        wait_until(
            lambda: self.ran.exists() and text in self.ran.read_text(),
            f"the worker ran {text}",
            30,
        )

    def __enter__(self) -> HeldWorker:
        try:
            assert submit(self.srv.port, "held", "before;") == ""
            self.wait_ran("before;")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        os.kill(self.pid, signal.SIGCONT)
        self.worker.kill()
        self.worker.wait(10)
        self.srv.stop()
        self.redis.close()


@pytest.mark.parametrize("epoch", [False, True], ids=["background", "epoch-due-meanwhile"])
def test_a_refused_job_never_reaches_the_worker_that_was_waiting_for_it(
    tmp_path: Path, epoch: bool
) -> None:
    """A worker sleeps on the function while the store freezes mid-commit: the job its
    client is told QUEUE_ERROR about must not run (gearmand writes its queue before
    any worker can have the job), nor an epoch job that falls due while its commit
    hangs; once the store is back, new jobs reach it as before."""
    with HeldWorker(tmp_path) as h:
        os.kill(h.pid, signal.SIGSTOP)
        refused_while_frozen(h.srv, b"held", b"", b"refused;", epoch)
        os.kill(h.pid, signal.SIGCONT)
        accepted_again(h.srv, "held", "after;")
        h.wait_ran("after;")
        assert "refused;" not in h.ran.read_text()


def test_a_graceful_stop_waits_for_a_commit_in_flight_and_runs_its_job(
    tmp_path: Path,
) -> None:
    """SIGUSR1 while a background job's commit is in flight (the store frozen), a worker
    waiting: the stop waits for the commit; the client gets its JOB_CREATED, the worker
    runs the job, then the server exits. Stopping at once would drop the JOB_CREATED of
    a stored job (a client with another server submits it there too: it runs twice)."""
    with HeldWorker(tmp_path) as h:
        srv = h.srv
        log = srv.tmp / "server.log"
        os.kill(h.pid, signal.SIGSTOP)
        with srv.conn() as c:
            c.sock.settimeout(30)
            c.send(PacketType.SUBMIT_JOB_BG, b"held", b"", b"during;")
            wait_until(lambda: status(srv)["held"][0] == 1, "the job is counted", 30)
            srv.proc.send_signal(signal.SIGUSR1)
            wait_until(
                lambda: "graceful shutdown" in log.read_text(), "the graceful stop began", 30
            )
            time.sleep(0.5)  # a server that did not wait would be closing by now
            os.kill(h.pid, signal.SIGCONT)
            kind, _ = c.recv()
            assert kind == PacketType.JOB_CREATED
        assert srv.proc.wait(30) == 0
        assert "during;" in h.ran.read_text()


def test_postgresql_killed_under_load_refuses_then_recovers_losing_no_acknowledged_job(
    tmp_path: Path,
) -> None:
    """gearman -b submits without pause while the test's own PostgreSQL is SIGKILLed
    (every process of it) and started again: submissions in between get QUEUE_ERROR,
    the server accepts again by itself, and every acknowledged job is there to run."""
    pg = PrivatePostgres()
    srv = start_gearmill("--store", pg.url)
    acked: list[str] = []
    errors: list[str] = []
    stop = threading.Event()

    def submitter() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            err = submit(srv.port, "load", f"p{i}")
            if err:
                errors.append(err)
            else:
                acked.append(f"p{i}")

    thread = threading.Thread(target=submitter)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while len(acked) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        pg.kill()
        deadline = time.monotonic() + 30
        while not errors and time.monotonic() < deadline:
            time.sleep(0.05)
        down_acked = len(acked)
        pg.start()
        deadline = time.monotonic() + 60
        while len(acked) < down_acked + 20 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(60)
    try:
        assert errors and all("QUEUE_ERROR" in e for e in errors), errors[:3]
        assert len(acked) >= down_acked + 20, "the server did not recover"
        assert srv.proc.poll() is None
        deadline = time.monotonic() + 10
        while status(srv).get("load", [0])[0] < len(acked) and time.monotonic() < deadline:
            time.sleep(0.05)
        # every acknowledged job is stored: it comes back after a SIGKILL of the server
        srv.proc.kill()
        srv.proc.wait(10)
        srv.restart()
        deadline = time.monotonic() + 10
        while status(srv).get("load", [0])[0] < len(acked) and time.monotonic() < deadline:
            time.sleep(0.05)
        got = drain(srv.port, "load", len(acked), tmp_path / "out")
        # none lost, and none of the refused ones runs (also when the commit the
        # failure cut off had reached the store: its jobs are removed on recovery)
        assert sorted(got) == sorted(acked)
        assert status(srv)["load"][0] == 0
    finally:
        srv.stop()
        pg.close()


# one attempt, then the dead set; requeued by the operator, a job the server itself submits
DYING = ("--retry-on", "lost,timeout,cant_do,fail,exception", "--retry-max-attempts", "1")


def dead_job(srv: Running, func: bytes, unique: bytes, data: bytes) -> bytes:
    """A background job whose one attempt ends in WORK_EXCEPTION: in the dead set now,
    its remove from the store committed (a later submission's JOB_CREATED waits for
    it). Its handle."""
    with srv.conn() as c, srv.conn() as w:
        c.send(PacketType.SUBMIT_JOB_BG, func, unique, data)
        handle = c.expect(PacketType.JOB_CREATED)
        w.send(PacketType.CAN_DO, func)
        w.send(PacketType.GRAB_JOB)
        assert w.expect(PacketType.JOB_ASSIGN) == b"\0".join((handle, func, data))
        w.send(PacketType.WORK_EXCEPTION, handle, b"boom")
        listed = b"dead list " + func + b"\n"
        wait_until(lambda: handle + b"\t" in c.admin(listed), "the job in the dead set")
    assert submit(srv.port, "other", "committed") == ""
    return handle


def log_lines(srv: Running, level: str, handle: bytes, words: str) -> list[str]:
    return [
        line
        for line in (srv.tmp / "server.log").read_text().splitlines()
        if line.lstrip().startswith(level)
        and f"job {handle.decode()} of " in line
        and words in line
    ]


def locked(db: Path) -> sqlite3.Connection:
    """Another process holds the SQLite store's write lock: the server's commits fail
    (database is locked) until it lets go."""
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("BEGIN EXCLUSIVE")
    return con


def stored(db: Path, unique: str) -> int:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = con.execute(
            "SELECT count(*) FROM gearmill_jobs WHERE unique_key = ?", (unique.encode(),)
        ).fetchone()
        return int(row[0])
    finally:
        con.close()


def dead_letters(db: Path) -> int:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(con.execute("SELECT count(*) FROM gearmill_dead_letters").fetchone()[0])
    finally:
        con.close()


def test_requeued_dead_jobs_the_store_cannot_take_stay_queued_and_are_stored_once_it_can(
    tmp_path: Path,
) -> None:
    """The store refuses commits (its write lock held elsewhere) when the operator requeues
    a dead job, and is known to be down when he requeues another: nobody waits for these
    jobs' JOB_CREATED, so they are not dropped as a client's submission is refused. They
    stay queued in memory (a WARNING names each), the store gets them once it can, and a
    server killed then brings them back from the store to a worker. Their letters, which
    the store could not remove either, are removed once it can: they are not in the dead
    set again after the restart (a second requeue would run them twice)."""
    db = tmp_path / "queue.db"
    srv = start_gearmill("--store", f"sqlite://{db}", *DYING)
    try:
        first = dead_job(srv, b"resize", b"img-1", b"payload-1")
        second = dead_job(srv, b"resize", b"img-3", b"payload-3")
        lock = locked(db)
        with srv.conn() as c:
            assert c.admin(b"dead requeue " + first + b"\n") == b"OK 1\n"
        wait_until(
            lambda: log_lines(srv, "WARNING", first, "kept in memory only"),
            "the WARNING line of the job whose commit failed",
            30,
        )
        assert log_lines(srv, "WARNING", first, "commit failed")
        with srv.conn() as c:
            assert c.admin(b"dead requeue " + second + b"\n") == b"OK 1\n"
        assert log_lines(srv, "WARNING", second, "the store is down")
        assert status(srv)["resize"][0] == 2  # queued, not cancelled
        lock.rollback()
        lock.close()
        wait_until(
            lambda: stored(db, "img-1") == stored(db, "img-3") == 1, "the jobs in the store", 30
        )
        wait_until(lambda: dead_letters(db) == 0, "the letters gone from the store", 30)
        srv.proc.kill()
        srv.proc.wait(10)
        srv.restart()
        wait_queued(srv, "resize", 2)
        with srv.conn() as c:
            assert c.admin(b"dead list\n") == b".\n"
        got = drain(srv.port, "resize", 2, tmp_path / "out")
        assert sorted(got) == ["payload-1", "payload-3"]
    finally:
        srv.stop()


def test_a_dead_letter_the_store_refuses_is_written_once_it_can(tmp_path: Path) -> None:
    """A job runs out of attempts while the store refuses writes: its letter is in the
    dead set at once, an ERROR says the store has not got it yet, and the store gets it
    once it can: after a restart it is in the dead set still."""
    db = tmp_path / "queue.db"
    srv = start_gearmill("--store", f"sqlite://{db}", *DYING)
    try:
        with srv.conn() as c, srv.conn() as w:
            c.send(PacketType.SUBMIT_JOB_BG, b"resize", b"img-9", b"payload-9")
            handle = c.expect(PacketType.JOB_CREATED)
            lock = locked(db)
            w.send(PacketType.CAN_DO, b"resize")
            w.send(PacketType.GRAB_JOB)
            assert w.expect(PacketType.JOB_ASSIGN).startswith(handle + b"\0")
            w.send(PacketType.WORK_EXCEPTION, handle, b"boom")
            wait_until(
                lambda: handle + b"\t" in c.admin(b"dead list resize\n"), "the job in the dead set"
            )
        log = srv.tmp / "server.log"
        wait_until(
            lambda: f"Dead job {handle.decode()} not written to the store" in log.read_text(),
            "the ERROR line",
            30,
        )
        assert dead_letters(db) == 0
        lock.rollback()
        lock.close()
        wait_until(lambda: dead_letters(db) == 1, "the letter in the store", 30)
        srv.stop()
        srv.restart()
        with srv.conn() as c:
            listed = c.admin(b"dead list resize\n")
        assert b"\tresize\t" in listed and b"img-9" in listed, listed
    finally:
        srv.stop()


def test_a_requeued_dead_job_the_store_never_took_is_reported_lost_at_stop(
    tmp_path: Path,
) -> None:
    """The same while the store refuses commits, then the server stops before it can
    write the job: it is lost with the stop, and an ERROR line names it."""
    db = tmp_path / "queue.db"
    srv = start_gearmill("--store", f"sqlite://{db}", *DYING)
    lock = None
    try:
        handle = dead_job(srv, b"resize", b"img-2", b"payload-2")
        lock = locked(db)
        with srv.conn() as c:
            assert c.admin(b"dead requeue all\n") == b"OK 1\n"
        wait_until(
            lambda: log_lines(srv, "WARNING", handle, "kept in memory only"),
            "the WARNING line",
            30,
        )
        srv.stop()
        lost = log_lines(srv, "ERROR", handle, "lost with the stop")
        assert len(lost) == 1, lost
    finally:
        if lock is not None:
            lock.close()
        srv.stop()
