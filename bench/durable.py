#!/usr/bin/env python3
"""Durable background jobs: gearmill's stores beside gearmand's persistent queues.

    .venv/bin/python bench/durable.py                       # every store, 1 interleaved run
    .venv/bin/python bench/durable.py --stores sqlite,redis --repeat 3 -n 100000
    .venv/bin/python bench/durable.py --lone-only --lone 1000 --repeat 3 \
        --stores memory,postgresql --baseline /path/to/other/build/.venv/bin/python

Per store, both servers get the same fresh database (SQLite file, PostgreSQL or MariaDB
database, a Redis server of its own with appendonly yes and appendfsync always), and the
load generator (bench/loadgen/gmload.c, libgearman) submits 100-byte background jobs
(1 connection with 64 in flight, then 4 connections with 64 each), timed to the last
JOB_CREATED, then 4 workers drain and verify them (drain rate). The runs interleave
(gearmill, gearmand, gearmill, ...) so a noisy machine hits both alike; quote ratios.
gearmand is slow here: its submissions are capped at --cap seconds (the rate is over what
it did). --lone adds one-at-a-time submissions (latency to JOB_CREATED); with memory among
the stores it prints the p99 each store adds; --baseline runs another build interleaved
and prints this one's figures over it.
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
    "memory": (None, None),  # no store: what a durable store adds is read against it
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

    if kind == "memory":
        return ""
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
        if kind == "memory":
            url_cm = contextmanager(lambda: (yield "memory"))()
        elif kind == "sqlite":
            url_cm = contextmanager(lambda: (yield f"sqlite://{tmp}/queue.db"))()
        else:
            url_cm = fresh_url(kind, tmp)
        with url_cm as url:
            if server in ("gearmill", "baseline"):
                py = python if server == "gearmill" else baseline
                command = gearmill_command(py, f"--store {url}")
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


def median(runs: list[dict[str, Any]], key: str, **match: Any) -> float:
    """The median of one figure over the runs that match (store, server, conns, ...)."""
    vals = sorted(
        float(r.get(key) or 0) for r in runs if all(r.get(k) == v for k, v in match.items())
    )
    return vals[len(vals) // 2] if vals else 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stores", default="sqlite,postgresql,mysql,redis")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("-n", type=int, default=60_000, help="jobs per run (60000)")
    ap.add_argument("--cap", type=float, default=6.0, help="seconds of submitting at most (6)")
    ap.add_argument("--python", default=sys.executable, help="the Python gearmill runs under")
    ap.add_argument("--out", help="append each run's JSON to this file")
    ap.add_argument(
        "--baseline",
        metavar="PYTHON",
        help="also run gearmill under this Python (another build, e.g. main's), interleaved "
        "with the others, and print this build's figures over it",
    )
    ap.add_argument(
        "--lone",
        type=int,
        default=0,
        metavar="N",
        help="also N one-at-a-time submissions (1 connection, 1 in flight): latency to "
        "JOB_CREATED, p50 and p99, beside gearmand's (with memory among --stores, the "
        "p99 each store adds to gearmill's in memory)",
    )
    ap.add_argument(
        "--lone-only", action="store_true", help="only the --lone runs (no throughput runs)"
    )
    a = ap.parse_args()
    check_gearmand()
    ensure_loadgen()
    servers = ("gearmill", "gearmand") + (("baseline",) if a.baseline else ())
    rows: list[dict[str, Any]] = []
    for rep in range(0 if a.lone_only else a.repeat):
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
        print(
            "| store | lone submit/s gearmill | gearmand | ratio | p99 ms gearmill | gearmand "
            "| p99 added to gearmill's in memory |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- |")

        base = median(lone, "p99_us", store="memory", server="gearmill") / 1000
        for kind in a.stores.split(","):
            ours = median(lone, "value", store=kind, server="gearmill")
            theirs = median(lone, "value", store=kind, server="gearmand")
            p99o = median(lone, "p99_us", store=kind, server="gearmill") / 1000
            p99t = median(lone, "p99_us", store=kind, server="gearmand") / 1000
            added = f"{p99o - base:+.2f} ms" if "memory" in a.stores.split(",") else "-"
            print(
                f"| {kind} | {ours:.0f} | {theirs:.0f} | {ours / max(theirs, 1):.2f}x "
                f"| {p99o:.2f} | {p99t:.2f} | {added} |"
            )
        if a.baseline:
            print()
            print(
                "| store | lone submit/s gearmill | baseline | ratio | p99 ms gearmill | baseline |"
            )
            print("| --- | --- | --- | --- | --- | --- |")
            for kind in a.stores.split(","):
                ours = median(lone, "value", store=kind, server="gearmill")
                before = median(lone, "value", store=kind, server="baseline")
                p99o = median(lone, "p99_us", store=kind, server="gearmill") / 1000
                p99b = median(lone, "p99_us", store=kind, server="baseline") / 1000
                print(
                    f"| {kind} | {ours:.0f} | {before:.0f} | {ours / max(before, 1):.2f}x "
                    f"| {p99o:.2f} | {p99b:.2f} |"
                )
    if a.lone_only:
        return 1 if any(not r.get("ok") for r in lone) else 0
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
                return median(rows, key, store=kind, conns=conns, server=server)

            ours, theirs = med("gearmill", "value"), med("gearmand", "value")
            od, td = med("gearmill", "drain_jobs_per_s"), med("gearmand", "drain_jobs_per_s")
            sub_t, drain_t = TARGETS[kind]
            met = "-" if sub_t is None else "submit " + ("met" if ours >= sub_t else "NOT met")
            if drain_t:
                met += ", drain " + ("met" if od >= drain_t else "NOT met")
            print(
                f"| {kind} | {conns} | {ours:.0f} | {theirs:.0f} | {ours / max(theirs, 1):.1f}x "
                f"| {od:.0f} | {td:.0f} | {od / max(td, 1):.1f}x | {met} |"
            )
    if a.baseline:
        print()
        print("| store | conns | submit/s gearmill / baseline | drain/s gearmill / baseline |")
        print("| --- | --- | --- | --- |")
        for kind in a.stores.split(","):
            for conns in (1, 4):
                sub, before_sub = (
                    median(rows, "value", store=kind, conns=conns, server=server)
                    for server in ("gearmill", "baseline")
                )
                drain, before_drain = (
                    median(rows, "drain_jobs_per_s", store=kind, conns=conns, server=server)
                    for server in ("gearmill", "baseline")
                )
                print(
                    f"| {kind} | {conns} | {sub:.0f} / {before_sub:.0f} = "
                    f"{sub / max(before_sub, 1):.2f}x | {drain:.0f} / {before_drain:.0f} = "
                    f"{drain / max(before_drain, 1):.2f}x |"
                )
    for r in rows + lone:
        if not r.get("ok"):
            failed = True
            print(f"FAILED: {r['store']} {r['server']} c{r['conns']}: {r.get('error')}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
