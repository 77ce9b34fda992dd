"""Hostile and faulty peers against a real gearmill server on loopback (issue 13).

Memory is the server process's resident size (/proc/<pid>/status), read over
several rounds; frozen peers are real processes stopped with SIGSTOP.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from conftest import REQ, Conn, Running, start_gearmill, wait_until

CAN_DO = 1
PRE_SLEEP = 4
NOOP = 6
SUBMIT_JOB = 7
JOB_CREATED = 8
GRAB_JOB = 9
JOB_ASSIGN = 11
WORK_COMPLETE = 13
GET_STATUS = 15
ECHO_REQ = 16
ECHO_RES = 17
SUBMIT_JOB_BG = 18
ERROR = 19
STATUS_RES = 20

MiB = 1 << 20


def packet(ptype: int, *args: bytes) -> bytes:
    payload = b"\x00".join(args)
    return struct.pack(">4sII", REQ, ptype, len(payload)) + payload


def rss(pid: int) -> int:
    """The process's resident set size in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def status_row(admin: Conn, name: bytes) -> list[bytes] | None:
    for line in admin.admin(b"status\n").splitlines():
        cols = line.split(b"\t")
        if cols[0] == name:
            return cols
    return None


@pytest.fixture
def srv() -> Iterator[Running]:
    s = start_gearmill()
    yield s
    s.stop()


# ------------------------------------------------------------ item 2: abandoned jobs


