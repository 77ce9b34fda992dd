"""Jobs per second each store commits durably, in groups of 1, 64 and 1024 jobs of 100 bytes.

Not a test: it prints a table. Every store gets a fresh database (or key prefix) that is
removed afterwards. For SQLite's sync calls per commit, run a fixed number of commits
under strace and divide:

    strace -f -c -e trace=fdatasync,fsync .venv/bin/python bench/store_commit.py \
        --stores sqlite --groups 64 --commits 200

Usage: python bench/store_commit.py [--stores sqlite,postgresql,mysql,redis,memory]
       [--groups 1,64,1024] [--seconds 2] [--commits N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

from gearmill.server.store import StoredJob, open_store

PG = os.environ.get("GEARMILL_TEST_POSTGRESQL", "postgresql://root@127.0.0.1:5432/postgres")
MY = os.environ.get("GEARMILL_TEST_MYSQL", "mysql://root@127.0.0.1:3306/test")
REDIS = os.environ.get("GEARMILL_TEST_REDIS", "redis://127.0.0.1:6379/0")


@asynccontextmanager
async def fresh(kind: str) -> AsyncIterator[str]:
    """A URL for a store of this kind in a database (or prefix) of its own, removed after."""
    name = "gmbench_" + uuid.uuid4().hex[:10]
    if kind == "memory":
        yield "memory"
    elif kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix="gmbench-", dir=os.environ.get("BENCH_DIR")) as d:
            yield f"sqlite://{d}/queue.db"
    elif kind == "postgresql":
        import asyncpg  # type: ignore[import-untyped]

        con = await asyncpg.connect(PG)
        await con.execute(f"CREATE DATABASE {name}")
        try:
            yield PG.rpartition("/")[0] + "/" + name
        finally:
            await con.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            await con.close()
    elif kind == "mysql":
        import asyncmy

        u = urlsplit(MY)
        con = await asyncmy.connect(
            host=u.hostname, port=u.port or 3306, user=u.username or "root", autocommit=True
        )
        async with con.cursor() as cur:
            await cur.execute(f"CREATE DATABASE {name}")
        try:
            yield MY.rpartition("/")[0] + "/" + name
        finally:
            async with con.cursor() as cur:
                await cur.execute(f"DROP DATABASE IF EXISTS {name}")
            con.close()
    elif kind == "redis":
        import redis.asyncio as aioredis

        try:
            yield f"{REDIS}?prefix={name}:"
        finally:
            r = aioredis.from_url(REDIS)
            keys = [k async for k in r.scan_iter(match=f"{name}:*")]
            if keys:
                await r.delete(*keys)
            await r.aclose()
    else:
        raise SystemExit(f"unknown store {kind}")


async def measure(kind: str, group: int, seconds: float, commits: int | None) -> tuple[int, float]:
    payload = os.urandom(50).hex().encode()  # 100 bytes
    async with fresh(kind) as url:
        store = open_store(url)
        await store.open()
        try:
            n = 0
            done = 0
            start = time.perf_counter()
            while True:
                jobs = [StoredJob(b"bench", b"%d" % (n + i), payload) for i in range(group)]
                await store.commit(jobs, ())
                n += group
                done += 1
                elapsed = time.perf_counter() - start
                if (commits is not None and done >= commits) or (
                    commits is None and elapsed >= seconds
                ):
                    break
            assert await store.count() == n
            return done, n / elapsed
        finally:
            await store.close()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stores", default="sqlite,postgresql,mysql,redis")
    ap.add_argument("--groups", default="1,64,1024")
    ap.add_argument("--seconds", type=float, default=2.0, help="time per cell")
    ap.add_argument("--commits", type=int, help="a fixed number of commits per cell instead")
    args = ap.parse_args()
    groups = [int(g) for g in args.groups.split(",")]
    print(f"| store | {' | '.join(f'group {g}' for g in groups)} |")
    print("|---|" + "---|" * len(groups))
    for kind in args.stores.split(","):
        cells = []
        for g in groups:
            commits, rate = await measure(kind, g, args.seconds, args.commits)
            cells.append(f"{rate:,.0f} jobs/s ({commits} commits)")
        print(f"| {kind} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    sys.exit(asyncio.run(main()))
