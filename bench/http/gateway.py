"""Small foreground jobs one at a time: the HTTP gateway next to the binary protocol.

    .venv/bin/python bench/http/gateway.py [-n 3000]

Starts ``gearmill serve --http 127.0.0.1:0``, one echo worker (raw binary
protocol, in a thread), then times N sequential jobs submitted by a binary
client (SUBMIT_JOB, wait for WORK_COMPLETE) and N by HTTP POST on one
keep-alive connection, interleaved in 5 rounds; prints the median jobs/s of each.
"""

from __future__ import annotations

import argparse
import http.client
import re
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REQ = b"\x00REQ"
CAN_DO, PRE_SLEEP, NOOP, GRAB_JOB, NO_JOB, JOB_CREATED = 1, 4, 6, 9, 10, 8
JOB_ASSIGN, WORK_COMPLETE, SUBMIT_JOB = 11, 13, 7


def send(sock: socket.socket, ptype: int, *args: bytes) -> None:
    data = b"\0".join(args)
    sock.sendall(struct.pack(">4sII", REQ, ptype, len(data)) + data)


def recv(sock: socket.socket, buf: bytearray) -> tuple[int, list[bytes]]:
    while len(buf) < 12 or len(buf) < 12 + struct.unpack(">I", buf[8:12])[0]:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    ptype, size = struct.unpack(">II", buf[4:12])
    payload = bytes(buf[12 : 12 + size])
    del buf[: 12 + size]
    return ptype, payload.split(b"\0")


def worker(port: int) -> None:
    try:
        _work(port)
    except OSError:  # the server stopped
        pass


def _work(port: int) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = bytearray()
    send(sock, CAN_DO, b"echo")
    while True:
        send(sock, GRAB_JOB)
        ptype, args = recv(sock, buf)
        if ptype == NO_JOB:
            send(sock, PRE_SLEEP)
            while recv(sock, buf)[0] != NOOP:
                pass
        elif ptype == JOB_ASSIGN:
            send(sock, WORK_COMPLETE, args[0], args[2])


def binary(port: int, n: int) -> float:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = bytearray()
    start = time.perf_counter()
    for _ in range(n):
        send(sock, SUBMIT_JOB, b"echo", b"", b"hello")
        while recv(sock, buf)[0] != WORK_COMPLETE:
            pass
    elapsed = time.perf_counter() - start
    sock.close()
    return n / elapsed


def gateway(http_port: int, n: int) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", http_port)
    start = time.perf_counter()
    for _ in range(n):
        # a fresh unique id per job: gearmand's default "-" coalesces equal bodies
        conn.request("POST", "/echo", b"hello", {"X-Gearman-Unique": ""})
        r = conn.getresponse()
        assert r.read() == b"hello"
    elapsed = time.perf_counter() - start
    conn.close()
    return n / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=3000)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "serve.log"
        cmd = [sys.executable, "-m", "gearmill.cli.main", "serve", "-p", "0"]
        server = subprocess.Popen(
            [*cmd, "--http", "127.0.0.1:0", "-l", str(log)], stderr=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + 30
            while not re.search(rb"HTTP on", log.read_bytes() if log.exists() else b""):
                if time.monotonic() > deadline:
                    raise SystemExit("the server did not start")
                time.sleep(0.05)
            text = log.read_text()
            port = int(re.search(r"Listening on \S+:(\d+)", text).group(1))  # type: ignore[union-attr]
            http_port = int(re.search(r"HTTP on http://\S+:(\d+)/", text).group(1))  # type: ignore[union-attr]
            threading.Thread(target=worker, args=(port,), daemon=True).start()
            rates: dict[str, list[float]] = {"binary": [], "http": []}
            for _ in range(5):
                rates["binary"].append(binary(port, a.n))
                rates["http"].append(gateway(http_port, a.n))
            for name, values in rates.items():
                print(f"{name}: {statistics.median(values):,.0f} jobs/s (median of 5)")
        finally:
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    main()
