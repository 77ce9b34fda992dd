"""10k SUBMIT_JOB_EPOCH jobs due in the same second: how long until workers have them all.

    python bench/scheduled.py [--jobs 10000] [--workers 4] [--python PY]

Starts ``gearmill serve`` on a free loopback port, submits the jobs (pipelined,
background, all due at one whole second a few seconds ahead), connects sleeping
workers (raw sockets, GRAB_JOB / WORK_COMPLETE, PRE_SLEEP when idle) and prints
when the first and the last job were handed out, relative to the due second.
A wall-clock measurement on a shared machine: quote it, do not test on it.
"""

from __future__ import annotations

import argparse
import re
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REQ, RES = b"\x00REQ", b"\x00RES"
CAN_DO, PRE_SLEEP, NOOP, GRAB_JOB, NO_JOB, JOB_ASSIGN = 1, 4, 6, 9, 10, 11
WORK_COMPLETE, JOB_CREATED, SUBMIT_JOB_EPOCH = 13, 8, 36


def packet(ptype: int, *args: bytes) -> bytes:
    payload = b"\x00".join(args)
    return struct.pack(">4sII", REQ, ptype, len(payload)) + payload


class Conn:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def recv(self) -> tuple[int, bytes]:
        while len(self.buf) < 12:
            self.buf += self.sock.recv(1 << 20)
        _, ptype, size = struct.unpack(">4sII", self.buf[:12])
        while len(self.buf) < 12 + size:
            self.buf += self.sock.recv(1 << 20)
        payload, self.buf = self.buf[12 : 12 + size], self.buf[12 + size :]
        return ptype, payload


def work(port: int, until: int, times: list[float], lock: threading.Lock) -> None:
    w = Conn(port)
    w.sock.sendall(packet(CAN_DO, b"due"))
    while True:
        w.sock.sendall(packet(GRAB_JOB))
        ptype, payload = w.recv()
        while ptype == NOOP:
            ptype, payload = w.recv()
        if ptype == JOB_ASSIGN:
            now = time.time()
            with lock:
                times.append(now)
                done = len(times) >= until
            w.sock.sendall(packet(WORK_COMPLETE, payload.split(b"\x00", 1)[0], b""))
            if done:
                return
            continue
        with lock:
            if len(times) >= until:
                return
        w.sock.sendall(packet(PRE_SLEEP))
        while w.recv()[0] != NOOP:
            pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--python", default=sys.executable)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "server.log"
        server = subprocess.Popen(
            [args.python, "-m", "gearmill.cli.main", "serve", "-p", "0", "--log-file", str(log)]
        )
        try:
            deadline = time.monotonic() + 30
            port = 0
            while not port and time.monotonic() < deadline:
                text = log.read_bytes() if log.exists() else b""
                found = re.search(rb"Listening on \S+:(\d+)", text)
                port = int(found.group(1)) if found else 0
                time.sleep(0.05)
            due = int(time.time()) + 4
            c = Conn(port)
            for start in range(0, args.jobs, 1000):  # in batches: replies are read as we go
                batch = range(start, min(start + 1000, args.jobs))
                c.sock.sendall(
                    b"".join(
                        packet(SUBMIT_JOB_EPOCH, b"due", b"u%d" % i, b"%d" % due, b"x")
                        for i in batch
                    )
                )
                for _ in batch:
                    assert c.recv()[0] == JOB_CREATED
            submitted = time.time()
            if submitted >= due:
                print("submitting took past the due second; use fewer --jobs", file=sys.stderr)
                return 1
            times: list[float] = []
            lock = threading.Lock()
            threads = [
                threading.Thread(target=work, args=(port, args.jobs, times, lock), daemon=True)
                for _ in range(args.workers)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            if len(times) < args.jobs:
                print(f"only {len(times)} of {args.jobs} jobs handed out in 60 s", file=sys.stderr)
                return 1
            print(
                f"{args.jobs} jobs due at one second, {args.workers} workers: first handed out "
                f"{min(times) - due:+.3f} s, last {max(times) - due:+.3f} s after the due second"
            )
            return 0
        finally:
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    sys.exit(main())
