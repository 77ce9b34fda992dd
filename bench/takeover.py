#!/usr/bin/env python3
"""Several servers on one PostgreSQL store: drain scaling, and how soon a dead server's
jobs run elsewhere.

    .venv/bin/python bench/takeover.py                  # 100k jobs, 1 then 3 servers
    .venv/bin/python bench/takeover.py -n 30000 --lease 3 --takeover-jobs 5000

Drain: N gearmill servers share one fresh PostgreSQL database; one load generator per
server (bench/loadgen/gmload.c, `drain` mode) queues its share of the jobs (100-byte
background jobs, stored before their JOB_CREATED), then times 4 workers draining them
(every delete goes to the shared store). Reported: the jobs over the longest drain, for
1 and for 3 servers, and their ratio (the scaling factor).

Takeover: three servers with --lease L; K jobs are queued on the first, which has no
worker; a worker (gearmill's, in this process) sleeps on the other two. The first is
SIGKILLed; reported: the time from the kill to the first of its jobs running on a
survivor, and to the last. Expect about the lease plus a heartbeat (a third of it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from harness import Server, ensure_loadgen, gearmill_command, loadgen_argv, parse_result, say
from store_commit import fresh

LIMIT = 600.0


def with_db(fn: Any, *args: Any) -> Any:
    """Run fn(url, *args) with a fresh PostgreSQL database, removed after."""
    loop = asyncio.new_event_loop()
    cm = fresh("postgresql")
    url = loop.run_until_complete(cm.__aenter__())
    try:
        return fn(url, *args)
    finally:
        loop.run_until_complete(cm.__aexit__(None, None, None))
        loop.close()


def drain(url: str, servers: int, jobs: int, tmp: Path, python: str) -> dict[str, float]:
    share = jobs // servers
    with ExitStack() as stack:
        running = [
            stack.enter_context(
                Server(gearmill_command(python, f"--store {url}"), tmp / f"d{servers}-{i}")
            )
            for i in range(servers)
        ]
        for s in running:
            s.wait_ready()
        args = ["drain", "-n", str(share), "-w", "4", "-s", "100", "-t", str(LIMIT)]
        gens = [
            subprocess.Popen(loadgen_argv(s.port, args), stdout=subprocess.PIPE, text=True)
            for s in running
        ]
        results = []
        for g in gens:
            out, _ = g.communicate(timeout=LIMIT + 30)
            r = parse_result(out, "takeover drain")
            if not r.get("ok"):
                raise RuntimeError(f"load generator failed: {r.get('error')}")
            results.append(r)
    longest = max(float(r["elapsed_s"]) for r in results)
    return {
        "jobs": share * servers,
        "longest_s": longest,
        "jobs_per_s": share * servers / longest,
        "sum_of_rates": sum(float(r["value"]) for r in results),
    }


def takeover(url: str, lease: float, jobs: int, tmp: Path, python: str) -> dict[str, float]:
    import gearmill as gm

    extra = f"--store {url} --lease {lease}"
    with ExitStack() as stack:
        running = [
            stack.enter_context(
                Server(gearmill_command(python, extra + f" --node-id bench{i}"), tmp / f"t{i}")
            )
            for i in range(3)
        ]
        for s in running:
            s.wait_ready()
        with gm.Client(f"127.0.0.1:{running[0].port}", codec=None) as client:
            for at in range(0, jobs, 5000):
                batch = range(at, min(at + 5000, jobs))
                client.submit_many(
                    [gm.JobRequest("bench.takeover", b"%d" % i, background=True) for i in batch]
                )
        done: list[float] = []
        lock = threading.Lock()

        def work(job: Any) -> bytes:
            with lock:
                done.append(time.monotonic())
            return b""

        worker = gm.Worker([f"127.0.0.1:{s.port}" for s in running[1:]], concurrency=8)
        worker.register("bench.takeover", work)
        thread = threading.Thread(target=worker.work, kwargs={"handle_signals": False})
        thread.start()
        try:
            time.sleep(1.0)  # the worker connected and asleep
            os.killpg(running[0].proc.pid, signal.SIGKILL)
            killed = time.monotonic()
            deadline = killed + lease * 3 + 120
            while len(done) < jobs and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            worker.stop()
            thread.join(30)
        if len(done) < jobs:
            raise RuntimeError(f"only {len(done)} of {jobs} jobs ran after the kill")
        return {
            "lease_s": lease,
            "jobs": jobs,
            "first_s": min(done) - killed,
            "last_s": max(done) - killed,
        }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=100_000, help="jobs drained per run (100000)")
    ap.add_argument("--lease", type=float, default=15.0, help="the takeover run's lease (15)")
    ap.add_argument("--takeover-jobs", type=int, default=10_000, help="jobs taken over (10000)")
    ap.add_argument("--python", default=sys.executable, help="the Python gearmill runs under")
    a = ap.parse_args()
    ensure_loadgen()
    with tempfile.TemporaryDirectory(prefix="gmtakeover-") as d:
        tmp = Path(d)
        rows = {}
        for n in (1, 3):
            rows[n] = with_db(drain, n, a.n, tmp, a.python)
            say(f"drain, {n} server(s): {rows[n]}")
        t = with_db(takeover, a.lease, a.takeover_jobs, tmp, a.python)
        say(f"takeover: {t}")
    print()
    print("| servers on one PostgreSQL | jobs | drain jobs/s | longest drain |")
    print("|---:|---:|---:|---:|")
    for n, r in rows.items():
        print(f"| {n} | {r['jobs']:,} | {r['jobs_per_s']:,.0f} | {r['longest_s']:.1f} s |")
    print(f"\nscaling factor (3 vs 1): {rows[3]['jobs_per_s'] / rows[1]['jobs_per_s']:.2f}")
    print(
        f"takeover (lease {t['lease_s']:g} s, {t['jobs']:,} jobs): first job ran "
        f"{t['first_s']:.1f} s after the kill, the last {t['last_s']:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
