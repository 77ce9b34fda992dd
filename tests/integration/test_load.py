"""Bounded load on loopback (issue 13): 10,000 connections, and a million
queued jobs, every one counted, while the others are still served in turn."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from conftest import REQ, Running, start_gearmill

CAN_DO = 1
SUBMIT_JOB = 7
JOB_CREATED = 8
GRAB_JOB = 9
NO_JOB = 10
JOB_ASSIGN = 11
WORK_COMPLETE = 13
ECHO_REQ = 16
ECHO_RES = 17
SUBMIT_JOB_BG = 18
HEADER = struct.Struct(">4sII")
MILLION = 1_000_000


def packet(ptype: int, *args: bytes) -> bytes:
    payload = b"\x00".join(args)
    return HEADER.pack(REQ, ptype, len(payload)) + payload


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class Reader:
    """Reads packets off a socket in bulk: (type, payload) per packet."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.pos = 0

    def packets(self, limit: int) -> list[tuple[int, bytes]]:
        """At least one and at most ``limit`` packets."""
        out: list[tuple[int, bytes]] = []
        while not out:
            buf = self.buf
            pos = self.pos
            while len(out) < limit and len(buf) - pos >= 12:
                _, ptype, size = HEADER.unpack_from(buf, pos)
                if len(buf) - pos < 12 + size:
                    break
                out.append((ptype, bytes(buf[pos + 12 : pos + 12 + size])))
                pos += 12 + size
            del buf[:pos]
            self.pos = 0
            if not out:
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    raise ConnectionError("closed by server")
                buf += chunk
        return out


@pytest.fixture
def srv() -> Iterator[Running]:
    # a listen backlog for 10,000 connections made at once (gearmand's 32 makes
    # the kernel drop and retry SYNs: seconds per thousand)
    s = start_gearmill("-b", "4096")
    yield s
    s.stop()


def test_ten_thousand_connections_from_one_address(srv: Running) -> None:
    before = rss(srv.proc.pid)
    conns = [socket.create_connection(("127.0.0.1", srv.port), timeout=30) for _ in range(10000)]
    try:
        for c in conns:
            c.sendall(packet(ECHO_REQ, b"here"))
        for c in conns:
            reply = c.recv(64)
            assert reply == HEADER.pack(b"\x00RES", ECHO_RES, 4) + b"here", reply
    finally:
        for c in conns:
            c.close()
    with srv.conn() as admin:
        deadline = time.monotonic() + 30
        while admin.admin(b"workers\n").count(b"\n") > 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert admin.admin(b"workers\n").count(b"\n") == 2
    assert rss(srv.proc.pid) - before < 48 << 20


def test_a_million_queued_jobs_counted_while_others_get_their_turn(srv: Running) -> None:
    """One client pipelines a million background jobs; meanwhile another
    client's foreground jobs of another function finish within a second each.
    Every job is created once and drained once."""
    flood = socket.create_connection(("127.0.0.1", srv.port), timeout=60)
    created = [0]

    def send() -> None:
        step = 50000
        for start in range(0, MILLION, step):
            flood.sendall(
                b"".join(
                    packet(SUBMIT_JOB_BG, b"flood", b"", b"%d" % i)
                    for i in range(start, start + step)
                )
            )

    def read() -> None:
        reader = Reader(flood)
        while created[0] < MILLION:
            for ptype, _ in reader.packets(MILLION):
                assert ptype == JOB_CREATED
                created[0] += 1

    threads = [threading.Thread(target=f, daemon=True) for f in (send, read)]
    with srv.conn() as worker, srv.conn() as client:
        worker.send(CAN_DO, b"other")
        for t in threads:
            t.start()
        worst = 0.0
        rounds = 0
        while created[0] < MILLION and rounds < 10000:
            rounds += 1
            start = time.monotonic()
            client.send(SUBMIT_JOB, b"other", b"", b"x")
            handle = client.expect(JOB_CREATED)
            worker.send(GRAB_JOB)
            worker.expect(JOB_ASSIGN)
            worker.send(WORK_COMPLETE, handle, b"y")
            client.expect(WORK_COMPLETE)
            worst = max(worst, time.monotonic() - start)
        for t in threads:
            t.join(120)
    flood.close()
    assert created[0] == MILLION
    assert rounds > 1, "the flood was over before anyone else was served"
    assert worst < 1.0, (worst, rounds)

    with srv.conn() as admin:
        row = next(r for r in admin.admin(b"status\n").split(b"\n") if r.startswith(b"flood\t"))
        assert row.split(b"\t")[1] == b"%d" % MILLION

    # drain: every payload (its sequence number) exactly once
    seen = bytearray(MILLION)
    worker_sock = socket.create_connection(("127.0.0.1", srv.port), timeout=60)
    worker_sock.sendall(packet(CAN_DO, b"flood"))
    reader = Reader(worker_sock)
    drained = 0
    batch = 20000
    while drained < MILLION:
        worker_sock.sendall(packet(GRAB_JOB) * batch)
        got = 0
        done = []
        while got < batch:
            for ptype, payload in reader.packets(batch - got):
                got += 1
                if ptype == NO_JOB:
                    continue
                assert ptype == JOB_ASSIGN
                handle, _, data = payload.split(b"\x00", 2)
                n = int(data)
                assert not seen[n], f"job {n} assigned twice"
                seen[n] = 1
                drained += 1
                done.append(packet(WORK_COMPLETE, handle, b""))
        worker_sock.sendall(b"".join(done))
    worker_sock.close()
    assert drained == MILLION and all(seen)
