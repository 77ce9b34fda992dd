#!/usr/bin/env python3
"""Restart with a million stored jobs: how soon a waiting worker gets the first, how soon
every one is counted (runnable: queued in memory or paged in as the queue drains), and
the server's memory, with the default --memory-jobs budget beside no budget (all loaded).

    .venv/bin/python bench/restart.py                        # SQLite, 1M jobs
    .venv/bin/python bench/restart.py --stores sqlite,postgresql -n 1000000 --drain 5

The store is filled directly (100-byte jobs, 20k a commit), then `gearmill serve` starts
on it while a worker is already trying to connect; the time is from the server's start.
The worker then drains for --drain seconds (jobs/s with one raw-socket worker that
answers each job at once: the paging rate, not a worker's speed). The machine may be busy:
quote the figures beside each other, not alone.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from harness import free_port, say
from store_commit import fresh

from gearmill.server.store import StoredJob, open_store

FUNC = b"restart"
CAN_DO, PRE_SLEEP, NOOP, GRAB_JOB, NO_JOB, JOB_ASSIGN, WORK_COMPLETE = 1, 4, 6, 9, 10, 11, 13


def packet(kind: int, *args: bytes) -> bytes:
    body = b"\0".join(args)
    return b"\0REQ" + struct.pack(">II", kind, len(body)) + body


class Conn:
    def __init__(self, port: int, deadline: float) -> None:
        while True:
            try:
                self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.005)
        self.buf = b""

    def read(self) -> tuple[int, bytes]:
        while True:
            if len(self.buf) >= 12:
                _, kind, size = struct.unpack(">4sII", self.buf[:12])
                if len(self.buf) >= 12 + size:
                    body, self.buf = self.buf[12 : 12 + size], self.buf[12 + size :]
                    return kind, body
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("server closed")
            self.buf += chunk

    def admin(self, line: bytes) -> bytes:
        self.sock.sendall(line)
        while not (self.buf == b".\n" or self.buf.endswith(b"\n.\n")):
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("server closed")
            self.buf += chunk
        out, self.buf = self.buf, b""
        return out


def worker(
    port: int, t0: float, drain: float, out: dict[str, float], counted: threading.Event
) -> None:
    """Waits (PRE_SLEEP) for the first job, then, once every job is counted, takes jobs
    for ``drain`` seconds."""
    c = Conn(port, t0 + 60)
    c.sock.sendall(packet(CAN_DO, FUNC))
    done = 0
    stop = None
    c.sock.sendall(packet(GRAB_JOB))
    while True:
        kind, body = c.read()
        if kind == NO_JOB:
            c.sock.sendall(packet(PRE_SLEEP))
            while c.read()[0] != NOOP:
                pass
            c.sock.sendall(packet(GRAB_JOB))
            continue
        if kind != JOB_ASSIGN:
            continue
        if stop is None:
            out["first"] = time.monotonic() - t0
            counted.wait(300)
            stop = time.monotonic() + drain
        done += 1
        if time.monotonic() >= stop:
            c.sock.sendall(packet(WORK_COMPLETE, body.split(b"\0", 1)[0], b""))
            out["drained"] = done
            out["drain_s"] = drain
            return
        # the answer and the next GRAB_JOB in one write (no Nagle wait between them)
        c.sock.sendall(packet(WORK_COMPLETE, body.split(b"\0", 1)[0], b"") + packet(GRAB_JOB))
        continue


def vm(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


async def fill(url: str, n: int) -> float:
    store = open_store(url)
    await store.open()
    started = time.monotonic()
    try:
        group = 20_000
        for first in range(0, n, group):
            await store.commit(
                [
                    StoredJob(FUNC, b"j%d" % i, (b"%d " % i).ljust(100, b"x"))
                    for i in range(first, min(n, first + group))
                ],
                [],
            )
    finally:
        await store.close()
    return time.monotonic() - started


def one(url: str, n: int, budget: str, drain: float, python: str) -> dict[str, float]:
    port = free_port()
    out: dict[str, float] = {}
    log = Path(tempfile.mkdtemp(prefix="gmrestart-")) / "server.log"
    t0 = time.monotonic()
    argv = [python, "-m", "gearmill.cli.main", "serve", "-p", str(port), "--log-file", str(log)]
    proc = subprocess.Popen(
        [*argv, "--store", url, "--memory-jobs", budget],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        counted = threading.Event()
        w = threading.Thread(target=worker, args=(port, t0, drain, out, counted), daemon=True)
        w.start()
        admin = Conn(port, t0 + 60)
        while True:
            text = admin.admin(b"status\n")
            row = [r.split(b"\t") for r in text.splitlines() if r.startswith(FUNC + b"\t")]
            # queued + running: the worker may be holding one
            if row and int(row[0][1]) >= n - 1:
                out["all"] = time.monotonic() - t0
                break
            if time.monotonic() - t0 > 280:
                out["all"] = float("inf")
                break
            time.sleep(0.02)
        # replay's own line: how long loading into memory took (up to the budget)
        for _ in range(3000):
            found = re.search(r"queued again from .* in ([0-9.]+) s", log.read_text())
            if found:
                out["replay"] = float(found.group(1))
                break
            time.sleep(0.1)
        out["rss_after_replay"] = vm(proc.pid, "VmRSS")
        counted.set()
        w.join(drain + 120)
        out["rss_peak"] = vm(proc.pid, "VmHWM")
    finally:
        proc.terminate()
        proc.wait(30)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=1_000_000)
    ap.add_argument("--stores", default="sqlite")
    ap.add_argument("--budgets", default="200000,0", help="--memory-jobs values to compare")
    ap.add_argument("--drain", type=float, default=5.0)
    ap.add_argument("--python", default=sys.executable)
    a = ap.parse_args()

    async def run_kind(kind: str) -> None:
        async with fresh(kind) as url:
            took = await fill(url, a.n)
            say(f"{kind}: {a.n} jobs stored in {took:.1f} s")
            for budget in a.budgets.split(","):
                r = await asyncio.to_thread(one, url, a.n, budget, a.drain, a.python)
                rate = r.get("drained", 0) / r.get("drain_s", 1)
                say(
                    f"{kind} --memory-jobs {budget}: first job to a waiting worker "
                    f"{r.get('first', float('nan')):.2f} s, all {a.n} counted "
                    f"{r['all']:.1f} s, replay (loading up to the budget) "
                    f"{r.get('replay', float('nan')):.1f} s, "
                    f"RSS after replay {r['rss_after_replay'] / 2**20:.0f} MiB, "
                    f"peak {r['rss_peak'] / 2**20:.0f} MiB, drained {rate:,.0f} jobs/s "
                    f"(1 worker, {a.drain:.0f} s)"
                )
                # the drained jobs are gone: put the same number back for the next budget
                if r.get("drained"):
                    store = open_store(url)
                    await store.open()
                    have = await store.count()
                    await store.close()
                    if have < a.n:
                        await fill_more(url, a.n - have, a.n)

    for kind in a.stores.split(","):
        asyncio.run(run_kind(kind))
    return 0


async def fill_more(url: str, k: int, start: int) -> None:
    store = open_store(url)
    await store.open()
    try:
        await store.commit(
            [StoredJob(FUNC, b"k%d" % (start + i), b"x" * 100) for i in range(k)], []
        )
    finally:
        await store.close()


if __name__ == "__main__":
    tempfile.tempdir = None
    sys.exit(main())
