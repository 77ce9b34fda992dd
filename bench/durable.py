#!/usr/bin/env python3
"""Durable background jobs: gearmill's stores beside gearmand's persistent queues.

    .venv/bin/python bench/durable.py                       # every store, 1 interleaved run
    .venv/bin/python bench/durable.py --stores sqlite,redis --repeat 3 -n 100000

Per store, both servers get the same fresh database (SQLite file, PostgreSQL or MariaDB
database, a Redis server of its own with appendonly yes and appendfsync always), and the
load generator (bench/loadgen/gmload.c, libgearman) submits 100-byte background jobs
(1 connection with 64 in flight, then 4 connections with 64 each), timed to the last
JOB_CREATED, then 4 workers drain and verify them (drain rate). The runs interleave
(gearmill, gearmand, gearmill, ...) so a noisy machine hits both alike; quote ratios.
gearmand is slow here: its submissions are capped at --cap seconds (the rate is over what
it did).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness import (
    Server,
    check_gearmand,
    ensure_loadgen,
    free_port,
    gearmand_command,
    gearmill_command,
    run_loadgen,
    say,
)
from store_commit import fresh

TARGETS = {  # jobs/s submitted, drained (the targets on a 2-core machine)
    "sqlite": (40_000, 20_000),
    "postgresql": (20_000, 10_000),
    "mysql": (15_000, None),
    "redis": (30_000, None),
}


@contextmanager
def fresh_url(kind: str, tmp: Path, fsync: str = "always") -> Iterator[str]:
    """A store URL of its own for one run (removed after); Redis with AOF ``fsync``
    (``off``: no AOF at all)."""
    if kind == "redis":
        # a Redis of its own, as tests/stores/storekit.py's PrivateRedis starts one: not
        # imported from there, since bench/ runs without pytest and the tests' conftest
        port = free_port()
        proc = subprocess.Popen(
            [
                shutil.which("redis-server") or "/usr/bin/redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(tmp),
                "--save",
                "",
                "--appendonly",
                "no" if fsync == "off" else "yes",
                "--appendfsync",
                "always" if fsync == "off" else fsync,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            import redis

            r = redis.Redis(port=port)
            deadline = time.monotonic() + 10
            while True:
                try:
                    r.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            r.close()
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.kill()
            proc.wait(10)
        return
    loop = asyncio.new_event_loop()
    cm = fresh(kind)
    url = loop.run_until_complete(cm.__aenter__())
    try:
        yield url
    finally:
        loop.run_until_complete(cm.__aexit__(None, None, None))
        loop.close()


def gearmand_flags(kind: str, url: str) -> str:
    from urllib.parse import urlsplit

    if kind == "sqlite":
        return f"-q libsqlite3 --libsqlite3-db={url[len('sqlite://') :]}"
    u = urlsplit(url)
    db = u.path.lstrip("/")
    if kind == "postgresql":
        return (
            f"-q Postgres '--libpq-conninfo=host={u.hostname} port={u.port or 5432} "
            f"dbname={db} user={u.username or 'root'}'"
        )
    if kind == "mysql":
        return (
            f"-q MySQL --mysql-host={u.hostname} --mysql-port={u.port or 3306} "
            f"--mysql-user={u.username or 'root'} --mysql-db={db}"
        )
    return f"-q redis --redis-server={u.hostname} --redis-port={u.port}"


def one_run(
    kind: str,
    server: str,
    conns: int,
    n: int,
    cap: float,
    python: str,
    batch: int = 64,
    baseline: str = "",
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"gmdurable-{kind}-") as d:
        tmp = Path(d)
        if kind == "sqlite":
            url_cm = contextmanager(lambda: (yield f"sqlite://{tmp}/queue.db"))()
        else:
            url_cm = fresh_url(kind, tmp)
        with url_cm as url:
            if server == "gearmill":
                command = gearmill_command(python, f"--store {url}")
            elif server == "before":
                command = gearmill_command(baseline, f"--store {url}")
            else:
                command = gearmand_command("--threads=1 " + gearmand_flags(kind, url))
            with Server(command, tmp / "server") as srv:
                srv.wait_ready()
                args = [
                    "bg",
                    "-n",
                    str(n),
                    "-c",
                    str(conns),
                    "-b",
                    str(batch),
                    "-w",
                    "4",
                    "-s",
                    "100",
                    "--cap",
                    str(cap),
                    "-t",
                    "300",
                ]
                result = run_loadgen(srv.port, args, 300)
                result.update(store=kind, server=server, conns=conns)
                return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stores", default="sqlite,postgresql,mysql,redis")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("-n", type=int, default=60_000, help="jobs per run (60000)")
    ap.add_argument("--cap", type=float, default=6.0, help="seconds of submitting at most (6)")
    ap.add_argument("--python", default=sys.executable, help="the Python gearmill runs under")
    ap.add_argument(
        "--baseline",
        metavar="PYTHON",
        default="",
        help="also an earlier build of gearmill (the Python it is installed in), interleaved "
        "as 'before': prints the ratio of this build to it",
    )
    ap.add_argument("--out", help="append each run's JSON to this file")
    ap.add_argument(
        "--lone",
        type=int,
        default=0,
        metavar="N",
        help="also N one-at-a-time submissions (1 connection, 1 in flight): latency to "
        "JOB_CREATED, p50 and p99, beside gearmand's",
    )
    a = ap.parse_args()
    check_gearmand()
    ensure_loadgen()
    servers = ("gearmill", "before", "gearmand") if a.baseline else ("gearmill", "gearmand")
    rows: list[dict[str, Any]] = []
    for rep in range(a.repeat):
        for kind in a.stores.split(","):
            for conns in (1, 4):
                for server in servers:
                    r = one_run(kind, server, conns, a.n, a.cap, a.python, baseline=a.baseline)
                    r["repeat"] = rep
                    rows.append(r)
                    say(
                        f"{kind:10} {server:8} c{conns}: submit {r.get('value', 0):9.0f}/s "
                        f"drain {r.get('drain_jobs_per_s', 0):9.0f}/s ok={r.get('ok')} "
                        f"{r.get('error', '')}"
                    )
                    if a.out:
                        with open(a.out, "a") as f:
                            f.write(json.dumps(r) + "\n")
    lone: list[dict[str, Any]] = []
    for rep in range(a.repeat if a.lone else 0):
        for kind in a.stores.split(","):
            for server in servers:
                r = one_run(kind, server, 1, a.lone, a.cap, a.python, batch=1, baseline=a.baseline)
                r["repeat"] = rep
                lone.append(r)
                say(
                    f"{kind:10} {server:8} lone: {r.get('value', 0):7.0f}/s "
                    f"p50 {r.get('p50_us', 0) / 1000:.2f} ms "
                    f"p99 {r.get('p99_us', 0) / 1000:.2f} ms "
                    f"ok={r.get('ok')} {r.get('error', '')}"
                )
                if a.out:
                    with open(a.out, "a") as f:
                        f.write(json.dumps(r) + "\n")
    if lone:
        print()
        print("| store | lone submit/s gearmill | gearmand | p99 ms gearmill | gearmand | added |")
        print("| --- | --- | --- | --- | --- | --- |")
        for kind in a.stores.split(","):
            got = {r["server"]: r for r in lone if r["store"] == kind}
            ours, theirs = got.get("gearmill", {}), got.get("gearmand", {})
            p99o, p99t = ours.get("p99_us", 0) / 1000, theirs.get("p99_us", 0) / 1000
            print(
                f"| {kind} | {ours.get('value', 0):.0f} | {theirs.get('value', 0):.0f} "
                f"| {p99o:.2f} | {p99t:.2f} | {p99o - p99t:+.2f} ms |"
            )
            if a.baseline:
                then = got.get("before", {})
                p99b = then.get("p99_us", 0) / 1000
                print(
                    f"| {kind} (before) | {then.get('value', 0):.0f} | "
                    f"{theirs.get('value', 0):.0f} | {p99b:.2f} | {p99t:.2f} "
                    f"| {p99b - p99t:+.2f} ms |"
                )
    print()
    print(
        "| store | conns | gearmill submit/s | gearmand submit/s | ratio | gearmill drain/s "
        "| gearmand drain/s | ratio | targets (submit, drain) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    failed = False
    for kind in a.stores.split(","):
        for conns in (1, 4):

            def med(server: str, key: str, kind: str = kind, conns: int = conns) -> float:
                vals = sorted(
                    float(r.get(key) or 0)
                    for r in rows
                    if r["store"] == kind and r["conns"] == conns and r["server"] == server
                )
                return vals[len(vals) // 2] if vals else 0.0

            ours, theirs = med("gearmill", "value"), med("gearmand", "value")
            od, td = med("gearmill", "drain_jobs_per_s"), med("gearmand", "drain_jobs_per_s")
            sub_t, drain_t = TARGETS[kind]
            met = "submit " + ("met" if ours >= sub_t else "NOT met")
            if drain_t:
                met += ", drain " + ("met" if od >= drain_t else "NOT met")
            print(
                f"| {kind} | {conns} | {ours:.0f} | {theirs:.0f} | {ours / max(theirs, 1):.1f}x "
                f"| {od:.0f} | {td:.0f} | {od / max(td, 1):.1f}x | {met} |"
            )
    if a.baseline:
        print()
        print("| store | conns | submit/s | before | ratio | drain/s | before | ratio |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for kind in a.stores.split(","):
            for conns in (1, 4):
                got = {
                    s: [
                        r for r in rows if (r["store"], r["conns"], r["server"]) == (kind, conns, s)
                    ]
                    for s in ("gearmill", "before")
                }
                cells = []
                for key in ("value", "drain_jobs_per_s"):
                    now, then = (
                        sorted(float(r.get(key) or 0) for r in got[s])
                        for s in ("gearmill", "before")
                    )
                    x, y = now[len(now) // 2], then[len(then) // 2]
                    cells.append(f"{x:.0f} | {y:.0f} | {x / max(y, 1):.2f}x")
                print(f"| {kind} | {conns} | " + " | ".join(cells) + " |")
    for r in rows + lone:
        if not r.get("ok"):
            failed = True
            print(f"FAILED: {r['store']} {r['server']} c{r['conns']}: {r.get('error')}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
