"""A live gearmill server against a few thousand generated inputs (issue 13).

Each input goes in on its own connection (valid packets with bytes flipped
or cut, admin lines, noise); whatever comes back is read until the server
closes or goes quiet. Afterwards a normal client and worker still complete
jobs, and the server's memory is back near where it started.
"""

from __future__ import annotations

import random
import socket
import struct
import time
from collections.abc import Iterator

import pytest

from conftest import REQ, Running, start_gearmill
from gearmill.protocol.packets import ARGS, MAX_TYPE

CAN_DO = 1
SUBMIT_JOB = 7
JOB_CREATED = 8
GRAB_JOB = 9
JOB_ASSIGN = 11
WORK_COMPLETE = 13
INPUTS = 3000


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _packet(rng: random.Random) -> bytes:
    ptype = rng.randrange(0, MAX_TYPE + 4)
    argc, data = ARGS[ptype] if 0 < ptype <= MAX_TYPE else (rng.randrange(4), True)
    args = [rng.randbytes(rng.randrange(12)).replace(b"\x00", b"a") for _ in range(argc)]
    if data:
        args.append(rng.randbytes(rng.randrange(200)))
    payload = b"\x00".join(args)
    return struct.pack(">4sII", REQ, ptype, len(payload)) + payload


def _input(rng: random.Random) -> bytes:
    kind = rng.randrange(4)
    if kind == 0:
        return rng.randbytes(rng.randrange(1, 300))
    if kind == 1:
        words = [b"status", b"workers", b"version", b"maxqueue", b"getpid", b"cancel", b"x"]
        return b"".join(
            b" ".join(rng.choice(words) for _ in range(rng.randrange(1, 7))) + b"\n"
            for _ in range(rng.randrange(1, 4))
        )
    buf = bytearray(b"".join(_packet(rng) for _ in range(rng.randrange(1, 6))))
    for _ in range(rng.randrange(0, 4)):
        buf[rng.randrange(len(buf))] = rng.randrange(256)
    if kind == 3:
        struct.pack_into(">I", buf, 8, rng.randrange(1 << 32))
    return bytes(buf[: rng.randrange(1, len(buf) + 1)])


def _send(port: int, data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            s.settimeout(0.2)
            while s.recv(1 << 16):
                pass
        except (TimeoutError, ConnectionError):
            pass


def _jobs_still_run(srv: Running, n: int) -> None:
    with srv.conn() as worker, srv.conn() as client:
        worker.send(CAN_DO, b"after-fuzz")
        for i in range(n):
            client.send(SUBMIT_JOB, b"after-fuzz", b"", b"job %d" % i)
            handle = client.expect(JOB_CREATED)
            worker.send(GRAB_JOB)
            assert worker.expect(JOB_ASSIGN) == handle + b"\x00after-fuzz\x00job %d" % i
            worker.send(WORK_COMPLETE, handle, b"done")
            assert client.expect(WORK_COMPLETE) == handle + b"\x00done"


@pytest.fixture
def srv() -> Iterator[Running]:
    # no admin shutdown: a generated line must not stop the server under test
    s = start_gearmill("--admin-shutdown", "off", "--max-payload", "65536")
    yield s
    s.stop()


def test_live_server_survives_generated_inputs(srv: Running) -> None:
    rng = random.Random(13)
    _jobs_still_run(srv, 50)
    sizes = [_rss(srv.proc.pid)]
    for _ in range(3):
        for _ in range(INPUTS // 3):
            _send(srv.port, _input(rng))
        assert srv.proc.poll() is None, "the server died"
        _jobs_still_run(srv, 50)
        time.sleep(0.2)  # the last connections' close
        sizes.append(_rss(srv.proc.pid))
    assert sizes[-1] - sizes[0] < 8 << 20, [s // 1024 for s in sizes]
