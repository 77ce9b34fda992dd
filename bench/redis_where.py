#!/usr/bin/env python3
"""Where the time of a durable Redis submission goes: one interleaved run of gearmill's
background submissions with the jobs in memory, and on Redis without an AOF and with
`appendfsync no`, `everysec` and `always`.

    .venv/bin/python bench/redis_where.py [-n 60000] [--repeat 1]

Per run: submit rate (1 connection with 64 in flight, and 4 connections), gearmill's
and redis-server's CPU time per job, Redis's group commits (EVALSHA calls), jobs per
group, microseconds of Redis CPU per commit (INFO commandstats) and its fdatasync calls
(perf, when it may count system calls). The jobs are not drained: the submissions alone
are measured. If `always` is far below `no` while CPU per job stays, fsync bounds it; if
`no` is close to `always`, CPU does. --drain: then 4 workers drain the jobs, and the CPU
per job is of both.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from durable import fresh_url
from harness import (
    Server,
    cpu_seconds,
    ensure_loadgen,
    gearmill_command,
    run_loadgen,
    say,
)

MODES = ("memory", "off", "no", "everysec", "always")


@contextlib.contextmanager
def count_fsyncs(pid: int) -> Iterator[dict[str, int]]:
    """fdatasync + fsync calls of a process while the block runs (-1: perf cannot count)."""
    out: dict[str, int] = {"fsyncs": -1}
    perf = shutil.which("perf")
    if perf is None:
        yield out
        return
    proc = subprocess.Popen(
        [
            perf,
            "stat",
            "-x,",
            "-e",
            "syscalls:sys_enter_fdatasync,syscalls:sys_enter_fsync",
            "-p",
            str(pid),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield out
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(10)
        counts = [int(m.group(1)) for m in re.finditer(r"^(\d+),", err, re.M)]
        if counts:
            out["fsyncs"] = sum(counts)


def one(mode: str, conns: int, n: int, python: str, drain: bool = False) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="gmwhere-") as d:
        tmp = Path(d)
        cm: contextlib.AbstractContextManager[str] = (
            contextlib.nullcontext("memory") if mode == "memory" else fresh_url("redis", tmp, mode)
        )
        with cm as url:
            r: Any = None
            rpid = 0
            if url != "memory":
                import redis

                r = redis.Redis.from_url(url)
                rpid = int(r.info("server")["process_id"])
                r.config_resetstat()
            with Server(gearmill_command(python, f"--store {url}"), tmp / "server") as srv:
                srv.wait_ready()
                if r is not None:
                    r.config_resetstat()
                g0, r0 = srv.cpu(), cpu_seconds(rpid) if rpid else 0.0
                args = ["bg", "-n", str(n), "-c", str(conns), "-b", "64", "-s", "100"]
                with count_fsyncs(rpid) if rpid else contextlib.nullcontext({}) as fs:
                    extra = ["-w", "4"] if drain else ["--no-drain"]
                    res = run_loadgen(srv.port, [*args, *extra, "-t", "300"], 300)
                g1, r1 = srv.cpu(), cpu_seconds(rpid) if rpid else 0.0
                jobs = int(res.get("accepted", 0)) or 1
                row: dict[str, Any] = {
                    "mode": mode,
                    "conns": conns,
                    "rate": float(res.get("value", 0)),
                    "ok": res.get("ok"),
                    "gm_us_job": (g1 - g0) / jobs * 1e6,
                    "redis_us_job": (r1 - r0) / jobs * 1e6,
                    "elapsed": float(res.get("elapsed_s", 0)),
                }
                if r is not None:
                    stats = r.info("commandstats")
                    ev = stats.get("cmdstat_evalsha", {})
                    calls = int(ev.get("calls", 0)) or 1
                    row["commits"] = calls
                    row["jobs_per_commit"] = jobs / calls
                    row["us_per_commit"] = float(ev.get("usec_per_call", 0))
                    row["fsyncs"] = fs.get("fsyncs", -1)
                    row["fsyncs_per_s"] = row["fsyncs"] / max(row["elapsed"], 1e-9)
                    r.close()
                return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=60_000)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--conns", default="1,4")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument(
        "--drain", action="store_true", help="then 4 workers drain the jobs (CPU per job: both)"
    )
    a = ap.parse_args()
    ensure_loadgen()
    rows = []
    for _ in range(a.repeat):
        for conns in [int(c) for c in a.conns.split(",")]:
            for mode in a.modes.split(","):
                row = one(mode, conns, a.n, a.python, a.drain)
                rows.append(row)
                say(
                    " ".join(
                        f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in row.items()
                    )
                )
    print()
    print(
        "| mode | conns | submit/s | gearmill us/job | redis us/job | jobs/commit "
        "| redis us/commit | fsyncs/s |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(
            f"| {row['mode']} | {row['conns']} | {row['rate']:.0f} | {row['gm_us_job']:.1f} "
            f"| {row['redis_us_job']:.1f} | {row.get('jobs_per_commit', 0):.1f} "
            f"| {row.get('us_per_commit', 0):.0f} | {row.get('fsyncs_per_s', 0):.0f} |"
        )
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