def test_abandoned_foreground_jobs_give_their_memory_back(srv: Running) -> None:
    """Clients submit foreground jobs nobody can run and leave: the jobs vanish from
    ``status`` and so does their payload, with no worker of the function ever asking."""
    pid = srv.proc.pid
    payload = os.urandom(8192)
    batch = b"".join(packet(SUBMIT_JOB, b"nobody", b"", payload) for _ in range(1500))
    sizes = []
    with srv.conn() as admin:
        for _ in range(6):
            with srv.conn() as client:
                client.raw(batch)
                for _ in range(1500):
                    client.expect(JOB_CREATED)
            wait_until(
                lambda: (status_row(admin, b"nobody") or [b"", b"1"])[1] == b"0",
                "the abandoned jobs leave status",
            )
            sizes.append(rss(pid))
    # each round left 12 MiB of payloads behind before the fix
    growth = sizes[-1] - sizes[1]
    assert growth < 6 * MiB, [s // 1024 for s in sizes]
    # the function is still served
    with srv.conn() as worker, srv.conn() as client:
        worker.send(CAN_DO, b"nobody")
        client.send(SUBMIT_JOB, b"nobody", b"", b"x")
        handle = client.expect(JOB_CREATED)
        worker.send(GRAB_JOB)
        assert worker.expect(JOB_ASSIGN) == handle + b"\x00nobody\x00x"


# ------------------------------------------------------------ item 4: frozen sleepers

SLEEPER = r"""
import socket, struct, sys, time
def pkt(t, *a):
    p = b"\0".join(a)
    return struct.pack(">4sII", b"\0REQ", t, len(p)) + p
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(pkt(1, b"frozen") + pkt(4) + pkt(16, b"ready"))
got = b""
while b"ready" not in got:
    got += s.recv(100)
print("ready", flush=True)
time.sleep(120)
"""


def test_frozen_sleepers_delay_a_job_once_at_most(srv: Running) -> None:
    """Ten sleeping workers whose processes are frozen (SIGSTOP) and one live one:
    the live worker is woken for a new job within two seconds, and at once for the
    next, however many froze."""
    procs = []
    try:
        for _ in range(10):
            proc = subprocess.Popen(
                [sys.executable, "-c", SLEEPER, str(srv.port)],
                stdout=subprocess.PIPE,
            )
            procs.append(proc)
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline() == b"ready\n"
            proc.send_signal(signal.SIGSTOP)
        with srv.conn() as live, srv.conn() as client:
            live.send(CAN_DO, b"frozen")
            live.send(PRE_SLEEP)
            live.send(ECHO_REQ, b"asleep")
            assert live.expect(ECHO_RES) == b"asleep"
            for _ in range(2):
                start = time.monotonic()
                client.send(SUBMIT_JOB_BG, b"frozen", b"", b"job")
                handle = client.expect(JOB_CREATED)
                live.sock.settimeout(15)
                assert live.expect(NOOP) == b""
                woken = time.monotonic() - start
                live.send(GRAB_JOB)
                assert live.expect(JOB_ASSIGN).startswith(handle + b"\x00")
                live.send(WORK_COMPLETE, handle, b"")
                live.send(PRE_SLEEP)
                live.send(ECHO_REQ, b"asleep")
                assert live.expect(ECHO_RES) == b"asleep"
                # before the fix: one NOOP_ANSWER_TIME (1 s) per frozen sleeper
                assert woken < 2.0, woken
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


# ------------------------------------------------------------ item 3: slow readers


def test_a_peer_that_does_not_read_its_echoes_is_read_no_more(srv: Running) -> None:
    """256 MiB of ECHO_REQ from a peer that does not read: the server stops
    reading from it instead of buffering the answers; once it reads, every echo
    arrives."""
    pid = srv.proc.pid
    before = rss(pid)
    chunk = os.urandom(MiB)
    count = 256
    sock = socket.create_connection(("127.0.0.1", srv.port))
    sent = [0]

    def send() -> None:
        try:
            for _ in range(count):
                sock.sendall(packet(ECHO_REQ, chunk))
                sent[0] += 1
        except OSError:
            pass

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        # the sender stalls: the server read no more from it
        last = -1
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(0.5)
            if sent[0] == last:
                break
            last = sent[0]
        assert sent[0] < count, "the server read 256 MiB it could not answer"
        peak = rss(pid)
        assert peak - before < 64 * MiB, (before // MiB, peak // MiB)
        # other peers are served meanwhile
        with srv.conn() as other:
            other.send(ECHO_REQ, b"hello")
            assert other.expect(ECHO_RES) == b"hello"
        # a reader gets every echo, byte for byte
        sock.settimeout(30)
        reader = Conn.__new__(Conn)
        reader.sock = sock
        reader.buf = b""
        for _ in range(count):
            assert reader.expect(ECHO_RES) == chunk
    finally:
        sock.close()
        sender.join(30)


def test_a_status_loop_that_is_never_read_does_not_stall_others(srv: Running) -> None:
    """One peer sends ``status`` in a loop without reading, with 2,000 functions
    known; another client's round trips stay under a second."""
    with srv.conn() as worker:
        worker.raw(b"".join(packet(CAN_DO, b"f%d" % i) for i in range(2000)))
        worker.send(ECHO_REQ, b"done")
        worker.sock.settimeout(30)
        assert worker.expect(ECHO_RES) == b"done"
        hog = socket.create_connection(("127.0.0.1", srv.port))
        hog.setblocking(False)
        stop = threading.Event()

        def flood() -> None:
            lines = b"status\n" * 4096
            while not stop.is_set():
                try:
                    hog.send(lines)
                except BlockingIOError:
                    time.sleep(0.001)
                except OSError:
                    return

        flooder = threading.Thread(target=flood, daemon=True)
        flooder.start()
        try:
            worst = 0.0
            with srv.conn() as client:
                client.sock.settimeout(30)
                deadline = time.monotonic() + 4
                while time.monotonic() < deadline:
                    start = time.monotonic()
                    client.send(GET_STATUS, b"H:none")
                    client.expect(STATUS_RES)
                    worst = max(worst, time.monotonic() - start)
            assert worst < 1.0, worst
        finally:
            stop.set()
            flooder.join(10)
            hog.close()


# ------------------------------------------------------------ limits


def test_limits_refuse_with_an_error_and_log_once() -> None:
    srv = start_gearmill(
        "--max-function-name",
        "8",
        "--max-functions-per-worker",
        "2",
        "--max-payload",
        "1000",
        "--verbose",
        "WARNING",
    )
    try:
        for _ in range(2):
            with srv.conn() as big:
                big.send(SUBMIT_JOB_BG, b"f", b"", b"x" * 1000)
                assert big.closed_by_server()
        with srv.conn() as c:
            c.send(SUBMIT_JOB_BG, b"a-long-name", b"", b"x")
            assert c.expect(ERROR) == b"ARGUMENT_TOO_LARGE\x00Function name too large"
            c.send(SUBMIT_JOB_BG, b"short", b"", b"x")
            c.expect(JOB_CREATED)
            for name in (b"f1", b"f2", b"f3", b"f4"):
                c.send(CAN_DO, name)
            assert c.expect(ERROR).startswith(b"ARGUMENT_TOO_LARGE\x00Too many functions")
            assert c.expect(ERROR).startswith(b"ARGUMENT_TOO_LARGE\x00Too many functions")
            rows = c.admin(b"workers\n")
            assert b"f2 f1" in rows and b"f3" not in rows
    finally:
        srv.stop()
    log = (srv.tmp / "server.log").read_text()
    assert log.count("--max-functions-per-worker") == 1, log
    assert log.count("--max-function-name") == 1, log
    assert log.count("--max-payload") == 1, log


def test_connection_limits_and_idle_timeout() -> None:
    srv = start_gearmill("--max-connections-per-address", "3", "--idle-timeout", "1")
    try:
        kept = [srv.conn() for _ in range(2)]  # the third: the test's own admin below
        with srv.conn() as admin:
            assert admin.admin(b"version\n").startswith(b"OK")
            extra = srv.conn()
            assert extra.closed_by_server(5)
            extra.close()
            # the two silent connections are closed after a second; the admin one spoke
            for c in kept:
                assert c.closed_by_server(5)
                c.close()
            assert admin.admin(b"version\n").startswith(b"OK")
            # their places are free again
            with srv.conn() as again:
                assert again.admin(b"version\n").startswith(b"OK")
    finally:
        srv.stop()


# ------------------------------------------------------------ item 5: function flood

GET_STATUS_UNIQUE = 41
STATUS_RES_UNIQUE = 42


def register(srv: Running, names: list[bytes]) -> Conn:
    worker = srv.conn()
    worker.raw(b"".join(packet(CAN_DO, name) for name in names))
    worker.send(ECHO_REQ, b"done")
    worker.sock.settimeout(60)
    assert worker.expect(ECHO_RES) == b"done"
    return worker


def test_a_function_costs_a_few_hundred_bytes_and_stays_listed(srv: Running) -> None:
    """Workers register 20,000 new functions each, three times over, and leave:
    the functions stay listed (until ``drop function``) at well under 1 KB each."""
    pid = srv.proc.pid
    sizes = [rss(pid)]
    for round in range(3):
        names = [b"r%d-function-%05d" % (round, i) for i in range(20000)]
        register(srv, names).close()
        with srv.conn() as admin:
            wait_until(lambda: b"function" not in admin.admin(b"workers\n"), "the worker left")
        sizes.append(rss(pid))
    per_function = (sizes[-1] - sizes[1]) / 40000
    # 2.9 KB before (three empty deques each)
    assert per_function < 1000, [s // 1024 for s in sizes]
    with srv.conn() as admin:
        listing = admin.admin(b"status\n")
        assert listing.count(b"\n") == 60000 + 1
        assert admin.admin(b"drop function r0-function-00000\n").startswith(b"OK")
        assert b"r0-function-00000\t" not in admin.admin(b"status\n")


def test_a_worker_with_20k_functions_does_not_stall_others(srv: Running) -> None:
    """A worker with 20,000 functions pipelines GRAB_JOBs and a client pipelines
    GET_STATUS_UNIQUE while another client does round trips: none waits a
    second, and the flooding worker still gets the one job there is."""
    worker = register(srv, [b"fn-%05d" % i for i in range(20000)])
    try:
        with srv.conn() as client, srv.conn() as prober, srv.conn() as other:
            client.send(SUBMIT_JOB_BG, b"fn-00000", b"u1", b"payload")
            handle = client.expect(JOB_CREATED)
            worker.raw(packet(GRAB_JOB) + packet(GET_STATUS_UNIQUE, b"u1"))
            assert worker.expect(JOB_ASSIGN) == handle + b"\x00fn-00000\x00payload"
            assert worker.expect(STATUS_RES_UNIQUE).startswith(b"u1\x001\x001")
            grabs = packet(GRAB_JOB) * 200000
            statuses = packet(GET_STATUS_UNIQUE, b"u1") * 100000
            floods = [
                threading.Thread(target=worker.raw, args=(grabs,), daemon=True),
                threading.Thread(target=prober.raw, args=(statuses,), daemon=True),
            ]
            for t in floods:
                t.start()
            worst = 0.0
            for _ in range(20):
                start = time.monotonic()
                other.send(GET_STATUS, b"H:none")
                other.expect(STATUS_RES)
                worst = max(worst, time.monotonic() - start)
                time.sleep(0.05)
            assert worst < 1.0, worst
            worker.sock.settimeout(60)
            for _ in range(200000):
                assert worker.recv()[0] == 10  # NO_JOB
            for t in floods:
                t.join(60)
    finally:
        worker.close()


# ------------------------------------------------------------ vanishing and frozen processes

HOLDER = r"""
import socket, struct, sys, time
def pkt(t, *a):
    p = b"\0".join(a)
    return struct.pack(">4sII", b"\0REQ", t, len(p)) + p
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(pkt(1, b"vanish") + pkt(9))
got = b""
while b"vanish" not in got:
    got += s.recv(1000)
print("holding", flush=True)
time.sleep(120)
"""

FLOODER = r"""
import socket, struct, sys
payload = b"e" * (1 << 20)
p = struct.pack(">4sII", b"\0REQ", 16, len(payload)) + payload
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
for i in range(512):
    s.sendall(p)
"""


def test_a_killed_worker_s_job_goes_to_another(srv: Running) -> None:
    """A worker process holding a job is killed (SIGKILL): the job runs on another."""
    with srv.conn() as client:
        client.send(SUBMIT_JOB, b"vanish", b"", b"work")
        handle = client.expect(JOB_CREATED)
        cmd = [sys.executable, "-c", HOLDER, str(srv.port)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == b"holding\n"
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            proc.kill()
            proc.wait()
        with srv.conn() as worker:
            worker.send(CAN_DO, b"vanish")
            worker.sock.settimeout(10)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                worker.send(GRAB_JOB)
                ptype, payload = worker.recv()
                if ptype == JOB_ASSIGN:
                    break
                time.sleep(0.05)
            assert ptype == JOB_ASSIGN and payload == handle + b"\x00vanish\x00work"
            worker.send(WORK_COMPLETE, handle, b"done")
        assert client.expect(WORK_COMPLETE) == handle + b"\x00done"


def test_a_frozen_reader_process_is_read_no_more(srv: Running) -> None:
    """A process that sends 512 MiB of ECHO_REQ and never reads, then is frozen
    (SIGSTOP): the server holds a bounded amount for it and serves the others."""
    pid = srv.proc.pid
    before = rss(pid)
    proc = subprocess.Popen([sys.executable, "-c", FLOODER, str(srv.port)])
    try:
        # wait until the server stops reading from it (its RSS stops growing)
        sizes = [rss(pid)]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            time.sleep(0.5)
            sizes.append(rss(pid))
            if len(sizes) > 4 and max(sizes[-4:]) - min(sizes[-4:]) < MiB:
                break
        proc.send_signal(signal.SIGSTOP)
        assert rss(pid) - before < 64 * MiB, [s // MiB for s in sizes]
        assert proc.poll() is None, "the flooder finished: the server read all 512 MiB"
        with srv.conn() as other:
            other.send(ECHO_REQ, b"still here")
            assert other.expect(ECHO_RES) == b"still here"
    finally:
        proc.kill()
        proc.wait()


def test_results_for_a_client_that_does_not_read_wait_in_the_queue(srv: Running) -> None:
    """A client pipelines 20,000 foreground jobs and reads nothing while a worker
    returns 8 KiB per job: once 32 MiB is owed to the client its other jobs wait
    in the queue (the worker hears NO_JOB) instead of as results in memory; when
    the client reads, the worker is woken and every result arrives."""
    pid = srv.proc.pid
    count = 20000
    result = b"r" * 8192
    client = socket.create_connection(("127.0.0.1", srv.port), timeout=60)
    client.sendall(b"".join(packet(SUBMIT_JOB, b"slowres", b"", b"%d" % i) for i in range(count)))
    with srv.conn() as admin:
        wait_until(
            lambda: (status_row(admin, b"slowres") or [b"", b"0"])[1] == b"%d" % count,
            "the jobs are queued",
            timeout=30,
        )
    before = rss(pid)
    worker = srv.conn()
    worker.sock.settimeout(30)
    worker.send(CAN_DO, b"slowres")
    done = 0

    def work_until_no_job() -> None:
        nonlocal done
        while done < count:
            worker.send(GRAB_JOB)
            ptype, payload = worker.recv()
            if ptype == 10:  # NO_JOB
                return
            assert ptype == JOB_ASSIGN
            worker.send(WORK_COMPLETE, payload.split(b"\x00", 1)[0], result)
            done += 1

    try:
        work_until_no_job()
        assert done < count, "every result was buffered for a client that does not read"
        assert rss(pid) - before < 64 * MiB, (before // MiB, rss(pid) // MiB)
        # the client reads: every JOB_CREATED and WORK_COMPLETE arrives
        got = {JOB_CREATED: 0, WORK_COMPLETE: 0}

        def read() -> None:
            buf = bytearray()
            while got[WORK_COMPLETE] < count:
                chunk = client.recv(1 << 20)
                if not chunk:
                    return
                buf += chunk
                pos = 0
                while len(buf) - pos >= 12:
                    _, ptype, size = struct.unpack_from(">4sII", buf, pos)
                    if len(buf) - pos < 12 + size:
                        break
                    got[ptype] += 1
                    pos += 12 + size
                del buf[:pos]

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        deadline = time.monotonic() + 120
        while done < count and time.monotonic() < deadline:
            worker.send(PRE_SLEEP)
            assert worker.expect(NOOP) == b""
            work_until_no_job()
        reader.join(60)
        assert done == count
        assert got == {JOB_CREATED: count, WORK_COMPLETE: count}
    finally:
        worker.close()
        client.close()
